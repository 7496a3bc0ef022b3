"""One source per option: the algorithms' declarations, Config, the CLI and its checks agree; bad values are
refused with one line and exit 2 before anything is written."""

import dataclasses
import inspect
import typing

import pytest
from typer.testing import CliRunner

from fedsim.algorithms import ALGORITHMS, algorithm_class, algorithm_options, options_of
from fedsim.cli import app
from fedsim.commands.train import train
from fedsim.config import FIELDS, Config

runner = CliRunner()
CLI_ONLY = {"ctx", "config", "show_split", "resume", "nproc"}


def test_every_train_option_is_a_config_field_with_its_default():
    hints = typing.get_type_hints(train, include_extras=True)
    names = set()
    for name, param in inspect.signature(train).parameters.items():
        if name in CLI_ONLY:
            continue
        names.add(name)
        assert name in FIELDS, name
        option = typing.get_args(hints[name])[1]
        declared = [d for d in (option.default, *option.param_decls) if isinstance(d, str) and d.startswith("-")]
        assert not declared or "--" + name.replace("_", "-") in declared, name  # none: Typer names it so
        default = param.default.value if hasattr(param.default, "value") else param.default
        assert default == FIELDS[name].default, name
    assert names == set(FIELDS)  # and every Config field is an option


def test_algorithm_options_come_from_the_declarations():
    options = algorithm_options()
    # --mu: FedProx's term, which the asynchronous algorithms add too (0 by default): each its own default
    assert set(options["mu"].algorithms) == {"fedprox", "fedbuff", "fedasync"} and Config().mu is None
    assert algorithm_class("fedprox").Params.from_config(Config()).mu == 0.01
    assert algorithm_class("fedbuff").Params.from_config(Config()).mu == 0.0
    assert options_of("fedadagrad") == {"server_lr", "server_beta1", "server_tau"}  # no beta2: Adagrad has none
    # --server-lr: each algorithm its own default, so Config leaves it unset and the algorithm fills it in
    assert Config().server_lr is None
    keys = algorithm_class("fedavg").Params  # noqa: F841  (FedAvg declares none)
    assert dataclasses.fields(keys) == ()
    for algo, lr in (("scaffold", 1.0), ("fedavgm", 1.0), ("fedadam", 0.01)):
        assert algorithm_class(algo).Params.from_config(Config()).server_lr == lr
        assert algorithm_class(algo).Params.from_config(Config(server_lr=0.5)).server_lr == 0.5
    for algo in ALGORITHMS:
        for name in options_of(algo):
            assert algo in options[name].help  # the help says which algorithms read it


BAD_VALUES = [
    (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"), (["--algo", "fedprox", "--mu", "nan"], "--mu"),
    (["--mu", "inf"], "--mu"), (["--betas", "nan", "0.9"], "--betas"), (["--betas", "2", "0.9"], "--betas"),
    (["--cohort-chunk", "0"], "--cohort-chunk"), (["--server-lr", "-1"], "--server-lr"),
    (["--server-momentum", "1"], "--server-momentum"), (["--momentum", "inf"], "--momentum"),
    (["--clip", "nan"], "--clip"), (["--lr-decay", "inf"], "--lr-decay"), (["--rounds", "0"], "--rounds"),
    (["--dirichlet", "nan"], "--dirichlet"), (["--client-test-fraction", "1"], "--client-test-fraction"),
    (["--head-epochs", "0"], "--head-epochs"), (["--executor", "gpu"], "executor"),
    (["--name", "a/b"], "--name 'a/b' must be a plain file name"), (["--name", ".hidden"], "--name"),
    (["--momentum", "0", "--nesterov"], "--nesterov needs --momentum > 0"),
]


@pytest.mark.parametrize("args,needle", BAD_VALUES)
def test_bad_values_are_one_line_exit_2_and_nothing_written(tmp_path, args, needle):
    result = runner.invoke(app, ["train", "--rounds", "1", "--out-dir", str(tmp_path / "out"), "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("toml,needle", [
    ('rounds = "5"', "rounds must be an integer"), ("rounds = 2.5", "rounds must be an integer"),
    ('lr = "x"', "lr must be a number"), ("betas = 0.9", "betas must be 2 numbers"),
    ("fraction = true", "fraction must be a number"), ('betas = ["a", "b"]', "betas must be 2 numbers"),
    ('quiet = "yes"', "quiet must be true or false"), ("mu = nan", "--mu"), ("lr = inf", "--lr"),
])
def test_toml_values_of_the_wrong_type_are_one_line(tmp_path, toml, needle):
    (tmp_path / "c.toml").write_text(toml + "\n")
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "c.toml"), "--out-dir", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_a_config_that_is_a_folder_is_one_line(tmp_path):
    result = runner.invoke(app, ["train", "--config", str(tmp_path)])
    assert result.exit_code == 2 and "is a folder" in result.output, result.output


def test_resume_with_zero_rounds_is_bad_input(tmp_path):
    out = str(tmp_path)
    assert runner.invoke(app, ["train", "--rounds", "2", "--out-dir", out, "--name", "r", "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", "r", "--out-dir", out, "--rounds", "0"])
    assert result.exit_code == 2 and "--rounds must be >= 1" in result.output, result.output


@pytest.mark.parametrize("args", [["train", "--rounds", "x"], ["train", "--nosuch"], ["train", "--betas", "0.9"],
                                  ["nosuch"], ["compare"], ["partition", "--clients", "y"],
                                  ["train", "--lr", "0.1,0.2"]])
def test_usage_errors_of_the_console_script_are_one_line_exit_2(args):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "fedsim", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert ("fedsim sweep" in result.stderr) == ("," in " ".join(args)), result.stderr  # several values: a sweep
