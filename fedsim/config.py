"""The experiment configuration: one flat dataclass whose field names are the CLI option names.

Every option of `fedsim train` is a field here (dashes become underscores), so a TOML file uses the
same names as the command line, and the run record (`<name>.json`) stores exactly this.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from fedsim.errors import FedsimError

PARTITION_SCHEMES = ("iid", "dirichlet", "shards", "labels", "quantity_skew", "natural")


@dataclass
class Config:
    # --- data -------------------------------------------------------------------------------
    dataset: str = "digits"
    data_dir: str | None = None          # default: $FEDSIM_DATA or ./data
    download: bool = False               # let torchvision fetch missing files (needs the network)
    device: str = "auto"                 # auto = CUDA when present, else CPU
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
    mu: float = 0.01                     # FedProx proximal weight (0 = FedAvg)
    bn: str = "global"                   # global: BN state averaged; local: kept per client (FedBN)
    head: str | None = None              # personalized FL: head module name(s), comma-separated
    server_lr: float | None = None       # server step size (default 1; FedAdam/FedYogi/FedAdagrad 0.01)
    server_momentum: float = 0.9         # FedAvgM
    server_beta1: float = 0.9            # FedAdam / FedYogi / FedAdagrad
    server_beta2: float = 0.99
    server_tau: float = 1e-3             # adaptivity (epsilon) of the server optimizers
    head_epochs: int = 1                 # FedRep: head-only epochs before the base epochs
    lam: float = 0.1                     # Ditto: pull of the personal model to the global one
    freeze_base: bool = False            # train only the head locally (frozen backbone)
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
    clip: float | None = None            # max global grad norm per step
    executor: str = "auto"               # auto | sequential | vmap
    cohort_chunk: int | None = None      # vmap: clients trained together at most (default: whole cohort)
    compile: bool = False                # torch.compile the vmap step
    threads: int | None = None           # CPU threads for torch (default: every core for vmap, 1 for sequential)
    # --- run --------------------------------------------------------------------------------
    seed: int = 0
    eval_every: int = 1
    checkpoint_every: int = 10           # write <name>.ckpt every K rounds (0 = never)
    out_dir: str = "results"
    name: str | None = None              # default: <dataset>-<algo>-<model>-seed<seed>
    overwrite: bool = False
    quiet: bool = False

    @property
    def scheme(self) -> tuple[str, float | int | None]:
        """The partition scheme and its parameter, from the mutually exclusive scheme options."""
        given = [(s, v) for s, v in (("dirichlet", self.dirichlet), ("shards", self.shards),
                                     ("labels", self.labels), ("quantity_skew", self.quantity_skew))
                 if v is not None]
        given += [(s, None) for s, flag in (("iid", self.iid), ("natural", self.natural)) if flag]
        if len(given) > 1:
            names = " and ".join("--" + s.replace("_", "-") for s, _ in given)
            raise FedsimError(f"choose one partition scheme, not {names}")
        return given[0] if given else ("iid", None)

    def run_name(self) -> str:
        return self.name or f"{self.dataset}-{self.algo}-{self.model}-seed{self.seed}"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        """The inverse of `to_dict` (a run record's or a checkpoint's config)."""
        return cls(**{**values, "betas": tuple(values["betas"])})


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def config_from_toml(path: str | Path) -> dict:
    """Read a TOML file of option names (dashes or underscores) and return them as Config fields."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FedsimError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise FedsimError(f"config file {path} is not valid TOML: {e}") from None
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise FedsimError(f"config file {path}: unknown option {key!r} (see `fedsim train --help`)")
        values[name] = tuple(value) if name == "betas" else value
    return values
