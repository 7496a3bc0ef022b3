"""Grouping runs over seeds: which runs are the same experiment, and what each group is called.

The rules are in `fedsim.compare`'s docstring (Groups)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fedsim.algorithms import ALGORITHMS, algorithm_options, options_of
from fedsim.compare.runs import Run, Warn, _default_warn
from fedsim.data.schemes import SCHEMES

BOOKKEEPING = frozenset({
    "seed", "partition_seed",            # the seeds themselves: what a group averages over
    "name", "out_dir", "overwrite", "quiet", "debug", "device", "data_dir", "download",
    "partition",                         # the partition file's path (its scheme is kept, see below)
})


@dataclass
class Group:
    """Runs of one experiment over seeds. `config` is None for a CSV shown alone (no record)."""

    name: str
    runs: list[Run]
    config: dict | None = None
    differing: dict = field(default_factory=dict)  # the keys (and values) in the name

    @property
    def n(self) -> int:
        return len(self.runs)


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt_value(x) for x in v)
    return str(v)


def _partition_key(run: Run) -> str:
    cfg = run.config
    if cfg.get("partition"):  # a saved partition file: its record section says what is in it
        part = (run.record or {}).get("partition") or {}
        params = {k: v for k, v in (part.get("params") or {}).items() if k != "min_size"}
        scheme, param = part.get("scheme", "file"), ",".join(_fmt_value(v) for v in params.values()) or None
    else:
        # A flag scheme (iid, natural) is given when true; a valued one (dirichlet=alpha, ...) when set.
        given = [(s, None if isinstance(v, bool) else v) for s in SCHEMES
                 if (v := cfg.get(s)) is not None and v is not False]
        scheme, param = given[0] if len(given) == 1 else ("iid", None) if not given else ("invalid", None)
    return scheme if param is None else f"{scheme}({_fmt_value(param)})"


def experiment_key(run: Run) -> dict:
    """The run's configuration minus seeds and bookkeeping: equal keys = the same experiment."""
    from fedsim.config import FIELDS

    # A field missing from an older record has its default: a new option does not split groups.
    defaults = {name: f.default for name, f in FIELDS.items() if f.default is not dataclasses.MISSING}
    skip = BOOKKEEPING | set(SCHEMES)  # the scheme options collapse into one key, `partition`
    cfg = {k: v for k, v in {**defaults, **run.config}.items() if k not in skip}
    cfg["partition"] = _partition_key(run)
    # The record holds the client count actually used (--clients may be left to its default).
    clients = ((run.record or {}).get("partition") or {}).get("num_clients")
    if clients is not None:
        cfg["clients"] = clients
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def _key_order(keys: Iterable[str]) -> list[str]:
    from fedsim.config import FIELDS

    order = {name: i for i, name in enumerate(FIELDS)}
    order["partition"] = order.get("iid", len(order))
    return sorted(keys, key=lambda k: (order.get(k, len(order)), k))


def _stem_name(runs: Sequence[Run]) -> str:
    stems = [r.file for r in runs]
    stripped = {re.sub(r"[-_.]?seed\d+", "", s) for s in stems}
    if len(stems) > 1 and len(stripped) == 1 and stripped != {""}:
        return stripped.pop()
    return ", ".join(stems) if len(stems) <= 3 else f"{stems[0]}, {stems[1]}, … (+{len(stems) - 2} more)"


def group_runs(runs: Sequence[Run], on_warning: Warn | None = None) -> list[Group]:
    """Group runs over seeds (see `fedsim.compare`'s docstring) and name each group. Order: first seen."""
    warn = on_warning or _default_warn
    by_key: dict[str, Group] = {}
    for run in runs:
        if run.record is None:
            by_key[f"file:{run.csv_path.resolve()}"] = Group(run.file, [run])
            continue
        cfg = experiment_key(run)
        key = json.dumps({k: _fmt_value(v) for k, v in cfg.items()}, sort_keys=True)  # lr=1 is lr=1.0
        by_key.setdefault(key, Group("", [], cfg)).runs.append(run)
    groups = list(by_key.values())
    configured = [g for g in groups if g.config is not None]

    keys = _key_order({k for g in configured for k in g.config})
    varying = [k for k in keys if len({_fmt_value(g.config.get(k)) for g in configured}) > 1]
    for g in configured:
        if not varying:
            g.name = _stem_name(g.runs)
            continue
        # a group's name leaves out an option its algorithm does not read (FedAvg's mu); grouping uses every key
        algo = g.config.get("algo")
        unread = set(algorithm_options()) - options_of(algo) if algo in ALGORITHMS else set()
        shown = [k for k in varying if k not in unread]
        g.differing = {k: g.config.get(k) for k in shown}
        g.name = " ".join(f"{k}={_fmt_value(v)}" for k, v in g.differing.items()) or f"algo={algo}"
    # Leaving out unused keys must never make two groups look alike.
    counts = Counter(g.name for g in configured)
    for g in configured:
        if counts[g.name] > 1:
            g.differing = {k: g.config.get(k) for k in varying}
            g.name = " ".join(f"{k}={_fmt_value(v)}" for k, v in g.differing.items())

    sampled = {(_fmt_value(g.config.get("eval_sample")), _fmt_value(g.config.get("eval_clients"))) for g in configured}
    if len(sampled) > 1:
        shown = "; ".join(f"--eval-sample {a}, --eval-clients {b}" for a, b in sorted(sampled))
        warn(f"the runs were evaluated on different samples ({shown}: None = all): their test and personal "
             "accuracies are not measured on the same data")
    for g in configured:
        seeds = Counter(r.seed for r in g.runs)
        repeated = sorted(str(s) for s, c in seeds.items() if c > 1)
        if repeated:
            files = ", ".join(r.csv_path.name for r in g.runs if str(r.seed) in repeated)
            warn(f"group {g.name!r} has more than one run with seed {', '.join(repeated)} ({files}); "
                 "each counts as a seed")
    return groups
