"""The per-round CSV (whole rows, flushed each round) and the run record beside it.

Columns, one row per evaluated round (accuracies are fractions in [0, 1]):

    round                    1-based round number just finished
    clients                  clients trained this round (the cohort size)
    train_loss               mean local training loss over this round's cohort (sample-weighted)
    test_loss, test_accuracy global model on the dataset's whole test split
    personal_accuracy_mean   each client's own model (global model for FedAvg/FedProx) on its own test
                             slice, over ALL clients, mean of per-client accuracies (each client counts once)
    personal_accuracy_std    standard deviation of those per-client accuracies
    personal_accuracy_min    the worst client
    personal_accuracy_p10    10th percentile over clients (the worst-10% boundary)
    personal_accuracy_pooled correct / total over all clients' test slices (PFLlib/FedProx style)
    bytes_up, bytes_down     exact bytes sent client->server and server->client since the previous row
                             (this round, unless --eval-every skips rows): what the channel put on the wire
                             (a codec's encoding, secure aggregation's messages; fedsim.comm)
    round_seconds            wall time of this round (training + evaluation)
    elapsed_seconds          wall time since the run started (setup excluded)
    malicious                (runs with --attack only) malicious clients in this round's cohort (fedsim.robust)
    epsilon                  (DP runs only: --dp-noise, --dp-epsilon) the epsilon spent so far, at the run's delta
                             (fedsim.privacy; inf when --dp-noise 0)
    dp_clip                  (DP runs only) the clip norm of this round's client updates (adaptive: changes)
    stragglers               (runs with --stragglers or --client-dropout only) stragglers in this round's cohort
    dropped                  (the same runs) clients of this round's cohort that sent nothing: failed ones
                             (--client-dropout) and stragglers under --straggler-policy drop
    sim_seconds              (runs with client profiles: --speed, --bandwidth, --profiles) the simulated time at
                             the end of the round (fedsim.engine.clock); asynchronous runs: of the server update
    late                     (synchronous runs with profiles) sampled clients whose update did not count: past
                             --deadline, after the first m to report (--over-select), or offline before reporting
    updates                  (asynchronous runs: fedbuff, fedasync) client updates the server received since the
                             previous row; their sample-weighted mean loss is train_loss, and `round` counts server
                             updates, `clients` the updates the last one applied
    staleness_mean, _max     (asynchronous runs) of those updates: model versions between the one a client trained
                             from and the one its update was applied to
    secagg_failed            (--secure-agg runs only) 1 when too few clients sent to remove the masks: the server
                             kept its model that round; else 0
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from fedsim.errors import FedsimError

try:
    import fcntl
except ImportError:  # Windows: runs go unlocked there
    fcntl = None

CSV_COLUMNS = [
    "round",
    "clients",
    "train_loss",
    "test_loss",
    "test_accuracy",
    "personal_accuracy_mean",
    "personal_accuracy_std",
    "personal_accuracy_min",
    "personal_accuracy_p10",
    "personal_accuracy_pooled",
    "bytes_up",
    "bytes_down",
    "round_seconds",
    "elapsed_seconds",
]
TIME_COLUMNS = ("round_seconds", "elapsed_seconds")
INT_COLUMNS = ("round", "clients", "bytes_up", "bytes_down", "malicious", "stragglers", "dropped", "test_samples",
               "personal_clients", "late", "updates", "staleness_max")


@dataclass(frozen=True)
class CsvState:
    """A run's CSV as a checkpoint saw it: the sha256 of its bytes (the header and the rows through the checkpoint's
    round), how many rows, and the last row's round (None: no row yet)."""

    sha256: str
    rows: int
    last_round: int | None


class RunWriter:
    """Writes `<name>.csv` (whole rows, flushed every round) and the run record `<name>.json`; names the
    checkpoint `<name>.ckpt` beside them (fedsim.checkpoint writes it).

    `resume_round`: continue the run's files from its checkpoint after that round: the CSV keeps its rows up
    to it (the later ones will be computed again, identically), and the record its start time and a list
    of resumes. `rows` holds every row of the run, the kept ones included.

    `csv_state()` is the CSV as written so far (the sha256 of its bytes, its rows, its last round), which a
    checkpoint records; the record gets the CSV's sha256 when the run ends (`csv_sha256`): both prove later that
    the CSV is the run's (fedsim/identity.py).

    The writer holds a lock on the run's name (`<out_dir>/.<name>.lock`) from construction to `close()`,
    taken before anything is removed or truncated: a second run of the same name, even with --overwrite,
    is refused and leaves the live run's files alone. The OS drops the lock when the process dies.
    """

    def __init__(self, out_dir, name: str, overwrite: bool, record: dict, resume_round: int | None = None,
                 columns: list[str] | None = None):
        from pathlib import Path

        self.columns = list(columns or CSV_COLUMNS)  # CSV_COLUMNS, then the run's features' own (DP's epsilon)
        self.dir = Path(out_dir)
        self.csv_path = self.dir / f"{name}.csv"
        self.json_path = self.dir / f"{name}.json"
        self.ckpt_path = self.dir / f"{name}.ckpt"
        self._write_failed = False
        self._csv = None
        self._digest = hashlib.sha256()  # of the CSV's bytes, as written
        self._lock = RunLock(self.dir, name)
        try:
            from fedsim.files import remove_stale_temporaries

            for path in (self.csv_path, self.json_path, self.ckpt_path):  # a killed run's, which nothing else removes
                remove_stale_temporaries(path)
            if resume_round is None:
                self._start(name, overwrite)
                self.record = record
            else:
                self._reopen(resume_round)
                self.record = _resumed_record(self.json_path, record, resume_round)
            self.write_record()
        except BaseException:
            if self._csv is not None:
                self._csv.close()
            self._lock.release()
            raise

    def _start(self, name: str, overwrite: bool) -> None:
        paths = (self.csv_path, self.json_path, self.ckpt_path)
        if not overwrite and any(p.exists() for p in paths):
            raise FedsimError(f"run {name!r} already exists in {self.dir}/: choose another --name, "
                              "or pass --overwrite to replace it")
        try:
            self.ckpt_path.unlink(missing_ok=True)  # an older run's: resuming must never pick it up
            self._csv = open(self.csv_path, "wb", buffering=0)  # noqa: SIM115 (kept open for the run)
        except OSError as e:
            raise FedsimError(f"cannot write results to {self.dir}/: {e.strerror}; choose --out-dir") from None
        self.rows: list[dict] = []
        self._write_line(",".join(self.columns))

    def _reopen(self, resume_round: int) -> None:
        from fedsim.files import write_atomically

        lines, self.rows = read_rows(self.csv_path, resume_round, self.columns)
        text = "".join(line + "\n" for line in [",".join(self.columns), *lines])
        write_atomically(self.csv_path, lambda tmp: tmp.write_text(text), "run CSV", "; choose --out-dir")
        self._digest.update(text.encode())
        try:
            self._csv = open(self.csv_path, "ab", buffering=0)  # noqa: SIM115 (kept open for the run)
        except OSError as e:
            raise FedsimError(f"cannot write run CSV {self.csv_path}: {e.strerror}; choose --out-dir") from None

    def append(self, row: dict) -> None:
        self._write_line(",".join(_format(row[c]) for c in self.columns))
        self.rows.append(row)

    def _write_line(self, line: str) -> None:
        """Append `line` whole, or leave the CSV as it was: a full disk can take part of a write, and an
        unbuffered file (no buffer left to flush later) cut back to its old size ends on the last whole row."""
        if self._write_failed:
            raise FedsimError(f"cannot write run CSV {self.csv_path}: an earlier write failed")
        data = memoryview((line + "\n").encode())
        size = self._csv.tell()  # the file's end: it is opened to append, or new
        try:
            whole = bytes(data)
            while data:
                data = data[self._csv.write(data):]
            self._digest.update(whole)
        except BaseException as e:
            self._write_failed = True
            try:
                os.ftruncate(self._csv.fileno(), size)
                kept = f"it ends on round {self.rows[-1]['round']}'s row" if self.rows else "it holds no rows"
            except OSError:
                kept = "its last line may be cut (a resume drops it)"
            if not isinstance(e, OSError):
                raise  # Ctrl-C or SIGTERM between two parts of a row: cut back all the same
            raise FedsimError(f"cannot write run CSV {self.csv_path}: {e.strerror or e}; {kept}; free space, then "
                              f"continue with `fedsim train --resume {self.csv_path}`") from None

    def csv_state(self) -> CsvState:
        """The CSV as written so far, for a checkpoint."""
        return CsvState(self._digest.hexdigest(), len(self.rows), self.rows[-1]["round"] if self.rows else None)

    def write_record(self) -> None:
        import json

        from fedsim.files import write_atomically

        text = json.dumps(self.record, indent=2, default=str) + "\n"
        write_atomically(self.json_path, lambda tmp: tmp.write_text(text), "run record", "; choose --out-dir")

    def close(self, status: str, detail: str | None = None, summary: dict | None = None) -> None:
        """Record how the run ended and release its name. After a failed CSV write, a record that cannot be
        written either raises nothing: the caller is already raising the error that names the cause."""
        try:
            self._csv.close()
            self.record["status"] = status
            if detail:
                self.record["status_detail"] = detail
            if summary is not None:
                self.record["summary"] = summary
            if not self._write_failed:
                self.record["csv_sha256"] = self._digest.hexdigest()
            self.write_record()
        except FedsimError:
            if not self._write_failed:
                raise
        finally:
            self._lock.release()


class RunLock:
    """An exclusive, non-blocking `flock` on `<out_dir>/.<name>.lock` (a sweep's: `.<name>.sweep.lock`; creating
    out_dir), held until `release()`; the file holds the holder's pid for the refusal message. The OS releases
    a flock when its process dies, so a killed run (kill -9) leaves no stale lock."""

    def __init__(self, out_dir, name: str, kind: str = "run"):
        self.path = out_dir / (f".{name}.lock" if kind == "run" else f".{name}.{kind}.lock")
        self._fd = None
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            if fcntl is not None:
                self._fd = _lock(self.path, f"{kind} {name!r}")
        except OSError as e:
            raise FedsimError(f"cannot write results to {out_dir}/: {e.strerror}; choose --out-dir") from None

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # removed while still held, so that no run locks a file on its way out (see _lock)
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def _lock(path, what: str) -> int:
    """A descriptor of `path` holding its flock, with this process's pid written in; FedsimError if held."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise FedsimError(f"{what} in {path.parent}/ is in use by another fedsim process{pid}: "
                                  "wait for it to end, or choose another --name") from None
            if _same_file(fd, path):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder released and removed it between our open and our flock: lock the new one


def _same_file(fd: int, path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def read_rows(path, through_round: int, columns: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """The lines of a run's CSV up to round `through_round` (its header checked: `columns`, or by default
    CSV_COLUMNS and any feature columns after them), and those rows parsed."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FedsimError(f"{path} is missing: resuming needs the run's CSV") from None
    lines = text.splitlines()
    if not text.endswith("\n"):
        lines = lines[:-1]  # a row cut off by a failed write or a kill was never completed
    header = lines[0].split(",") if lines else []
    if header[: len(CSV_COLUMNS)] != CSV_COLUMNS or (columns is not None and header != list(columns)):
        raise FedsimError(f"{path} is not a fedsim run CSV with this run's columns (its header differs)")
    columns = header
    try:
        kept = [line for line in lines[1:] if int(line.split(",")[0]) <= through_round]
        return kept, [_parse(line, columns) for line in kept]
    except ValueError:
        raise FedsimError(f"{path} has a damaged row; it cannot be resumed") from None


def csv_state(path, through_round: int) -> CsvState:
    """The run CSV at `path` as a checkpoint after round `through_round` would have seen it."""
    kept, rows = read_rows(path, through_round)
    header = path.read_text().split("\n", 1)[0]
    text = "".join(line + "\n" for line in [header, *kept])
    return CsvState(hashlib.sha256(text.encode()).hexdigest(), len(rows), rows[-1]["round"] if rows else None)


def file_sha256(path) -> str | None:
    """The sha256 of a file's bytes; None where it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def read_record(path) -> dict | None:
    """A run record's contents; None where it is missing or not a JSON object."""
    import json

    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_record_identity(path):
    """The run identity a run record holds (fedsim.identity.RunIdentity); None where it holds none."""
    from fedsim.identity import RunIdentity

    record = read_record(path)
    return None if record is None else RunIdentity.from_dict(record.get("identity"))


def _parse(line: str, columns: list[str]) -> dict:
    """A CSV line back into the row the round loop made (an empty cell is NaN)."""
    row = dict(zip(columns, line.split(","), strict=True))
    return {c: int(v) if c in INT_COLUMNS else float(v or "nan") for c, v in row.items()}


def _resumed_record(path, record: dict, resume_round: int) -> dict:
    """`record` (of the resumed run) with the earlier record's start time and resumes, plus this resume."""
    import json
    import time

    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):  # the CSV and the checkpoint suffice to resume; the record is rebuilt
        earlier = {}
    resumes = [*earlier.get("resumes", []), {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "from_round": resume_round}]
    return {**record, "started": earlier.get("started", record["started"]), "resumes": resumes}


def _format(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"  # NaN -> empty cell
    return str(value)
