"""`fedsim train`: parse options into a Config, call `fedsim.run`, show progress and a summary."""

from __future__ import annotations

import inspect
import json
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fedsim.algorithms import algorithm_class, algorithm_options, algorithms_help
from fedsim.commands import arguments_without_nproc, from_command_line, stderr_console, user_errors, with_options
from fedsim.commands.options import (
    PARTITION,
    ClientsOpt,
    ClientTestFractionOpt,
    DataDirOpt,
    DatasetOpt,
    DirichletOpt,
    DownloadOpt,
    EmbeddingsOpt,
    HfClientColumnOpt,
    HfImageColumnOpt,
    HfLabelColumnOpt,
    HfTestSplitOpt,
    HfTextColumnOpt,
    HfTrainSplitOpt,
    IidOpt,
    ImageSizeOpt,
    LabelsOpt,
    MinSizeOpt,
    NaturalOpt,
    NormalizeOpt,
    PartitionSeedOpt,
    QuantitySkewOpt,
    SeedOpt,
    SeqLenOpt,
    ShardsOpt,
    TestFractionOpt,
    VocabSizeOpt,
)


class Optimizer(StrEnum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"


class BN(StrEnum):
    global_ = "global"
    local = "local"


_DATA = "Data"
_ALGO = "Model and algorithm"
_ROUNDS = "Rounds and local training"
_RUN = "Run and output"
_ROBUST = "Robust aggregation and attacks"
_DP = "Differential privacy"
_CLOCK = "Simulated clock and asynchrony"
_COMM = "Communication: compression and secure aggregation"


def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="TOML file of options (same names); flags override it.",
                                                rich_help_panel=_RUN)] = None,
    dataset: DatasetOpt = "digits",
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    partition: Annotated[str | None, typer.Option(help="Partition file written by `fedsim partition` (instead of "
                                                  "a scheme).", rich_help_panel=PARTITION)] = None,
    clients: ClientsOpt = None,
    iid: IidOpt = False,
    dirichlet: DirichletOpt = None,
    shards: ShardsOpt = None,
    labels: LabelsOpt = None,
    quantity_skew: QuantitySkewOpt = None,
    natural: NaturalOpt = False,
    min_size: MinSizeOpt = 10,
    client_test_fraction: ClientTestFractionOpt = None,
    partition_seed: PartitionSeedOpt = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:K.", rich_help_panel=_DATA)] = "auto",
    normalize: NormalizeOpt = None,
    image_size: ImageSizeOpt = None,
    test_fraction: TestFractionOpt = None,
    seq_len: SeqLenOpt = None,
    vocab_size: VocabSizeOpt = None,
    embeddings: EmbeddingsOpt = None,
    hf_image_column: HfImageColumnOpt = None,
    hf_text_column: HfTextColumnOpt = None,
    hf_label_column: HfLabelColumnOpt = None,
    hf_client_column: HfClientColumnOpt = None,
    hf_train_split: HfTrainSplitOpt = None,
    hf_test_split: HfTestSplitOpt = None,
    model: Annotated[str, typer.Option(help="mlp, cnn, cnn-bn, fedavgcnn, lenet5, logreg, char-lstm (shakespeare), "
                                       "femnist-cnn, celeba-cnn (LEAF's), fasttext, transformer, sent140-lstm (text), "
                                       "any torchvision "
                                       "classifier (resnet18, mobilenet_v3_small, vit_b_16, ...), or your own as "
                                       "package.module:attr (an nn.Module class or a factory f(input_shape, "
                                       "num_classes); the current folder is on the import path).",
                                       rich_help_panel=_ALGO)] = "mlp",
    pretrained: Annotated[bool, typer.Option("--pretrained", help="torchvision weights (must be cached).",
                                             rich_help_panel=_ALGO)] = False,
    algo: Annotated[str, typer.Option(help=algorithms_help(), rich_help_panel=_ALGO)] = "fedavg",
    bn: Annotated[BN, typer.Option(help="BatchNorm state: global (averaged) or local (kept per client).",
                                   rich_help_panel=_ALGO)] = BN.global_,
    head: Annotated[str | None, typer.Option(help="Personalized FL: head module name(s), comma-separated "
                                             "(default: the model's final classifier layer).",
                                             rich_help_panel=_ALGO)] = None,
    show_split: Annotated[bool, typer.Option("--show-split", help="Print the model's base/head split and exit.",
                                             rich_help_panel=_ALGO)] = False,
    freeze_base: Annotated[bool, typer.Option("--freeze-base", help="Personalized FL: train only the head "
                                              "locally (frozen backbone).", rich_help_panel=_ALGO)] = False,
    aggregate: Annotated[str, typer.Option(help="Server average of the clients' models: mean (the algorithm's own), "
                                           "median, trimmed-mean (coordinate-wise, Yin et al. 2018), krum, "
                                           "multi-krum (Blanchard et al. 2017).", rich_help_panel=_ROBUST)] = "mean",
    trim_fraction: Annotated[float | None, typer.Option(help="trimmed-mean: drop this fraction of the values at "
                                                        "each end, in [0, 0.5) (default 0.1).",
                                                        rich_help_panel=_ROBUST)] = None,
    krum_f: Annotated[int | None, typer.Option(help="krum, multi-krum: attackers assumed per round; needs clients "
                                               "per round >= 2f + 3 (default: the most that allows).",
                                               rich_help_panel=_ROBUST)] = None,
    krum_m: Annotated[int | None, typer.Option(help="multi-krum: models averaged (default: clients per round - f).",
                                               rich_help_panel=_ROBUST)] = None,
    malicious_fraction: Annotated[float, typer.Option(help="This fraction of the clients (a fixed subset drawn from "
                                                      "--seed) attacks whenever sampled; needs --attack.",
                                                      rich_help_panel=_ROBUST)] = 0.0,
    attack: Annotated[str | None, typer.Option(help="label-flip (trains on labels C-1-y), sign-flip (sends its update "
                                               "times -s), scale (times s), gaussian (sends s x N(0, 1) noise).",
                                               rich_help_panel=_ROBUST)] = None,
    attack_scale: Annotated[float | None, typer.Option(help="s of sign-flip, scale, gaussian (default 4).",
                                                       rich_help_panel=_ROBUST)] = None,
    dp_noise: Annotated[float | None, typer.Option(metavar="Z", help="DP-FedAvg: noise multiplier z (noise std = z x "
                                                   "the clip norm); turns differential privacy on.",
                                                   rich_help_panel=_DP)] = None,
    dp_epsilon: Annotated[float | None, typer.Option(metavar="E", help="DP-FedAvg with the noise multiplier that "
                                                     "spends exactly E in --rounds (printed before training).",
                                                     rich_help_panel=_DP)] = None,
    dp_delta: Annotated[float | None, typer.Option(metavar="D", help="delta of the (epsilon, delta) guarantee "
                                                   "(default min(N^-1.1, 1e-5), N = clients with data).",
                                                   rich_help_panel=_DP)] = None,
    dp_clip: Annotated[str | None, typer.Option(metavar="C|adaptive", help="L2 clip norm of each client's update, or "
                                                "adaptive (Andrew et al. 2021: C tracks a quantile of the norms).",
                                                rich_help_panel=_DP)] = None,
    dp_clip_quantile: Annotated[float, typer.Option(help="Adaptive clipping: the quantile of update norms C tracks.",
                                                    rich_help_panel=_DP)] = 0.5,
    dp_mode: Annotated[str, typer.Option(help="central: the server noises the sum of clipped updates; local: each "
                                         "client noises its own before sending.", rich_help_panel=_DP)] = "central",
    dp_noise_seed: Annotated[int | None, typer.Option(metavar="N", help="Key the noise by N instead of the run's own "
                                                      "hash: runs given the same N draw the same noise (common random "
                                                      "numbers), so their difference is released without noise.",
                                                      rich_help_panel=_DP)] = None,
    compress: Annotated[str | None, typer.Option(
        metavar="CODEC", rich_help_panel=_COMM,
        help="Encode what clients send (a model as its update): qsgd:B (QSGD, B bits a coordinate), int8, topk:F "
             "or randk:F (a fraction F of each tensor's coordinates), sign (1 bit and a scale). bytes_up counts the "
             "encoding exactly.")] = None,
    bucket_size: Annotated[int | None, typer.Option(help="qsgd: coordinates per bucket, each with its norm "
                                                    "(default 512).", rich_help_panel=_COMM)] = None,
    error_feedback: Annotated[bool, typer.Option(
        "--error-feedback", rich_help_panel=_COMM,
        help="Each client keeps what the codec did not send and adds it next time (Stich et al. 2018, "
             "Karimireddy et al. 2019).")] = False,
    compress_down: Annotated[str | None, typer.Option(
        metavar="CODEC", rich_help_panel=_COMM,
        help="Encode the model the server broadcasts: qsgd:B or int8 (the round starts from the decoded "
             "model).")] = None,
    secure_agg: Annotated[str | None, typer.Option(
        metavar="PROTOCOL", rich_help_panel=_COMM,
        help="Simulated secure aggregation: secagg (Bonawitz et al. 2017, masks between all pairs) or secagg+ "
             "(Bell et al. 2020, over a random graph); the server learns only the sum. bytes count its messages.")
    ] = None,
    secagg_bits: Annotated[int, typer.Option(help="Secure aggregation: bits of a field element (2-62); the "
                                             "cohort's sum must fit.", rich_help_panel=_COMM)] = 32,
    secagg_threshold: Annotated[int | None, typer.Option(
        metavar="T", rich_help_panel=_COMM,
        help="Secure aggregation: shares that rebuild a client's secret; fewer surviving holders fail the round "
             "(default: a majority of the holders).")] = None,
    secagg_neighbors: Annotated[int | None, typer.Option(
        metavar="K", rich_help_panel=_COMM,
        help="secagg+: each client's neighbours in the graph, even (default 2 ceil(log2 m), m clients a "
             "round).")] = None,
    secagg_range: Annotated[float, typer.Option(
        metavar="R", rich_help_panel=_COMM,
        help="Secure aggregation: each coordinate is clipped to [-R, R] before quantization (Flower's "
             "default 8).")] = 8.0,
    rounds: Annotated[int, typer.Option(help="Communication rounds.", rich_help_panel=_ROUNDS)] = 20,
    fraction: Annotated[float, typer.Option(help="Fraction of clients trained per round, in (0, 1].",
                                            rich_help_panel=_ROUNDS)] = 1.0,
    min_clients: Annotated[int, typer.Option(help="At least this many clients per round.",
                                             rich_help_panel=_ROUNDS)] = 1,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.", rich_help_panel=_ROUNDS)] = 1,
    local_steps: Annotated[int | None, typer.Option(help="Fixed local steps per round instead of epochs.",
                                                    rich_help_panel=_ROUNDS)] = None,
    batch_size: Annotated[int, typer.Option(help="Local batch size.", rich_help_panel=_ROUNDS)] = 10,
    optimizer: Annotated[Optimizer, typer.Option(help="Client optimizer.",
                                                 rich_help_panel=_ROUNDS)] = Optimizer.sgd,
    lr: Annotated[float, typer.Option(help="Client learning rate.", rich_help_panel=_ROUNDS)] = 0.05,
    momentum: Annotated[float, typer.Option(help="SGD momentum.", rich_help_panel=_ROUNDS)] = 0.0,
    nesterov: Annotated[bool, typer.Option("--nesterov", help="Nesterov momentum.",
                                           rich_help_panel=_ROUNDS)] = False,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.", rich_help_panel=_ROUNDS)] = 0.0,
    betas: Annotated[tuple[float, float], typer.Option(help="Adam/AdamW betas.",
                                                       rich_help_panel=_ROUNDS)] = (0.9, 0.999),
    lr_decay: Annotated[float, typer.Option(help="Multiply the lr by this after every round.",
                                            rich_help_panel=_ROUNDS)] = 1.0,
    clip: Annotated[float | None, typer.Option(help="Clip each step's gradient to this global norm.",
                                               rich_help_panel=_ROUNDS)] = None,
    stragglers: Annotated[float, typer.Option(metavar="P", help="Fraction of each round's clients that straggle "
                                              "(FedProx's systems heterogeneity).", rich_help_panel=_ROUNDS)] = 0.0,
    straggler_policy: Annotated[str | None, typer.Option(
        help="drop: stragglers send nothing; partial: each trains 1..E-1 epochs (uniform) and is averaged in. "
             "Default: the algorithm's (partial for fedprox, as the paper; drop for the others).",
        rich_help_panel=_ROUNDS)] = None,
    client_dropout: Annotated[float, typer.Option(metavar="Q", help="Probability that a sampled client fails "
                                                  "mid-round and sends nothing.", rich_help_panel=_ROUNDS)] = 0.0,
    speed: Annotated[str | None, typer.Option(
        metavar="DIST", rich_help_panel=_CLOCK,
        help="Simulated clock: each client's local training speed in samples per second, drawn once (keyed by "
             "--seed) from lognormal:MU,SIGMA (MU = ln of the median), uniform:A,B or constant:V.")] = None,
    bandwidth: Annotated[str | None, typer.Option(
        metavar="DIST", rich_help_panel=_CLOCK,
        help="Simulated clock: each client's bandwidth in bits per second (up and down alike), a DIST as --speed. "
             "A rate not given costs no time.")] = None,
    profiles: Annotated[str | None, typer.Option(
        metavar="FILE", rich_help_panel=_CLOCK,
        help="Simulated clock: a CSV client,samples_per_s,up_bps,down_bps with a row for every client, instead "
             "of --speed and --bandwidth.")] = None,
    availability: Annotated[str, typer.Option(
        metavar="MODE", rich_help_panel=_CLOCK,
        help="When clients can train: always, bernoulli:P (each sampling, each client with probability P), "
             "diurnal:PERIOD,DUTY (DUTY of every PERIOD seconds, at a phase per client), or a trace CSV "
             "client,start,end of windows. A client offline before it reports sends nothing.")] = "always",
    deadline: Annotated[float | None, typer.Option(
        metavar="SECONDS", rich_help_panel=_CLOCK,
        help="A synchronous round counts only the clients that report within SECONDS of its start (under the "
             "partial straggler policy, a late client trains the steps that fit); asynchronous: a client not "
             "done in SECONDS is dropped.")] = None,
    over_select: Annotated[float | None, typer.Option(
        metavar="F", rich_help_panel=_CLOCK,
        help="Sample ceil(F x the cohort size) clients a round and keep the first cohort-size to report "
             "(Bonawitz et al. 2019).")] = None,
    concurrency: Annotated[int | None, typer.Option(
        metavar="K", rich_help_panel=_CLOCK,
        help="fedbuff, fedasync: clients training at once (default: the cohort size of --fraction, "
             "--min-clients); --rounds counts server updates.")] = None,
    executor: Annotated[str, typer.Option(help="auto (vmap where the model and algorithm allow it) | sequential | "
                                          "vmap.", rich_help_panel=_RUN)] = "auto",
    cohort_chunk: Annotated[int | None, typer.Option(help="vmap: train at most this many clients at once.",
                                                     rich_help_panel=_RUN)] = None,
    compile: Annotated[bool, typer.Option("--compile", help="vmap: torch.compile the local step.",
                                          rich_help_panel=_RUN)] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: vmap times a round on 1 "
                                                "thread and on every core and keeps the faster, re-checked now and "
                                                "then; sequential uses 1).",
                                                rich_help_panel=_RUN)] = None,
    seed: SeedOpt = 0,
    eval_every: Annotated[int, typer.Option(help="Evaluate (and write a CSV row) every N rounds.",
                                            rich_help_panel=_RUN)] = 1,
    eval_sample: Annotated[float | None, typer.Option(
        metavar="N|F", show_default=False, rich_help_panel=_RUN,
        help="Measure test_loss and test_accuracy on N samples (or a fraction F < 1) of the test split instead of all "
             "of it: drawn from --seed once, the same every round (TFF's StackOverflow evaluation).")] = None,
    eval_clients: Annotated[float | None, typer.Option(
        metavar="N|F", show_default=False, rich_help_panel=_RUN,
        help="Measure the personal_accuracy columns over N clients (or a fraction F < 1) instead of all: drawn from "
             "--seed once, the same every round (FedScale's evaluation).")] = None,
    checkpoint_every: Annotated[int, typer.Option(
        metavar="K", rich_help_panel=_RUN,
        help="Write <name>.ckpt (to --resume from) every K rounds, after the last round and when stopped by "
             "Ctrl-C or a kill; 0 = never. The default 10 loses at most 10 rounds to a hard crash (kill -9, out of "
             "memory), while writing the model and every client's state costs little spread over 10 rounds.")] = 10,
    resume: Annotated[str | None, typer.Option(
        metavar="RUN", show_default=False, rich_help_panel=_RUN,
        help="Continue run RUN (its .csv, .json or .ckpt path, or its name in --out-dir) from its checkpoint, "
             "with its options. Only these may change: --rounds (to extend it), --eval-every, --checkpoint-every, "
             "--executor, --cohort-chunk, --compile, --threads, --device, --data-dir, --partition (same content).")
    ] = None,
    nproc: Annotated[int | None, typer.Option(
        metavar="N", show_default=False, rich_help_panel=_RUN,
        help="Run in N processes on this machine, each training its share of every round's cohort (launches "
             "torchrun: the same as `torchrun --nproc-per-node N -m fedsim train ...`); the same CSV.")] = None,
    out_dir: Annotated[str, typer.Option(help="Folder for <name>.csv, <name>.json and <name>.ckpt.",
                                         rich_help_panel=_RUN)] = "results",
    name: Annotated[str | None, typer.Option(help="Run name (default <dataset>-<algo>-<model>-seed<seed>).",
                                             rich_help_panel=_RUN)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run of that name.",
                                            rich_help_panel=_RUN)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.", rich_help_panel=_RUN)] = False,
    log: Annotated[str | None, typer.Option(help="Also log every CSV column per round to tensorboard (under "
                                            "<out-dir>/tb/<name>), mlflow, or both (tensorboard,mlflow).",
                                            rich_help_panel=_RUN)] = None,
    mlflow_uri: Annotated[str | None, typer.Option(help="--log mlflow: tracking URI (default: the file store "
                                                   "./mlruns; or sqlite:///mlflow.db, or a server).",
                                                   rich_help_panel=_RUN)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error raised in your own model "
                                        "code (--model package.module:attr).", rich_help_panel=_RUN)] = False,
    **algorithm_option_values,  # every algorithm's own options (--mu, --lam, ...): see _with_algorithm_options
) -> None:
    """Train with a federated algorithm; one CSV row per evaluated round in --out-dir."""
    from fedsim.checkpoint import load_checkpoint
    from fedsim.config import Config, config_from_toml
    from fedsim.errors import FedsimError
    from fedsim.experiment import run

    with user_errors():
        if nproc is not None and nproc < 1:
            raise FedsimError(f"--nproc must be >= 1 (got {nproc})")
        values = config_from_toml(config) if config is not None else {}
        given = {k: v for k, v in ctx.params.items()
                 if k not in ("config", "show_split", "resume", "nproc") and from_command_line(ctx, k)}
        values.update({k: v.value if isinstance(v, Enum) else v for k, v in given.items()})
        checkpoint = None
        if resume is None:
            cfg = Config(**values)
        else:
            checkpoint = load_checkpoint(resume, values.get("out_dir", Config.out_dir))
            cfg = checkpoint.resumed_config(values)
        cfg.validate()
        if show_split:
            _show_split(cfg)
        elif checkpoint is not None and checkpoint.round >= cfg.rounds:  # exit 0: where it was asked to be
            stderr_console().print(f"run {cfg.run_name()!r} already completed {checkpoint.round} rounds (--rounds "
                                   f"{cfg.rounds}): nothing to resume; pass a larger --rounds to extend it")
        elif nproc is not None and nproc > 1:  # this command again, in nproc processes: torchrun's
            from fedsim.engine.distributed import launch

            csv = Path(cfg.out_dir) / (cfg.run_name() + ".csv")
            raise typer.Exit(launch(nproc, arguments_without_nproc("train"), f"the rows written so far are in {csv}"
                                    + (f"; continue with: fedsim train --resume {csv} --nproc {nproc}"
                                       if cfg.checkpoint_every else "")))
        elif checkpoint is None:
            _train(cfg, lambda on_round: run(cfg, on_round=on_round))
        else:
            _train(cfg, lambda on_round: run(resume=checkpoint, on_round=on_round, **values), checkpoint.round)


def _with_algorithm_options(command):
    """Give `command` one option per algorithm option, from the algorithms' own declarations (their one source:
    name, type, default, help)."""
    added = []
    for option in algorithm_options().values():
        kind = option.type if option.default is not None else option.type | None
        annotation = Annotated[kind, typer.Option("--" + option.name.replace("_", "-"), help=option.help,
                                                  show_default=False, rich_help_panel=_ALGO)]
        added.append(inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.default,
                                       annotation=annotation))
    return with_options(command, added)


train = _with_algorithm_options(train)


def _show_split(cfg) -> None:
    from rich.console import Console

    from fedsim.experiment import load_config_dataset
    from fedsim.models import build_model, describe_split, find_head, resolve_model

    ds = load_config_dataset(cfg)  # as training loads it: --normalize, --image-size, ... included
    if ":" in cfg.model:  # the user's own, package.module:attr, resolved as training resolves it
        model = resolve_model(cfg.model, ds.input_shape, ds.num_classes, input_dtype=ds.x_train.dtype, debug=cfg.debug)
    else:
        model = build_model(cfg.model, ds.input_shape, ds.num_classes, pretrained=cfg.pretrained,
                            vocabulary=ds.vocabulary)
    Console().print(describe_split(model, find_head(model, cfg.head)))


def _train(cfg, run_rounds, done: int = 0) -> None:
    """`run_rounds(on_round)` runs the experiment: a new one, or one resumed after round `done`. Under torchrun
    only rank 0 speaks, and `fedsim train --nproc` says where a stopped run's rows are itself."""
    from fedsim.engine.distributed import reports_stops

    out = stderr_console()
    try:
        df = _run_with_progress(cfg, out, run_rounds, done)
    except KeyboardInterrupt:
        csv = Path(cfg.out_dir) / (cfg.run_name() + ".csv")
        if reports_stops():
            out.print(f"stopped; the rows written so far are in {csv}"
                      + (f"; continue with: fedsim train --resume {csv}" if cfg.checkpoint_every else ""))
        raise typer.Exit(130) from None
    if not cfg.quiet:
        _print_summary(cfg, df)


def _run_with_progress(cfg, out, run_rounds, done: int):
    import sys

    from fedsim.engine.distributed import process_rank

    if cfg.quiet or process_rank() != 0:
        df = run_rounds(None)
    elif sys.stderr.isatty():
        df = _run_with_bar(cfg, out, run_rounds, done)
    else:
        def line(row, total):
            out.print(f"round {row['round']}/{total}  test_accuracy {row['test_accuracy']:.4f}  "
                      f"train_loss {row['train_loss']:.4f}  personal_accuracy_mean "
                      f"{row['personal_accuracy_mean']:.4f}  {row['elapsed_seconds']:.1f}s")
        df = run_rounds(line)
    return df


def _run_with_bar(cfg, console, run_rounds, done: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
                  TextColumn("{task.fields[acc]}"), TimeRemainingColumn(), console=console,
                  transient=False) as bar:
        task = bar.add_task("train", total=cfg.rounds, completed=done, acc="")

        def update(row, total):
            bar.update(task, completed=row["round"],
                       acc=f"test acc {row['test_accuracy']:.4f}  loss {row['train_loss']:.3f}")

        return run_rounds(update)


def _print_summary(cfg, df) -> None:
    from rich.console import Console
    from rich.table import Table

    if df.empty:
        return
    best = df["test_accuracy"].idxmax()
    last = df.iloc[-1]
    steps = "server updates" if algorithm_class(cfg.algo).asynchronous else "rounds"
    table = Table(title=f"{cfg.run_name()}: {cfg.algo} on {cfg.dataset}, {int(last['round'])} {steps}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("final test accuracy (global model, test split)", f"{last['test_accuracy']:.4f}")
    table.add_row(f"best test accuracy (round {int(df.loc[best, 'round'])})", f"{df.loc[best, 'test_accuracy']:.4f}")
    table.add_row("final personalized accuracy (mean over all clients)", f"{last['personal_accuracy_mean']:.4f}")
    table.add_row("final personalized accuracy (worst 10% of clients)", f"{last['personal_accuracy_p10']:.4f}")
    table.add_row("final train loss (this round's clients)", f"{last['train_loss']:.4f}")
    table.add_row("wall time", f"{last['elapsed_seconds']:.1f} s")
    if "sim_seconds" in df:  # client profiles: the simulated clock's time
        table.add_row("simulated time", f"{last['sim_seconds']:.1f} s")
    record = Path(cfg.out_dir) / (cfg.run_name() + ".json")
    compiling = json.loads(record.read_text()).get("summary", {}).get("compile_seconds") if record.exists() else None
    if compiling is not None:
        table.add_row("of which torch.compile compiling (first rounds)", f"{compiling:.1f} s")
    console = Console()
    console.print(table)
    console.print(f"results: {Path(cfg.out_dir) / (cfg.run_name() + '.csv')} (+ .json)")
