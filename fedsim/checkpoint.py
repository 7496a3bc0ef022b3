"""`<name>.ckpt`: the state after a completed round, from which `fedsim train --resume` continues a run.

Every random choice is keyed by (seed, round, client) (`fedsim.core.rng`), so this state is all a run
carries from one round to the next, and a resumed run gives exactly the rows an uninterrupted one gives.
The file is one `torch.save`d dict of plain values and tensors, read back with `weights_only=True`:

    format               FORMAT
    fedsim_version       the version that wrote it
    round                rounds completed
    config               the run's Config as a dict (`Config.to_dict`)
    identity             the run's identity (fedsim/identity.py: its facts and their sha256)
    csv                  {"sha256", "rows", "last_round"} of the run's CSV as it was when this was written
                         (the header and the rows through `round`): the CSV a resume continues must be that one
    server               {"model": state dict, "extra": the algorithm's server state (SCAFFOLD's c, moments)}
    clients              {client: state}, the ClientStore's per-client states (SCAFFOLD's c_i, Ditto's and
                         FedPer's personal parts); empty for FedAvg
    bytes_up, bytes_down bytes sent since the last CSV row (rounds that --eval-every skipped)
    elapsed_seconds      wall time of the rounds so far (the CSV's elapsed_seconds goes on from it)
    checksum             sha256 of all the above, values and tensors' bytes (`content_sha256`): a damaged file
                         that still loads is refused, not trained on
    sim_seconds          the simulated clock's time (fedsim.engine.clock; 0 without client profiles)
    stream               an asynchronous run's stream (fedsim.engine.asynchronous.Stream.state): the clients in
                         flight (each with the model version it received, and what it sends once trained), the
                         buffered updates, the dispatch counters; None for a synchronous run

It is written through a temporary file and a rename: it is whole or absent, never half-written. Format 1
(before run identities) is refused: nothing in it proves which run it belongs to.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from fedsim.config import FIELDS, Config
from fedsim.core.hooks import ServerState
from fedsim.core.state import State
from fedsim.errors import FedsimError
from fedsim.files import torch_save, write_atomically
from fedsim.identity import RESUMABLE_OPTIONS, RunIdentity
from fedsim.metrics import CsvState, csv_state, read_record_identity

FORMAT = 2
RUN_SUFFIXES = (".csv", ".json", ".ckpt")
# how a refusal to use another run's files ends
START_OVER = "nothing was changed; start the run over with --overwrite, or train under another --name"


@dataclass
class Progress:
    """A run after `round` completed rounds: everything the round loop carries into the next round."""

    round: int
    server: ServerState
    clients: dict[int, State]  # the ClientStore's states
    bytes_up: int = 0  # since the last written row
    bytes_down: int = 0
    elapsed_seconds: float = 0.0
    sim_seconds: float = 0.0  # the simulated clock's time
    stream: dict | None = None  # an asynchronous run's clients in flight and buffer (engine.asynchronous.Stream)

    def to(self, device: torch.device) -> Progress:
        return dataclasses.replace(self, server=ServerState(_to(self.server.model, device),
                                                           _to(self.server.extra, device), self.server.round),
                                   clients=_to(self.clients, device), stream=_to(self.stream, device))


@dataclass
class Checkpoint:
    path: Path
    config: Config  # the config the run was checkpointed with
    identity: RunIdentity
    csv: CsvState
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

    def check_files(self) -> None:
        """FedsimError (one line) unless the run's record and CSV beside it are this checkpoint's run's: the
        record's identity equal to the checkpoint's (where the record holds one), and the CSV's header and rows
        through the checkpoint's round exactly those it had when the checkpoint was written. Rows after that
        round are allowed: a resume drops them and computes them again."""
        recorded = read_record_identity(self.path.with_suffix(".json"))
        if recorded is not None:
            differs = recorded.difference(self.identity, "the run's record", "its checkpoint")
            if differs is not None:
                raise FedsimError(f"checkpoint {self.path} is not of the run its record describes ({differs}): "
                                  f"the files are of two runs; {START_OVER}")
        csv = self.path.with_suffix(".csv")
        now = csv_state(csv, self.round)
        if now == self.csv:
            return
        if now.rows < self.csv.rows:
            has = f"ends at round {now.last_round}" if now.last_round is not None else "has no rows"
            raise FedsimError(f"{csv} {has}, but its checkpoint was written after its row of round "
                              f"{self.csv.last_round}: rows are missing (resuming would leave a gap); {START_OVER}")
        raise FedsimError(f"{csv} is not the CSV its checkpoint (round {self.round}) was written with: its rows "
                          f"through round {self.round} differ (another run's, or edited); {START_OVER}")

    def check_identity(self, identity: RunIdentity) -> None:
        """FedsimError unless `identity` (the run as set up again to resume: the data, the partition, the model)
        is the checkpoint's."""
        differs = self.identity.difference(identity, "the checkpoint", "this resume")
        if differs is not None:
            raise FedsimError(f"cannot resume from {self.path}: {differs}; resuming needs the data, partition, "
                              "model (and client profiles) the run was trained on; nothing was changed (or start the "
                              "run over with --overwrite)")


def checkpoint_path(run: str | Path, out_dir: str | Path = "results") -> Path:
    """The checkpoint of `run`: its .csv, .json or .ckpt path, or its name inside `out_dir`."""
    path = Path(run)
    return path.with_suffix(".ckpt") if path.suffix in RUN_SUFFIXES else Path(out_dir) / f"{run}.ckpt"


def save_checkpoint(path: Path, config: Config, identity: RunIdentity, csv: CsvState, progress: Progress) -> None:
    from fedsim.version import __version__

    payload = {
        "format": FORMAT,
        "fedsim_version": __version__,
        "round": progress.round,
        "config": config.to_dict(),
        "identity": identity.to_dict(),
        "csv": dataclasses.asdict(csv),
        "server": {"model": progress.server.model, "extra": progress.server.extra},
        "clients": progress.clients,
        "bytes_up": progress.bytes_up,
        "bytes_down": progress.bytes_down,
        "elapsed_seconds": progress.elapsed_seconds,
        "sim_seconds": progress.sim_seconds,
        "stream": progress.stream,
    }
    payload["checksum"] = content_sha256(payload)
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
        if isinstance(raw, dict) and raw.get("format") in range(1, FORMAT):
            raw = None
        else:
            saved = raw.pop("checksum")
            if not isinstance(saved, str) or content_sha256(raw) != saved:
                raise ValueError("its checksum does not match its contents")
            config = Config.from_dict(raw["config"])
            identity = RunIdentity.from_dict(raw["identity"])
            if identity is None:
                raise ValueError("it holds no run identity")
            csv = CsvState(**raw["csv"])
            server = ServerState(raw["server"]["model"], raw["server"]["extra"], int(raw["round"]))
            progress = Progress(int(raw["round"]), server, raw["clients"], int(raw["bytes_up"]),
                                int(raw["bytes_down"]), float(raw["elapsed_seconds"]),
                                float(raw.get("sim_seconds", 0.0)), raw.get("stream"))
    except Exception as e:  # torch.load fails in many ways on a damaged file, and each means the same
        reason = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0][:160]  # its first sentence
        raise FedsimError(f"checkpoint {path} is damaged or not a fedsim checkpoint ({reason}); it cannot be "
                          f"resumed; {START_OVER}") from None
    if raw is None:
        raise FedsimError(f"checkpoint {path} was written by an earlier fedsim, which recorded no run identity: "
                          f"nothing proves which run it belongs to, so it cannot be resumed; {START_OVER}")
    return Checkpoint(path, config, identity, csv, progress)


def content_sha256(value) -> str:
    """sha256 of `value` (dicts, lists, tuples, tensors and plain values): the same for what `torch.load` reads
    back of a file as for what was saved, different for any changed value, tensor byte, key or structure."""
    digest = hashlib.sha256()
    _digest(value, digest)
    return digest.hexdigest()


def _digest(value, digest) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}:".encode())
        for key in sorted(value, key=repr):
            digest.update(f"{key!r}=".encode())
            _digest(value[key], digest)
    elif isinstance(value, list | tuple):
        digest.update(f"L{len(value)}:".encode())
        for item in value:
            _digest(item, digest)
    else:
        digest.update(f"V{value!r};".encode())


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
