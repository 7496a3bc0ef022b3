"""A run's files: one run at a time holds a name (the second is refused, whatever it asks), and a disk that
fills up leaves the CSV on a whole row with one error line."""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedsim import files, metrics
from fedsim.errors import FedsimError
from fedsim.metrics import CSV_COLUMNS, RunWriter

RECORD = {"started": "2024-01-01T00:00:00", "status": "running"}


def row(r: int) -> dict:
    return {c: r if c in metrics.INT_COLUMNS else 0.5 for c in CSV_COLUMNS}


def snapshot(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def csv_lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n")  # ends on a whole row
    lines = text.splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert all(len(line.split(",")) == len(CSV_COLUMNS) for line in lines)
    return lines


def lock_holder(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# One name, one run


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_second_writer_of_a_live_run_is_refused_and_touches_none_of_its_files(tmp_path, overwrite):
    live = RunWriter(tmp_path, "x", False, dict(RECORD))
    live.append(row(1))
    before = snapshot(tmp_path)

    with pytest.raises(FedsimError, match=rf"run 'x' in .* is in use by another fedsim process \(pid {os.getpid()}\)"):
        RunWriter(tmp_path, "x", overwrite, dict(RECORD))
    with pytest.raises(FedsimError, match="is in use"):  # a resume takes the same lock
        RunWriter(tmp_path, "x", False, dict(RECORD), resume_round=1)
    assert snapshot(tmp_path) == before

    live.append(row(2))  # the live run goes on, alone in its files
    live.close("finished")
    assert csv_lines(tmp_path / "x.csv")[1:] == ["1,1,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,1,1,0.5,0.5",
                                                 "2,2,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,2,2,0.5,0.5"]
    assert json.loads((tmp_path / "x.json").read_text())["status"] == "finished"


def test_a_closed_run_releases_its_name(tmp_path):
    RunWriter(tmp_path, "x", False, dict(RECORD)).close("finished")
    assert not (tmp_path / ".x.lock").exists()

    again = RunWriter(tmp_path, "x", True, dict(RECORD))
    again.close("finished")
    resumed = RunWriter(tmp_path, "x", False, dict(RECORD), resume_round=0)
    resumed.close("finished")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv", "x.json"]


def test_a_writer_that_fails_to_start_releases_the_name(tmp_path):
    RunWriter(tmp_path, "x", False, dict(RECORD)).close("finished")
    with pytest.raises(FedsimError, match="already exists"):
        RunWriter(tmp_path, "x", False, dict(RECORD))
    RunWriter(tmp_path, "x", True, dict(RECORD)).close("finished")  # not refused as "in use"


def test_a_run_killed_with_sigkill_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from fedsim.metrics import RunWriter
        RunWriter({str(tmp_path)!r}, "x", False, {RECORD!r})
        time.sleep(60)
        """)])
    try:
        deadline = time.monotonic() + 30
        while lock_holder(tmp_path / ".x.lock") != str(holder.pid):
            assert holder.poll() is None and time.monotonic() < deadline, "the holder did not take the lock"
            time.sleep(0.05)
        with pytest.raises(FedsimError, match=rf"in use by another fedsim process \(pid {holder.pid}\)"):
            RunWriter(tmp_path, "x", True, dict(RECORD))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)

    RunWriter(tmp_path, "x", True, dict(RECORD)).close("finished")


# A full disk


class DiskFillsAt(io.FileIO):
    """A file on a disk that fills up at write number `full_at`: that write stores half its bytes (as a
    kernel does with the space left), every later one fails with ENOSPC (calls `after_full`)."""

    full_at = 3
    after_full = staticmethod(no_space)

    def write(self, data):
        self.writes = getattr(self, "writes", 0) + 1
        if self.writes < self.full_at:
            return super().write(data)
        if self.writes == self.full_at:
            return super().write(bytes(data)[: len(data) // 2])
        self.after_full()


def filling_disk(path, mode, buffering):
    return DiskFillsAt(path, mode)


def test_a_full_disk_leaves_whole_rows_and_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "open", filling_disk, raising=False)  # writes: the header, row 1, row 2
    writer = RunWriter(tmp_path, "x", False, dict(RECORD))
    writer.append(row(1))

    with pytest.raises(FedsimError, match=r"cannot write run CSV .*x\.csv: No space left on device; it ends on "
                                          r"round 1's row; free space, then continue with `fedsim train --resume"):
        writer.append(row(2))
    assert len(csv_lines(tmp_path / "x.csv")) == 2 and [r["round"] for r in writer.rows] == [1]
    with pytest.raises(FedsimError, match="an earlier write failed"):
        writer.append(row(3))
    assert len(csv_lines(tmp_path / "x.csv")) == 2

    writer.close("stopped", "stopped after round 1")
    assert json.loads((tmp_path / "x.json").read_text())["status"] == "stopped"
    assert not (tmp_path / ".x.lock").exists()


def test_ctrl_c_between_two_parts_of_a_row_leaves_whole_rows(tmp_path, monkeypatch):
    def interrupt():
        raise KeyboardInterrupt

    monkeypatch.setattr(DiskFillsAt, "after_full", staticmethod(interrupt))
    monkeypatch.setattr(metrics, "open", filling_disk, raising=False)
    writer = RunWriter(tmp_path, "x", False, dict(RECORD))
    writer.append(row(1))
    with pytest.raises(KeyboardInterrupt):
        writer.append(row(2))
    writer.close("stopped")
    assert len(csv_lines(tmp_path / "x.csv")) == 2


def test_a_full_disk_while_resumed_cuts_back_to_the_kept_rows(tmp_path, monkeypatch):
    writer = RunWriter(tmp_path, "x", False, dict(RECORD))
    for r in (1, 2, 3):
        writer.append(row(r))
    writer.close("stopped")

    monkeypatch.setattr(DiskFillsAt, "full_at", 1)  # the reopened file's first write
    monkeypatch.setattr(metrics, "open", filling_disk, raising=False)
    resumed = RunWriter(tmp_path, "x", False, dict(RECORD), resume_round=2)
    with pytest.raises(FedsimError, match="it ends on round 2's row"):
        resumed.append(row(3))
    resumed.close("stopped")
    assert [line.split(",")[0] for line in csv_lines(tmp_path / "x.csv")[1:]] == ["1", "2"]


def test_when_the_record_cannot_be_written_either_close_raises_nothing_more(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "open", filling_disk, raising=False)
    writer = RunWriter(tmp_path, "x", False, dict(RECORD))
    writer.append(row(1))
    with pytest.raises(FedsimError, match="No space left"):
        writer.append(row(2))
    monkeypatch.setattr(Path, "write_text", no_space)

    writer.close("stopped")  # the append's error already names the cause
    assert json.loads((tmp_path / "x.json").read_text())["status"] == "running"  # the last record that fit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv", "x.json"]  # no temporary file, no lock


def test_a_record_that_cannot_be_written_at_close_is_one_error_line(tmp_path, monkeypatch):
    writer = RunWriter(tmp_path, "x", False, dict(RECORD))
    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(FedsimError, match=r"cannot write run record .*x\.json: No space left on device"):
        writer.close("finished")
    assert not (tmp_path / ".x.lock").exists()


def test_the_os_cutting_a_row_short_leaves_whole_rows(tmp_path):
    """A real short write: the file size limit (RLIMIT_FSIZE) stops the second row part way."""
    header = len(",".join(CSV_COLUMNS)) + 1
    row_bytes = len(",".join(metrics._format(v) for v in row(1).values())) + 1
    script = textwrap.dedent(f"""
        import resource, signal
        from fedsim.errors import FedsimError
        from fedsim.metrics import RunWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, ({header + row_bytes + row_bytes // 2},) * 2)
        writer = RunWriter({str(tmp_path)!r}, "x", False, {RECORD!r})
        writer.append({row(1)!r})
        try:
            writer.append({row(2)!r})
        except FedsimError as e:
            print(e)
        writer.close("stopped")
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "cannot write run CSV" in done.stdout and "File too large; it ends on round 1's row" in done.stdout
    assert len(csv_lines(tmp_path / "x.csv")) == 2
    assert json.loads((tmp_path / "x.json").read_text())["status"] == "stopped"


def test_a_resume_drops_a_row_cut_off_without_its_newline(tmp_path):
    writer = RunWriter(tmp_path, "x", False, dict(RECORD))
    writer.append(row(1))
    writer.close("stopped")
    with open(tmp_path / "x.csv", "a") as csv:
        csv.write("2,2,0.5,0.")  # a kill part way through a write

    resumed = RunWriter(tmp_path, "x", False, dict(RECORD), resume_round=5)
    resumed.close("stopped")
    assert [r["round"] for r in resumed.rows] == [1] and len(csv_lines(tmp_path / "x.csv")) == 2


def test_a_checkpoint_on_a_full_disk_is_one_error_line_and_no_file(tmp_path, monkeypatch):
    import torch

    from fedsim.checkpoint import Progress, save_checkpoint
    from fedsim.config import Config
    from fedsim.core.hooks import ServerState
    from fedsim.identity import RunIdentity

    real_open = open
    monkeypatch.setattr(files, "open", lambda path, mode: real_open("/dev/full", mode), raising=False)
    progress = Progress(1, ServerState({"w": torch.zeros(10_000)}, {}), {})
    with pytest.raises(FedsimError, match=r"cannot write checkpoint .*x\.ckpt: No space left on device"):
        save_checkpoint(tmp_path / "x.ckpt", Config(), RunIdentity({}), metrics.CsvState("", 0, None), progress)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("checkpoint_every", [1, 10])  # 10: the run checkpoints round 1 as it stops
def test_a_run_whose_disk_fills_up_stops_on_whole_rows_and_resumes_to_the_same_numbers(tmp_path, monkeypatch,
                                                                                      checkpoint_every):
    import pandas as pd

    import fedsim

    options = dict(rounds=3, clients=5, fraction=0.6, local_steps=5, quiet=True, executor="sequential", name="x",
                   checkpoint_every=checkpoint_every)
    fedsim.run(fedsim.Config(out_dir=str(tmp_path / "uninterrupted"), **options))
    with monkeypatch.context() as patched:
        patched.setattr(metrics, "open", filling_disk, raising=False)  # writes: the header, row 1, row 2
        with pytest.raises(FedsimError, match="No space left on device; it ends on round 1's row"):
            fedsim.run(fedsim.Config(out_dir=str(tmp_path), **options))
    assert len(csv_lines(tmp_path / "x.csv")) == 2
    record = json.loads((tmp_path / "x.json").read_text())
    assert record["status"] == "stopped"
    assert record["status_detail"].startswith("stopped after round 1; checkpoint at round 1")

    fedsim.run(resume=tmp_path / "x.csv")

    def numbers(csv):
        return pd.read_csv(csv).drop(columns=list(metrics.TIME_COLUMNS))

    pd.testing.assert_frame_equal(numbers(tmp_path / "x.csv"), numbers(tmp_path / "uninterrupted" / "x.csv"))
