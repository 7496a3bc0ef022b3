"""`<name>.ckpt`: the state after a completed round, from which `fedsim train --resume` continues a run.

Every random choice is keyed by (seed, round, client) (`fedsim.core.rng`), so this state is all a run
carries from one round to the next, and a resumed run gives exactly the rows an uninterrupted one gives.
The file is one `torch.save`d dict of plain values and tensors, read back with `weights_only=True`:

    format               FORMAT
    fedsim_version       the version that wrote it
    round                rounds completed
    config               the run's Config as a dict (`Config.to_dict`)
    partition_sha256     the partition's content hash: a resumed run must train on the same split
    server               {"model": state dict, "extra": the algorithm's server state (SCAFFOLD's c, moments)}
    clients              {client: state}, the ClientStore's per-client states (SCAFFOLD's c_i, Ditto's and
                         FedPer's personal parts); empty for FedAvg
    bytes_up, bytes_down bytes sent since the last CSV row (rounds that --eval-every skipped)
    elapsed_seconds      wall time of the rounds so far (the CSV's elapsed_seconds goes on from it)

It is written through a temporary file and a rename: it is whole or absent, never half-written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from fedsim.config import FIELDS, Config
from fedsim.core.hooks import ServerState
from fedsim.core.state import State
from fedsim.errors import FedsimError
from fedsim.files import torch_save, write_atomically

FORMAT = 1
RUN_SUFFIXES = (".csv", ".json", ".ckpt")

# Options that leave the numbers alone, so a resumed run may set them anew: how long it runs, how often it
# writes rows and checkpoints, where and how it computes, where its files are. --partition may name another
# file because the partition's content hash is checked. Every other option must equal the checkpoint's.
RESUMABLE_OPTIONS = frozenset({
    "rounds", "eval_every", "checkpoint_every", "executor", "cohort_chunk", "compile", "threads", "device",
    "data_dir", "download", "partition", "out_dir", "name", "overwrite", "quiet", "debug", "log", "mlflow_uri",
})


@dataclass
class Progress:
    """A run after `round` completed rounds: everything the round loop carries into the next round."""

    round: int
    server: ServerState
    clients: dict[int, State]  # the ClientStore's states
    bytes_up: int = 0  # since the last written row
    bytes_down: int = 0
    elapsed_seconds: float = 0.0

    def to(self, device: torch.device) -> Progress:
        return dataclasses.replace(self, server=ServerState(_to(self.server.model, device),
                                                           _to(self.server.extra, device)),
                                   clients=_to(self.clients, device))


@dataclass
class Checkpoint:
    path: Path
    config: Config  # the config the run was checkpointed with
    partition_sha256: str | None
    progress: Progress

    @property
    def round(self) -> int:
        return self.progress.round

    def resumed_config(self, changes: dict) -> Config:
        """The checkpoint's config with `changes`, which may differ from it only in RESUMABLE_OPTIONS.

        The run stays where its checkpoint is: out_dir and name come from the checkpoint's path.
        """
        for key, value in changes.items():
            if key not in FIELDS:
                raise FedsimError(f"unknown option {key!r} (see `fedsim train --help`)")
            saved = getattr(self.config, key)
            if key not in RESUMABLE_OPTIONS and _comparable(value) != _comparable(saved):
                raise FedsimError(f"--{key.replace('_', '-')} cannot change when resuming (the run used {saved!r}, "
                                  f"not {value!r}): it would change the numbers; start a new run with another "
                                  "--name instead")
        return dataclasses.replace(self.config, **{**changes, "out_dir": str(self.path.parent),
                                                   "name": self.path.stem})


def checkpoint_path(run: str | Path, out_dir: str | Path = "results") -> Path:
    """The checkpoint of `run`: its .csv, .json or .ckpt path, or its name inside `out_dir`."""
    path = Path(run)
    return path.with_suffix(".ckpt") if path.suffix in RUN_SUFFIXES else Path(out_dir) / f"{run}.ckpt"


def save_checkpoint(path: Path, config: Config, partition_sha256: str | None, progress: Progress) -> None:
    from fedsim.version import __version__

    payload = {
        "format": FORMAT,
        "fedsim_version": __version__,
        "round": progress.round,
        "config": config.to_dict(),
        "partition_sha256": partition_sha256,
        "server": {"model": progress.server.model, "extra": progress.server.extra},
        "clients": progress.clients,
        "bytes_up": progress.bytes_up,
        "bytes_down": progress.bytes_down,
        "elapsed_seconds": progress.elapsed_seconds,
    }
    write_atomically(path, lambda tmp: torch_save(payload, tmp), "checkpoint", "; choose --out-dir")


def load_checkpoint(run: str | Path, out_dir: str | Path = "results") -> Checkpoint:
    """Read the checkpoint of `run` (see `checkpoint_path`) onto the CPU; one FedsimError line if it cannot."""
    path = checkpoint_path(run, out_dir)
    if not path.exists():
        if not any(path.with_suffix(s).exists() for s in RUN_SUFFIXES):
            raise FedsimError(f"no run {path.stem!r} in {path.parent}/ (give its .csv path, or its name and --out-dir)")
        raise FedsimError(f"no checkpoint for run {path.stem!r} ({path} is missing); it was run with "
                          "--checkpoint-every 0 or stopped before its first checkpoint")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if raw["format"] != FORMAT:
            raise ValueError(f"format {raw['format']!r}, this fedsim reads format {FORMAT}")
        config = Config.from_dict(raw["config"])
        server = ServerState(raw["server"]["model"], raw["server"]["extra"])
        progress = Progress(int(raw["round"]), server, raw["clients"], int(raw["bytes_up"]),
                            int(raw["bytes_down"]), float(raw["elapsed_seconds"]))
        partition_sha256 = raw["partition_sha256"]
    except Exception as e:  # torch.load fails in many ways on a damaged file, and each means the same
        reason = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0][:160]  # its first sentence
        raise FedsimError(f"checkpoint {path} is damaged or not a fedsim checkpoint ({reason}); it cannot be "
                          "resumed") from None
    return Checkpoint(path, config, partition_sha256, progress)


def _comparable(value):
    return tuple(value) if isinstance(value, list | tuple) else value


def _to(value, device: torch.device):
    """`value` (tensors in dicts, lists and tuples, and plain numbers) with its tensors on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to(v, device) for v in value)
    return value
