"""Communication (fedsim.comm): the codecs against their papers' properties and a hand count of their bytes, error
feedback's bookkeeping, lossless settings equal to no codec, and simulated secure aggregation: the masked sum is
the plain sum up to quantization, one client's masked vector is uniform over the field, dropped clients are
recovered above the threshold and the round fails below it, its messages' bytes counted."""

import json
import math
import re
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from test_algorithms import Net, Sim, tiny_data
from typer.testing import CliRunner

import fedsim
from fedsim.algorithms import ALGORITHMS, algorithm_class
from fedsim.cli import app
from fedsim.comm import parse_codec
from fedsim.comm.codecs import QSGD, Int8, RandK, Sign, TopK, generator
from fedsim.comm.compress import Compress
from fedsim.comm.secagg import Mask, SecureAggregation, SecureSum, Traffic, levels, neighbors
from fedsim.config import Config
from fedsim.core.channel import PER_CLIENT, SUMMED, UNIFORM, Channel, Message, per_client, summed
from fedsim.core.hooks import ServerState
from fedsim.engine.local import LocalSpec, SequentialExecutor
from fedsim.engine.optim import OptimizerSpec
from fedsim.engine.round import run_round, update_server
from fedsim.errors import FedsimError
from fedsim.metrics import TIME_COLUMNS

runner = CliRunner()
SMALL = dict(dataset="digits", clients=6, rounds=3, batch_size=32, quiet=True)
MODEL = {"model": summed("a model", centered=True)}


def csv(path):
    df = pd.read_csv(path)
    return df[[c for c in df.columns if c not in TIME_COLUMNS]]


def messages_of(updates, center, samples=None, fields=MODEL):
    """Messages whose model field is center + update (a dict of tensors each), for clients 0, 1, ..."""
    return [Message(c, samples[c] if samples else 10, {"model": {k: center[k] + u[k] for k in u}})
            for c, u in enumerate(updates)]


# --- codecs ------------------------------------------------------------------------------------------------------

def test_qsgd_is_unbiased_and_its_variance_is_within_the_papers_bound():
    """Lemma 3.1 of Alistarh et al.: E[Q(v)] = v and E‖Q(v) − v‖² ≤ min(n/s², √n/s)·‖v‖² per bucket of n. Over N
    encodings the mean's squared error has expectation at most bound/N, so by Markov's inequality it stays below
    100·bound/N with probability 0.99."""
    x = torch.randn(300, generator=torch.Generator().manual_seed(1))
    codec, n = QSGD(3, 64), 2000  # s = 3 levels, buckets of 64 and a last one of 44
    bound = sum(min(len(b) / 9, math.sqrt(len(b)) / 3) * float(b.norm() ** 2) for b in x.split(64))
    encodings = torch.stack([codec(x, generator(0, 0, i)) for i in range(n)])
    assert float(((encodings - x) ** 2).sum(1).mean()) <= bound
    assert float(((encodings.mean(0) - x) ** 2).sum()) <= 100 * bound / n
    levels_sent = (encodings[:, :64].abs() / x[:64].norm() * 3)
    assert torch.allclose(levels_sent, levels_sent.round(), atol=1e-4)  # every value is norm·l/s


@pytest.mark.parametrize("d", [1, 7, 100, 1000])
@pytest.mark.parametrize("fraction", ["0.01", "0.3", "1"])
def test_topk_keeps_exactly_ceil_f_d_coordinates_the_largest(d, fraction):
    x = torch.randn(d, generator=torch.Generator().manual_seed(d)) + 0.01
    out = TopK(Fraction(fraction))(x)
    k = math.ceil(Fraction(fraction) * d)
    assert int((out != 0).sum()) == k
    kept = out != 0
    assert torch.equal(out[kept], x[kept])
    if k < d:
        assert x[kept].abs().min() >= x[~kept].abs().max()


def test_randk_keeps_k_coordinates_unbiased_and_unscaled_under_error_feedback():
    x = torch.randn(50, generator=torch.Generator().manual_seed(2))
    codec = RandK(Fraction(1, 10))
    outs = torch.stack([codec(x, generator(0, 0, i)) for i in range(4000)])
    assert ((outs != 0).sum(1) == 5).all()
    assert torch.allclose(outs.mean(0), x, atol=0.5)  # each coordinate: the mean of 4000 draws of 10x or 0
    plain = RandK(Fraction(1, 10), unbiased=False)(x, generator(0, 0, 0))
    assert torch.equal(plain[plain != 0], x[plain != 0])


def test_int8_and_sign_are_as_stated():
    x = torch.tensor([-1.0, 0.0, 0.5, 3.0])
    step = 4.0 / 255
    assert torch.allclose(Int8()(x), -1 + ((x + 1) / step).round() * step)
    assert torch.equal(Int8()(torch.full((3,), 2.0)), torch.full((3,), 2.0))
    assert torch.allclose(Sign()(x), torch.tensor([-1.0, 1.0, 1.0, 1.0]) * 4.5 / 4)


def test_each_codec_gives_the_same_numbers_on_any_thread_count():
    """A run's numbers do not depend on its CPU threads (torchrun's ranks use one each): the codecs' reductions
    (sign's scale, QSGD's norms) are summed in one fixed order, not by torch's parallel reduction."""
    x = torch.randn(300_000, generator=torch.Generator().manual_seed(4)) * torch.rand(300_000) ** 4
    threads = torch.get_num_threads()
    for codec in (QSGD(4, 512), QSGD(4, 300_000), Int8(), TopK(Fraction(1, 100)), RandK(Fraction(1, 100)), Sign()):
        outs = []
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            outs.append(codec(x, generator(0, 0, 1)))
        torch.set_num_threads(threads)
        assert all(torch.equal(outs[0], o) for o in outs[1:]), type(codec).__name__


def test_each_codecs_bytes_equal_a_hand_count():
    # qsgd:4, buckets of 4, 10 coordinates: 40 bits = 5 bytes, and 3 bucket norms of 4 bytes
    assert QSGD(4, 4).size(10) == 5 + 12
    assert Int8().size(10) == 10 + 8  # one byte each, the minimum and the step
    # top-k of 2 in 10: 2 float values (8 bytes) and 2 indices of 4 bits (1 byte); a 10-bit bitmap would be more
    assert TopK(Fraction(1, 5)).size(10) == 8 + 1
    # top-k of 300 in 1000: 300 values; 300 indices of 10 bits (3000) against a 1000-bit bitmap (125 bytes)
    assert TopK(Fraction(3, 10)).size(1000) == 1200 + 125
    assert RandK(Fraction(1, 5)).size(10) == 8 and RandK(Fraction(1, 5)).message_bytes == 8  # values; one seed
    assert Sign().size(10) == 2 + 4  # 10 bits and the scale
    # a whole message: two float tensors through top-k, an int64 buffer and a per-client number as they are
    sends = {"model": summed("m", centered=True), "steps": per_client("s")}
    center = {"w": torch.zeros(2, 5), "b": torch.zeros(3), "n": torch.tensor(7)}
    message = Message(0, 4, {"model": {"w": torch.ones(2, 5), "b": torch.ones(3), "n": torch.tensor(9)}, "steps": 3})
    _, (out,) = Channel([Compress(TopK(Fraction(1, 5)), key=0)]).encode(sends, [message], ServerState(center), 1)
    assert out.size == (8 + 1) + (4 + 1) + 8 + 8  # w: 2 of 10; b: 1 of 3 (index 2 bits); n; steps
    assert torch.equal(out.fields["model"]["n"], torch.tensor(9)) and out.fields["steps"] == 3


@pytest.mark.parametrize("text,needle", [("qsgd:0", "from 2 to 32"), ("qsgd:1", "from 2 to 32"),
                                         ("topk:0", "in (0, 1]"), ("topk:1.5", "in (0, 1]"), ("randk:x", "(0, 1]"),
                                         ("zip", "unknown --compress"), ("int8:3", "no parameter")])
def test_a_bad_codec_is_one_line(text, needle):
    with pytest.raises(FedsimError, match=re.escape(needle)):
        parse_codec(text)


# --- the compression stage ---------------------------------------------------------------------------------------

def test_error_feedback_residual_plus_everything_sent_is_the_accumulated_update():
    center = {"w": torch.zeros(40)}
    stage = Compress(TopK(Fraction(1, 10)), key=0, error_feedback=True)
    g = torch.Generator().manual_seed(3)
    total, sent = torch.zeros(40), torch.zeros(40)
    for round in range(1, 6):
        update = torch.randn(40, generator=g)
        (out,) = stage(MODEL, messages_of([{"w": update}], center), ServerState(center), round)
        total += update
        sent += out.fields["model"]["w"]
        assert int((out.fields["model"]["w"] != 0).sum()) == 4
    assert torch.allclose(sent + stage.residuals[0], total, atol=1e-5)
    assert not torch.allclose(sent, total, atol=1e-2)  # the residual is not nothing


@pytest.mark.parametrize("codec", ["topk:1", "qsgd:32"])
def test_a_lossless_setting_gives_the_uncompressed_runs_csv(tmp_path, codec):
    """Every column but the bytes (and times) equals the run without a codec: top-k of all coordinates sends
    them as they are; QSGD at 32 bits is exact to float32 rounding."""
    plain = fedsim.run(fedsim.Config(**SMALL, out_dir=str(tmp_path), name="plain"))
    coded = fedsim.run(fedsim.Config(**SMALL, out_dir=str(tmp_path), name="coded", compress=codec))
    for c in plain.columns:
        if c in TIME_COLUMNS or c.startswith("bytes_"):
            continue
        assert coded[c].to_numpy() == pytest.approx(plain[c].to_numpy(), rel=1e-5, abs=1e-6), c
    assert (coded["bytes_up"] > plain["bytes_up"]).all()  # values plus a bitmap; levels plus bucket norms
    assert (coded["bytes_down"] == plain["bytes_down"]).all()
    record = json.loads((tmp_path / "coded.json").read_text())
    assert record["communication"]["compress"] == codec and record["summary"]["compression_ratio_up"] < 1


def test_qsgd_4_sends_an_eighth_and_the_record_says_so(tmp_path):
    plain = fedsim.run(fedsim.Config(**SMALL, out_dir=str(tmp_path), name="plain"))
    coded = fedsim.run(fedsim.Config(**SMALL, out_dir=str(tmp_path), name="q4", compress="qsgd:4"))
    ratio = json.loads((tmp_path / "q4.json").read_text())["summary"]["compression_ratio_up"]
    assert 7.5 < ratio < 8 and ratio == pytest.approx(plain["bytes_up"].sum() / coded["bytes_up"].sum(), rel=1e-3)


def test_error_feedback_survives_resume_and_both_executors_agree(tmp_path):
    """randk with error feedback: stochastic draws and per-client residuals. A run stopped after round 2 and
    resumed equals the uninterrupted one (the residuals are in the checkpoint); vmap equals sequential."""
    options = dict(SMALL, rounds=4, compress="randk:0.2", error_feedback=True, checkpoint_every=1)
    whole = fedsim.run(fedsim.Config(**options, out_dir=str(tmp_path / "a"), name="r"))
    fedsim.run(fedsim.Config(**{**options, "rounds": 2}, out_dir=str(tmp_path / "b"), name="r"))
    ckpt = torch.load(tmp_path / "b" / "r.ckpt", weights_only=True)
    assert set(ckpt["server"]["extra"]["ef"]) <= set(range(6)) and ckpt["server"]["extra"]["ef"]
    fedsim.run(resume=str(tmp_path / "b" / "r.csv"), rounds=4)
    assert csv(tmp_path / "a" / "r.csv").equals(csv(tmp_path / "b" / "r.csv"))
    fedsim.run(fedsim.Config(**options, out_dir=str(tmp_path / "seq"), name="r", executor="sequential"))
    seq, vmap = csv(tmp_path / "seq" / "r.csv"), csv(tmp_path / "a" / "r.csv")
    for c in seq.columns:
        assert seq[c].to_numpy() == pytest.approx(vmap[c].to_numpy(), rel=1e-4, abs=1e-6), c
    assert whole["bytes_up"].nunique() == 1


def test_compress_down_counts_the_broadcast_and_starts_clients_from_it(tmp_path):
    plain = fedsim.run(fedsim.Config(**SMALL, out_dir=str(tmp_path), name="plain"))
    down = fedsim.run(fedsim.Config(**SMALL, out_dir=str(tmp_path), name="down", compress_down="int8"))
    params = plain["bytes_down"][0] // 4 // 6  # float32 coordinates broadcast to each of the 6 clients
    tensors = 6  # the 2NN's three weights and three biases: a minimum and a step each
    assert (down["bytes_down"] == 6 * (params + 8 * tensors)).all()
    assert (down["bytes_up"] == plain["bytes_up"]).all() and not down["train_loss"].equals(plain["train_loss"])


def test_a_stacked_sweep_of_codecs_gives_each_runs_csv_as_alone(tmp_path):
    from fedsim.sweep import expand, run_sweep, stack_key

    runs = expand({**SMALL, "rounds": 2, "out_dir": str(tmp_path / "sweep")},
                  {"compress": ["qsgd:4", "randk:0.2"], "error_feedback": [True]}, "c")  # draws and residuals
    assert len(runs) == 2 and len({stack_key(r.config) for r in runs}) == 1
    run_sweep(runs, "c", str(tmp_path / "sweep"))
    for run in runs:
        fedsim.run(run.config, out_dir=str(tmp_path / "alone"))
        swept, alone = (csv(tmp_path / where / f"{run.name}.csv") for where in ("sweep", "alone"))
        for c in swept.columns:
            assert swept[c].to_numpy() == pytest.approx(alone[c].to_numpy(), rel=1e-5, abs=1e-7), (run.name, c)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_algorithm_takes_a_codec_and_secure_aggregation_where_its_message_allows(name):
    """One round on a tiny model: a lossless codec and the secure sum give the plain channel's server state (up to
    float rounding and one quantization level). An algorithm with a per-client field is refused secure
    aggregation by its declaration, and still takes a codec (the field goes as it is) unless it sends no summed
    field at all; an asynchronous one is refused secure aggregation (no round cohort)."""
    def server_after(channel):
        torch.manual_seed(0)
        sim = Sim(algorithm_class(name), Net(), tiny_data(sizes=(6, 9, 7)), lr=0.1, batch_size=3)
        spec = LocalSpec(OptimizerSpec("sgd", 0.1), 3, 1, None, seed=0)
        return run_round(sim.algo, SequentialExecutor(sim.model, sim.data, spec), sim.server, sim.store,
                         [0, 1, 2], 1, 0.1, channel).server

    def close(a, b):
        return all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)

    cls = algorithm_class(name)
    plain = server_after(Channel())
    if any(spec.kind == SUMMED for spec in cls.sends.values()):
        assert close(server_after(Channel([Compress(TopK(Fraction(1)), key=0)])).model, plain.model)
    else:  # FedFomo, FedAMP, APPLE: every field goes to the server as sent
        with pytest.raises(FedsimError, match=f"{name}'s clients send none"):
            Config(algo=name, compress="int8").validate()
    p = protocol(max_weight=9)
    if any(spec.kind == PER_CLIENT for spec in cls.sends.values()):
        with pytest.raises(FedsimError, match=f"secure aggregation.* cannot take {name}"):
            secure(p).check(name, cls.sends)
    elif cls.asynchronous:  # no round cohort to share keys
        with pytest.raises(FedsimError, match="--secure-agg masks a synchronous round's cohort"):
            Config(algo=name, secure_agg="secagg", speed="constant:1").validate()
    else:
        assert close(server_after(secure(p)).model, plain.model)


def test_the_upload_a_clock_times_and_a_late_client_counts_is_the_encoded_size(tmp_path):
    """`Communication.wire_size` (what the simulated clock times, and what a late client's upload adds) equals the
    size the channel's stage sets; on the clock, a codec's smaller upload shortens the round."""
    from fedsim.comm.install import Communication, install_communication

    center = {"w": torch.zeros(6, 5), "b": torch.zeros(6)}
    messages = messages_of(random_updates(3), center)
    algorithm = SimpleNamespace(sends=MODEL, bytes_up_of=lambda server, m: 0)
    coded = install_communication(Config(compress="qsgd:3", bucket_size=4), algorithm, [10] * 3, 3, key=1)
    _, encoded = Channel(coded.stages).encode(MODEL, messages, ServerState(center), 1)
    assert [coded.wire_size(algorithm, None, m) for m in messages] == [m.size for m in encoded]
    masked = install_communication(Config(secure_agg="secagg"), algorithm, [10] * 3, 3, key=1)
    masked.sampled(1, [0, 1, 2])
    _, encoded = Channel(masked.stages).encode(MODEL, messages, ServerState(center), 1)
    assert [masked.wire_size(algorithm, None, m) for m in messages] == [m.size for m in encoded]
    assert Communication().wire_size(SimpleNamespace(bytes_up_of=lambda server, m: 7), None, messages[0]) == 7
    clocked = dict(SMALL, rounds=2, bandwidth="constant:1e5", out_dir=str(tmp_path))
    plain = fedsim.run(fedsim.Config(**clocked, name="plain"))
    coded = fedsim.run(fedsim.Config(**clocked, name="q", compress="qsgd:2"))
    assert (coded["sim_seconds"] < plain["sim_seconds"]).all()


# --- secure aggregation ------------------------------------------------------------------------------------------

def protocol(mode="secagg", bits=32, threshold=None, degree=None, cohort=None, max_weight=50, by_samples=True):
    return SecureAggregation(mode, bits, threshold, degree, 8.0, 123, max_weight, by_samples,
                             None if cohort is None else (lambda r: cohort))


def secure(p):
    return Channel([Mask(p)], SecureSum(p))


def random_updates(n, seed=0, size=(6, 5)):
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(size, generator=g) * 0.1, "b": torch.randn(size[0], generator=g) * 0.1}
            for _ in range(n)]


@pytest.mark.parametrize("mode", ["secagg", "secagg+"])
def test_the_secure_sum_is_the_plain_weighted_mean_up_to_quantization(mode):
    center = {"w": torch.randn(6, 5), "b": torch.zeros(6)}
    samples = [5, 9, 12, 30, 7, 20]
    messages = messages_of(random_updates(6), center, samples)
    server = ServerState(center)
    plain = Channel().reduce(MODEL, messages, server, 1)
    p = protocol(mode, degree=2 if mode == "secagg+" else None)
    masked = secure(p).reduce(MODEL, messages, server, 1)
    step = 8.0 / levels(32, 6, 50)  # one level of the quantization
    for k in center:
        assert torch.allclose(masked.means["model"][k], plain.means["model"][k], atol=step, rtol=0)
    assert masked.samples is None and masked.count == 6 and masked.info["secagg_failed"] == 0
    coarse = secure(protocol(mode, bits=16, degree=2 if mode == "secagg+" else None)).reduce(MODEL, messages,
                                                                                             server, 1)
    assert not torch.allclose(coarse.means["model"]["w"], plain.means["model"]["w"], atol=step)  # bits matter


def test_one_clients_masked_vector_is_uniform_over_the_field_whatever_its_update():
    """Chi-square over 16 bins of 4096 masked coordinates (15 degrees of freedom: below 56.5 with probability
    1 − 1e-6; the unmasked levels of these updates give thousands), for an update of zeros and for a large one,
    and uncorrelated with the update."""
    center = {"w": torch.zeros(4096)}
    updates = [{"w": torch.zeros(4096)}, {"w": torch.linspace(-8, 8, 4096)}, {"w": torch.ones(4096)}]
    p = protocol(bits=16, max_weight=1, by_samples=False)
    masked = Mask(p)({"model": summed("m", weight=UNIFORM, centered=True)}, messages_of(updates, center),
                     ServerState(center), 1)
    for m, u in zip(masked, updates, strict=True):
        y = m.fields["secagg"]["y"].double() / 2**16
        assert ((y >= 0) & (y < 1)).all()
        counts = np.histogram(y.numpy(), bins=16, range=(0, 1))[0]
        assert ((counts - 256) ** 2 / 256).sum() < 56.5
        if u["w"].std() > 0:
            assert abs(np.corrcoef(y.numpy(), u["w"].numpy())[0, 1]) < 0.1


def test_dropped_clients_masks_are_removed_above_the_threshold_and_the_round_fails_below():
    center = {"w": torch.zeros(6, 5), "b": torch.zeros(6)}
    messages = messages_of(random_updates(4), center)
    server = ServerState(center)
    plain = Channel().reduce(MODEL, messages, server, 3)
    # clients 4..7 were sampled, then dropped. SecAgg: 4 of 8 sent. SecAgg+ with 6 neighbours (all but one):
    # every secret has at least 3 of its 7 holders among the 4 senders, none has 5
    for mode, degree, enough in (("secagg", None, 4), ("secagg+", 6, 3)):
        p = protocol(mode, degree=degree, threshold=enough, cohort=list(range(8)))
        out = secure(p).reduce(MODEL, messages, server, 3)
        assert out.failed is None and torch.allclose(out.means["model"]["w"], plain.means["model"]["w"], atol=1e-4)
        p = protocol(mode, degree=degree, threshold=5, cohort=list(range(8)))
        failed = secure(p).reduce(MODEL, messages, server, 3)
        assert failed.info["secagg_failed"] == 1 and "below --secagg-threshold 5" in failed.failed
    algorithm = SimpleNamespace(sends=MODEL, server_update=lambda *a: pytest.fail("no update on failure"))
    kept, aggregate = update_server(algorithm, server, messages, 3, secure(p))
    assert kept.model is server.model and kept.round == 3 and aggregate.failed


def test_secagg_plus_graph_is_regular_symmetric_and_keyed_by_round():
    graph = neighbors(range(20), 6, key=5, round=1)
    assert all(len(v) == 6 and u not in v for u, v in graph.items())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    assert graph != neighbors(range(20), 6, key=5, round=2) and graph == neighbors(range(20), 6, key=5, round=1)
    assert all(len(v) == 19 for v in neighbors(range(20), 19, key=5, round=1).values())  # SecAgg: everyone


def test_the_protocols_bytes_equal_a_hand_count():
    """3 senders and 1 dropped client, complete graph (3 neighbours each), 2 floats + 1 sample count at 20 bits."""
    center = {"w": torch.zeros(2)}
    messages = messages_of([{"w": torch.ones(2)}] * 3, center)
    p = protocol(bits=20, cohort=[0, 1, 2, 3], threshold=2)
    out = secure(p).reduce(MODEL, messages, ServerState(center), 1)
    keys_up = 2 * 32 + 3 * (2 * 4 + 2 * 32 + 28)  # two public keys; an encrypted pair of shares per neighbour
    sender = keys_up + math.ceil(3 * 20 / 8) + 3 * (4 + 32)  # masked vector; a share per neighbour to unmask
    assert out.bytes_up == 3 * sender + keys_up  # the dropped client sent its keys and shares
    keys_down = 3 * (4 + 2 * 32 + 100)  # its neighbours' ids and keys, the shares they sent it
    assert out.bytes_down == 4 * keys_down + 3 * (2 * 4)  # and each sender: which 2 of its neighbours sent
    assert Traffic(3, 3, 20).sender_up == sender


def test_a_secure_run_matches_plain_fedavg_and_counts_its_overhead(tmp_path):
    plain = fedsim.run(fedsim.Config(**SMALL, out_dir=str(tmp_path), name="plain"))
    safe = fedsim.run(fedsim.Config(**SMALL, out_dir=str(tmp_path), name="safe", secure_agg="secagg+"))
    assert safe["test_accuracy"].to_numpy() == pytest.approx(plain["test_accuracy"].to_numpy(), abs=0.01)
    overhead = safe["bytes_up"] / plain["bytes_up"]
    assert ((overhead > 1) & (overhead < 1.02)).all() and (safe["secagg_failed"] == 0).all()
    record = json.loads((tmp_path / "safe.json").read_text())["communication"]["secure_agg"]
    assert record["neighbors"] == 5 and record["threshold"] == 4  # 6 clients: all 5 others; a majority of 6


def test_a_failed_secure_round_keeps_the_model_and_says_so(tmp_path, capsys):
    options = dict(SMALL, rounds=4, client_dropout=0.5, secure_agg="secagg", secagg_threshold=5, quiet=False)
    df = fedsim.run(fedsim.Config(**options, out_dir=str(tmp_path), name="f"))
    failed = df["secagg_failed"].to_numpy() == 1
    assert failed.any() and (df["dropped"][failed] >= 2).all()
    for r in np.flatnonzero(failed):
        if r > 0:
            assert df["test_loss"][r] == df["test_loss"][r - 1]
    assert "secure aggregation failed in round" in capsys.readouterr().err


def test_central_dp_under_secure_aggregation_clips_on_the_client_and_noises_the_sum(tmp_path):
    """The same noise key: DP through the secure sum equals DP at the server up to quantization (adaptive
    clipping's count goes through the secure sum too)."""
    dp = dict(SMALL, dp_noise=0.3, dp_clip="adaptive", dp_noise_seed=7, fraction=1.0)
    plain = fedsim.run(fedsim.Config(**dp, out_dir=str(tmp_path), name="plain"))
    safe = fedsim.run(fedsim.Config(**dp, out_dir=str(tmp_path), name="safe", secure_agg="secagg"))
    assert safe["dp_clip"].to_numpy() == pytest.approx(plain["dp_clip"].to_numpy(), rel=1e-6)
    assert safe["test_loss"].to_numpy() == pytest.approx(plain["test_loss"].to_numpy(), rel=1e-3)
    record = json.loads((tmp_path / "safe.json").read_text())
    assert record["privacy"]["clipped_by"].startswith("each client")


BAD = [
    (["--compress", "qsgd:0"], "B, the bits per coordinate"), (["--compress", "topk:0"], "F, the fraction"),
    (["--compress", "topk:1.5"], "F, the fraction"), (["--compress", "lz4"], "unknown --compress 'lz4'"),
    (["--secure-agg", "secagg", "--secagg-bits", "0"], "--secagg-bits must be in [2, 62]"),
    (["--secure-agg", "secagg", "--secagg-threshold", "7"], "--secagg-threshold 7 is above the 6 holders"),
    (["--secure-agg", "secagg+", "--secagg-neighbors", "8"], "--secagg-neighbors 8 is more than the other 5"),
    (["--secure-agg", "secagg", "--aggregate", "krum"], "--aggregate krum cannot run under --secure-agg"),
    (["--secure-agg", "secagg", "--algo", "fednova"], "secure aggregation cannot take fednova"),
    (["--secure-agg", "secagg", "--compress", "int8"], "cannot be used with --secure-agg"),
    (["--secure-agg", "secagg", "--secagg-bits", "9"], "--secagg-bits 9 cannot hold the sum of 6 clients"),
    (["--secure-agg", "nope"], "unknown --secure-agg"), (["--secagg-bits", "40"], "need --secure-agg"),
    (["--error-feedback"], "--error-feedback needs --compress"), (["--bucket-size", "8"], "--bucket-size is for"),
    (["--compress-down", "sign"], "choose qsgd:B or int8"), (["--algo", "fedproto", "--compress-down", "int8"],
                                                             "fedproto broadcasts no model"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_communication_options_are_one_line_exit_2_and_nothing_written(tmp_path, args, needle):
    result = runner.invoke(app, ["train", "--clients", "6", "--rounds", "1", "--out-dir", str(tmp_path / "out"),
                                 "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()


def test_compare_plots_accuracy_against_bytes(tmp_path):
    from fedsim import compare

    options = {**SMALL, "rounds": 2, "out_dir": str(tmp_path)}
    fedsim.run(fedsim.Config(**options, name="plain"))
    fedsim.run(fedsim.Config(**options, name="q", compress="qsgd:2"))
    summary = compare.compare_runs(sorted(tmp_path.glob("*.csv")))
    curves = {g.name: compare.curve(g, "test_accuracy", "bytes") for g in summary.groups}
    plain, q = (curves[n] for n in sorted(curves, key=lambda n: "qsgd" in n))
    assert (q["x"] < plain["x"]).all() and plain["x"].is_monotonic_increasing
    result = runner.invoke(app, ["compare", str(tmp_path), "--plot", str(tmp_path / "b.png"), "--x", "bytes"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b.png").stat().st_size > 0


@pytest.mark.slow
def test_two_processes_give_the_one_process_csv_with_codecs_and_secure_aggregation(tmp_path):
    """Under torchrun every process runs the channel on the gathered messages: the same residuals, masks and
    dropped clients' recovery as one process."""
    import textwrap

    from test_distributed import rows, torchrun

    runs = {"ef": dict(compress="randk:0.2", error_feedback=True),
            "sa": dict(secure_agg="secagg+", client_dropout=0.3, secagg_threshold=2)}
    script = tmp_path / "runs.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import fedsim
        for name, options in {runs!r}.items():
            fedsim.run(fedsim.Config(name=name, out_dir=sys.argv[1], **{SMALL!r}, **options))
    """))
    done = torchrun(str(script), str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr
    for name, options in runs.items():
        fedsim.run(fedsim.Config(name=name, out_dir=str(tmp_path / "one"), **SMALL, **options))
        assert rows(tmp_path / "two" / f"{name}.csv") == rows(tmp_path / "one" / f"{name}.csv"), name
