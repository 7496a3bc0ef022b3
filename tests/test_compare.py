"""`fedsim compare` and fedsim.compare: hand-built runs (CSV + JSON record) with hand-computed numbers.

Std over seeds is the sample standard deviation (ddof=1): for 0.90, 0.92, 0.94 it is 0.02.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics

import pytest
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.compare import compare_runs, group_runs, read_runs, summarize
from fedsim.config import Config
from fedsim.metrics import CSV_COLUMNS

runner = CliRunner()


def write_run(directory, name, acc, *, seed=0, loss=None, elapsed=None, personal=True, status="finished",
              detail=None, record=True, bytes_up=100, bytes_down=50, part=("iid", None), **config):
    """Write <name>.csv, one row per value in `acc` (rounds 1..n), and unless record=False <name>.json."""
    loss = loss if loss is not None else [round(1 - a, 6) for a in acc]
    elapsed = elapsed if elapsed is not None else [10.0 * (r + 1) for r in range(len(acc))]
    lines = [",".join(CSV_COLUMNS)]
    for r, (a, lo, t) in enumerate(zip(acc, loss, elapsed, strict=True), start=1):
        pers = [a - 0.1, 0.05, a - 0.3, a - 0.2, a - 0.05] if personal else ["", "", "", "", ""]
        row = [r, 10, lo, lo, a, *pers, bytes_up, bytes_down, 10.0, t]
        lines.append(",".join(str(v) for v in row))
    (directory / f"{name}.csv").write_text("\n".join(lines) + "\n")
    if record:
        cfg = Config(seed=seed, name=name, out_dir=str(directory), **{"rounds": 4, **config}).to_dict()
        rec = {"fedsim_version": "0.1.0", "torch_version": "2.14.1", "device": "cpu", "config": cfg,
               "partition": {"hash": f"h{seed}", "scheme": part[0],
                             "params": {} if part[1] is None else {"alpha": part[1], "min_size": 10},
                             "num_clients": 10,
                             "file": config.get("partition")},
               "executor": {"name": "sequential", "reason": "test"}, "status": status}
        if detail:
            rec["status_detail"] = detail
        (directory / f"{name}.json").write_text(json.dumps(rec))
    return directory / f"{name}.csv"


def invoke(*args):
    return runner.invoke(app, ["compare", *[str(a) for a in args]])


def as_json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def group(doc, name):
    found = [g for g in doc["groups"] if g["group"] == name]
    assert found, [g["group"] for g in doc["groups"]]
    return found[0]


@pytest.fixture
def three_seeds(tmp_path):
    """FedAvg over seeds 0, 1, 2: finals 0.90/0.92/0.94, bests 0.95 (round 2) / 0.93 (3) / 0.96 (2)."""
    write_run(tmp_path, "fedavg-s0", [0.80, 0.95, 0.91, 0.90], seed=0, elapsed=[5, 11, 17, 23])
    write_run(tmp_path, "fedavg-s1", [0.70, 0.85, 0.93, 0.92], seed=1, elapsed=[6, 12, 18, 24])
    write_run(tmp_path, "fedavg-s2", [0.90, 0.96, 0.95, 0.94], seed=2, elapsed=[4, 10, 16, 22])
    return tmp_path


def assert_bad_input(result, *pieces):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit, not a crash
    assert result.stdout == ""
    err = result.stderr.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err
    for piece in pieces:
        assert piece in err, err


# --- numbers over seeds ---------------------------------------------------------------------------


def test_three_seeds_form_one_group_with_mean_and_sample_std(three_seeds):
    g = as_json(invoke(*sorted(three_seeds.glob("*.csv")), "--format", "json"))["groups"]
    assert len(g) == 1
    g = g[0]
    assert g["n"] == 3
    assert g["final_test_accuracy_mean"] == pytest.approx(0.92)
    assert g["final_test_accuracy_std"] == pytest.approx(0.02)  # sample std, ddof=1
    assert g["best_test_accuracy_mean"] == pytest.approx((0.95 + 0.93 + 0.96) / 3)
    assert g["best_test_accuracy_std"] == pytest.approx(statistics.stdev([0.95, 0.93, 0.96]))  # ddof=1
    assert g["best_round_mean"] == pytest.approx(7 / 3)
    assert g["total_seconds_mean"] == pytest.approx(23.0)
    assert g["total_seconds_std"] == pytest.approx(1.0)
    assert g["total_bytes_mean"] == 4 * 150
    assert g["rounds_completed_min"] == g["rounds_completed_max"] == 4
    assert g["status"] == "finished"
    assert g["personal_acc_mean_mean"] == pytest.approx(0.82)
    assert g["personal_acc_p10_mean"] == pytest.approx(0.72)
    assert sorted(r["seed"] for r in g["runs"]) == [0, 1, 2]
    assert {r["file"]: r["best_round"] for r in g["runs"]} == {"fedavg-s0": 2, "fedavg-s1": 3, "fedavg-s2": 2}


def test_library_api(three_seeds):
    summary = compare_runs([three_seeds / "*.csv"], target=0.93)
    table = summary.table
    assert list(table["n"]) == [3]
    assert table.loc[0, "final_test_accuracy_mean"] == pytest.approx(0.92)
    assert table.loc[0, "rounds_to_target_mean"] == pytest.approx((2 + 3 + 2) / 3)
    assert table.loc[0, "time_to_target_seconds_mean"] == pytest.approx((11 + 18 + 10) / 3)
    assert table.loc[0, "seeds_reached_target"] == 3


def test_one_seed_has_no_std(tmp_path):
    write_run(tmp_path, "solo", [0.5, 0.6])
    g = as_json(invoke(tmp_path / "solo.csv", "--format", "json"))["groups"][0]
    assert g["n"] == 1 and g["final_test_accuracy_mean"] == pytest.approx(0.6)
    assert g["final_test_accuracy_std"] is None
    md = invoke(tmp_path / "solo.csv", "--format", "markdown").stdout
    assert "0.600" in md and "±" not in md.split("\n\n")[0]


def test_rounds_and_time_to_target(three_seeds):
    doc = as_json(invoke(three_seeds, "--target", "0.93", "--format", "json"))
    g = doc["groups"][0]
    # first round >= 0.93: seed0 round 2 (t=11), seed1 round 3 (t=18), seed2 round 2 (t=10)
    assert g["seeds_reached_target"] == 3
    assert g["rounds_to_target_mean"] == pytest.approx(7 / 3)
    assert g["rounds_to_target_std"] == pytest.approx(math.sqrt(1 / 3))
    assert g["time_to_target_seconds_mean"] == pytest.approx(13.0)
    assert g["time_to_target_seconds_std"] == pytest.approx(math.sqrt(((11 - 13) ** 2 + 25 + 9) / 2))
    assert doc["target"] == 0.93
    md = invoke(three_seeds, "--target", "0.93", "--format", "markdown").stdout
    assert "13.0 ± 4.4 s" in md


def test_target_not_reached_says_so_with_the_best(tmp_path):
    write_run(tmp_path, "a", [0.90, 0.953, 0.95])
    md = invoke(tmp_path / "a.csv", "--target", "0.97", "--format", "markdown").stdout
    assert "not reached (best 0.953)" in md
    g = as_json(invoke(tmp_path / "a.csv", "--target", "0.97", "--format", "json"))["groups"][0]
    assert g["seeds_reached_target"] == 0 and g["rounds_to_target_mean"] is None


def test_target_reached_by_some_seeds_only(three_seeds):
    # 0.955 is reached only by seed 2 (0.96 at round 2); the others' best is 0.95
    md = invoke(three_seeds, "--target", "0.955", "--format", "markdown").stdout
    assert "reached by 1/3 seeds only (others' best 0.950)" in md
    g = as_json(invoke(three_seeds, "--target", "0.955", "--format", "json"))["groups"][0]
    assert g["seeds_reached_target"] == 1 and g["rounds_to_target_mean"] is None


def test_target_outside_0_1_for_accuracy_is_an_error(three_seeds):
    assert_bad_input(invoke(three_seeds, "--target", "97"), "did you mean --target 0.97")


# --- grouping and names ---------------------------------------------------------------------------


def test_grouping_over_seeds_and_names_by_differing_keys(tmp_path):
    for s in range(3):  # bookkeeping differs too: device, partition_seed, quiet
        write_run(tmp_path, f"avg-{s}", [0.5, 0.6], seed=s, device="cpu" if s else "cuda", partition_seed=s,
                  quiet=bool(s))
    for s in range(2):
        write_run(tmp_path, f"prox-small-{s}", [0.5, 0.7], seed=s, algo="fedprox", mu=0.001)
    write_run(tmp_path, "prox-big-0", [0.5, 0.65], algo="fedprox", mu=0.1)
    doc = as_json(invoke(tmp_path, "--format", "json"))
    names = {g["group"]: g["n"] for g in doc["groups"]}
    # FedAvg's name leaves out mu (FedAvg ignores it); default sort is by final accuracy, best first
    assert names == {"algo=fedprox mu=0.001": 2, "algo=fedprox mu=0.1": 1, "algo=fedavg": 3}
    assert [g["group"] for g in doc["groups"]] == ["algo=fedprox mu=0.001", "algo=fedprox mu=0.1",
                                                   "algo=fedavg"]
    assert group(doc, "algo=fedprox mu=0.1")["differing"] == {"algo": "fedprox", "mu": 0.1}


def test_unused_key_is_shown_when_it_is_the_only_difference(tmp_path):
    write_run(tmp_path, "a", [0.5], mu=0.01)
    write_run(tmp_path, "b", [0.6], mu=0.1)
    names = [g["group"] for g in as_json(invoke(tmp_path, "--format", "json"))["groups"]]
    assert names == ["mu=0.1", "mu=0.01"]


def test_partition_scheme_is_one_key_and_other_keys_split_groups(tmp_path):
    write_run(tmp_path, "iid", [0.5], lr=0.1)
    write_run(tmp_path, "dir", [0.6], dirichlet=0.5, lr=0.1)
    write_run(tmp_path, "dir-lr", [0.7], dirichlet=0.5, lr=0.05)
    names = [g["group"] for g in as_json(invoke(tmp_path, "--format", "json"))["groups"]]
    assert names == ["partition=dirichlet(0.5) lr=0.05", "partition=dirichlet(0.5) lr=0.1",
                     "partition=iid lr=0.1"]


def test_partition_files_group_by_their_scheme_not_their_path(tmp_path):
    write_run(tmp_path, "a", [0.5], seed=0, partition="p0.json", part=("dirichlet", 0.5))
    write_run(tmp_path, "b", [0.6], seed=1, partition="p1.json", part=("dirichlet", 0.5), clients=10)
    write_run(tmp_path, "c", [0.7], seed=0, partition="p2.json", part=("dirichlet", 0.1))
    doc = as_json(invoke(tmp_path, "--format", "json"))
    assert {g["group"]: g["n"] for g in doc["groups"]} == {"partition=dirichlet(0.1)": 1,
                                                          "partition=dirichlet(0.5)": 2}


def test_two_runs_with_the_same_seed_in_a_group_are_flagged(tmp_path):
    (tmp_path / "x").mkdir()
    write_run(tmp_path, "a", [0.5], seed=3)
    write_run(tmp_path / "x", "a", [0.6], seed=3)
    result = invoke(tmp_path / "a.csv", tmp_path / "x" / "a.csv", "--format", "csv")
    assert result.exit_code == 0 and "more than one run with seed 3" in result.stderr


def test_one_experiment_is_named_by_its_files(tmp_path):
    for s in range(2):
        write_run(tmp_path, f"digits-fedavg-mlp-seed{s}", [0.5], seed=s)
    doc = as_json(invoke(tmp_path, "--format", "json"))
    assert [g["group"] for g in doc["groups"]] == ["digits-fedavg-mlp"]


def test_missing_json_warns_and_groups_by_file_name(three_seeds):
    write_run(three_seeds, "orphan", [0.99, 0.98], record=False)
    result = invoke(three_seeds, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr and "orphan.json" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))  # stdout: the CSV and nothing else
    assert [r["group"] for r in rows] == ["orphan", "fedavg-s0, fedavg-s1, fedavg-s2"]
    assert rows[0]["status"] == "unknown" and rows[0]["n"] == "1"
    assert float(rows[0]["final_test_accuracy_mean"]) == pytest.approx(0.98)


def test_duplicate_paths_are_read_once(three_seeds):
    p = three_seeds / "fedavg-s0.csv"
    doc = as_json(invoke(p, p, three_seeds / "fedavg-s0.json", "--format", "json"))
    assert doc["groups"][0]["n"] == 1


# --- status ---------------------------------------------------------------------------------------


def test_diverged_running_and_shorter_runs_are_shown_with_their_status(three_seeds):
    write_run(three_seeds, "boom", [0.3, 0.4], lr=9.0, status="diverged",
              detail="training diverged in round 3 (client 4: loss or weights became NaN/inf)")
    write_run(three_seeds, "live", [0.3], lr=0.5, status="running")
    doc = as_json(invoke(three_seeds, "--format", "json"))
    assert group(doc, "lr=9")["status"] == "diverged at round 3"
    assert group(doc, "lr=9")["rounds_completed_max"] == 2
    assert group(doc, "lr=0.5")["status"] == "running"
    md = invoke(three_seeds, "--format", "markdown").stdout
    assert "diverged at round 3" in md and "| running |" in md


def test_runs_with_no_rounds_yet_are_shown_when_their_record_says_why(three_seeds):
    write_run(three_seeds, "starting", [], status="running", lr=0.5)
    write_run(three_seeds, "boom", [], status="diverged", lr=1e9,
              detail="training diverged in round 1 (client 0: loss or weights became NaN/inf)")
    (three_seeds / "boom.csv").write_text("")  # 0 bytes, but the record explains it
    result = invoke(three_seeds, "--format", "markdown")
    assert result.exit_code == 0, result.output
    assert "| lr=1e+09 | 1 | – |" in result.stdout and "diverged at round 1" in result.stdout
    assert "| 0 of 4 | running |" in result.stdout
    only = invoke(three_seeds / "boom.csv")
    assert_bad_input(only, "no run has written a round yet (boom.csv: diverged at round 1)")


# --- metric, sort ---------------------------------------------------------------------------------


def test_loss_metric_is_lower_is_better(tmp_path):
    write_run(tmp_path, "a", [0.5, 0.6, 0.7], loss=[0.9, 0.3, 0.4], elapsed=[1, 2, 3], lr=0.1)
    write_run(tmp_path, "b", [0.5, 0.6, 0.7], loss=[0.8, 0.5, 0.2], elapsed=[1, 2, 3], lr=0.2)
    doc = as_json(invoke(tmp_path, "--metric", "test_loss", "--target", "0.35", "--format", "json"))
    assert doc["lower_is_better"] is True
    assert [g["group"] for g in doc["groups"]] == ["lr=0.2", "lr=0.1"]  # final 0.2 beats 0.4
    a = group(doc, "lr=0.1")
    assert a["final_test_loss_mean"] == pytest.approx(0.4)
    assert a["best_test_loss_mean"] == pytest.approx(0.3) and a["best_round_mean"] == 2
    assert a["rounds_to_target_mean"] == 2 and a["time_to_target_seconds_mean"] == 2
    assert group(doc, "lr=0.2")["rounds_to_target_mean"] == 3


def test_sort_by_column_key_or_label(tmp_path):
    write_run(tmp_path, "fast", [0.5, 0.6], elapsed=[1, 2], lr=0.1)
    write_run(tmp_path, "slow", [0.5, 0.9], elapsed=[10, 20], lr=0.2)
    write_run(tmp_path, "mid", [0.5, 0.7], elapsed=[5, 6], lr=0.3)
    order = lambda *a: [r["group"] for r in csv.DictReader(io.StringIO(invoke(tmp_path, *a).stdout))]  # noqa: E731
    assert order("--format", "csv") == ["lr=0.2", "lr=0.3", "lr=0.1"]
    assert order("--format", "csv", "--sort", "total_time") == ["lr=0.1", "lr=0.3", "lr=0.2"]
    assert order("--format", "csv", "--sort", "total time") == ["lr=0.1", "lr=0.3", "lr=0.2"]
    assert order("--format", "csv", "--sort", "group") == ["lr=0.1", "lr=0.2", "lr=0.3"]
    assert_bad_input(invoke(tmp_path, "--sort", "speed"), "unknown --sort column 'speed'", "total_time")
    assert_bad_input(invoke(tmp_path, "--sort", "rounds to target"), "needs --target")


def test_personal_columns_are_omitted_when_no_run_has_them(tmp_path):
    write_run(tmp_path, "a", [0.5, 0.6], personal=False)
    md = invoke(tmp_path, "--format", "markdown").stdout
    assert "personal acc" not in md
    assert "personal_acc_mean_mean" not in invoke(tmp_path, "--format", "csv").stdout


# --- outputs --------------------------------------------------------------------------------------


def test_rich_table_has_every_labelled_column(three_seeds):
    result = invoke(three_seeds, "--target", "0.93")
    assert result.exit_code == 0, result.output
    for label in ("group", "seeds", "final test_accuracy", "best test_accuracy", "best round",
                  "rounds to target", "time to target", "total time", "total bytes", "personal acc mean",
                  "personal acc worst-10%", "rounds", "status", "0.920 ± 0.020", "600 B", "sample std"):
        assert label in result.stdout, label
    assert "\x1b[" not in result.stdout


def test_markdown_is_a_pipe_table_with_a_header_row_and_bold_best(tmp_path):
    write_run(tmp_path, "a", [0.5, 0.6], lr=0.1)
    write_run(tmp_path, "b", [0.5, 0.8], lr=0.2)
    result = invoke(tmp_path, "--format", "markdown")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| group | seeds | final test_accuracy | best test_accuracy | best round |")
    assert set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    assert lines[2].startswith("| lr=0.2 | 1 | **0.800** |")
    assert "\x1b[" not in result.stdout and "[bold" not in result.stdout and result.stderr == ""


def test_csv_export_parses_back(three_seeds):
    result = invoke(three_seeds, "--format", "csv", "--target", "0.93")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 1
    r = rows[0]
    assert float(r["final_test_accuracy_mean"]) == pytest.approx(0.92)
    assert float(r["final_test_accuracy_std"]) == pytest.approx(0.02)
    assert float(r["time_to_target_seconds_mean"]) == pytest.approx(13.0)
    assert r["seeds"] == "0;1;2" and r["n"] == "3" and r["target"] == "0.93"


def test_plot_writes_png(three_seeds, tmp_path):
    for x in ("round", "time"):
        out = tmp_path / f"curves-{x}.png"
        result = invoke(three_seeds, "--plot", out, "--x", x, "--target", "0.93", "--format", "csv")
        assert result.exit_code == 0, result.output
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
        assert result.stdout.startswith("group,")  # the plot note goes to stderr
    assert_bad_input(invoke(three_seeds, "--plot", tmp_path / "nope" / "c.png"), "does not exist")


def test_unexpanded_glob_is_expanded(three_seeds):
    doc = as_json(invoke(three_seeds / "fedavg-*.csv", "--format", "json"))
    assert doc["groups"][0]["n"] == 3


# --- bad input: one line on stderr, exit 2 --------------------------------------------------------


def test_bad_inputs(tmp_path, three_seeds):
    assert_bad_input(invoke(tmp_path / "nope.csv"), "nope.csv does not exist")
    assert_bad_input(invoke(tmp_path / "nothing-*.csv"), "no file matches")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert_bad_input(invoke(tmp_path / "other.csv"), "not a fedsim CSV", "missing columns round, clients")
    (tmp_path / "zero.csv").write_text("")
    assert_bad_input(invoke(tmp_path / "zero.csv"), "zero.csv is empty (0 bytes)")
    (tmp_path / "header.csv").write_text(",".join(CSV_COLUMNS) + "\n")
    assert_bad_input(invoke(tmp_path / "header.csv"), "header.csv is empty (header only)")
    assert_bad_input(invoke(three_seeds / "fedavg-s0.csv", "--metric", "accuracy"),
                     "no run has values for metric 'accuracy'", "available: clients, train_loss, test_loss")
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    assert_bad_input(invoke(tmp_path / "binary.csv"), "binary.csv is not a fedsim CSV")
    bad = write_run(tmp_path, "bad", [0.5])
    bad.write_text(bad.read_text().replace("0.5,", "oops,", 1))
    assert_bad_input(invoke(bad), "non-numeric value 'oops'")
    (tmp_path / "lost.json").write_text("{}")
    assert_bad_input(invoke(tmp_path / "lost.json"), "lost.json is a run record without its CSV")


def test_library_reports_warnings_through_the_callback(tmp_path):
    write_run(tmp_path, "a", [0.5], record=False)
    seen = []
    runs = read_runs([tmp_path], on_warning=seen.append)
    assert len(seen) == 1 and "a.json not found" in seen[0]
    summary = summarize(group_runs(runs, on_warning=seen.append), "test_accuracy")
    assert summary.groups[0].name == "a" and summary.runs[0][0].status == "unknown"


def test_best_cells_are_marked_and_a_run_cut_short_is_not_cheapest(tmp_path):
    from fedsim.compare import display_rows, render_table

    write_run(tmp_path, "a", [0.5, 0.6], lr=0.1, elapsed=[1, 2])
    write_run(tmp_path, "b", [0.5, 0.8], lr=0.2, elapsed=[3, 4])
    write_run(tmp_path, "c", [0.4], lr=0.3, elapsed=[0.5], status="diverged", detail="diverged in round 2")
    summary = compare_runs([tmp_path])
    cols, rows, best = display_rows(summary)
    marked = {cols[j].key: rows[i][0] for i, row in enumerate(best) for j, m in enumerate(row) if m}
    assert marked["final"] == "lr=0.2" and marked["total_time"] == "lr=0.1"
    table = render_table(summary)
    final = next(c for c in table.columns if c.header == "final test_accuracy")
    assert [str(t.style) for t in final._cells] == ["bold green", "", ""]
