"""Wall time of `fedsim train` (the README's default run: digits, 20 rounds) with the default thread choice,
`--threads 1` and `--threads <every core>`, on an idle machine and beside busy processes that each hold a core.

    python scripts/threads_under_load.py [--repeats 2] [--busy 1] [-- extra train options]

The three settings take turns within each repeat (ratios, not absolute times, are what a shared machine gives).
Prints a markdown table of the rounds' time (the run record's elapsed_seconds) and, in brackets, the command's
wall time with start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY_LOOP = "while True: pass"


def timed(args: list[str], out_dir: str) -> tuple[float, float]:
    """(the command's wall time, start-up included; the rounds' time, from the run record)."""
    start = time.perf_counter()
    subprocess.run(["fedsim", "train", "--quiet", "--overwrite", "--out-dir", out_dir, "--name", "t", *args],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return wall, json.loads((Path(out_dir) / "t.json").read_text())["summary"]["elapsed_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy", type=int, default=1, help="busy processes in the loaded case")
    parser.add_argument("extra", nargs="*", help="more fedsim train options (after --)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    settings = {"default (chosen by timing)": [], "--threads 1": ["--threads", "1"],
                f"--threads {cores}": ["--threads", str(cores)]}
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for load in (0, args.busy):
            busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(load)]
            try:
                times = {name: [] for name in settings}
                for _ in range(args.repeats):
                    for name, flags in settings.items():
                        times[name].append(timed([*flags, *args.extra], out))
            finally:
                for p in busy:
                    p.kill()
            rows.append((load, {name: [statistics.median(x) for x in zip(*t, strict=True)]
                                for name, t in times.items()}))
    print("rounds' time (the command's, start-up included), medians:\n")
    print(f"| busy processes | {' | '.join(settings)} |")
    print("|---|" + "---|" * len(settings))
    for load, medians in rows:
        print(f"| {load} | " + " | ".join(f"{medians[name][1]:.2f} s ({medians[name][0]:.1f} s)" for name in settings)
              + " |")


if __name__ == "__main__":
    main()
