"""One experiment: set up data, partition, model and algorithm, then the round loop (DESIGN.md)."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from fedsim.algorithms import algorithm_class
from fedsim.algorithms.base import ClientStore, ModelKeys
from fedsim.config import Config
from fedsim.engine import rng
from fedsim.engine.checkpoint import Checkpoint, Progress, load_checkpoint, save_checkpoint
from fedsim.engine.evaluate import personal_summary, predict
from fedsim.engine.local import ClientData, LocalSpec, SequentialExecutor
from fedsim.engine.optim import OptimizerSpec
from fedsim.engine.state import is_finite, model_state
from fedsim.errors import DivergenceError, FedsimError
from fedsim.metrics import RunWriter, read_rows


def validate(config: Config) -> None:
    """Cheap checks of the options, each a one-line error naming the option."""
    checks = [
        (config.rounds >= 1, f"--rounds must be >= 1 (got {config.rounds})"),
        (0 < config.fraction <= 1, f"--fraction must be in (0, 1] (got {config.fraction})"),
        (config.min_clients >= 1, f"--min-clients must be >= 1 (got {config.min_clients})"),
        (config.local_epochs >= 1, f"--local-epochs must be >= 1 (got {config.local_epochs})"),
        (config.local_steps is None or config.local_steps >= 1,
         f"--local-steps must be >= 1 (got {config.local_steps})"),
        (config.batch_size >= 1, f"--batch-size must be >= 1 (got {config.batch_size})"),
        (config.lr > 0, f"--lr must be > 0 (got {config.lr})"),
        (config.momentum >= 0, f"--momentum must be >= 0 (got {config.momentum})"),
        (config.weight_decay >= 0, f"--weight-decay must be >= 0 (got {config.weight_decay})"),
        (0 < config.lr_decay <= 1, f"--lr-decay must be in (0, 1] (got {config.lr_decay})"),
        (config.clip is None or config.clip > 0, f"--clip must be > 0 (got {config.clip})"),
        (config.eval_every >= 1, f"--eval-every must be >= 1 (got {config.eval_every})"),
        (config.checkpoint_every >= 0, f"--checkpoint-every must be >= 0 (got {config.checkpoint_every})"),
        (config.clients is None or config.clients >= 1, f"--clients must be >= 1 (got {config.clients})"),
        (config.bn in ("global", "local"), f"--bn must be global or local (got {config.bn!r})"),
        (config.threads is None or config.threads >= 1, f"--threads must be >= 1 (got {config.threads})"),
    ]
    for ok, message in checks:
        if not ok:
            raise FedsimError(message)
    config.scheme  # noqa: B018  (raises on two schemes at once)


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

    def cohort(self, round: int, eligible: np.ndarray, size: int) -> np.ndarray:
        return np.sort(rng.keyed_rng(rng.COHORT, self.config.seed, round).choice(eligible, size, replace=False))


def setup(config: Config) -> Experiment:
    from fedsim.data.datasets import load_dataset
    from fedsim.data.partition import partition_for_config
    from fedsim.device import resolve_device
    from fedsim.models import bn_state_keys, build_model, find_head, split_state_keys

    validate(config)
    device = resolve_device(config.device)
    options = {}
    if config.clients is not None:
        options["devices"] = config.clients
    dataset = load_dataset(config.dataset, config.data_dir, device="cpu", download=config.download, **options)
    partition = partition_for_config(config, dataset)
    dataset.to(device)
    eligible = int((partition.train_sizes > 0).sum())
    if config.min_clients > eligible:
        raise FedsimError(f"--min-clients {config.min_clients} is more than the {eligible} clients with data")

    algo_cls = algorithm_class(config.algo)
    if config.freeze_base and not algo_cls.personalized:
        raise FedsimError(f"--freeze-base is for personalized algorithms (fedper, fedrep, ditto, fedas), "
                          f"not {config.algo}")
    torch.manual_seed(config.seed)
    model = build_model(config.model, dataset.input_shape, dataset.num_classes, pretrained=config.pretrained)
    model.to(device)
    head = None
    if algo_cls.needs_head or config.head or config.freeze_base:
        head = split_state_keys(model, find_head(model, config.head))[1]
    keys = ModelKeys(params=[k for k, _ in model.named_parameters()],
                     buffers=[k for k, _ in model.named_buffers()], bn=list(bn_state_keys(model)), head=head)
    algorithm = algo_cls(config, keys, partition.num_clients)

    # the partition is already CSR: one index array plus offsets (copied: its arrays are read-only)
    data = ClientData(dataset.x_train, dataset.y_train, torch.tensor(partition.train_index, device=device),
                      partition.train_offsets)
    optimizer = OptimizerSpec(config.optimizer, config.lr, config.momentum, config.nesterov,
                              config.weight_decay, tuple(config.betas))
    spec = LocalSpec(optimizer, config.batch_size, config.local_epochs, config.local_steps, config.clip,
                     config.seed)
    algorithm.attach(model, data)
    executor = make_executor(config, model, data, spec, algorithm)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(config, executor))
    return Experiment(config, device, dataset, partition, model, keys, algorithm, executor)


EXECUTORS = ("auto", "sequential", "vmap")


def cpu_threads(config: Config, executor) -> int:
    """`--threads`, by default every core for the vmap executor and 1 for sequential. One client's step is too
    small to split (spinning threads that competed for the cores made a 2NN step 20x slower on a busy 2-core
    machine); a stacked cohort's is not (W-small: 0.15 s a round on 2 threads against 0.30 s on 1)."""
    if config.threads:
        return config.threads
    if executor.name != "vmap":
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_executor(config: Config, model, data, spec, algorithm):
    """`--executor`: vmap where the model and algorithm allow it (auto), else sequential with the reason."""
    if config.executor not in EXECUTORS:
        raise FedsimError(f"unknown executor {config.executor!r}: choose one of {', '.join(EXECUTORS)}")
    if config.executor == "sequential":
        return SequentialExecutor(model, data, spec)
    from fedsim.engine.vmap import VmapExecutor, vmap_unsupported_reason

    reason = vmap_unsupported_reason(model, algorithm)
    if reason is not None and config.executor == "vmap":
        raise FedsimError(f"--executor vmap cannot run this experiment: {reason}; use --executor sequential")
    if reason is None and config.executor == "auto" and data.x.device.type == "cpu":
        reason = _slower_under_vmap_on_cpu(model)
    if reason is None:
        return VmapExecutor(model, data, spec, chunk=config.cohort_chunk, compile=config.compile)
    executor = SequentialExecutor(model, data, spec)
    executor.reason = f"auto chose sequential: {reason}"
    return executor


def _slower_under_vmap_on_cpu(model) -> str | None:
    """Why vmap would be slower than sequential here on the CPU, if it would. Under vmap a convolution becomes
    one grouped convolution over the stacked clients, slower per client on the CPU kernels, while vmap wins most
    on Linear layers, whose weight gradients it never forms (outer.py). Measured (one thread, 10 clients, batch
    10): the McMahan CNN, whose Linear layers hold 97% of the weights, 0.84x the one-model loop under vmap and
    0.99x sequential; resnet18, all convolutions, 2.2x slower a round under vmap."""
    def weights(kind):
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, kind) and m.weight is not None)

    conv, linear = weights(torch.nn.modules.conv._ConvNd), weights(torch.nn.Linear)
    if conv <= linear:
        return None
    return f"convolutions hold most of the model's weights ({conv:,} against {linear:,} in Linear layers), and " \
           "vmap makes convolutions slower on the CPU; --executor vmap forces it"


def evaluate(exp: Experiment, server, store) -> dict:
    ds, part, algo = exp.dataset, exp.partition, exp.algorithm
    losses, correct = predict(exp.model, server.model, ds.x_test, ds.y_test)
    from_test = part.meta.get("client_test_source", "test") == "test"
    x, y = (ds.x_test, ds.y_test) if from_test else (ds.x_train, ds.y_train)
    per_client = []
    global_correct = correct.cpu().numpy() if from_test else None
    for c in range(part.num_clients):
        idx = part.test_indices(c)
        state = algo.personal_model(server, store, c)
        if state is None and global_correct is not None:
            per_client.append(global_correct[idx])
            continue
        t = torch.as_tensor(np.array(idx), device=exp.device)
        per_client.append(predict(exp.model, state if state is not None else server.model, x[t], y[t])[1]
                          .cpu().numpy())
    personal = personal_summary(per_client)
    return {
        "test_loss": float(losses.mean()) if len(losses) else float("nan"),
        "test_accuracy": float(correct.float().mean()) if len(correct) else float("nan"),
        **{f"personal_accuracy_{k}": v for k, v in personal.items()},
    }


def run_record(exp: Experiment) -> dict:
    import fedsim

    meta = exp.partition.meta
    return {
        "fedsim_version": fedsim.__version__,
        "torch_version": torch.__version__,
        "device": str(exp.device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": exp.config.to_dict(),
        "partition": {"hash": meta.get("sha256"), "scheme": meta.get("scheme"), "params": meta.get("params"),
                      "seed": meta.get("seed"), "num_clients": exp.partition.num_clients,
                      "file": exp.config.partition},
        "model": {"name": exp.config.model, "parameters": sum(p.numel() for p in exp.model.parameters())},
        "executor": {"name": exp.executor.name, "reason": getattr(exp.executor, "reason", ""),
                     "threads": torch.get_num_threads() if exp.device.type == "cpu" else None},
        "status": "running",
    }


def run(config: Config | None = None, *, resume=None, on_round=None, **overrides):
    """Run one experiment; returns the per-round metrics as a pandas DataFrame.

    `resume` continues a run from its checkpoint instead (after a stop, or to extend a finished run with a
    larger `rounds`): the run's .csv, .json or .ckpt path, its name in `out_dir`, or a `load_checkpoint`
    result. The config is then the checkpoint's; `overrides` may change only the options that leave the
    numbers alone (`RESUMABLE_OPTIONS`: rounds, eval_every, executor, device, ...). Rows after the
    checkpoint's round are dropped and computed again; the DataFrame holds all the run's rows. A run that
    has already completed its rounds is left as it is.

    `on_round(row, total_rounds)` is called after each evaluated round (the CLI's progress bar).
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
        if checkpoint.round >= config.rounds:
            return pd.DataFrame(read_rows(checkpoint.path.with_suffix(".csv"), checkpoint.round)[1])
    exp = setup(config)
    partition_sha256 = exp.partition.meta.get("sha256")
    if checkpoint is None:
        start = Progress(0, exp.algorithm.init_server(model_state(exp.model)), {})
    elif checkpoint.partition_sha256 != partition_sha256:
        raise FedsimError(f"checkpoint {checkpoint.path} was made on another partition (sha256 "
                          f"{str(checkpoint.partition_sha256)[:12]}..., now {partition_sha256[:12]}...): the "
                          "partition file or the dataset changed; resuming needs the same split")
    else:
        start = checkpoint.progress.to(exp.device)
    writer = RunWriter(config.out_dir, config.run_name(), config.overwrite, run_record(exp),
                       resume_round=None if checkpoint is None else checkpoint.round)
    done, saved = start, start.round  # the last completed round, and the last checkpointed one

    def save(progress: Progress) -> int:
        save_checkpoint(writer.ckpt_path, config, partition_sha256, progress)
        return progress.round

    every = config.checkpoint_every
    status, detail = "stopped", None
    compiled_before = compile_seconds()
    try:
        with _stop_on_sigterm():
            for done, row in _round_loop(exp, writer, start):
                if row is not None and on_round is not None:
                    on_round(row, config.rounds)
                if every and (done.round % every == 0 or done.round == config.rounds):
                    saved = save(done)
        status = "finished"
    except DivergenceError as e:  # the state is NaN: the last good checkpoint stays
        status, detail = "diverged", str(e)
        raise
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: checkpoint the last completed round, so the run can go on
        if every and done.round > saved:
            saved = save(done)
        detail = f"stopped after round {done.round}" + (f"; checkpoint at round {saved}" if saved else "")
        raise
    finally:
        summary = _summary(writer.rows)
        if config.compile:  # cold compilation is inside the first rounds' round_seconds: its share, apart
            summary["compile_seconds"] = round(compile_seconds() - compiled_before, 3)
        writer.close(status, detail, summary)
    return pd.DataFrame(writer.rows)


@contextmanager
def _stop_on_sigterm():
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


def _round_loop(exp: Experiment, writer: RunWriter, start: Progress):
    """Rounds start.round + 1 to --rounds; yields (the Progress after the round, its row or None) for each.

    A round is complete once aggregated and its row (when due) written; the Progress yielded then does not
    change afterwards (the store's `put` replaces entries), so it can be checkpointed at any later moment.
    """
    config, algo, part = exp.config, exp.algorithm, exp.partition
    server = start.server
    store = ClientStore(algo.personal_initial(model_state(exp.model)), start.clients)
    eligible = np.flatnonzero(part.train_sizes > 0)
    cohort_size = min(max(round(config.fraction * len(eligible)), config.min_clients, 1), len(eligible))
    started = time.perf_counter() - start.elapsed_seconds
    sent_up, sent_down = start.bytes_up, start.bytes_down  # since the last written row: --eval-every drops none
    for r in range(start.round + 1, config.rounds + 1):
        round_start = time.perf_counter()
        lr = config.lr * config.lr_decay ** (r - 1)
        jobs = [algo.client_job(server, store, int(c)) for c in exp.cohort(r, eligible, cohort_size)]
        results = exp.executor.train(algo.phases(), jobs, r, lr)
        for res in results:
            if not math.isfinite(res.loss) or not is_finite(res.states[-1], res.states[-1]):
                _diverged(r, res.client, res.last_finite_loss, lr)
        for res in results:
            algo.client_finish(server, store, res)
        server = algo.aggregate(server, results)
        if not is_finite(server.model, server.model):
            _diverged(r, None, float("nan"), lr)
        sent_up += len(results) * algo.bytes_up(server)
        sent_down += len(results) * algo.bytes_down(server)
        row = None
        if r % config.eval_every == 0 or r == config.rounds:
            row = {"round": r, "clients": len(results),
                   "train_loss": float(np.average([x.loss for x in results],
                                                  weights=[x.num_samples for x in results])),
                   **evaluate(exp, server, store),
                   "bytes_up": sent_up, "bytes_down": sent_down}
            sent_up = sent_down = 0
            now = time.perf_counter()
            row["round_seconds"] = now - round_start
            row["elapsed_seconds"] = now - started
            writer.append(row)
        yield Progress(r, server, store.states(), sent_up, sent_down, time.perf_counter() - started), row


def _diverged(round: int, client: int | None, last_finite: float, lr: float):
    where = f"client {client}" if client is not None else "the aggregated global model"
    last = f"last finite loss {last_finite:.4g}" if math.isfinite(last_finite) else "no finite loss seen"
    raise DivergenceError(
        f"training diverged in round {round} ({where}: loss or weights became NaN/inf; {last}); "
        f"lower --lr (now {lr:g}) or add --clip 1.0", round, client)


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
