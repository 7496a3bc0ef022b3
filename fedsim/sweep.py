"""`fedsim sweep`: a study's grid of runs (algorithms x settings x seeds) in one process, trained together.

The grid is the product of the values given for each option, except that an algorithm's own option (FedProx's
`mu`, declared in its Params) multiplies only the runs of the algorithms that read it. Every run writes exactly
the files `fedsim train` would (`<name>.csv`, `.json`, `.ckpt`), with the options that vary in its name, and the
sweep writes `<sweep>.sweep.json` (the grid, each run's name, options and status).

Runs that differ only in what does not change a local step's shape (the seeds, the partition, the clients per
round, the rounds, the learning rate, momentum and weight decay, FedProx's mu) form a *stack*: they train through
one executor, each round in one call for all their cohorts (one vmapped step over all their clients) or one call
per run, whichever timing shows is faster (fedsim/stacking.py; `stack="auto"`, or "always" together, or "never":
each run whole, one after another). Each run otherwise goes through `fedsim.run` as it would alone, in a thread of
its own that runs only while the others wait, so each run's CSV is the CSV of the same run started alone. Runs
that cannot stack run one after another; the data are loaded once and torch is imported once.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import signal
import threading
import time
import typing
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedsim.algorithms import ALGORITHMS, algorithm_class, algorithm_options, options_of, per_client_options
from fedsim.config import FIELDS, Config, field_types, options_from, read_toml
from fedsim.errors import DivergenceError, FedsimError

# Options that say where and how a sweep runs, not what a run is: one value for the whole sweep.
FIXED_ONLY = frozenset({"out_dir", "name", "overwrite", "quiet", "device", "data_dir", "download", "executor",
                        "threads", "compile", "cohort_chunk"})
# Options that leave a local step as it is: runs differing only in these train together (their seeds key
# their own draws, their partitions are index sets into the one copy of the data).
STACKABLE = frozenset({"seed", "partition_seed", "name", "partition", "clients", "iid", "dirichlet", "shards",
                       "labels", "quantity_skew", "natural", "min_size", "client_test_fraction", "fraction",
                       "min_clients", "rounds", "eval_every", "eval_sample", "eval_clients", "checkpoint_every",
                       "quiet", "overwrite",
                       # the simulated clock: who trains a round, and a late client's steps (a job's own work)
                       "speed", "bandwidth", "profiles", "availability", "deadline", "over_select",
                       # the channel's codecs and secure aggregation act on what a client sends, after its steps
                       "compress", "bucket_size", "error_feedback", "compress_down", "secure_agg", "secagg_bits",
                       "secagg_threshold", "secagg_neighbors", "secagg_range"})
# The client optimizer's numbers: the executor takes them per job (a (K,) tensor each in the stacked step).
OPTIMIZER_NUMBERS = frozenset({"lr", "lr_decay", "momentum", "weight_decay"})
DEFAULT_MAX_RUNS = 1000


@dataclass
class SweepRun:
    name: str
    config: Config
    varying: dict  # the options that vary across the sweep and this run reads, with its values
    status: str = "pending"  # pending | finished | running | stopped | diverged | failed
    detail: str = ""
    round: int = 0  # the last completed round


# --- the grid ----------------------------------------------------------------------------------------------


def _split(text: str) -> list[str]:
    """Comma-separated values; a comma inside parentheses belongs to its value (synthetic(0.5,0.5))."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def _base_type(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def parse_values(name: str, text: str, max_runs: int | None = None) -> list:
    """The values of option `name` given as text: comma-separated, integers also as ranges A-B (both ends in).
    More values than `max_runs` (the grid would have more runs) is refused before a range is expanded."""
    kind = _base_type(field_types()[name])
    values = []
    for part in _split(text):
        if not part:
            raise FedsimError(f"--{name.replace('_', '-')}: an empty value in {text!r}")
        try:
            if kind is int and re.fullmatch(r"\d+-\d+", part):
                low, high = (int(v) for v in part.split("-"))
                if low > high:
                    raise FedsimError(f"--{name.replace('_', '-')}: the range {part} is empty (write LOW-HIGH)")
                if max_runs is not None and len(values) + high - low + 1 > max_runs:
                    raise FedsimError(f"--{name.replace('_', '-')}: {text} gives {len(values) + high - low + 1:,} "
                                      f"values or more: the sweep would have at least as many runs, more than "
                                      f"--max-runs {max_runs:,}: narrow the grid or raise --max-runs")
                values.extend(range(low, high + 1))
            elif kind is int:
                values.append(int(part))
            elif kind is float:
                values.append(float(part))
            elif kind is bool:
                values.append({"true": True, "false": False}[part.lower()])
            else:
                values.append(part)
        except (ValueError, KeyError):
            raise FedsimError(f"--{name.replace('_', '-')}: {part!r} is not {_describe(kind)}") from None
    return values


def _describe(kind) -> str:
    return {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "a value")


def format_value(value) -> str:
    """A value as it appears in a run's name: a path (a dataset folder, a partition file) by its last part."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value).replace("\\", "/")
    return (Path(text).name or str(value)) if "/" in text else str(value)


def expand(fixed: dict, grid: dict[str, list], sweep_name: str, max_runs: int = DEFAULT_MAX_RUNS) -> list[SweepRun]:
    """The runs of the grid: `fixed` options (Config fields) for all, `grid` (field -> values) multiplied, an
    algorithm's own options only for the algorithms that read them. Each run's Config is validated here; a bad
    value names the run."""
    for key, values in grid.items():
        if key not in FIELDS:
            raise FedsimError(f"unknown option {key!r} in the sweep (see `fedsim sweep --help`)")
        if key in FIXED_ONLY and len(values) > 1:
            raise FedsimError(f"--{key.replace('_', '-')} cannot vary in a sweep: give it one value")
        if not values:
            raise FedsimError(f"--{key.replace('_', '-')}: an empty list of values")
        if len(values) > max_runs:  # counted before the product, or a long list's checks, are formed
            raise FedsimError(f"--{key.replace('_', '-')} has {len(values):,} values: the sweep would have at least as "
                              f"many runs, more than --max-runs {max_runs:,}: narrow the grid or raise --max-runs")
        seen = set()
        for value in values:
            key_of = json.dumps(value, default=str)
            if key_of in seen:
                raise FedsimError(f"--{key.replace('_', '-')}: {format_value(value)} is given twice")
            seen.add(key_of)
    single = {k: v[0] for k, v in grid.items() if len(v) == 1}
    varying = {k: v for k, v in grid.items() if len(v) > 1}
    base = {**fixed, **single}
    algos = varying.pop("algo", [base.get("algo", Config.algo)])
    for algo in algos:
        if algo not in ALGORITHMS:
            raise FedsimError(f"unknown algorithm {algo!r}: choose one of {', '.join(ALGORITHMS)}")
    own = set(algorithm_options())
    for key in varying.keys() & own:
        if not any(key in options_of(a) for a in algos):
            raise FedsimError(f"--{key.replace('_', '-')} varies, but no algorithm of the sweep reads it "
                              f"({', '.join(algos)})")
    count = sum(_product_size({k: v for k, v in varying.items() if k not in own or k in options_of(a)})
                for a in algos)
    if count > max_runs:
        raise FedsimError(f"the sweep has {count:,} runs, more than --max-runs {max_runs:,}: narrow the grid or "
                          "raise --max-runs")
    runs = []
    for algo in algos:
        axes = {k: v for k, v in varying.items() if k not in own or k in options_of(algo)}
        for combo in itertools.product(*axes.values()):
            values = dict(zip(axes, combo, strict=True))
            shown = ({"algo": algo} if len(algos) > 1 else {}) | values
            name = "_".join([sweep_name, *(f"{k}={format_value(v)}" for k, v in shown.items())])
            config = Config(**{**base, **values, "algo": algo, "name": name})
            try:
                config.validate()
            except FedsimError as e:
                raise FedsimError(f"run {name}: {e}") from None
            runs.append(SweepRun(name, config, shown))
    names: dict[str, SweepRun] = {}
    for run in runs:  # names are the runs' files: two runs must never share one
        if run.name in names:
            raise FedsimError(f"two runs would both be named {run.name} ({names[run.name].varying} and "
                              f"{run.varying}): give values that differ in their first 6 digits or last path part")
        names[run.name] = run
    _check_named_things(runs)
    return runs


def _check_named_things(runs: list[SweepRun]) -> None:
    """The models and partition files the runs name exist: a run must not fail at its start, mid-sweep."""
    from fedsim.data.partition import load_partition
    from fedsim.models import check_model_name

    checked = set()
    for run in runs:
        for key, check in (("model", check_model_name), ("partition", load_partition)):
            value = getattr(run.config, key)
            if value is None or (key, value) in checked:
                continue
            checked.add((key, value))
            try:
                check(value)
            except FedsimError as e:
                raise FedsimError(f"run {run.name}: {e}") from None


def _product_size(axes: dict) -> int:
    size = 1
    for values in axes.values():
        size *= len(values)
    return size


def grid_from_toml(path) -> tuple[dict, dict]:
    """A TOML file's fixed options (top level) and its `[sweep]` table of value lists, as Config fields."""
    raw = read_toml(path)
    sweep = raw.pop("sweep", {})
    fixed = options_from(raw, f"config file {path}")
    if not isinstance(sweep, dict):
        raise FedsimError(f"config file {path}: [sweep] must be a table of option = [values]")
    grid: dict[str, list] = {}
    for key, values in sweep.items():
        name = key.replace("-", "_")
        listed = values if isinstance(values, list) else [values]
        if name == "betas" and listed and not isinstance(listed[0], list):
            listed = [listed]  # one pair, not a list of pairs
        grid[name] = [options_from({key: v}, f"config file {path} [sweep]")[name] for v in listed]
    return fixed, grid


# --- runs trained together ---------------------------------------------------------------------------------


def stack_key(config: Config) -> str:
    """Runs with equal keys can train together: they differ only in options that leave a local step alone, in
    the client optimizer's numbers (each client's job carries its run's), or in options that their algorithm hands
    each client as a tensor (FedProx's mu: `per_client` in its declaration); not in what the algorithm's phases
    read. Momentum and weight decay stack only with values that are 0 where theirs is (0 takes plain SGD's path:
    beside clients with momentum a client would take theirs, with the same numbers only to rounding)."""
    apart = (STACKABLE | OPTIMIZER_NUMBERS | per_client_options(config.algo)) - algorithm_class(config.algo).phases_read
    if config.attack == "label-flip" or algorithm_class(config.algo).asynchronous:
        # label-flip's poisoned labels depend on the run's seed and partition; an asynchronous run's executor calls
        # follow its own events: neither is shared
        apart = {"quiet", "overwrite"}
    key = {k: v for k, v in config.to_dict().items() if k not in apart}
    key["zero"] = [config.momentum == 0, config.weight_decay == 0]
    return json.dumps(key, sort_keys=True, default=str)


# --- running the sweep -------------------------------------------------------------------------------------


def run_sweep(runs: list[SweepRun], sweep_name: str, out_dir: str, overwrite: bool = False,
              on_change: Callable[[list[SweepRun]], None] | None = None, stack: str = "auto") -> list[SweepRun]:
    """Run every run of `runs` not already finished (resuming those with a checkpoint); returns them with their
    status. `on_change(runs)` is called whenever a run's status or round changes (the progress display).
    `stack`: how the runs of a stack train (fedsim/stacking.py): `auto` each round together or one after another,
    whichever timing shows is faster; `always` together; `never` one whole run after another. Ctrl-C stops the
    whole sweep cleanly: each running run checkpoints and is marked stopped. Under torchrun each process trains
    its share of the stacks (whole runs, balanced by their rounds left); rank 0 writes the sweep file, which gets
    every rank's statuses at the end."""
    from fedsim.device import resolve_device
    from fedsim.engine import distributed
    from fedsim.metrics import RunLock
    from fedsim.stacking import MODES

    if stack not in MODES:
        raise FedsimError(f"--stack must be one of {', '.join(MODES)} (got {stack!r})")
    out = Path(out_dir)
    sweep_file = out / f"{sweep_name}.sweep.json"
    ranks = distributed.join(resolve_device(runs[0].config.device).type) if runs else None
    datasets: dict[str, object] = {}  # by _loading_key: the data are loaded once
    identities = _set_up_each(runs, datasets)  # before the lock: a sweep refused here leaves no folder behind
    # the same sweep started twice: the second is refused before it writes anything (its runs would be too)
    lock = RunLock(out, sweep_name, kind="sweep") if ranks is None or ranks.lead else None
    try:
        if lock is not None:
            from fedsim.files import remove_stale_temporaries

            remove_stale_temporaries(sweep_file)  # a killed sweep's
        return _run_sweep(runs, identities, datasets, sweep_name, out, sweep_file, ranks, overwrite, on_change,
                          stack)
    finally:
        if lock is not None:
            lock.release()


def _run_sweep(runs, identities, datasets, sweep_name, out, sweep_file, ranks, overwrite, on_change,
               way) -> list[SweepRun]:
    from fedsim.engine import distributed
    from fedsim.experiment import load_config_dataset, stop_on_sigterm

    plans = [_plan(run, identity, out, overwrite) for run, identity in zip(runs, identities, strict=True)]
    if ranks is not None:  # every rank planned from the same files: nothing is written before all have
        ranks.all_gather(None, "the sweep's start")
    lead = ranks is None or ranks.lead  # rank 0 writes the sweep file and reports
    notify = on_change if on_change is not None and lead else (lambda runs: None)
    groups: dict[tuple, list[int]] = {}
    for i, (run, plan) in enumerate(zip(runs, plans, strict=True)):
        if plan is not None:  # a stack: runs that can train together, from the same round, on the same data
            groups.setdefault((stack_key(run.config), plan[1], _loading_key(run.config)), []).append(i)
    stacks = list(groups.items())
    if ranks is not None:  # torchrun: each rank trains its share of the stacks, balanced by their rounds
        costs = [sum(runs[i].config.rounds - plans[i][1] for i in members) for _, members in stacks]
        stacks = [stacks[i] for i in distributed.split_work(costs, ranks.world_size)[ranks.rank]]
    # how each stack of several runs trains, as the sweep file records it (updated as the stack's timing chooses)
    records = [{"runs": [runs[i].name for i in members], "stack": way} for _, members in stacks if len(members) > 1]

    def changed():
        if lead:
            _write_sweep_file(sweep_file, sweep_name, runs, records)
        notify(runs)

    changed()
    try:
        with stop_on_sigterm():
            for (_, _, loading), members in stacks:
                if loading not in datasets:
                    datasets[loading] = load_config_dataset(runs[members[0]].config)
                record = next((r for r in records if r["runs"][0] == runs[members[0]].name), {})
                _run_stack([runs[i] for i in members], [plans[i] for i in members], datasets[loading], changed,
                           share_cohort=ranks is None, way=way, record=record)
        if ranks is not None:  # every rank's runs, as they ended there, and its stacks, for rank 0's sweep file
            ended = ranks.all_gather({"runs": {r.name: (r.status, r.round, r.detail) for r in runs
                                               if r.status != "pending"}, "stacks": records}, "the sweep's end")
            for r in runs:
                for share in ended:
                    if r.name in share["runs"]:
                        r.status, r.round, r.detail = share["runs"][r.name]
            records = [record for share in ended for record in share["stacks"]]
    finally:
        changed()
    return runs


def _loading_key(config: Config) -> str:
    """What loading the dataset depends on (see experiment.load_config_dataset): runs with equal keys share it."""
    return json.dumps([config.dataset, config.data_dir, config.download, config.dataset_options()], default=str,
                      sort_keys=True)


def _set_up_each(runs: list[SweepRun], datasets: dict) -> list:
    """Every run set up as it will be when it starts (`fedsim.experiment.setup`: its data, partition, model,
    algorithm, robust aggregation, privacy and executor; its trackers), before any run trains, so a value wrong for
    one run stops the sweep before the others write anything; returns the runs' identities (fedsim/identity.py).
    `datasets` gets each loaded dataset, by `_loading_key`, for the runs to train on."""
    import dataclasses as dc

    from fedsim.experiment import load_config_dataset, setup
    from fedsim.tracking import check_tracking

    identities, tracking = [], set()
    for run in runs:
        try:
            loading = _loading_key(run.config)
            if loading not in datasets:
                datasets[loading] = dc.replace(load_config_dataset(run.config), name=run.config.dataset)
            identities.append(setup(run.config, dataset=datasets[loading]).identity)
            if (run.config.log, run.config.mlflow_uri) not in tracking:
                check_tracking(run.config)
                tracking.add((run.config.log, run.config.mlflow_uri))
        except FedsimError as e:
            raise FedsimError(f"run {run.name}: {e}") from None
    return identities


# how a sweep's refusal to use files of another run ends
_START_OVER = "nothing was changed; pass --overwrite to train the sweep's runs anew, or choose another --name"


def _plan(run: SweepRun, identity, out: Path, overwrite: bool) -> tuple[object, int] | None:
    """How to start `run`, whose identity is `identity`: None (already finished), or (the checkpoint to resume from
    or None, its round). Files of the run's name are used only if they are this run's: their identity (the
    record's, the checkpoint's) equal to `identity`, and the CSV the one they were written with; else one
    FedsimError line, nothing changed."""
    from fedsim.checkpoint import load_checkpoint
    from fedsim.identity import RunIdentity
    from fedsim.metrics import file_sha256, read_record

    files = {suffix: out / f"{run.name}{suffix}" for suffix in (".csv", ".json", ".ckpt")}
    if overwrite or not any(path.exists() for path in files.values()):
        return None, 0

    def refuse(why: str) -> FedsimError:
        return FedsimError(f"run {run.name} in {out}/ {why}; {_START_OVER}")

    record = read_record(files[".json"]) or {}
    recorded = RunIdentity.from_dict(record.get("identity"))
    differs = recorded.difference(identity, "its record", "this sweep") if recorded is not None else None
    if differs is not None:
        raise refuse(f"is another run: {differs}")
    summary = record.get("summary") if isinstance(record.get("summary"), dict) else {}
    completed = summary.get("rounds_completed", 0)
    if recorded is not None and record.get("status") == "finished" and completed >= run.config.rounds:
        if file_sha256(files[".csv"]) != record.get("csv_sha256"):
            raise refuse("is finished, but its CSV is not the one its record was written with (missing, another "
                         "run's, or edited)")
        run.status, run.round = "finished", completed
        return None
    if files[".ckpt"].exists():
        try:
            checkpoint = load_checkpoint(files[".ckpt"])
            checkpoint.check_files()
        except FedsimError as e:
            raise FedsimError(f"run {run.name}: {e}") from None
        differs = checkpoint.identity.difference(identity, "its checkpoint", "this sweep")
        if differs is not None:
            raise refuse(f"is another run: {differs}")
        return checkpoint, checkpoint.round
    if recorded is None:
        raise refuse("has files that do not say which run they are (its record holds no run identity: written by "
                     "an earlier fedsim, or missing)")
    return None, 0  # this run, stopped before its first checkpoint: it starts over


def _run_stack(runs: list[SweepRun], plans: list[tuple], dataset, changed: Callable[[], None],
               share_cohort: bool = True, way: str = "auto", record: dict | None = None) -> None:
    """The runs of one stack: in lock-step threads through one executor (fedsim/stacking.py), or, with `way`
    "never" or a single run, one whole run after another here. `record` gets how the stack trained."""
    import dataclasses as dc

    from fedsim.engine.executors import make_executor
    from fedsim.experiment import run as run_one
    from fedsim.stacking import APART, TOGETHER, Stack, StackChooser

    record = {} if record is None else record
    stack = Stack(len(runs), StackChooser(TOGETHER if way == "always" else None)) \
        if len(runs) > 1 and way != "never" else None
    data = dc.replace(dataset, name=runs[0].config.dataset)

    def one(i: int, run: SweepRun, plan) -> None:
        checkpoint, start = plan
        factory = stack.factory(i, run.config.seed) if stack is not None else make_executor

        def on_round(row, total):
            run.round = row["round"]
            if stack is not None:
                record.update(stack.record())
            changed()

        run.status, run.round = "running", start
        changed()
        try:
            if checkpoint is None:
                config = dataclasses.replace(run.config, overwrite=True, quiet=True)
                run_one(config, dataset=data, on_round=on_round, executor_factory=factory, share_cohort=share_cohort)
            else:
                run_one(resume=checkpoint, dataset=data, on_round=on_round, executor_factory=factory,
                        share_cohort=share_cohort, rounds=run.config.rounds)
            run.status = "finished"
        except DivergenceError as e:
            run.status, run.detail = "diverged", str(e)
        except KeyboardInterrupt:
            run.status = "stopped"
            raise
        except FedsimError as e:
            run.status, run.detail = "failed", str(e)
        finally:
            changed()

    if stack is None:
        if len(runs) > 1:
            record["trains"] = APART
        for i, (run, plan) in enumerate(zip(runs, plans, strict=True)):
            one(i, run, plan)
        return
    errors: list[BaseException] = []

    def thread(i: int) -> None:
        import torch

        torch.set_num_threads(1)  # the stack computes on the main thread: no second OpenMP team (fedsim/stacking.py)
        with stack.turn:
            try:
                one(i, runs[i], plans[i])
            except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
                errors.append(e)
                if isinstance(e, KeyboardInterrupt):  # raised in a run (its on_change): the others stop too
                    stack.stop()
            finally:
                stack.leave(i)

    threads = [threading.Thread(target=thread, args=(i,), name=f"fedsim-sweep-{runs[i].name}")
               for i in range(len(runs))]
    with _interrupts_as_a_flag() as interrupted:
        for t in threads:
            t.start()
        with stack.turn:  # this thread computes what the runs hand over (their training and evaluation)
            while any(t.is_alive() for t in threads):
                if interrupted.is_set() and not stack.stopping:
                    stack.stop()  # each run stops at its next round, checkpointed; its thread ends
                stack.serve(timeout=0.1)
        for t in threads:
            t.join()
    record.update(stack.record())
    if interrupted.is_set() or any(isinstance(e, KeyboardInterrupt) for e in errors):
        raise KeyboardInterrupt
    if errors:
        raise errors[0]


@contextmanager
def _interrupts_as_a_flag():
    """Ctrl-C and SIGTERM set the yielded Event instead of raising KeyboardInterrupt, in the main thread, while a
    stack's threads run: raised at any point (the threads' start, or inside Thread.join, which Python 3.11 then
    marks a running thread as ended), it could leave a run's thread going on past the sweep's end, unsaved. A
    signal that was ignored (a background job's Ctrl-C) stays ignored."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous = {s: h for s, h in previous.items() if h not in (signal.SIG_IGN, None)}  # None: set outside Python
    for s in previous:
        signal.signal(s, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _write_sweep_file(path: Path, sweep_name: str, runs: list[SweepRun], stacks: list[dict] = ()) -> None:
    from fedsim.files import write_atomically

    grid: dict[str, list] = {}
    for run in runs:
        for key, value in run.varying.items():
            if value not in grid.setdefault(key, []):
                grid[key].append(value)
    text = json.dumps({"sweep": sweep_name, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "grid": grid,
                       "runs": [{"name": r.name, "options": r.varying, "status": r.status, "round": r.round,
                                 **({"detail": r.detail} if r.detail else {})} for r in runs],
                       "stacks": list(stacks)},
                      indent=2, default=str) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(text), "sweep file", "; choose --out-dir")
