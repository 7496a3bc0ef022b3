"""The README's communication tables: compressed updates and secure aggregation on MNIST with McMahan et al.'s 2NN,
100 IID clients, 10 a round (FedAvg, one local epoch, batch 10, lr 0.05), and the secure aggregation protocol's
byte overhead for 10, 100 and 1,000 clients a round (computed by the counts the runs use, fedsim.comm.secagg).

    python scripts/comm_table.py --data-dir /work/shared/data --rounds 50 --seeds 0,1,2 --out results/comm

Prints markdown. Runs already finished in --out (a CSV with --rounds rows) are read, not trained again, so an
interrupted measurement continues where it stopped.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import pandas as pd

import fedsim
from fedsim.comm.secagg import Traffic, default_neighbors
from fedsim.version import __version__

UPLOAD = [  # (label, options): the rows
    ("none (float32)", {}),
    ("int8", {"compress": "int8"}),
    ("qsgd:4", {"compress": "qsgd:4"}),
    ("qsgd:2", {"compress": "qsgd:2"}),
    ("topk:0.01", {"compress": "topk:0.01"}),
    ("topk:0.01 + error feedback", {"compress": "topk:0.01", "error_feedback": True}),
    ("sign + error feedback", {"compress": "sign", "error_feedback": True}),
]
SECURE = [
    ("secagg (all pairs)", {"secure_agg": "secagg"}),
    ("secagg+ (random graph)", {"secure_agg": "secagg+"}),
    ("secagg+, 10% dropout", {"secure_agg": "secagg+", "client_dropout": 0.1}),
    ("none, 10% dropout", {"client_dropout": 0.1}),
]
PARAMETERS = 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10  # the 2NN: 199,210


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-").replace("--", "-")


def train(label: str, options: dict, seed: int, args) -> pd.DataFrame:
    name = f"{slug(label)}-seed{seed}"
    csv = Path(args.out) / f"{name}.csv"
    if csv.exists():
        done = pd.read_csv(csv)
        if len(done) and done["round"].iloc[-1] == args.rounds:
            return done
    started = time.perf_counter()
    df = fedsim.run(fedsim.Config(dataset="mnist", data_dir=args.data_dir, clients=100, fraction=0.1, model="mlp",
                                  rounds=args.rounds, seed=seed, name=name, out_dir=args.out, overwrite=True,
                                  quiet=True, **options))
    print(f"  {name}: {df['test_accuracy'].iloc[-1]:.4f} in {time.perf_counter() - started:.0f} s", flush=True)
    return df


def accuracy(frames: list[pd.DataFrame]) -> str:
    final = pd.Series([f["test_accuracy"].iloc[-1] * 100 for f in frames])
    return f"{final.mean():.2f} ± {final.std():.2f}" if len(final) > 1 else f"{final.iloc[0]:.2f}"


def measured(rows, args, base_up=None) -> tuple[list[str], float]:
    lines = [f"| | test accuracy (%) after {args.rounds} rounds | bytes up a round | up vs float32 | "
             "bytes up + down, all rounds |",
             "|---|---|---|---|---|"]
    for label, options in rows:
        frames = [train(label, options, s, args) for s in args.seeds]
        up = sum(f["bytes_up"].sum() for f in frames) / len(frames) / args.rounds
        total = sum((f["bytes_up"] + f["bytes_down"]).sum() for f in frames) / len(frames)
        base_up = base_up or up
        lines.append(f"| {label} | {accuracy(frames)} | {up / 1e3:,.0f} kB | {up / base_up:.3f}x | "
                     f"{total / 1e6:,.1f} MB |")
    return lines, base_up


def overhead() -> list[str]:
    """Per client: what a sender uploads under the protocol against its float32 update (B = 32, one sample-count
    coordinate); per round: everything both ways against plain FedAvg's, with 10% of the cohort dropping out."""
    lines = ["| clients a round | protocol | neighbours | a sender's upload vs float32 | round, both ways, no dropout "
             "| round, both ways, 10% dropout |", "|---|---|---|---|---|---|"]
    plain = 4 * PARAMETERS
    for n in (10, 100, 1000):
        for mode, k in (("SecAgg", n - 1), ("SecAgg+", default_neighbors(n))):
            t = Traffic(k, PARAMETERS + 1, 32)
            cells = []
            for dropped in (0, round(0.1 * n)):
                sent = n - dropped
                up = sent * t.sender_up + dropped * t.keys_up
                # each sender hears which of its neighbours sent: about k·(sent/n) ids
                down = n * (plain + t.keys_down) + sent * t.senders_down(round(k * sent / n))
                cells.append(f"{(up + down) / (sent * plain + n * plain):.4f}x")
            lines.append(f"| {n:,} | {mode} | {k} | {t.sender_up / plain:.4f}x | {cells[0]} | {cells[1]} |")
    return lines


def bonawitz() -> list[str]:
    """Bonawitz et al.'s abstract: 16-bit inputs, the field wide enough for the sum (16 + log2 n bits), a client's
    upload against sending its 16-bit vector in the clear."""
    lines = ["| users | dimensions | Bonawitz et al. (CCS 2017) | fedsim's count |", "|---|---|---|---|"]
    for n, d, theirs in ((2**10, 2**20, 1.73), (2**14, 2**24, 1.98)):
        t = Traffic(n - 1, d, 16 + int(math.log2(n)))
        ours = t.sender_up / (2 * d)
        lines.append(f"| 2^{int(math.log2(n))} | 2^{int(math.log2(d))} | {theirs:.2f}x | {ours:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="results/comm")
    parser.add_argument("--overhead-only", action="store_true", help="only the computed byte tables")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    out = [f"<!-- python scripts/comm_table.py --data-dir {args.data_dir} --rounds {args.rounds} --seeds "
           f"{','.join(map(str, args.seeds))}; {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
           f"{os.cpu_count()} CPUs, fedsim {__version__} -->"]
    if not args.overhead_only:
        upload, base = measured(UPLOAD, args)
        secure, _ = measured(SECURE, args, base)
        out += ["", *upload, "", *secure]
    out += ["", *overhead(), "", *bonawitz()]
    print("\n".join(out))


if __name__ == "__main__":
    main()
