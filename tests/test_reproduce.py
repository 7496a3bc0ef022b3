"""scripts/reproduce.py runs a tiny digits row end to end, so the script cannot rot."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce.py"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_digits_row_writes_a_report_with_a_verdict(tmp_path):
    reproduce = load_script()
    report = tmp_path / "R.md"
    assert reproduce.main(["--rows", "digits", "--seeds", "2", "--out-dir", str(tmp_path / "runs"),
                           "--report", str(report)]) == 0
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| digits |"))
    assert "(n=2)" in row and (" rounds |" in row or "not reached" in row)
    assert "cores" in text and "## Stragglers" in text


def test_every_paper_row_has_a_published_value_and_gpu_rows_give_a_command():
    reproduce = load_script()
    groups = {r.group for r in reproduce.ROWS}
    assert {"mcmahan", "niid-bench", "fedprox"} <= groups
    for row in reproduce.ROWS:
        assert row.published and row.paper
        assert reproduce.command_of(row, 3).startswith("fedsim train --dataset ")
    levels = {r.ordering for r in reproduce.ROWS if r.group == "fedprox"}
    assert levels == {"0%", "50%", "90%"}


def test_every_row_is_a_valid_run_and_pfllib_s_column_has_all_twenty_methods():
    import fedsim

    reproduce = load_script()
    for row in reproduce.ROWS:
        fedsim.Config(**row.config).validate()  # an unknown algorithm or option would fail only when run
    pfllib = [r for r in reproduce.ROWS if r.group == "pfllib"]
    assert len(pfllib) == 20 and all(r.best and r.metric == "personal_accuracy_pooled" for r in pfllib)
