"""The experiment configuration: one flat dataclass whose field names are the CLI option names.

Every option of `fedsim train` is a field here (dashes become underscores), so a TOML file uses the
same names as the command line, and the run record (`<name>.json`) stores exactly this. The general
options are written below; each algorithm's own options (FedProx's `mu`, ...) are added from the
algorithm's declaration (`fedsim.algorithms.algorithm_options`), their one source. `Config.validate`
is the one place the options are checked, before anything is loaded or written.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from fedsim.algorithms import ALGORITHMS, algorithm_class, algorithm_options
from fedsim.comm import SECAGG_SUMMED_ONLY
from fedsim.comm import check_options as check_comm_options
from fedsim.core.channel import cohort_refusal, refusal
from fedsim.core.params import Range, check_value
from fedsim.data.schemes import SCHEMES
from fedsim.engine.clock_options import check_options as check_clock_options
from fedsim.errors import FedsimError
from fedsim.privacy.aggregation import NEEDS_COHORT as DP_NEEDS_COHORT
from fedsim.privacy.aggregation import SUMMED_ONLY as DP_SUMMED_ONLY
from fedsim.privacy.options import check_options as check_privacy_options
from fedsim.privacy.options import enabled as privacy_enabled
from fedsim.robust import check_options as check_robust_options
from fedsim.robust.aggregators import NEEDS_COHORT as ROBUST_NEEDS_COHORT
from fedsim.robust.aggregators import SUMMED_ONLY as ROBUST_SUMMED_ONLY
from fedsim.tracking import check_options as check_tracking_options

EXECUTORS = ("auto", "sequential", "vmap")
OPTIMIZERS = ("sgd", "adam", "adamw")
BN_MODES = ("global", "local")
NORMALIZATIONS = ("standard", "symmetric", "unit")  # fedsim.data.datasets.NORMALIZATIONS
STRAGGLER_POLICIES = ("drop", "partial")  # fedsim.engine.stragglers.POLICIES


@dataclass
class GeneralOptions:
    # --- data -------------------------------------------------------------------------------
    dataset: str = "digits"
    data_dir: str | None = None          # default: $FEDSIM_DATA or ./data
    download: bool = False               # let torchvision fetch missing files (needs the network)
    device: str = "auto"                 # auto = CUDA when present, else CPU
    normalize: str | None = None         # pixels: standard (mean/std) | symmetric [-1, 1] | unit [0, 1]; None: usual
    image_size: int | str | None = None  # a folder of images: resize to H or "H,W"
    test_fraction: float | None = None   # a folder of images or an hf: dataset with one split: this fraction is test
    # --- Hugging Face datasets (--dataset hf:NAME[:CONFIG], fedsim/data/hf.py): None = found from the features --
    hf_image_column: str | None = None   # the input images (an Image feature)
    hf_text_column: str | None = None    # or the input texts
    hf_label_column: str | None = None   # the labels (a ClassLabel or integers)
    hf_client_column: str | None = None  # one client per distinct value: the natural split (--natural)
    hf_train_split: str | None = None    # default "train"
    hf_test_split: str | None = None     # default "test", else "validation", else --test-fraction of the train split
    # --- text (fedsim/data/text.py) --------------------------------------------------------------
    seq_len: int | None = None           # tokens per text, padded or cut (default 200; sent140: 25)
    vocab_size: int | None = None        # the training split's most frequent tokens kept (default 20,000)
    embeddings: str | None = None        # word vectors in GloVe's text format: the text models' embedding starts there
    # --- partition: a saved file, or one scheme computed on the fly --------------------------
    partition: str | None = None         # file written by `fedsim partition`
    clients: int | None = None          # default 10 (synthetic: its 30 devices)
    iid: bool = False                    # the default scheme when no other is given
    dirichlet: float | None = None       # alpha of per-class Dir(alpha) over clients
    shards: int | None = None            # shards per client (McMahan et al.)
    labels: int | None = None            # distinct labels per client (#C=K)
    quantity_skew: float | None = None   # beta of Dir(beta) client sizes, labels IID
    natural: bool = False                # the dataset's own per-device split (synthetic)
    min_size: int = 10                   # Dirichlet: smallest client size accepted
    client_test_fraction: float | None = None  # hold out this fraction of each client's own samples
    partition_seed: int | None = None    # default: --seed
    # --- model and algorithm ----------------------------------------------------------------
    model: str = "mlp"
    pretrained: bool = False
    algo: str = "fedavg"
    bn: str = "global"                   # global: BN state averaged; local: kept per client (FedBN)
    head: str | None = None              # personalized FL: head module name(s), comma-separated
    freeze_base: bool = False            # personalized FL: train only the head locally (frozen backbone)
    # --- robust aggregation and attacks (fedsim.robust) -------------------------------------
    aggregate: str = "mean"              # mean | median | trimmed-mean | krum | multi-krum
    trim_fraction: float | None = None   # trimmed-mean: drop this fraction at each end (default 0.1)
    krum_f: int | None = None            # krum, multi-krum: attackers assumed per round (default (n - 3) // 2)
    krum_m: int | None = None            # multi-krum: models averaged (default n - f)
    malicious_fraction: float = 0.0      # this fraction of the clients (a fixed subset) attacks
    attack: str | None = None            # label-flip | sign-flip | gaussian | scale
    attack_scale: float | None = None    # sign-flip, scale: update factor; gaussian: noise std (default 4)
    # --- differential privacy (fedsim.privacy): on with --dp-noise or --dp-epsilon ---------------
    dp_noise: float | None = None        # noise multiplier z: noise std = z x clip norm
    dp_epsilon: float | None = None      # or the budget: z computed to spend exactly this in --rounds
    dp_delta: float | None = None        # default min(N^-1.1, 1e-5) (N = clients with data)
    dp_clip: str | None = None           # a client update's L2 clip norm C, or 'adaptive' (Andrew et al.)
    dp_clip_quantile: float = 0.5        # adaptive: the update-norm quantile C tracks
    dp_mode: str = "central"             # central: the server noises the sum; local: each client its update
    dp_noise_seed: int | None = None     # key the noise by this (runs sharing it share noise); default: the run's hash
    # --- communication (fedsim.comm): compressed updates, secure aggregation ------------------------
    compress: str | None = None          # what clients send: qsgd:B | int8 | topk:F | randk:F | sign
    bucket_size: int | None = None       # qsgd: coordinates a norm covers (default 512)
    error_feedback: bool = False         # keep each client's residual of what the codec did not send
    compress_down: str | None = None     # what the server broadcasts: qsgd:B | int8
    secure_agg: str | None = None        # secagg (Bonawitz et al.) | secagg+ (Bell et al.): the server sees the sum
    secagg_bits: int = 32                # the field's width: masked coordinates are B-bit integers
    secagg_threshold: int | None = None  # shares that rebuild a secret (default: a majority of their holders)
    secagg_neighbors: int | None = None  # secagg+: each client's neighbours (even; default 2 ceil(log2 m))
    secagg_range: float = 8.0            # each coordinate is clipped to [-R, R] before quantization
    # --- rounds and clients per round -------------------------------------------------------
    rounds: int = 20
    fraction: float = 1.0                # clients per round = max(round(fraction * N), min_clients)
    min_clients: int = 1
    # --- local training ---------------------------------------------------------------------
    local_epochs: int = 1
    local_steps: int | None = None       # fixed number of local steps instead of epochs
    batch_size: int = 10
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    lr_decay: float = 1.0                # lr multiplied by this after every round
    # --- systems heterogeneity (fedsim/engine/stragglers.py) ----------------------------------
    stragglers: float = 0.0              # fraction of each round's cohort that straggles
    straggler_policy: str | None = None  # drop | partial (1..E-1 epochs); None: the algorithm's (FedProx partial)
    client_dropout: float = 0.0          # probability that a sampled client fails mid-round and sends nothing
    # --- the simulated clock and asynchrony (fedsim/engine/clock.py, asynchronous.py) -------------
    speed: str | None = None             # DIST of each client's samples per second (lognormal:MU,SIGMA, ...)
    bandwidth: str | None = None         # DIST of each client's bits per second, up and down
    profiles: str | None = None          # CSV client,samples_per_s,up_bps,down_bps instead
    availability: str = "always"         # always | bernoulli:P | diurnal:PERIOD,DUTY | a trace CSV client,start,end
    deadline: float | None = None        # a synchronous round counts the clients reporting within this many seconds
    over_select: float | None = None     # sample ceil(F x cohort), keep the first cohort-size to report
    concurrency: int | None = None       # asynchronous algorithms: clients training at once (default: the cohort)
    clip: float | None = None            # max global grad norm per step
    executor: str = "auto"               # auto | sequential | vmap
    cohort_chunk: int | None = None      # vmap: clients trained together at most (default: whole cohort)
    compile: bool = False                # torch.compile the vmap step
    threads: int | None = None           # CPU threads for torch (default: chosen by timing, see engine/threads.py)
    # --- run --------------------------------------------------------------------------------
    seed: int = 0
    eval_every: int = 1
    eval_sample: float | None = None     # the global model on N test samples (or a fraction F), fixed for the run
    eval_clients: float | None = None    # the personal columns over N clients (or a fraction F), fixed for the run
    checkpoint_every: int = 10           # write <name>.ckpt every K rounds (0 = never)
    out_dir: str = "results"
    name: str | None = None              # default: <dataset>-<algo>-<model>-seed<seed>
    overwrite: bool = False
    quiet: bool = False
    log: str | None = None               # tensorboard, mlflow or both (comma-separated): fedsim/tracking.py
    mlflow_uri: str | None = None        # --log mlflow: tracking URI (default: the file store ./mlruns)
    debug: bool = False                  # an error in the user's own model code shows its traceback

    @property
    def scheme(self) -> tuple[str, float | int | None]:
        """The partition scheme and its parameter, from the mutually exclusive scheme options."""
        # a flag scheme (iid, natural) is given when true, a valued one (dirichlet=ALPHA, ...) when set
        given = [(s, None if isinstance(v, bool) else v) for s in SCHEMES
                 if (v := getattr(self, s)) is not None and v is not False]
        if len(given) > 1:
            names = " and ".join("--" + s.replace("_", "-") for s, _ in given)
            raise FedsimError(f"choose one partition scheme, not {names}")
        return given[0] if given else ("iid", None)

    def run_name(self) -> str:
        return self.name or f"{self.dataset_label()}-{self.algo}-{self.model.rpartition(':')[2]}-seed{self.seed}"

    def dataset_label(self) -> str:
        """The dataset's name, or for a folder or .npz file its own name (no slashes or colons in run names)."""
        name = self.dataset[len("hf:"):].replace(":", "-") if self.dataset.startswith("hf:") else self.dataset
        is_path = "/" in name or name.endswith(".npz")
        return Path(name.rstrip("/")).stem if is_path else name

    def dataset_options(self) -> dict:
        """The options `fedsim.data.datasets.load_dataset` takes from this config (those given)."""
        options = {"devices": self.clients, "normalize": self.normalize, "image_size": self.image_hw(),
                   "test_fraction": self.test_fraction, **{k: getattr(self, k) for k in DATASET_FIELDS}}
        return {k: v for k, v in options.items() if v is not None}

    def image_hw(self) -> tuple[int, int] | None:
        """--image-size as (H, W): one number is a square."""
        if self.image_size is None:
            return None
        try:
            sizes = [int(v) for v in str(self.image_size).split(",")]
        except ValueError:
            sizes = []
        if len(sizes) not in (1, 2) or min(sizes) < 1:
            raise FedsimError(f"--image-size must be H or H,W in pixels, e.g. 32 or 32,24 (got {self.image_size!r})")
        return (sizes[0], sizes[-1])

    def channel_users(self) -> list[tuple[str, str]]:
        """The channel's stages and reducer these options ask for that must see every value a client sends (their
        name, why): an algorithm sending a per-client field is refused with them (fedsim.core.channel.refusal)."""
        users = []
        if privacy_enabled(self):
            users.append(("differential privacy", DP_SUMMED_ONLY))
        if self.aggregate != "mean":
            users.append((f"--aggregate {self.aggregate}", ROBUST_SUMMED_ONLY))
        if self.secure_agg is not None:
            users.append(("secure aggregation", SECAGG_SUMMED_ONLY))
        return users

    def cohort_users(self) -> list[tuple[str, str]]:
        """The channel's stages and reducer these options ask for that need a cohort of updates (their name, why):
        an algorithm applying each update alone is refused with them (fedsim.core.channel.cohort_refusal)."""
        users = []
        if privacy_enabled(self) and self.dp_mode == "central":
            users.append(("differential privacy (--dp-mode central)", DP_NEEDS_COHORT))
        if self.aggregate != "mean":
            users.append((f"--aggregate {self.aggregate}", ROBUST_NEEDS_COHORT))
        return users

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        """The inverse of `to_dict` (a run record's or a checkpoint's config)."""
        return cls(**{**values, "betas": tuple(values["betas"])})

    def validate(self) -> None:
        """Every option's type and range, and the combinations that cannot work: one line naming the option."""
        hints = field_types()
        for name in FIELDS:
            value = getattr(self, name)
            if not _type_ok(value, hints[name]):
                raise FedsimError(f"--{_dashed(name)} must be {_describe(hints[name])} (got {value!r})")
            check_value(name, value, RANGES.get(name, Range()))
        for value in self.betas:
            check_value("betas", value, Range(0, 1, high_open=True))
        for name, option in algorithm_options().items():
            if getattr(self, name) is not None:
                for allowed in option.ranges.values():
                    check_value(name, getattr(self, name), allowed)
        for name, what, choices in (("algo", "algorithm", tuple(ALGORITHMS)), ("executor", "executor", EXECUTORS),
                                    ("optimizer", "optimizer", OPTIMIZERS), ("bn", "--bn mode", BN_MODES)):
            if getattr(self, name) not in choices:
                raise FedsimError(f"unknown {what} {getattr(self, name)!r}: choose one of {', '.join(choices)}")
        if self.normalize is not None and self.normalize not in NORMALIZATIONS:
            raise FedsimError(f"unknown --normalize {self.normalize!r}: choose one of {', '.join(NORMALIZATIONS)}")
        if self.straggler_policy is not None and self.straggler_policy not in STRAGGLER_POLICIES:
            raise FedsimError(f"unknown --straggler-policy {self.straggler_policy!r}: choose one of "
                              f"{', '.join(STRAGGLER_POLICIES)}")
        if self.name and ("/" in self.name or "\\" in self.name or self.name.startswith(".")):
            raise FedsimError(f"--name {self.name!r} must be a plain file name (no '/', not starting with '.'): "
                              "--out-dir chooses the folder")
        if self.nesterov and self.momentum <= 0:
            raise FedsimError("--nesterov needs --momentum > 0")
        if self.stragglers == 1 and (self.straggler_policy or algorithm_class(self.algo).straggler_policy) == "drop":
            raise FedsimError("--stragglers 1 under --straggler-policy drop leaves every client out of every round, "
                              "so nothing would train: lower --stragglers, or use --straggler-policy partial")
        hf = [k for k in DATASET_FIELDS if k.startswith("hf_") and getattr(self, k) is not None]
        if hf and not self.dataset.startswith("hf:"):
            raise FedsimError(f"--{_dashed(hf[0])} applies to --dataset hf:NAME, not to {self.dataset}")
        for name in ("eval_sample", "eval_clients"):
            value = getattr(self, name)
            if value is not None and value >= 1 and value != int(value):
                raise FedsimError(f"--{_dashed(name)} must be a count N (a whole number) or a fraction F < 1, got "
                                  f"{value!r}")
        algorithm_class(self.algo).check_config(self)
        check_robust_options(self)
        check_privacy_options(self)
        algo = algorithm_class(self.algo)
        check_clock_options(self, algo.asynchronous)
        if self.concurrency is not None and not algo.asynchronous:
            raise FedsimError(f"--concurrency is for the asynchronous algorithms (fedbuff, fedasync), not {self.algo}: "
                              "a synchronous round trains its cohort (--fraction, --min-clients)")
        check_comm_options(self, algo)
        if self.secure_agg is not None and self.aggregate != "mean":
            raise FedsimError(f"--aggregate {self.aggregate} cannot run under --secure-agg: {ROBUST_SUMMED_ONLY}, but "
                              f"secure aggregation ({SECAGG_SUMMED_ONLY}) hides each value; choose one")
        problem = (refusal(self.algo, algo.sends, self.channel_users())
                   or cohort_refusal(self.algo, algo.single_update, self.cohort_users()))
        if problem:
            raise FedsimError(problem)
        check_tracking_options(self.log, self.mlflow_uri)
        self.scheme  # noqa: B018  (raises on two schemes at once)
        self.image_hw()


# The dataset's own options, passed on to load_dataset as they are
DATASET_FIELDS = ("hf_image_column", "hf_text_column", "hf_label_column", "hf_client_column", "hf_train_split",
                  "hf_test_split", "seq_len", "vocab_size", "embeddings")

# Numeric ranges of the general options (the algorithms declare theirs); every float must also be finite.
RANGES = {
    "rounds": Range(1), "fraction": Range(0, 1, low_open=True), "min_clients": Range(1),
    "local_epochs": Range(1), "local_steps": Range(1), "batch_size": Range(1), "lr": Range(0, low_open=True),
    "momentum": Range(0, 1, high_open=True), "weight_decay": Range(0), "lr_decay": Range(0, 1, low_open=True),
    "clip": Range(0, low_open=True), "eval_every": Range(1), "checkpoint_every": Range(0), "clients": Range(1),
    "threads": Range(1), "cohort_chunk": Range(1), "min_size": Range(0), "shards": Range(1), "labels": Range(1),
    "dirichlet": Range(0, low_open=True), "quantity_skew": Range(0, low_open=True),
    "client_test_fraction": Range(0, 1, low_open=True, high_open=True),
    "test_fraction": Range(0, 1, low_open=True, high_open=True), "seq_len": Range(1), "vocab_size": Range(3),
    "eval_sample": Range(0, low_open=True), "eval_clients": Range(0, low_open=True),
    "stragglers": Range(0, 1), "client_dropout": Range(0, 1, high_open=True),
    "trim_fraction": Range(0, 0.5, high_open=True), "krum_f": Range(0), "krum_m": Range(1),
    "malicious_fraction": Range(0, 1), "attack_scale": Range(0, low_open=True),
    "dp_noise": Range(0), "dp_epsilon": Range(0, low_open=True), "dp_noise_seed": Range(0),
    "dp_delta": Range(0, 1, low_open=True, high_open=True),
    "dp_clip_quantile": Range(0, 1, low_open=True, high_open=True),
    "deadline": Range(0, low_open=True), "over_select": Range(1), "concurrency": Range(1),
    "bucket_size": Range(1), "secagg_bits": Range(2, 62), "secagg_threshold": Range(1), "secagg_neighbors": Range(2),
    "secagg_range": Range(0, low_open=True),
}


def _algorithm_fields() -> list[tuple]:
    return [(o.name, o.type | None if o.default is None else o.type, dataclasses.field(default=o.default))
            for o in algorithm_options().values()]


Config = dataclasses.make_dataclass("Config", _algorithm_fields(), bases=(GeneralOptions,))
Config.__module__ = __name__
Config.__doc__ = ("An experiment's options: the general ones (GeneralOptions) and every algorithm's own, "
                  "as declared in its Params (None: the running algorithm's default).")

FIELDS = {f.name: f for f in dataclasses.fields(Config)}


@functools.cache
def field_types() -> dict:
    """Each Config field's type (`int | None`, ...)."""
    hints = typing.get_type_hints(GeneralOptions)
    hints.update({f.name: f.type for f in dataclasses.fields(Config) if f.name not in hints})
    return hints


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def _type_ok(value, hint) -> bool:
    if isinstance(hint, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return isinstance(value, tuple | list) and len(value) == len(args) and all(
            _type_ok(v, h) for v, h in zip(value, args, strict=True))
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "unset"
    if typing.get_origin(hint) is tuple:
        return f"{len(typing.get_args(hint))} numbers"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(hint, str(hint))


def read_toml(path: str | Path) -> dict:
    """A TOML file's contents, every problem reading it one line."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FedsimError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise FedsimError(f"config file {path} is a folder: pass a .toml file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FedsimError(f"cannot read config file {path}: {getattr(e, 'strerror', None) or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise FedsimError(f"config file {path} is not valid TOML: {e}") from None


def options_from(raw: dict, where: str) -> dict:
    """Option names (dashes or underscores) and values, as Config fields, each checked against its field's type
    (so a wrong type names `where`, e.g. the file)."""
    hints = field_types()
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise FedsimError(f"{where}: unknown option {key!r} (see `fedsim train --help`)")
        if not _type_ok(value, hints[name]):
            raise FedsimError(f"{where}: {key} must be {_describe(hints[name])} (got {value!r})")
        values[name] = tuple(value) if name == "betas" else value
    return values


def config_from_toml(path: str | Path) -> dict:
    """Read a TOML file of option names (dashes or underscores) and return them as Config fields."""
    return options_from(read_toml(path), f"config file {path}")
