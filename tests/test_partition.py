"""Partitioners (fedsim/data/partitioners/), client test slices and building (partition_build.py), the
partition file (partition.py) and its summaries (partition_stats.py)."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.data.partition import MAGIC, load_partition
from fedsim.data.partition_build import (
    build_partition,
    check_client_test_fraction,
    default_partition_path,
    hold_out,
    partition_for_config,
    scheme_for,
)
from fedsim.data.partition_stats import label_counts, partition_stats
from fedsim.data.partitioners import (
    DirichletPartitioner,
    IidPartitioner,
    LabelPartitioner,
    NaturalPartitioner,
    QuantitySkewPartitioner,
    ShardPartitioner,
    make_partitioner,
)
from fedsim.errors import FedsimError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fake_dataset(n_train=400, n_test=100, num_classes=10, seed=0, skew=None, name="fake", **extra):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(num_classes, skew)) if skew else None
    return SimpleNamespace(name=name, num_classes=num_classes,
                           y_train=rng.choice(num_classes, n_train, p=p),
                           y_test=rng.choice(num_classes, n_test, p=p), **extra)


def check_cover(parts, n_samples, num_clients):
    assert len(parts) == num_clients
    for ix in parts:
        assert ix.dtype == np.int64 and ix.ndim == 1
        assert (np.diff(ix) > 0).all()  # sorted, no duplicates
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    np.testing.assert_array_equal(np.sort(flat), np.arange(n_samples))


def make(scheme, n, seed, param, min_size):
    return make_partitioner(scheme, n, seed, param, min_size)


# --- properties over every scheme ------------------------------------------------------------

labels_st = st.builds(
    lambda size, classes, seed, skew: np.random.default_rng(seed).choice(
        classes, size, p=np.random.default_rng(seed + 1).dirichlet(np.full(classes, skew))),
    size=st.integers(1, 300), classes=st.integers(1, 12), seed=st.integers(0, 2**16),
    skew=st.sampled_from([0.2, 1.0, 100.0]))

scheme_st = st.one_of(
    st.tuples(st.just("iid"), st.none()),
    st.tuples(st.just("dirichlet"), st.sampled_from([0.05, 0.3, 1.0, 50.0])),
    st.tuples(st.just("shards"), st.integers(1, 4)),
    st.tuples(st.just("labels"), st.integers(1, 5)),
    st.tuples(st.just("quantity_skew"), st.sampled_from([0.3, 1.0, 10.0])),
)


@FAST
@given(labels=labels_st, scheme=scheme_st, n=st.integers(1, 40), seed=st.integers(0, 1000),
       min_size=st.integers(0, 5))
def test_every_sample_once_deterministic_or_clear_error(labels, scheme, n, seed, min_size):
    name, param = scheme
    size, present = len(labels), len(np.unique(labels))
    try:
        parts = make(name, n, seed, param, min_size).split(labels)
    except FedsimError as e:
        msg = str(e)
        assert "\n" not in msg
        allowed = size < n
        allowed |= name == "shards" and size < n * param
        allowed |= name == "labels" and (param > present or n * param < present or "gets no samples" in msg)
        allowed |= name in ("dirichlet", "quantity_skew") and (size < n * min_size or "no draw in" in msg)
        assert allowed, msg
        return
    check_cover(parts, size, n)
    again = make(name, n, seed, param, min_size).split(labels)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    sizes = np.array([len(ix) for ix in parts])
    if name in ("dirichlet", "quantity_skew"):
        assert sizes.min() >= min_size
    if name == "iid":
        assert sizes.max() - sizes.min() <= 1
    if name == "shards":
        low, high = size // (n * param), -(-size // (n * param))
        assert (sizes >= low * param).all() and (sizes <= high * param).all()
    if name == "labels":
        held = [len(np.unique(labels[ix])) for ix in parts]
        assert max(held) <= param
        if np.bincount(labels)[np.unique(labels)].min() >= n:  # every label has enough for its holders
            assert min(held) == param


@FAST
@given(labels=labels_st, scheme=scheme_st, n=st.integers(1, 20), seed=st.integers(0, 1000),
       n_test=st.integers(0, 120))
def test_test_slices_cover_and_follow_train_mix(labels, scheme, n, seed, n_test):
    name, param = scheme
    classes = int(labels.max()) + 1
    y_test = np.random.default_rng(seed).integers(0, classes + 1, n_test)  # one class maybe unseen
    ds = SimpleNamespace(name="h", num_classes=classes + 1, y_train=labels, y_test=y_test)
    try:
        part = build_partition(ds, name, n, seed, param, min_size=0)
    except FedsimError:
        return
    tests = [part.test_indices(c) for c in range(n)]
    check_cover(tests, n_test, n)
    train = part.label_counts(labels, classes + 1)
    test = part.label_counts(y_test, classes + 1, split="test")
    for k in range(classes + 1):
        total, whole = test[:, k].sum(), train[:, k].sum()
        if whole == 0:  # spread uniformly
            assert test[:, k].max() - test[:, k].min() <= 1
        else:
            assert (test[train[:, k] == 0, k] == 0).all()
            assert np.abs(test[:, k] - total * train[:, k] / whole).max() < 1
    assert part.meta["client_test_source"] == "test"


def test_global_rng_untouched_and_seed_matters():
    labels = np.arange(1000) % 10
    state = np.random.get_state()[1].copy()
    a = DirichletPartitioner(10, 0.5, seed=1).split(labels)
    b = DirichletPartitioner(10, 0.5, seed=2).split(labels)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))



def test_one_partitioner_per_scheme():
    from fedsim.data.partitioners import Partitioner
    from fedsim.data.schemes import SCHEME_DEFAULTS, SCHEMES

    assert sorted(cls.name for cls in Partitioner.__subclasses__()) == sorted(SCHEMES)
    assert set(SCHEME_DEFAULTS) <= set(SCHEMES)

# --- the schemes one by one ------------------------------------------------------------------

def test_iid_shuffles_sorted_labels():
    labels = np.repeat(np.arange(10), 100)
    parts = IidPartitioner(10, seed=0).split(labels)
    assert all(len(np.unique(labels[ix])) == 10 for ix in parts)


def test_dirichlet_impossible_fails_fast_with_the_numbers():
    labels = np.arange(1500) % 10
    start = time.perf_counter()
    with pytest.raises(FedsimError, match=r"alpha=0.01 over 100 clients.*>= 14 samples.*smallest client "
                                          r"reached \d+.*larger --dirichlet"):
        DirichletPartitioner(100, 0.01, min_size=14).split(labels)
    with pytest.raises(FedsimError, match=r"alpha=0.5 over 20 clients.*smallest client reached \d+"):
        DirichletPartitioner(20, 0.5, min_size=70, max_tries=3).split(labels)
    assert time.perf_counter() - start < 5
    with pytest.raises(FedsimError, match="needs 1000 samples, but there are 500"):
        DirichletPartitioner(100, 0.5, min_size=10).split(labels[:500])


def test_dirichlet_ten_thousand_clients_is_fast():
    labels = np.random.default_rng(0).integers(0, 10, 60_000)
    start = time.perf_counter()
    parts = DirichletPartitioner(10_000, 0.5, seed=0, min_size=0).split(labels)
    assert time.perf_counter() - start < 5
    check_cover(parts, 60_000, 10_000)


def test_dirichlet_min_size_and_skew():
    labels = np.random.default_rng(0).integers(0, 10, 6000)
    parts = DirichletPartitioner(20, 0.1, seed=0, min_size=30).split(labels)
    assert min(len(ix) for ix in parts) >= 30
    assert np.mean([len(np.unique(labels[ix])) for ix in parts]) < 7  # skewed, unlike IID's 10



def capped_clients_fed(labels, parts):
    """(class, client) pairs where a client already holding >= N/clients samples got some of the class.

    Dirichlet deals the classes out in ascending order, so the sizes before class k are those of the
    classes below k."""
    n, cap = len(parts), len(labels) / len(parts)
    owner = np.empty(len(labels), dtype=np.int64)
    for c, ix in enumerate(parts):
        owner[ix] = c
    sizes, fed = np.zeros(n, dtype=np.int64), []
    for k in np.unique(labels):
        got = np.bincount(owner[labels == k], minlength=n)
        fed += [(int(k), int(c)) for c in np.flatnonzero((sizes >= cap) & (got > 0))]
        sizes += got
    return fed


def test_dirichlet_capped_clients_get_no_more_digits():
    from fedsim.data.datasets import load_dataset

    labels = load_dataset("digits").y_train.numpy()  # NIID-Bench's cut gave capped client 9 a sample here
    assert capped_clients_fed(labels, DirichletPartitioner(10, 0.5, seed=2).split(labels)) == []


@FAST
@given(labels=labels_st, n=st.integers(2, 30), seed=st.integers(0, 2**16), alpha=st.sampled_from([0.05, 0.5, 5.0]))
def test_dirichlet_capped_clients_get_no_more(labels, n, seed, alpha):
    try:
        parts = DirichletPartitioner(n, alpha, seed=seed, min_size=0).split(labels)
    except FedsimError:
        return  # fewer samples than clients
    assert capped_clients_fed(labels, parts) == []

def test_shards_mcmahan_and_remainder():
    labels = np.random.default_rng(0).integers(0, 10, 60_000)
    parts = ShardPartitioner(100, 2, seed=0).split(labels)
    assert {len(ix) for ix in parts} == {600}
    assert max(len(np.unique(labels[ix])) for ix in parts) <= 4  # two shards of sorted labels
    labels = np.arange(1003) % 7
    parts = ShardPartitioner(10, 2, seed=3).split(labels)
    check_cover(parts, 1003, 10)  # the 3 leftover samples are kept
    assert sorted(len(ix) for ix in parts)[-1] <= 102
    with pytest.raises(FedsimError, match="20 clients x 100 shards = 2000 shards, but only 1003"):
        ShardPartitioner(20, 100).split(labels)


def test_labels_coverage_k_and_errors():
    labels = np.arange(1000) % 10
    parts = LabelPartitioner(3, 4, seed=5).split(labels)  # 3 clients < 10 labels: repaired to cover all
    check_cover(parts, 1000, 3)
    assert [len(np.unique(labels[ix])) for ix in parts] == [4, 4, 4]
    parts = LabelPartitioner(10, 2, seed=0).split(labels)
    assert all(i in labels[ix] for i, ix in enumerate(parts))  # client i holds label i mod C
    assert all(len(np.unique(labels[ix])) == 2 for ix in parts)
    with pytest.raises(FedsimError, match="--labels 11 .* 10 classes"):
        LabelPartitioner(10, 11).split(labels)
    with pytest.raises(FedsimError, match="cannot cover all 10 classes"):
        LabelPartitioner(3, 3).split(labels)
    with pytest.raises(FedsimError, match="gets no samples"):
        LabelPartitioner(12, 1).split(np.array([0] + [1] * 11))


def test_quantity_skew_sizes_vary_labels_iid():
    labels = np.random.default_rng(0).integers(0, 10, 10_000)
    parts = QuantitySkewPartitioner(10, 0.5, seed=0).split(labels)
    sizes = [len(ix) for ix in parts]
    assert min(sizes) >= 10 and max(sizes) > 3 * min(sizes)
    with pytest.raises(FedsimError, match="beta=0.01 over 50 clients.*larger --quantity-skew"):
        QuantitySkewPartitioner(50, 0.01).split(labels)


def test_natural_split():
    devices = [np.array([0, 3]), np.array([1, 2, 4])]
    parts = NaturalPartitioner(devices).split(np.zeros(5, np.int64))
    assert [ix.tolist() for ix in parts] == [[0, 3], [1, 2, 4]]
    with pytest.raises(FedsimError, match="exactly once"):
        NaturalPartitioner([np.array([0, 1]), np.array([1, 2])]).split(np.zeros(3, np.int64))
    ds = fake_dataset(5, 4, 2, natural_train=devices, natural_test=[np.array([3, 1]), np.array([0, 2])])
    part = build_partition(ds, "natural")
    assert part.num_clients == 2 and part.test_indices(0).tolist() == [1, 3]
    with pytest.raises(FedsimError, match="own 2 devices .* --clients 10"):
        build_partition(ds, "natural", 10)
    with pytest.raises(FedsimError, match="no natural per-device split"):
        build_partition(fake_dataset(), "natural")


@pytest.mark.parametrize("make_it, pattern", [
    (lambda: DirichletPartitioner(10, 0), r"alpha \(--dirichlet\) must be a positive number, got 0"),
    (lambda: DirichletPartitioner(10, -1), "got -1"),
    (lambda: DirichletPartitioner(10, float("nan")), "got nan"),
    (lambda: QuantitySkewPartitioner(10, float("inf")), r"beta \(--quantity-skew\)"),
    (lambda: IidPartitioner(0), r"--clients\) must be at least 1, got 0"),
    (lambda: IidPartitioner(2.5), "whole number"),
    (lambda: ShardPartitioner(10, 0), r"--shards\) must be at least 1"),
    (lambda: LabelPartitioner(10, 0), r"--labels\) must be at least 1"),
    (lambda: IidPartitioner(10, seed=-1), r"seed \(--seed\)"),
    (lambda: DirichletPartitioner(10, 0.5, min_size=-1), "--min-size"),
    (lambda: make_partitioner("zipf"), "unknown partition scheme 'zipf'"),
    (lambda: make_partitioner("iid", param=3), "takes no parameter"),
    (lambda: hold_out([], 1.0), "between 0 and 1"),
    (lambda: check_client_test_fraction(0), "between 0 and 1"),
    (lambda: IidPartitioner(5).split(np.zeros(3, np.int64)), "cannot split 3 samples among 5 clients"),
])
def test_argument_errors(make_it, pattern):
    with pytest.raises(FedsimError, match=pattern):
        make_it()


def test_hold_out_fraction():
    ds = fake_dataset(1000, 100)
    part = build_partition(ds, "dirichlet", 10, 0, 0.5, client_test_fraction=0.25)
    whole = DirichletPartitioner(10, 0.5, seed=0).split(ds.y_train)
    assert part.meta["client_test_source"] == "train"
    for c in range(10):
        train, test = part.train_indices(c), part.test_indices(c)
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), whole[c])
        assert len(test) == int(np.floor(0.25 * len(whole[c]) + 0.5))
    train, test = hold_out(whole, 0.5, seed=1)
    check_cover([np.sort(np.concatenate(x)) for x in zip(train, test, strict=True)], 1000, 10)


# --- summaries -------------------------------------------------------------------------------

def test_stats_by_hand():
    s = partition_stats(np.array([[2, 0], [0, 2]]))
    assert (s["min_size"], s["max_size"], s["mean_labels"], s["mean_tv"]) == (2, 2, 1.0, 0.5)
    s = partition_stats(np.array([[3, 3], [1, 1], [0, 0]]))
    assert s["mean_tv"] == 0.0 and s["empty_clients"] == 1 and s["median_size"] == 2


def test_label_counts_match_indices():
    ds = fake_dataset()
    part = build_partition(ds, "shards", 8, 0, 2)
    counts = label_counts(part, ds)
    for c in range(8):
        np.testing.assert_array_equal(counts[c], np.bincount(ds.y_train[part.train_indices(c)], minlength=10))
    assert label_counts(part, ds, "test").sum() == len(ds.y_test)


# --- the file --------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    part = build_partition(fake_dataset(), "dirichlet", 7, 3, 0.5)
    return part, part.save(tmp_path / "p.fsp")


def test_round_trip_and_byte_identity(saved, tmp_path):
    part, path = saved
    back = load_partition(path)
    assert back.meta == part.meta and back.path == path
    for c in range(part.num_clients):
        np.testing.assert_array_equal(back.train_indices(c), part.train_indices(c))
        np.testing.assert_array_equal(back.test_indices(c), part.test_indices(c))
    np.testing.assert_array_equal(back.train_sizes, part.train_sizes)
    again = build_partition(fake_dataset(), "dirichlet", 7, 3, 0.5).save(tmp_path / "q.fsp")
    assert again.read_bytes() == path.read_bytes()
    back.save(tmp_path / "r.fsp")
    assert (tmp_path / "r.fsp").read_bytes() == path.read_bytes()
    assert path.read_bytes().startswith(MAGIC)
    meta = part.meta
    assert {"dataset", "num_train", "num_test", "num_classes", "scheme", "params", "seed", "fedsim_version",
            "client_test_source", "sha256"} <= set(meta)
    assert (meta["dataset"], meta["num_train"], meta["params"]) == ("fake", 400, {"alpha": 0.5, "min_size": 10})



@pytest.mark.parametrize("client", [-1, -2, 7, 100, np.int64(7), True, 1.0, "0"])
def test_client_id_out_of_range_is_a_clear_error(saved, client):
    part, _ = saved  # 7 clients
    for indices in (part.train_indices, part.test_indices):
        shown = re.escape(str(client) if isinstance(client, int | np.integer) else repr(client))
        with pytest.raises(FedsimError, match=rf"^client id {shown} is out of range: .* clients are 0 to 6$"):
            indices(client)
    assert len(part.train_indices(np.int64(6))) == part.train_sizes[6]  # numpy ints are ids too

def test_any_changed_byte_is_refused(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "bad.fsp"
    positions = list(range(0, 300)) + list(range(300, len(data), 37)) + [len(data) - 1]
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        bad.write_bytes(bytes(flipped))
        with pytest.raises(FedsimError) as info:
            load_partition(bad)
        assert "\n" not in str(info.value)


def test_truncated_and_garbage_files_are_refused(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "bad.fsp"
    for cut in (0, 5, len(MAGIC), len(MAGIC) + 4, len(MAGIC) + 40, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(FedsimError, match="not a fedsim partition file|damaged"):
            load_partition(bad)
    bad.write_bytes(data + b"\0")
    with pytest.raises(FedsimError, match="extra bytes"):
        load_partition(bad)
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(FedsimError, match="not a fedsim partition file"):
        load_partition(bad)
    bad.write_bytes(b"FEDSIM-PARTITION 9\n" + data[len(MAGIC):])
    with pytest.raises(FedsimError, match="cannot read"):
        load_partition(bad)
    with pytest.raises(FedsimError, match="does not exist"):
        load_partition(tmp_path / "missing.fsp")
    with pytest.raises(FedsimError, match="is a directory"):
        load_partition(tmp_path)



def test_version_1_files_are_read_and_written_back_as_version_1(saved, tmp_path):
    import hashlib

    part, path = saved
    assert path.read_bytes().startswith(b"FEDSIM-PARTITION 2\n") and MAGIC == b"FEDSIM-PARTITION 2\n"
    body = b"FEDSIM-PARTITION 1\n" + path.read_bytes()[len(MAGIC):-32]  # version 1: the same layout
    old = tmp_path / "v1.fsp"
    old.write_bytes(body + hashlib.sha256(body).digest())
    back = load_partition(old)
    assert back.format_version == 1 and back.meta == part.meta
    np.testing.assert_array_equal(back.train_index, part.train_index)
    assert back.save(tmp_path / "again.fsp").read_bytes() == old.read_bytes()

def test_check_matches(saved):
    part, path = saved
    load_partition(path).check_matches(fake_dataset())
    other = fake_dataset(n_train=1437, name="digits")
    with pytest.raises(FedsimError, match=r"p.fsp was made for fake \(400 train samples\), not digits \(1437\)"):
        load_partition(path).check_matches(other)
    with pytest.raises(FedsimError, match="with 100 test samples, not 200"):
        part.check_matches(fake_dataset(n_test=200))


def test_save_is_careful(saved, tmp_path):
    part, path = saved
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    with pytest.raises(FedsimError, match="not a fedsim partition file: not replacing it"):
        part.save(precious)
    assert precious.read_text() == "keep me"
    with pytest.raises(FedsimError, match="notes.txt is not a folder"):
        part.save(precious / "sub" / "p.fsp")
    with pytest.raises(FedsimError, match="is a directory"):
        part.save(tmp_path)
    part.save(tmp_path / "new" / "deeper" / "p.fsp")  # creates folders; replaces an old partition
    part.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "notes.txt", "p.fsp"]  # no temp files


def test_default_path():
    assert str(default_partition_path("mnist", "dirichlet", 100, 0, 0.5)) == \
        "results/partitions/mnist-dirichlet0.5-100c-seed0.fsp"
    assert default_partition_path("digits", "iid", 10, 3).name == "digits-iid-10c-seed3.fsp"
    assert default_partition_path("synthetic(0.5,0.5)", "natural", 30, 0, min_size=5,
                                     client_test_fraction=0.25).name == \
        "synthetic_0.5_0.5-natural-30c-seed0-ctf0.25.fsp"
    assert default_partition_path("x", "quantity_skew", 5, 0, 2.0, min_size=3).name == \
        "x-quantity_skew2-5c-seed0-min3.fsp"


def test_partition_for_config(saved):
    from fedsim.config import Config

    part, path = saved
    ds = fake_dataset()
    got = partition_for_config(Config(dataset="fake", partition=str(path)), ds)
    assert got.meta["sha256"] == part.meta["sha256"]
    built = partition_for_config(Config(dataset="fake", clients=7, dirichlet=0.5, seed=9, partition_seed=3), ds)
    assert built.meta["sha256"] == part.meta["sha256"]  # partition_seed, not seed
    assert partition_for_config(Config(dataset="fake"), ds).num_clients == 10
    with pytest.raises(FedsimError, match="not both"):
        partition_for_config(Config(dataset="fake", partition=str(path), shards=2), ds)
    with pytest.raises(FedsimError, match="has 7 clients, not --clients 5"):
        partition_for_config(Config(dataset="fake", partition=str(path), clients=5), ds)
    with pytest.raises(ValueError):
        got.train_indices(0)[0] = 1  # read-only views


def test_dataset_with_devices_defaults_to_natural():
    from fedsim.config import Config

    ds = fake_dataset(5, 4, 2, natural_train=[np.array([0, 3]), np.array([1, 2, 4])], natural_test=None)
    assert scheme_for(Config(dataset="fake"), ds) == ("natural", None)
    assert scheme_for(Config(dataset="fake", iid=True), ds) == ("iid", None)
    part = partition_for_config(Config(dataset="fake"), ds)
    assert part.meta["scheme"] == "natural" and part.num_clients == 2
    check_cover([part.test_indices(c) for c in range(2)], 4, 2)  # no natural_test: shared out by label
