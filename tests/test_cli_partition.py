"""`fedsim partition` through Typer's CliRunner, and the options it shares with `fedsim train`."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing

import pytest
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.commands import options
from fedsim.commands.partition import partition
from fedsim.config import FIELDS
from fedsim.data.partition import load_partition

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["partition", *args])


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDSIM_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("COLUMNS", "120")
    return tmp_path


def test_default_run_prints_table_and_writes_file(in_tmp):
    result = run()
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "digits, iid, 10 clients, seed 0" in out
    assert "client  train  test" in out
    assert "client train size: min 144 / median 144 / max 145" in out
    assert "labels per client: mean 10.00" in out
    assert "mean total-variation distance" in out
    path = "results/partitions/digits-iid-10c-seed0.fsp"
    assert f"saved partition to {path} (use: fedsim train --partition {path})" in out
    part = load_partition(in_tmp / path)
    assert part.num_clients == 10 and part.meta["scheme"] == "iid"
    first = (in_tmp / path).read_bytes()
    assert run().exit_code == 0 and (in_tmp / path).read_bytes() == first  # same arguments, same bytes


def test_schemes_show_and_plot(in_tmp):
    result = run("--clients", "20", "--shards", "2", "--show", "3", "--plot", "heat.png")
    assert result.exit_code == 0, result.output
    assert "shards=2, 20 clients" in result.stdout
    assert "... 17 more clients" in result.stdout
    assert (in_tmp / "heat.png").read_bytes().startswith(b"\x89PNG")
    assert (in_tmp / "results/partitions/digits-shards2-20c-seed0.fsp").exists()
    result = run("--clients", "7", "--labels", "2", "--client-test-fraction", "0.25", "--out", "p.fsp")
    assert result.exit_code == 0, result.output
    assert "labels per client: mean 2.00 / min 2 / max 2" in result.stdout
    assert load_partition(in_tmp / "p.fsp").meta["client_test_source"] == "train"
    result = run("--inspect", "p.fsp", "--show", "2")
    assert result.exit_code == 0, result.output
    assert "labels=2, 7 clients" in result.stdout and "saved partition" not in result.stdout
    for args in (["--dirichlet", "0.5", "--seed", "3"], ["--quantity-skew", "2"], ["--iid", "--clients", "3"]):
        result = run(*args)
        assert result.exit_code == 0, result.output


def test_dataset_with_devices_defaults_to_natural(in_tmp):
    result = run("--dataset", "synthetic", "--show", "0")
    assert result.exit_code == 0, result.output
    assert "synthetic, natural, 30 clients, seed 0" in result.stdout and "client  train" not in result.stdout
    assert "the dataset's own per-device test split" in result.stdout
    result = run("--dataset", "synthetic", "--clients", "12", "--dirichlet", "1", "--out", "s.fsp")
    assert result.exit_code == 0, result.output
    assert load_partition(in_tmp / "s.fsp").num_clients == 12
    assert run("--inspect", "s.fsp").exit_code == 0  # reloads synthetic with 12 devices


@pytest.mark.parametrize("args, message", [
    (["--dirichlet", "0"], "Dirichlet alpha (--dirichlet) must be a positive number, got 0"),
    (["--dirichlet", "-0.5"], "must be a positive number"),
    (["--clients", "5000"], "cannot split 1442 samples among 5000 clients"),
    (["--clients", "0"], "--clients 1 or more"),
    (["--clients", "40", "--shards", "100"], "4000 shards, but only 1442 samples"),
    (["--labels", "11"], "--labels 11 asks for more labels per client than the 10 classes"),
    (["--dirichlet", "0.01", "--clients", "100", "--min-size", "14"], "no draw in 100 tries"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--iid", "--dirichlet", "0.5"], "choose one partition scheme"),
    (["--shards", "2", "--labels", "2"], "choose one partition scheme, not --shards and --labels"),
    (["--natural"], "no natural per-device split"),
    (["--dataset", "mnist"], "mnist"),  # no data files under $FEDSIM_DATA
    (["--out", "taken.txt/p.fsp"], "taken.txt is not a folder"),
    (["--out", "taken.txt"], "taken.txt exists and is not a fedsim partition file"),
    (["--client-test-fraction", "1"], "between 0 and 1"),
    (["--plot", "heat.jpg"], ".png, .pdf or .svg"),
    (["--show", "-1"], "--show must be 0 or more"),
    (["--inspect", "garbage.fsp"], "not a fedsim partition file"),
    (["--inspect", "missing.fsp"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2(in_tmp, args, message):
    (in_tmp / "taken.txt").write_text("keep me")
    (in_tmp / "garbage.fsp").write_bytes(b"\x00garbage" * 100)
    result = run(*args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert message in err
    assert err.startswith("error: ") and "\n" not in err
    assert "Traceback" not in result.output
    assert (in_tmp / "taken.txt").read_text() == "keep me"
    assert not (in_tmp / "results").exists()


def test_corrupt_partition_file(in_tmp):
    assert run("--out", "p.fsp").exit_code == 0
    data = bytearray((in_tmp / "p.fsp").read_bytes())
    data[-100] ^= 0xFF
    (in_tmp / "p.fsp").write_bytes(bytes(data))
    result = run("--inspect", "p.fsp")
    assert result.exit_code == 2 and "is damaged (checksum mismatch" in result.stderr
    (in_tmp / "p.fsp").write_bytes(bytes(data[:500]))
    result = run("--inspect", "p.fsp")
    assert result.exit_code == 2 and "damaged (truncated" in result.stderr


def test_option_names_are_config_fields_and_datasets_listed():
    from fedsim.data.datasets import dataset_names

    hints = typing.get_type_hints(partition, include_extras=True)
    for name, param in inspect.signature(partition).parameters.items():
        if name in ("out", "plot", "show", "inspect"):
            continue
        assert name in FIELDS, name
        option = typing.get_args(hints[name])[1]
        decls = (option.default, *option.param_decls)  # Annotated: Option("--x") puts "--x" first
        assert decls == ("--" + name.replace("_", "-"),)
        assert param.default == FIELDS[name].default, name
    for name in dataset_names():
        assert name in options.DATASET_HELP, f"--dataset help misses {name}"


def test_command_modules_import_no_heavy_libraries():
    code = ("import sys, fedsim.commands.partition, fedsim.commands.options; "
            "heavy = {'numpy', 'torch', 'matplotlib', 'pandas'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
