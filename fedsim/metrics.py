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


class RunWriter:
    """Writes `<name>.csv` (whole rows, flushed every round) and the run record `<name>.json`."""

    def __init__(self, out_dir, name: str, overwrite: bool, record: dict):
        from pathlib import Path

        from fedsim.errors import FedsimError

        self.dir = Path(out_dir)
        self.csv_path = self.dir / f"{name}.csv"
        self.json_path = self.dir / f"{name}.json"
        if not overwrite and (self.csv_path.exists() or self.json_path.exists()):
            raise FedsimError(f"run {name!r} already exists in {self.dir}/: choose another --name, "
                              "or pass --overwrite to replace it")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._csv = open(self.csv_path, "w", newline="")  # noqa: SIM115 (kept open for the run)
        except OSError as e:
            raise FedsimError(f"cannot write results to {self.dir}/: {e.strerror}; choose --out-dir") from None
        self._csv.write(",".join(CSV_COLUMNS) + "\n")
        self._csv.flush()
        self.record = record
        self.write_record()

    def append(self, row: dict) -> None:
        line = ",".join(_format(row[c]) for c in CSV_COLUMNS) + "\n"
        self._csv.write(line)  # one write per row: an interrupt never leaves half a row
        self._csv.flush()

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


def _format(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"  # NaN -> empty cell
    return str(value)
