"""Reading runs: which files the paths name, and each run's CSV rows and JSON record."""

from __future__ import annotations

import glob
import json
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedsim.errors import FedsimError
from fedsim.metrics import CSV_COLUMNS

Warn = Callable[[str], None]


@dataclass
class Run:
    """One run: its CSV rows (sorted by round) and its JSON record (None when missing)."""

    csv_path: Path
    rows: pd.DataFrame
    record: dict | None = None

    @property
    def file(self) -> str:
        return self.csv_path.stem

    @property
    def config(self) -> dict:
        cfg = (self.record or {}).get("config")
        return cfg if isinstance(cfg, dict) else {}

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def status(self) -> str:
        """finished / diverged at round r / running / stopped / unknown (no record)."""
        if self.record is None:
            return "unknown"
        status = str(self.record.get("status") or "unknown")
        if status == "diverged":
            found = re.search(r"round (\d+)", str(self.record.get("status_detail") or ""))
            if found:
                return f"diverged at round {found.group(1)}"
            if len(self.rows):
                return f"diverged after round {int(self.rows['round'].iloc[-1])}"
        return status


class _EmptyCSV(FedsimError):
    pass


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files to read: globs the shell left unexpanded are expanded, a directory means its *.csv,
    a `.json` record means the CSV beside it; duplicates are dropped, order kept."""
    out: list[Path] = []
    for p in paths:
        text = str(p)
        if not Path(text).exists() and any(c in text for c in "*?["):
            matched = sorted(glob.glob(text, recursive=True))
            if not matched:
                raise FedsimError(f"no file matches {text}")
            out.extend(Path(m) for m in matched)
            continue
        path = Path(text)
        if not path.exists():
            raise FedsimError(f"{path} does not exist")
        if path.is_dir():
            found = sorted(path.glob("*.csv"))
            if not found:
                raise FedsimError(f"{path} is a directory with no .csv files in it")
            out.extend(found)
        else:
            out.append(path)
    result, seen = [], set()
    for path in out:
        if path.suffix == ".json":  # a record stands for its run: `results/*` works too
            csv_path = path.with_suffix(".csv")
            if not csv_path.exists():
                raise FedsimError(f"{path} is a run record without its CSV ({csv_path} is missing)")
            path = csv_path
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            result.append(path)
    if not result:
        raise FedsimError("no files given")
    return result


def _read_csv(path: Path) -> pd.DataFrame:
    if path.is_dir():
        raise FedsimError(f"{path} is a directory, not a CSV file")
    if path.stat().st_size == 0:
        raise _EmptyCSV(f"{path} is empty (0 bytes): no rounds written")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FedsimError(f"{path} is not a fedsim CSV (cannot be read as CSV: {reason})") from None
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise FedsimError(f"{path} is not a fedsim CSV: missing columns {', '.join(missing)}")
    if df.empty:
        raise _EmptyCSV(f"{path} is empty (header only): no rounds written")
    for col in df.columns:  # in the file's order: the first bad column is the one reported
        if col in CSV_COLUMNS and not pd.api.types.is_numeric_dtype(df[col]):
            converted = pd.to_numeric(df[col], errors="coerce")
            bad = df[col][converted.isna() & df[col].notna()]
            if len(bad):
                raise FedsimError(f"{path}: column {col} has a non-numeric value {bad.iloc[0]!r} "
                                  f"(row {bad.index[0] + 1})")
            df[col] = converted
    df = df.dropna(subset=["round"])
    # A resumed run may repeat rounds after its checkpoint: the later row wins.
    df = df.drop_duplicates(subset="round", keep="last").sort_values("round", kind="stable")
    return df.reset_index(drop=True)


def _read_record(csv_path: Path, warn: Warn) -> dict | None:
    path = csv_path.with_suffix(".json")
    if not path.exists():
        warn(f"{path} not found: {csv_path.name} is shown alone by its file name, status unknown")
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warn(f"{path} cannot be read ({e}): {csv_path.name} is shown alone by its file name")
        return None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        warn(f"{path} is not a fedsim run record (no config): {csv_path.name} is shown alone")
        return None
    return record


def _default_warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def read_run(csv_path: str | Path, on_warning: Warn | None = None) -> Run:
    """Read one run (its CSV and the JSON record beside it). Raises FedsimError for bad input.

    A CSV with no rounds (header only, or 0 bytes) is a run only when its record is there: one that
    diverged or was stopped in round 1, or has just started. Without a record it is an error."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise FedsimError(f"{csv_path} does not exist")
    warn = on_warning or _default_warn
    try:
        rows = _read_csv(csv_path)
    except _EmptyCSV as e:
        record = _read_record(csv_path, lambda _msg: None)
        if record is None:
            raise FedsimError(str(e)) from None
        return Run(csv_path, pd.DataFrame({c: pd.Series(dtype=float) for c in CSV_COLUMNS}), record)
    return Run(csv_path, rows, _read_record(csv_path, warn))


def read_runs(paths: Iterable[str | Path], on_warning: Warn | None = None) -> list[Run]:
    """Read every run named by `paths` (files, directories, globs; see `expand_paths`)."""
    runs = [read_run(path, on_warning) for path in expand_paths(paths)]
    if all(r.rows.empty for r in runs):
        states = ", ".join(f"{r.csv_path.name}: {r.status}" for r in runs)
        raise FedsimError(f"no run has written a round yet ({states})")
    return runs
