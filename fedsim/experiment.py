"""One experiment: set up data, partition, model and algorithm, then the round loop, evaluation and the run's
files. It sits above the engine (executors, the round) and the algorithms, which never import each other; see
docs/architecture.md for the layers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from fedsim.algorithms import algorithm_class
from fedsim.checkpoint import Checkpoint, Progress, load_checkpoint, save_checkpoint
from fedsim.comm.install import Communication, install_communication
from fedsim.config import Config
from fedsim.core import rng
from fedsim.core.channel import Channel
from fedsim.core.hooks import ClientJob, ClientStore, ModelKeys
from fedsim.core.state import clone, model_state
from fedsim.engine import distributed
from fedsim.engine.asynchronous import COLUMNS as ASYNC_COLUMNS
from fedsim.engine.asynchronous import AsyncLoop, Staleness, Stream
from fedsim.engine.clock_options import clocked
from fedsim.engine.evaluate import eval_plan, evaluating_on, evaluation_threads, personal_summary, predict
from fedsim.engine.executors import make_executor
from fedsim.engine.local import ClientData, LocalSpec
from fedsim.engine.optim import OptimizerSpec
from fedsim.engine.round import run_round
from fedsim.engine.stragglers import Stragglers
from fedsim.engine.threads import cpu_count
from fedsim.errors import DivergenceError, FedsimError
from fedsim.identity import RunIdentity, identity_of
from fedsim.metrics import CSV_COLUMNS, RunWriter, read_rows
from fedsim.privacy import COLUMNS as PRIVACY_COLUMNS
from fedsim.privacy import install_privacy
from fedsim.robust.install import install_robustness
from fedsim.tracking import Trackers, check_tracking
from fedsim.version import __version__


@dataclass
class Experiment:
    """Everything a run needs, built once; the round loop only reads it."""

    config: Config
    device: torch.device
    dataset: object
    partition: object
    model: torch.nn.Module
    keys: ModelKeys
    algorithm: object
    executor: object
    channel: Channel  # what the clients send passes through it (attack, DP, codec, masking, reducer) to the server
    comm: Communication  # the codecs, secure aggregation and the bytes they count (fedsim.comm)
    malicious: np.ndarray | None = None  # the attacking clients (--attack), None: no attack
    privacy: object = None  # fedsim.privacy.Privacy (--dp-noise, --dp-epsilon), None: no DP
    ranks: object = None  # under torchrun: this process's share of the work (engine.distributed.Ranks)
    eval_threads: object = None  # evaluation's own CPU thread count (engine.evaluate.evaluation_threads), made once
    clock: object = None  # the simulated clock (engine.clock.Clock: profiles, availability); None: none given

    def cohort(self, round: int, eligible: np.ndarray, size: int) -> np.ndarray:
        return np.sort(rng.keyed_rng(rng.COHORT, self.config.seed, round).choice(eligible, size, replace=False))

    @functools.cached_property
    def identity(self) -> RunIdentity:
        """The run's identity (fedsim/identity.py): its options, data, partition, initial model and fedsim's
        numeric version; `identity.sha256` names the run. Read before training: the model holds its initial
        weights until then."""
        return identity_of(self.config, self.dataset, self.partition, self.model, self.clock)


def setup(config: Config, model=None, dataset=None, executor_factory=make_executor, ranks=None) -> Experiment:
    """Build the experiment. `model`: an nn.Module (its weights are the initial model) or a factory
    `f(input_shape, num_classes)`, instead of `config.model`; `dataset`: a fedsim Dataset instead of
    `config.dataset` (see `run`); `executor_factory`: engine.executors.make_executor's signature (a sweep
    passes one that trains its runs together); `ranks`: torchrun's processes, which share each cohort."""
    from fedsim.data.partition_build import partition_for_config
    from fedsim.device import resolve_device
    from fedsim.models import bn_state_keys, build_model, find_head, split_state_keys

    config.validate()
    if ranks is not None and algorithm_class(config.algo).asynchronous:
        raise FedsimError(f"{config.algo} runs in one process (its event loop orders every update): drop --nproc")
    device = resolve_device(config.device) if ranks is None else ranks.device(resolve_device(config.device))
    if dataset is None:
        dataset = load_config_dataset(config)
    partition = partition_for_config(config, dataset)
    dataset.to(device)
    eligible = int((partition.train_sizes > 0).sum())
    if config.min_clients > eligible:
        raise FedsimError(f"--min-clients {config.min_clients} is more than the {eligible} clients with data")
    if ranks is not None:
        ranks = ranks.for_run(partition.train_sizes, config.local_epochs, config.local_steps, config.batch_size,
                              cohort_size(config, eligible))

    algo_cls = algorithm_class(config.algo)
    torch.manual_seed(config.seed)
    if model is None and ":" not in config.model:
        model = build_model(config.model, dataset.input_shape, dataset.num_classes, pretrained=config.pretrained,
                            vocabulary=getattr(dataset, "vocabulary", None))
    else:  # the user's own: an nn.Module, a factory, or --model package.module:attr
        from fedsim.models import resolve_model

        model = resolve_model(config.model if model is None else model, dataset.input_shape, dataset.num_classes,
                              input_dtype=dataset.x_train.dtype, debug=config.debug)
    model.to(device)
    head = None
    if algo_cls.needs_head or config.head or config.freeze_base:
        head = split_state_keys(model, find_head(model, config.head))[1]
    algo_cls.extend_model(model, head)  # the algorithm's own modules (FedCP's policy network) join the model's state
    keys = ModelKeys(params=[k for k, _ in model.named_parameters()],
                     buffers=[k for k, _ in model.named_buffers()], bn=list(bn_state_keys(model)), head=head)
    algorithm = algo_cls(config, keys, eligible)
    # the updates one server step reduces: a round's cohort, or an asynchronous algorithm's buffer
    cohort = algorithm.buffer_size if algo_cls.asynchronous else cohort_size(config, eligible)
    if algo_cls.asynchronous and concurrency(config, eligible) > eligible:
        raise FedsimError(f"--concurrency {config.concurrency} is more than the {eligible} clients with data")
    robust = install_robustness(config, keys, partition, dataset.y_train, dataset.num_classes, cohort)
    optimizer = OptimizerSpec(config.optimizer, config.lr, config.momentum, config.nesterov,
                              config.weight_decay, tuple(config.betas))
    spec = LocalSpec(optimizer, config.batch_size, config.local_epochs, config.local_steps, config.clip,
                     config.seed)
    clock = make_clock(config, partition, spec, algorithm) if clocked(config) else None  # part of the identity
    identity = identity_of(config, dataset, partition, model, clock)
    privacy = install_privacy(config, eligible, cohort, noise_key(config, identity))
    comm = install_communication(config, algorithm, partition.train_sizes, cohort, run_key(identity),
                                 privacy is not None)
    stale = (Staleness(algorithm.staleness_weight),) if algo_cls.asynchronous else ()  # the server's: the last stage
    channel = Channel(robust.stages + (() if privacy is None else privacy.stages) + comm.stages + stale,
                      comm.reducer(robust.reducer if privacy is None else privacy.reducer), variance_keys(model))
    channel.check(config.algo, algorithm.sends)

    # the partition is already CSR: one index array plus offsets (copied: its arrays are read-only)
    data = ClientData(dataset.x_train, robust.labels, torch.tensor(partition.train_index, device=device),
                      partition.train_offsets)
    algorithm.attach(model, data)
    threads = config.threads  # under torchrun on the CPU: this machine's cores shared out among its ranks
    if threads is None and ranks is not None and device.type == "cpu":
        threads = ranks.cpu_threads(cpu_count())
    executor = executor_factory(config.executor, model, algorithm.training_data(data), spec, algorithm,
                                config.cohort_chunk, config.compile, threads)
    executor.threads.apply()
    return Experiment(config, device, dataset, partition, model, keys, algorithm, executor, channel, comm,
                      robust.malicious, privacy, ranks, clock=clock)


def make_clock(config: Config, partition, spec: LocalSpec, algorithm):
    """The run's simulated clock: its clients' profiles and availability (each file read and checked here,
    before anything is written), --deadline and --over-select."""
    from fedsim.engine.availability import Availability
    from fedsim.engine.clock import Clock
    from fedsim.engine.profiles import Profiles

    n = partition.num_clients
    return Clock(Profiles.from_options(config.speed, config.bandwidth, config.profiles, config.seed, n),
                 Availability(config.availability, n, config.seed), config.deadline, config.over_select, spec,
                 algorithm.phases(), partition.train_sizes)


def noise_key(config: Config, identity: RunIdentity) -> int:
    """What keys a run's DP noise: --dp-noise-seed, else the run's identity (`run_key`), so runs of a sweep never
    share noise and a rerun or a resume draws the same."""
    return config.dp_noise_seed if config.dp_noise_seed is not None else run_key(identity)


def run_key(identity: RunIdentity) -> int:
    """The run's identity (fedsim/identity.py: everything that decides its numbers) as a number: it keys the
    channel's draws (DP's noise, a stochastic codec's, secure aggregation's masks), which thus differ between the
    runs of a sweep and repeat in a rerun, a resume and every torchrun process."""
    return int(identity.sha256[:15], 16)


def variance_keys(model: torch.nn.Module) -> list[str]:
    """The state keys of running variances (BatchNorm's, InstanceNorm's): an average may never make them negative."""
    return [f"{name}.running_var" if name else "running_var" for name, module in model.named_modules()
            if isinstance(getattr(module, "running_var", None), torch.Tensor)]


def cohort_size(config: Config, eligible: int) -> int:
    """Clients per round: max(round(fraction x clients with data), min_clients), at most those clients."""
    return min(max(round(config.fraction * eligible), config.min_clients, 1), eligible)


def concurrency(config: Config, eligible: int) -> int:
    """An asynchronous run's clients training at once: --concurrency, else the cohort size."""
    return config.concurrency if config.concurrency is not None else cohort_size(config, eligible)


def load_config_dataset(config: Config):
    """The dataset `config` names, with its loading options, on the CPU (setup moves it to the device)."""
    from fedsim.data.datasets import load_dataset

    return load_dataset(config.dataset, config.data_dir, device="cpu", download=config.download,
                        **config.dataset_options())


# Personalization before evaluation draws its batches from generators keyed by (seed, this + round, client): a key
# no training round uses, so a client's fine-tuning does not repeat the batch order of its training that round.
PERSONALIZATION_KEY = 1 << 32


def personalized_models(exp: Experiment, server, store, round: int, lr: float, clients=None) -> dict[int, dict]:
    """Each client's model after the algorithm's `personalization_phases()` (FedBABU's fine-tuning), trained by the
    executor from the model the client uses (`personal_model`, else the global one) for this evaluation only:
    nothing trained here is kept. Empty where the algorithm has no such phases (FedAvg's default).
    `personalization_job(server, store, job)` may change each job (its start, context or local work: Per-FedAvg's
    one step, pFedMe's proximal steps). Clients without training data or test slice are left out, and those not
    in `clients` (None: every client; --eval-clients' sample)."""
    algo, part = exp.algorithm, exp.partition
    phases = algo.personalization_phases()
    if not phases:
        return {}
    jobs = []
    for c in range(part.num_clients) if clients is None else clients:
        if part.train_sizes[c] > 0 and len(part.test_indices(c)):
            own = algo.personal_model(server, store, c)
            job = ClientJob(c, clone(server.model if own is None else own), {})
            jobs.append(algo.personalization_job(server, store, job))
    return {r.client: r.states[-1] for r in exp.executor.train(phases, jobs, PERSONALIZATION_KEY + round, lr)}


def evaluation_plan(exp: Experiment):
    """What each evaluation of the run measures (--eval-sample, --eval-clients): drawn from the seed, so the same
    every round and after a resume (fedsim.engine.evaluate.eval_plan)."""
    part, config = exp.partition, exp.config
    return eval_plan(part.test_offsets, part.test_index, part.meta.get("client_test_source", "test") == "test",
                     len(exp.dataset.y_test), config.eval_sample, config.eval_clients, config.seed)


def evaluation_columns(config: Config) -> list[str]:
    """The CSV columns a run with --eval-sample or --eval-clients adds: what its rows were measured on."""
    return [] if config.eval_sample is None and config.eval_clients is None else ["test_samples", "personal_clients"]


def evaluate(exp: Experiment, server, store, round: int, lr: float) -> dict:
    """The global model on the test split, and each client's own model (after the algorithm's personalization
    phases, if any: see `personalized_models`) on its test slice; `lr` is the round's client learning rate.
    With --eval-sample/--eval-clients, on the plan's rows and clients only (and the row says how many). On its own
    CPU thread count (every core where that is faster, or --threads), not the training's."""
    if exp.eval_threads is None:
        exp.eval_threads = evaluation_threads(exp.config.threads)

    def on_its_threads():
        with evaluating_on(exp.eval_threads):
            return _evaluate(exp, server, store, round, lr, evaluation_plan(exp))

    # a sweep's stack computes where its training runs (fedsim/stacking.py: one thread, one OpenMP team)
    compute = getattr(exp.executor, "compute", None)
    return on_its_threads() if compute is None else compute(on_its_threads)


def _evaluate(exp: Experiment, server, store, round: int, lr: float, plan) -> dict:
    ds, part, algo = exp.dataset, exp.partition, exp.algorithm
    from_test = part.meta.get("client_test_source", "test") == "test"
    x, y = (ds.x_test, ds.y_test) if from_test else (ds.x_train, ds.y_train)
    tuned = personalized_models(exp, server, store, round, lr, list(plan.clients))
    states = {c: tuned[c] if c in tuned else algo.personal_model(server, store, c) for c in plan.clients}
    # the global model once over every test row a number needs: the global columns', and the slices of the clients
    # that use the global model (their personal accuracy is its accuracy there)
    shared = [c for c, state in states.items() if state is None] if from_test else []
    rows = None if plan.test_rows is None else np.union1d(
        plan.test_rows, np.concatenate([plan.clients[c] for c in shared] or [np.zeros(0, dtype=np.int64)]))
    if rows is None:
        losses, correct = predict(exp.model, server.model, ds.x_test, ds.y_test, threads=exp.eval_threads)
        test_losses, test_correct = losses, correct
    else:
        t = torch.as_tensor(rows, device=exp.device)
        losses, correct = predict(exp.model, server.model, ds.x_test[t], ds.y_test[t], threads=exp.eval_threads)
        at = torch.as_tensor(np.searchsorted(rows, plan.test_rows), device=losses.device)
        test_losses, test_correct = losses[at], correct[at]
    global_correct = correct.cpu().numpy()
    per_client = []
    for c, idx in plan.clients.items():
        if states[c] is None and from_test:
            per_client.append(global_correct[idx if rows is None else np.searchsorted(rows, idx)])
            continue
        t = torch.as_tensor(np.array(idx), device=exp.device)
        state = states[c] if states[c] is not None else server.model
        per_client.append(predict(exp.model, state, x[t], y[t], threads=exp.eval_threads)[1].cpu().numpy())
    personal = personal_summary(per_client)
    test_loss = float(test_losses.mean()) if len(test_losses) else float("nan")
    if len(test_losses) and not math.isfinite(test_loss):  # NaN metrics are a diverged run, never a finished one
        raise DivergenceError(f"evaluation diverged in round {round}: test_loss is {test_loss} (the global model's "
                              "outputs on the test split are not finite); lower --lr or add --clip 1.0", round, None)
    row = {
        "test_loss": test_loss,
        "test_accuracy": float(test_correct.float().mean()) if len(test_correct) else float("nan"),
        **{f"personal_accuracy_{k}": v for k, v in personal.items()},
    }
    if evaluation_columns(exp.config):
        row.update(test_samples=len(test_correct), personal_clients=sum(len(c) > 0 for c in per_client))
    return row


def dataset_source(exp: Experiment) -> dict:
    """What the record says of where the data came from, besides its sha256: a Hugging Face dataset's name, revision
    and fingerprints; a text dataset's vocabulary (its hash, and the file the run writes it to) and sequence length."""
    info, vocabulary = exp.dataset.info, getattr(exp.dataset, "vocabulary", None)
    source = {k: info[k] for k in ("hf", "seq_len") if k in info}
    if vocabulary is not None:
        source["vocabulary"] = {**vocabulary.record(), "file": vocabulary_path(exp.config).name}
    return source


def vocabulary_path(config: Config):
    from pathlib import Path

    return Path(config.out_dir) / f"{config.run_name()}.vocab.txt"


def run_record(exp: Experiment) -> dict:
    meta = exp.partition.meta
    return {
        "fedsim_version": __version__,
        "torch_version": torch.__version__,
        "device": str(exp.device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": exp.config.to_dict(),
        "identity": exp.identity.to_dict(),
        "dataset": {"name": exp.dataset.name, "sha256": exp.dataset.fingerprint(),
                    "train": len(exp.dataset.y_train), "test": len(exp.dataset.y_test),
                    "classes": exp.dataset.num_classes, **dataset_source(exp)},
        "partition": {"hash": meta.get("sha256"), "scheme": meta.get("scheme"), "params": meta.get("params"),
                      "seed": meta.get("seed"), "num_clients": exp.partition.num_clients,
                      "file": exp.config.partition},
        "model": {"name": exp.config.model, "class": type(exp.model).__qualname__,
                  "parameters": sum(p.numel() for p in exp.model.parameters()),
                  "initial_sha256": exp.identity.facts["initial_sha256"]},
        "executor": {"name": exp.executor.name, "reason": getattr(exp.executor, "reason", ""),
                     "threads": exp.executor.threads.describe(),
                     "evaluation_threads": evaluation_threads(exp.config.threads).describe()},
        **({} if exp.malicious is None else {"malicious_clients": exp.malicious.tolist()}),
        **({} if exp.privacy is None else {"privacy": exp.privacy.record}),
        **({"evaluation": evaluation_plan(exp).record()} if evaluation_columns(exp.config) else {}),
        **({} if exp.clock is None else {"clock": exp.clock.record()}),
        **({"communication": exp.comm.record} if exp.comm.record else {}),
        "processes": 1 if exp.ranks is None else exp.ranks.world_size,  # torchrun's ranks sharing each cohort
        "status": "running",
    }


def run(config: Config | None = None, *, model=None, dataset=None, resume=None, on_round=None,
        executor_factory=make_executor, share_cohort=True, **overrides):
    """Run one experiment; returns the per-round metrics as a pandas DataFrame.

    `model`: your own `nn.Module` (its weights are the run's initial model; fedsim trains a copy) or a factory
    `f(input_shape, num_classes) -> nn.Module`, in place of `config.model`. `dataset`: a `fedsim.Dataset`
    (`Dataset.from_tensors(...)`, `Dataset.from_torch(...)`) in place of `config.dataset`. The run record stores
    what identifies both (class, parameter count, a hash of the initial weights and of the data).

    `resume` continues a run from its checkpoint instead (after a stop, or to extend a finished run with a
    larger `rounds`): the run's .csv, .json or .ckpt path, its name in `out_dir`, or a `load_checkpoint`
    result. The config is then the checkpoint's; `overrides` may change only the options that leave the
    numbers alone (`RESUMABLE_OPTIONS`: rounds, eval_every, executor, device, ...). Rows after the
    checkpoint's round are dropped and computed again; the DataFrame holds all the run's rows. A run that
    has already completed its rounds is left as it is.

    `on_round(row, total_rounds)` is called after each evaluated round (the CLI's progress bar).
    `executor_factory`: see `setup` (fedsim.sweep trains a stack of runs together through it).
    `share_cohort`: under torchrun, the processes share each round's cohort (False: this process trains the
    whole run, as a sweep's rank does with its share of the runs).
    Raises FedsimError on bad input and DivergenceError (rows written so far stay) on NaN/inf.
    """
    import pandas as pd

    checkpoint = None
    if resume is None:
        config = dataclasses.replace(config or Config(), **overrides)
    elif config is not None:
        raise TypeError("run(resume=...) takes the config from the checkpoint; pass changes as keyword arguments")
    else:
        checkpoint = resume
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = load_checkpoint(resume, overrides.get("out_dir", Config.out_dir))
        config = checkpoint.resumed_config(overrides)
        config.validate()
        if checkpoint.round >= config.rounds:
            checkpoint.check_files()
            return pd.DataFrame(read_rows(checkpoint.path.with_suffix(".csv"), checkpoint.round)[1])
    if dataset is not None:
        config = dataclasses.replace(config, dataset=dataset.name)
    from fedsim.device import resolve_device

    # None in one process, and for a sweep's run under torchrun (each rank trains whole runs of the sweep)
    ranks = distributed.join(resolve_device(config.device).type) if share_cohort else None

    def build() -> Experiment:
        if checkpoint is not None and (ranks is None or ranks.lead):  # rank 0 holds the run's files
            checkpoint.check_files()
        exp = setup(config, model=model, dataset=dataset, executor_factory=executor_factory, ranks=ranks)
        if checkpoint is not None:
            checkpoint.check_identity(exp.identity)
        return exp

    # under torchrun, an error on any rank is one line on all, and the ranks must agree on what they run
    exp = build() if ranks is None else ranks.agree(build, lambda exp: _what_ranks_share(exp, checkpoint))
    if checkpoint is None:
        start = Progress(0, exp.algorithm.init_server(model_state(exp.model)), {})
    else:
        start = checkpoint.progress.to(exp.device)
    if exp.privacy is not None:  # the clip norm and noise multiplier the run's rounds so far used
        exp.privacy.restore(start.server, config.rounds)
    exp.comm.restore(start.server)  # error feedback's residuals
    check_tracking(config)  # a missing tracking extra or an unusable MLflow URI: one line, before anything is written
    stragglers = Stragglers(config.stragglers, config.straggler_policy or exp.algorithm.straggler_policy,
                            config.client_dropout, config.local_epochs, config.local_steps, config.seed,
                            exp.partition.train_sizes, config.batch_size)
    if exp.ranks is not None and not exp.ranks.lead:  # ranks 1, 2, ...: their shares; rank 0 evaluates and writes
        for _ in _round_loop(exp, None, start, stragglers):
            pass
        return pd.DataFrame()
    asynchronous = exp.algorithm.asynchronous
    clock_columns = ASYNC_COLUMNS if asynchronous else [] if exp.clock is None else SYNC_CLOCK_COLUMNS
    writer = RunWriter(config.out_dir, config.run_name(), config.overwrite, run_record(exp),
                       resume_round=None if checkpoint is None else checkpoint.round,
                       columns=CSV_COLUMNS + evaluation_columns(config)
                       + ([] if exp.malicious is None else ["malicious"]) + stragglers.columns
                       + ([] if exp.privacy is None else PRIVACY_COLUMNS) + list(exp.channel.columns) + clock_columns)
    done, saved = start, start.round  # the last completed round, and the last checkpointed one
    trackers = Trackers(config, writer.dir, config.run_name(), None if checkpoint is None else checkpoint.round)

    def save(progress: Progress) -> int:
        save_checkpoint(writer.ckpt_path, config, exp.identity, writer.csv_state(), progress)
        return progress.round

    every = config.checkpoint_every
    status, detail = "stopped", None
    compiled_before = compile_seconds() if config.compile else 0.0
    try:
        if getattr(exp.dataset, "vocabulary", None) is not None:  # the token ids the run's numbers stand for
            exp.dataset.vocabulary.write(vocabulary_path(config))
        with stop_on_sigterm():
            loop = _async_loop(exp, writer, start) if asynchronous else _round_loop(exp, writer, start, stragglers)
            for done, row in _user_errors_named(loop, config.debug):
                if row is not None:
                    trackers.on_row(row)
                if row is not None and on_round is not None:
                    on_round(row, config.rounds)
                if every and (done.round % every == 0 or done.round == config.rounds):
                    saved = save(done)
        status = "finished"
    except DivergenceError as e:  # the state is NaN: the last good checkpoint stays
        status, detail = "diverged", str(e)
        raise
    except (KeyboardInterrupt, FedsimError) as e:  # Ctrl-C, SIGTERM, a full disk: keep the last completed round
        if every and done.round > saved:
            try:
                saved = save(done)
            except FedsimError:  # the disk that stopped the rows may refuse the checkpoint too
                pass
        detail = (f"stopped after round {done.round}" + (f"; checkpoint at round {saved}" if saved else "")
                  + (f": {e}" if isinstance(e, FedsimError) else ""))
        raise
    finally:
        summary = {**_summary(writer.rows), **exp.comm.summary()}
        if exp.executor.threads.adaptive:  # (local step, thread count) each time a probe chose anew
            summary["threads_chosen"] = [list(d) for d in exp.executor.threads.decisions]
        if config.compile:  # cold compilation is inside the first rounds' round_seconds: its share, apart
            summary["compile_seconds"] = round(compile_seconds() - compiled_before, 3)
        writer.close(status, detail, summary)
        trackers.on_end(status, [writer.csv_path, writer.json_path])
    return pd.DataFrame(writer.rows)


@contextmanager
def stop_on_sigterm():
    """A kill (SIGTERM) stops the run as Ctrl-C does: rows stay whole, the record says "stopped"."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


SYNC_CLOCK_COLUMNS = ["sim_seconds", "late"]  # a synchronous run on the simulated clock


def _round_loop(exp: Experiment, writer: RunWriter | None, start: Progress, stragglers: Stragglers):
    """Rounds start.round + 1 to --rounds; yields (the Progress after the round, its row or None) for each.
    Without a `writer` (torchrun's ranks other than 0) nothing is evaluated or written.

    A round is complete once aggregated and its row (when due) written; the Progress yielded then does not
    change afterwards (the store's `put` replaces entries), so it can be checkpointed at any later moment.
    On the simulated clock (`exp.clock`) a round samples among the clients available at its start, and its
    deadline and over-selection decide whose updates count (fedsim.engine.clock).
    """
    config, algo, part, clock = exp.config, exp.algorithm, exp.partition, exp.clock
    server = start.server
    store = ClientStore(algo.personal_initial(model_state(exp.model)), start.clients)
    eligible = np.flatnonzero(part.train_sizes > 0)
    size = cohort_size(config, len(eligible))
    started = time.perf_counter() - start.elapsed_seconds
    sent_up, sent_down = start.bytes_up, start.bytes_down  # since the last written row: --eval-every drops none
    now = start.sim_seconds
    for r in range(start.round + 1, config.rounds + 1):
        round_start = time.perf_counter()
        lr = config.lr * config.lr_decay ** (r - 1)
        # the cohort receives the server's state from before the round (--compress-down: as decoded)
        received, down = exp.comm.broadcast_of(algo, server, r)
        timing = deliver = None
        if clock is None:
            plan = stragglers.plan(exp.cohort(r, eligible, size), r)  # who trains, and the stragglers' work
            train, work = plan.train, plan.work
        else:
            now, available = clock.availability.wait(eligible, now, (r,))
            plan = stragglers.plan(exp.cohort(r, available, clock.sampled(size, len(available))), r)
            timing = clock.round(now, plan.train, plan.work, down, None if clock.over_select is None else size,
                                 stragglers.policy == "partial")
            train, work = timing.train, timing.work

            def deliver(sent, timing=timing, pre=received):  # each upload as long as its bytes on the wire
                return timing.deliver(sent, lambda m: clock.upload(m.client, exp.comm.wire_size(algo, pre, m)))
        exp.comm.sampled(r, plan.cohort)  # secure aggregation's cohort: who shared keys, the late and dropped too
        result = run_round(algo, exp.executor, received, store, train, r, lr, exp.channel, work, exp.ranks,
                           deliver)
        server = result.server
        if result.aggregate is not None and result.aggregate.failed and writer is not None and not config.quiet:
            print(result.aggregate.failed, file=sys.stderr)
        if exp.privacy is not None:
            server = exp.privacy.after_round(server)
        server = exp.comm.after_round(server)
        sent_up += exp.comm.bytes_up(algo, received, result)  # as the channel encoded them, its protocol's too
        sent_down += len(plan.cohort) * down + (0 if result.aggregate is None else result.aggregate.bytes_down)
        if timing is not None:
            now = timing.end
        row = None
        if writer is not None and (r % config.eval_every == 0 or r == config.rounds):
            row = _row(exp, server, store, r, lr, result.sent, result.aggregate, mean_loss(result.sent), sent_up,
                       sent_down)
            sent_up = sent_down = 0
            if stragglers.active:
                row.update(stragglers=plan.stragglers, dropped=plan.dropped)
            if timing is not None:
                row.update(sim_seconds=now, late=timing.uncounted)
            writer.append(_timed(row, round_start, started))
        yield Progress(r, server, store.states(), sent_up, sent_down, time.perf_counter() - started, now), row


def _async_loop(exp: Experiment, writer: RunWriter, start: Progress):
    """The asynchronous algorithms' loop (fedsim.engine.asynchronous): server updates start.round + 1 to --rounds,
    a row every --eval-every of them; yields as `_round_loop` does. The Progress carries the stream: the clients in
    flight, the buffer, the simulated time."""
    config, algo = exp.config, exp.algorithm
    server = start.server
    store = ClientStore(algo.personal_initial(model_state(exp.model)), start.clients)
    eligible = np.flatnonzero(exp.partition.train_sizes > 0)
    loop = AsyncLoop(algo, exp.executor, exp.channel, exp.clock, eligible, concurrency(config, len(eligible)),
                     config.seed, lambda version: config.lr * config.lr_decay ** version, algo.bytes_down,
                     lambda server, message: exp.comm.wire_size(algo, server, message))
    stream = Stream.from_state(start.stream)
    started = time.perf_counter() - start.elapsed_seconds
    sent_up, sent_down = start.bytes_up, start.bytes_down
    for r in range(start.round + 1, config.rounds + 1):
        round_start = time.perf_counter()
        update = loop.next_update(server, store, stream)
        server = update.server
        if exp.privacy is not None:
            server = exp.privacy.after_round(server)
        server = exp.comm.after_round(server)
        sent_up += update.bytes_up
        sent_down += update.bytes_down
        row = None
        if writer is not None and (r % config.eval_every == 0 or r == config.rounds):
            received = stream.row_columns()  # every update received since the last row
            row = _row(exp, server, store, r, config.lr * config.lr_decay ** (r - 1), update.applied,
                       update.aggregate, received.pop("train_loss"), sent_up, sent_down)
            row.update(received)
            sent_up = sent_down = 0
            writer.append(_timed(row, round_start, started))
        yield Progress(r, server, store.states(), sent_up, sent_down, time.perf_counter() - started, stream.time,
                       stream.state()), row


def mean_loss(sent) -> float:
    """The senders' mean training loss, weighted by their sample counts (NaN with none)."""
    return float(np.average([x.loss for x in sent], weights=[x.num_samples for x in sent])) if sent else float("nan")


def _row(exp: Experiment, server, store, r: int, lr: float, sent, aggregate, train_loss: float, sent_up: int,
         sent_down: int) -> dict:
    """A CSV row's columns common to both loops: what the server update applied (`sent`, `aggregate`), the
    evaluation, the bytes since the last row, the attack's, DP's and the reducer's columns."""
    row = {"round": r, "clients": len(sent), "train_loss": train_loss, **evaluate(exp, server, store, r, lr),
           "bytes_up": sent_up, "bytes_down": sent_down}
    if exp.malicious is not None:
        row["malicious"] = int(np.isin([x.client for x in sent], exp.malicious).sum())
    if exp.privacy is not None:
        row.update(exp.privacy.row(r))
    row.update({c: None if aggregate is None else aggregate.info.get(c) for c in exp.channel.columns})
    return row


def _timed(row: dict, round_start: float, started: float) -> dict:
    now = time.perf_counter()
    row["round_seconds"] = now - round_start
    row["elapsed_seconds"] = now - started
    return row


def _user_errors_named(rounds, debug: bool):
    """`rounds` (the round loop's), an exception raised in the user's model code (a forward that fails on its 40th
    call) becoming one FedsimError line naming the user's file and line; the caller's own code (`on_round`) is
    outside it."""
    from fedsim.models import user_code_errors

    with user_code_errors("training the model", debug):
        yield from rounds


def _what_ranks_share(exp: Experiment, checkpoint: Checkpoint | None) -> dict:
    """What every torchrun rank of a run must have alike (`Ranks.agree`): where the data are read from may differ."""
    config = {k: v for k, v in exp.config.to_dict().items() if k not in ("data_dir", "download")}
    return {"config": config, "dataset": exp.dataset.fingerprint(), "partition": exp.partition.meta.get("sha256"),
            "initial model": exp.identity.facts["initial_sha256"], "fedsim version": __version__,
            "torch version": torch.__version__, "checkpoint": None if checkpoint is None else checkpoint.round}


def compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process, from its own timers (0 where they are absent)."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:
        return 0.0
    return float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {"rounds_completed": 0}
    acc = [r["test_accuracy"] for r in rows]
    best = int(np.nanargmax(acc)) if not all(math.isnan(a) for a in acc) else len(rows) - 1
    last = rows[-1]
    return {
        "rounds_completed": last["round"],
        "final_test_accuracy": last["test_accuracy"],
        "best_test_accuracy": acc[best],
        "best_round": rows[best]["round"],
        "final_personal_accuracy_mean": last["personal_accuracy_mean"],
        "elapsed_seconds": last["elapsed_seconds"],
    }
