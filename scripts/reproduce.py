"""Regenerate REPRODUCTION.md: published federated-learning results next to fedsim's, row by row.

    python scripts/reproduce.py --data-dir ../shared/data                       # the CPU table (see ROWS)
    python scripts/reproduce.py --rows mcmahan,niid-bench,fedprox --seeds 3 --full --device cuda
    python scripts/reproduce.py --rows pfllib --data-dir FMNIST_DIR --pfllib-rounds 20  # PFLlib's FMNIST column

Each row is a paper's setting (../shared/REFERENCES.md), its published value, and fedsim's value as mean ± std
over seeds, with the wall time, the machine and a verdict: "within the published spread" (accuracy rows: within
max(2 published std, 1 point)), "within 1.5x rounds-to-target" (rounds rows), "ordering as the paper" (FedProx's
curves), or "off" with the reason. Without --full the rows run reduced settings that fit a 2-core CPU (fewer
rounds; the row says which); rows that need CIFAR, FEMNIST or a GPU are listed with the command to run them.
A rounds-to-target run stops at its target.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import fedsim

MNIST = dict(dataset="mnist", clients=100, fraction=0.1)
NIID = dict(dataset="mnist", model="lenet5", clients=10, local_epochs=10, batch_size=64, lr=0.01, momentum=0.9,
            weight_decay=1e-5, rounds=50)
SYNTHETIC = dict(dataset="synthetic(1,1)", model="logreg", fraction=10 / 30, local_epochs=20, batch_size=10, lr=0.01,
                 rounds=200)
# PFLlib's benchmark (REFERENCES.md §5.1): 20 clients all every round, Dir(0.1), its 4-layer CNN, B=10, E=1, lr 0.005,
# [-1, 1] inputs, 75/25 per-client train/test, at least 40 samples a client
PFLLIB = dict(dataset="fashion-mnist", clients=20, dirichlet=0.1, min_size=40, model="fedavgcnn", batch_size=10,
              local_epochs=1, lr=0.005, normalize="symmetric", client_test_fraction=0.25, rounds=2000)


@dataclass
class Row:
    group: str  # what --rows selects
    name: str
    paper: str
    setting: str
    published: str  # as the paper gives it
    config: dict
    target: float | None = None  # rounds-to-target rows: the accuracy
    published_rounds: int | None = None
    published_accuracy: tuple[float, float] | None = None  # (mean, std) in %
    reduced: dict = field(default_factory=dict)  # the CPU table's changes (fewer rounds)
    cpu: bool = True  # in the CPU table; else listed with its command unless --full
    ordering: str | None = None  # FedProx rows: the curve group they belong to
    metric: str = "test_accuracy"  # the CSV column the row reports
    best: bool = False  # its best round's value (PFLlib reports the best), else the last round's


def _mcmahan_rows() -> list[Row]:
    paper = "McMahan et al., AISTATS 2017, Table 1/2"
    rows = [
        Row("mcmahan", "2NN IID B=10 E=1", paper, "MNIST 2NN, 100 clients IID (600 each), C=0.1, E=1, B=10, lr 0.1, "
            "[0,1] inputs", "87 rounds to 97%", {**MNIST, "model": "mlp", "iid": True, "local_epochs": 1,
                                                "batch_size": 10, "lr": 0.1, "normalize": "unit", "rounds": 300},
            target=0.97, published_rounds=87, reduced={"rounds": 150}),
        Row("mcmahan", "2NN non-IID B=10 E=1", paper, "MNIST 2NN, 100 clients x 2 shards of 300, C=0.1, E=1, B=10, "
            "lr 0.1, [0,1] inputs", "664 rounds to 97%", {**MNIST, "model": "mlp", "shards": 2, "local_epochs": 1,
                                                         "batch_size": 10, "lr": 0.1, "normalize": "unit",
                                                         "rounds": 1000},
            target=0.97, published_rounds=664, cpu=False),
        Row("mcmahan", "CNN IID B=10 E=5", paper, "MNIST CNN ('same' padding), 100 clients IID, C=0.1, E=5, B=10, "
            "lr 0.1 (Flower's baseline), [0,1] inputs", "20 rounds to 99%",
            {**MNIST, "model": "cnn", "iid": True, "local_epochs": 5, "batch_size": 10, "lr": 0.1,
             "normalize": "unit", "rounds": 100}, target=0.99, published_rounds=20, cpu=False),
        Row("mcmahan", "CNN non-IID B=10 E=5", paper, "MNIST CNN, 100 clients x 2 shards, C=0.1, E=5, B=10, lr 0.1, "
            "[0,1] inputs", "229 rounds to 99%", {**MNIST, "model": "cnn", "shards": 2, "local_epochs": 5,
                                                 "batch_size": 10, "lr": 0.1, "normalize": "unit", "rounds": 500},
            target=0.99, published_rounds=229, cpu=False),
    ]
    return rows


# NIID-Bench Table III, MNIST (mean ± std over 3 runs; [UNVERIFIED] in REFERENCES.md §3.3(b), the Dir(0.5) cells
# agree with Flower's re-run)
_NIID = {"Dir(0.5)": ({"dirichlet": 0.5}, {"fedavg": (98.9, 0.1), "fedprox": (98.9, 0.1), "scaffold": (99.0, 0.1),
                                          "fednova": (98.9, 0.1)}),
         "#C=1": ({"labels": 1}, {"fedavg": (29.8, 7.9), "fedprox": (40.9, 23.1), "scaffold": (9.9, 0.2),
                                  "fednova": (39.2, 22.1)}),
         "#C=2": ({"labels": 2}, {"fedavg": (97.0, 0.4), "fedprox": (96.4, 0.3), "scaffold": (95.9, 0.3),
                                  "fednova": (94.5, 1.5)}),
         "#C=3": ({"labels": 3}, {"fedavg": (98.0, 0.2), "fedprox": (97.9, 0.4), "scaffold": (96.6, 1.5),
                                  "fednova": (98.0, 0.3)})}
_NIID_MU = {"Dir(0.5)": 0.001, "#C=1": 0.01, "#C=2": 0.01, "#C=3": 0.01}


def _niid_rows() -> list[Row]:
    rows = []
    for part, (scheme, cells) in _NIID.items():
        for algo, (mean, std) in cells.items():
            extra = {"mu": _NIID_MU[part]} if algo == "fedprox" else {}
            rows.append(Row("niid-bench", f"{algo} {part}", "Li et al., ICDE 2022 (NIID-Bench), Table III",
                            f"MNIST simple-CNN (lenet5), 10 clients {part}, E=10, B=64, lr 0.01, momentum 0.9, "
                            "wd 1e-5, 50 rounds, mean/std inputs", f"{mean} ± {std}%",
                            {**NIID, **scheme, "algo": algo, **extra}, published_accuracy=(mean, std),
                            reduced={"rounds": 5}, cpu=(algo, part) == ("fedavg", "Dir(0.5)")))
    rows.append(Row("niid-bench", "fedavg q~Dir(0.5)", "Li et al., ICDE 2022 (NIID-Bench)",
                    "MNIST simple-CNN, 10 clients, quantity skew Dir(0.5), E=10, B=64, 50 rounds",
                    "no MNIST value retrieved (CIFAR-10: 72.0%)", {**NIID, "quantity_skew": 0.5}, cpu=False))
    return rows


def _fedprox_rows() -> list[Row]:
    rows = []
    for stragglers in (0.0, 0.5, 0.9):
        for label, options in (("FedAvg (drop)", {"algo": "fedavg"}),
                               ("FedProx mu=0 (partial)", {"algo": "fedprox", "mu": 0.0}),
                               ("FedProx mu=1 (partial)", {"algo": "fedprox", "mu": 1.0})):
            rows.append(Row("fedprox", f"{label}, {stragglers:.0%} stragglers",
                            "Li et al., MLSys 2020 (FedProx), Figure 1", "Synthetic(1,1), 30 devices, 10 per round, "
                            "E=20, B=10, lr 0.01, 200 rounds, stragglers run 1..19 epochs",
                            "curves only: mu=1 >= mu=0 >= FedAvg, the gap growing with stragglers",
                            {**SYNTHETIC, **options, "stragglers": stragglers}, reduced={"rounds": 20},
                            cpu=stragglers != 0.5, ordering=f"{stragglers:.0%}"))
    return rows


def _digits_rows() -> list[Row]:
    return [Row("digits", "FedAvg digits (smoke)", "-", "digits, 5 clients IID, 3 rounds, 20 local steps",
                "none: a smoke row that keeps this script running", {"dataset": "digits", "clients": 5,
                                                                     "local_steps": 20, "rounds": 3},
                target=0.5, published_rounds=None)]


# PFLlib's Table A, "Dir FMNIST" column (REFERENCES.md §5.2): best accuracy over 2000 rounds, 3 trials, in %; and
# the options that select PFLlib's behaviour where fedsim's default follows the paper or differs (each file says
# why and by how much)
_PFLLIB = {"fedavg": (85.85, 0.19), "fedprox": (85.63, 0.57), "fedgen": (84.90, 0.31), "peravg": (95.10, 0.10),
           "pfedme": (97.25, 0.17), "ditto": (97.47, 0.04), "apfl": (97.25, 0.08), "fedfomo": (97.21, 0.02),
           "fedamp": (97.20, 0.06), "apple": (97.06, 0.07), "fedala": (97.66, 0.02), "fedper": (97.44, 0.06),
           "fedrep": (97.56, 0.04), "fedrod": (97.52, 0.04), "fedbabu": (97.46, 0.07), "fedcp": (97.89, 0.05),
           "gpfl": (97.81, 0.09), "feddbe": (97.69, 0.05), "feddistill": (97.43, 0.04), "fedproto": (97.40, 0.02)}
_PFLLIB_LIKE = {"fedrod": {"rod_schedule": "batch"},
                "fedproto": {"proto_predict": "prototype"}, "fedala": {"ala_eval": "start"},
                "pfedme": {"pfedme_eval": "global", "pfedme_theta": "warm"}, "fedamp": {"amp_lam": 0.0},
                "apple": {"apple_upload": "personalized"}}


def _pfllib_rows() -> list[Row]:
    rows = []
    for algo, (mean, std) in _PFLLIB.items():
        like = _PFLLIB_LIKE.get(algo, {})
        shown = "".join(f", --{k.replace('_', '-')} {v}" for k, v in like.items())
        rows.append(Row("pfllib", algo, "PFLlib benchmark (docs/benchmark.html), Table A, Dir FMNIST",
                        f"Fashion-MNIST, 20 clients Dir(0.1), fedavgcnn, B=10, E=1, lr 0.005, [-1, 1] inputs, 25% of "
                        f"each client held out{shown}; the best pooled client accuracy over the rounds",
                        f"{mean} ± {std}%", {**PFLLIB, "algo": algo, **like}, published_accuracy=(mean, std),
                        reduced={"rounds": 20}, metric="personal_accuracy_pooled", best=True))
    return rows


ROWS = _mcmahan_rows() + _niid_rows() + _fedprox_rows() + _digits_rows() + _pfllib_rows()


class _TargetReached(Exception):
    pass


def run_row(row: Row, seeds: int, args) -> dict:
    """Runs the row's seeds; returns {values, rounds, seconds, config}."""
    config = {**row.config, **({} if args.full else row.reduced)}
    if row.group == "pfllib" and not args.full and args.pfllib_rounds:
        config["rounds"] = args.pfllib_rounds
    values, seconds = [], 0.0
    for seed in range(seeds):
        name = f"{row.group}-{row.name}".replace(" ", "_").replace("/", "_").replace("%", "pct") + f"-seed{seed}"
        cfg = fedsim.Config(**config, seed=seed, device=args.device, data_dir=args.data_dir, out_dir=args.out_dir,
                            name=name, overwrite=True, quiet=True, checkpoint_every=0)
        reached = []

        def stop_at_target(r, total, reached=reached):
            if row.target is not None and r["test_accuracy"] >= row.target:
                reached.append(r["round"])
                raise _TargetReached

        start = time.perf_counter()
        try:
            df = fedsim.run(cfg, on_round=stop_at_target)
            final = float(df[row.metric].max() if row.best else df[row.metric].iloc[-1])
        except _TargetReached:
            final = None
        seconds += time.perf_counter() - start
        values.append(reached[0] if row.target is not None and reached else (math.inf if row.target else final))
    return {"values": values, "seconds": seconds, "config": config}


def fmt_values(row: Row, values) -> str:
    if row.target is not None:
        if any(math.isinf(v) for v in values):
            return "not reached (" + ", ".join("-" if math.isinf(v) else str(v) for v in values) + ")"
        return _mean_std(values, 0) + " rounds"
    return _mean_std([100 * v for v in values], 1) + "%"


def _mean_std(values, digits) -> str:
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}") + f" (n={len(values)})"


def verdict(row: Row, values, rounds_run: int) -> str:
    if row.target is not None:
        if any(math.isinf(v) for v in values):
            return f"off: {row.target:.0%} not reached within the {rounds_run} rounds run"
        if row.published_rounds is None:
            return "ran (no published value)"
        ratio = float(np.mean(values)) / row.published_rounds
        if ratio <= 1.5:
            return f"within 1.5x rounds-to-target ({ratio:.2f}x of the paper's" + \
                   (", fewer rounds: the paper's lr is tuned per cell, fedsim uses one fixed lr)" if ratio < 1 else ")")
        return f"off: {ratio:.2f}x the paper's rounds"
    if row.published_accuracy is not None:
        mean, std = row.published_accuracy
        ours = 100 * float(np.mean(values))
        if abs(ours - mean) <= max(2 * std, 1.0):
            return "within the published spread"
        paper_rounds = row.config.get("rounds", 50)
        return f"off by {ours - mean:+.1f} points" + (f" (after {rounds_run} of the paper's {paper_rounds} rounds)"
                                                     if rounds_run < paper_rounds else "")
    return ""


def ordering_verdicts(results: dict[str, list]) -> dict[str, str]:
    """FedProx Figure 1: per straggler level, FedProx mu=1 >= FedProx mu=0 >= FedAvg (final accuracy)."""
    out = {}
    for level, members in results.items():
        acc = {name.split(",")[0]: float(np.mean(v)) for name, v in members}
        if len(acc) < 3:
            continue
        avg, mu0, mu1 = acc["FedAvg (drop)"], acc["FedProx mu=0 (partial)"], acc["FedProx mu=1 (partial)"]
        ok = mu1 >= mu0 - 0.01 and mu1 >= avg - 0.01
        out[level] = ("ordering as the paper" if ok else "off: ordering differs") + \
            f" (FedAvg {avg:.1%}, mu=0 {mu0:.1%}, mu=1 {mu1:.1%})"
    return out


def command_of(row: Row, seeds: int) -> str:
    opts = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in row.config.items())
    return f"fedsim train {opts} --seed 0..{seeds - 1} --data-dir DATA"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    import os

    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, fedsim {fedsim.__version__}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="mcmahan,niid-bench,fedprox",
                        help="comma-separated groups: mcmahan, niid-bench, fedprox, digits, pfllib")
    parser.add_argument("--pfllib-rounds", type=int, default=None, help="pfllib rows: rounds on the CPU (20)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out-dir", default="results/reproduce")
    parser.add_argument("--full", action="store_true", help="every row at the paper's rounds (GPU)")
    parser.add_argument("--report", default="REPRODUCTION.md")
    args = parser.parse_args(argv)
    groups = args.rows.split(",")
    unknown = set(groups) - {r.group for r in ROWS}
    if unknown:
        parser.error(f"unknown rows {', '.join(sorted(unknown))}")
    began = time.perf_counter()
    lines, ordering = [], {}
    for row in [r for r in ROWS if r.group in groups]:
        if not (row.cpu or args.full):
            lines.append((row, None))
            continue
        print(f"running {row.group}: {row.name}", file=sys.stderr)
        result = run_row(row, args.seeds, args)
        lines.append((row, result))
        if row.ordering is not None:
            ordering.setdefault(row.ordering, []).append((row.name, result["values"]))
    orders = ordering_verdicts(ordering)
    total = time.perf_counter() - began
    write_report(Path(args.report), lines, orders, args, total)
    print(f"wrote {args.report} in {total / 60:.1f} min", file=sys.stderr)
    return 0


def write_report(path: Path, lines, orders, args, total: float) -> None:
    out = ["# Reproduction report", "",
           f"Generated by `python scripts/reproduce.py --rows {args.rows} --seeds {args.seeds}"
           + (" --full" if args.full else "") + f"` in {total / 60:.1f} min on: {machine()}.", "",
           "Values are fedsim's test accuracy of the global model on the whole test split (accuracy rows: the "
           "final round) or the first round reaching the target (rounds rows), mean ± sample std over seeds. "
           "Published numbers and their verification tags are in ../shared/REFERENCES.md. Rows marked *reduced* ran "
           "fewer rounds than the paper to fit this machine; rows *not run here* give the command.", "",
           "| group | row | paper | setting | published | fedsim | wall time | verdict |",
           "|---|---|---|---|---|---|---|---|"]
    for row, result in lines:
        if result is None:
            out.append(f"| {row.group} | {row.name} | {row.paper} | {row.setting} | {row.published} | not run here "
                       f"(needs a GPU or hours of CPU): `{command_of(row, max(args.seeds, 3))}` | - | - |")
            continue
        rounds_run = result["config"].get("rounds", 20)
        reduced = "" if args.full or not row.reduced else f" *reduced: {rounds_run} rounds*"
        verdict_text = orders.get(row.ordering, "") if row.ordering else verdict(row, result["values"], rounds_run)
        out.append(f"| {row.group} | {row.name} | {row.paper} | {row.setting}{reduced} | {row.published} | "
                   f"{fmt_values(row, result['values'])} | {result['seconds']:.0f} s | {verdict_text} |")
    path.write_text("\n".join(out) + "\n" + NOTES)


NOTES = """
## Preprocessing

`--normalize` sets each row's input scaling as its paper did: McMahan et al. feed [0, 1] pixels (`unit`); NIID-Bench
normalizes MNIST by mean/std (`standard`, fedsim's default); PFLlib uses [-1, 1] (`symmetric`). Synthetic(1,1) has
no pixels. fedsim's 2NN reaches 97% IID in 37 rounds with `standard` inputs (README) and in the rounds above with
`unit`; the scaling moves early rounds most (issue 16: 15-25 points in rounds 1-4 against PFLlib's FedAvg).

## Stragglers (FedProx rows)

`--stragglers P` makes round(cohort x P) of each cohort stragglers (the paper keeps round(10 (1 - P)) active);
FedAvg drops them (`--straggler-policy drop`, its default), FedProx keeps their partial work (`partial`, its
default: 1..E-1 epochs, uniform). The paper reports curves, so the verdict is the ordering at the last round run.
"""


if __name__ == "__main__":
    raise SystemExit(main())
