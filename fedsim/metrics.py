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
                             (this round, unless --eval-every skips rows)
    round_seconds            wall time of this round (training + evaluation)
    elapsed_seconds          wall time since the run started (setup excluded)
"""

from __future__ import annotations

from fedsim.errors import FedsimError

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
INT_COLUMNS = ("round", "clients", "bytes_up", "bytes_down")


class RunWriter:
    """Writes `<name>.csv` (whole rows, flushed every round) and the run record `<name>.json`; names the
    checkpoint `<name>.ckpt` beside them (fedsim.engine.checkpoint writes it).

    `resume_round`: continue the run's files from its checkpoint after that round: the CSV keeps its rows up
    to it (the later ones will be computed again, identically), and the record its start time and a list
    of resumes. `rows` holds every row of the run, the kept ones included.
    """

    def __init__(self, out_dir, name: str, overwrite: bool, record: dict, resume_round: int | None = None):
        from pathlib import Path

        self.dir = Path(out_dir)
        self.csv_path = self.dir / f"{name}.csv"
        self.json_path = self.dir / f"{name}.json"
        self.ckpt_path = self.dir / f"{name}.ckpt"
        if resume_round is None:
            self._start(name, overwrite)
            self.record = record
        else:
            self._reopen(resume_round)
            self.record = _resumed_record(self.json_path, record, resume_round)
        self.write_record()

    def _start(self, name: str, overwrite: bool) -> None:
        paths = (self.csv_path, self.json_path, self.ckpt_path)
        if not overwrite and any(p.exists() for p in paths):
            raise FedsimError(f"run {name!r} already exists in {self.dir}/: choose another --name, "
                              "or pass --overwrite to replace it")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.ckpt_path.unlink(missing_ok=True)  # an older run's: resuming must never pick it up
            self._csv = open(self.csv_path, "w", newline="")  # noqa: SIM115 (kept open for the run)
        except OSError as e:
            raise FedsimError(f"cannot write results to {self.dir}/: {e.strerror}; choose --out-dir") from None
        self._csv.write(",".join(CSV_COLUMNS) + "\n")
        self._csv.flush()
        self.rows: list[dict] = []

    def _reopen(self, resume_round: int) -> None:
        from fedsim.files import write_atomically

        lines, self.rows = read_rows(self.csv_path, resume_round)
        text = "".join(line + "\n" for line in [",".join(CSV_COLUMNS), *lines])
        write_atomically(self.csv_path, lambda tmp: tmp.write_text(text), "run CSV", "; choose --out-dir")
        self._csv = open(self.csv_path, "a", newline="")  # noqa: SIM115 (kept open for the run)

    def append(self, row: dict) -> None:
        line = ",".join(_format(row[c]) for c in CSV_COLUMNS) + "\n"
        self._csv.write(line)  # one write per row: an interrupt never leaves half a row
        self._csv.flush()
        self.rows.append(row)

    def write_record(self) -> None:
        import json

        from fedsim.files import write_atomically

        text = json.dumps(self.record, indent=2, default=str) + "\n"
        write_atomically(self.json_path, lambda tmp: tmp.write_text(text), "run record", "; choose --out-dir")

    def close(self, status: str, detail: str | None = None, summary: dict | None = None) -> None:
        self._csv.close()
        self.record["status"] = status
        if detail:
            self.record["status_detail"] = detail
        if summary is not None:
            self.record["summary"] = summary
        self.write_record()


def read_rows(path, through_round: int) -> tuple[list[str], list[dict]]:
    """The lines of a run's CSV up to round `through_round` (its header checked), and those rows parsed."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise FedsimError(f"{path} is missing: resuming needs the run's CSV") from None
    if not lines or lines[0] != ",".join(CSV_COLUMNS):
        raise FedsimError(f"{path} is not a fedsim run CSV (its header differs)")
    try:
        kept = [line for line in lines[1:] if int(line.split(",")[0]) <= through_round]
        return kept, [_parse(line) for line in kept]
    except ValueError:
        raise FedsimError(f"{path} has a damaged row; it cannot be resumed") from None


def _parse(line: str) -> dict:
    """A CSV line back into the row the round loop made (an empty cell is NaN)."""
    row = dict(zip(CSV_COLUMNS, line.split(","), strict=True))
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
