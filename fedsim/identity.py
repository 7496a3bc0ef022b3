"""A run's identity: everything that decides its numbers, and one hash of it (docs/architecture.md, "A run is one
identity").

    options            every Config option not in RESUMABLE_OPTIONS (those leave the numbers alone: how long
                       the run goes, how often it writes, where and how it computes, where its files are)
    dataset_sha256     the data's content (Dataset.fingerprint: the tensors, classes, natural split)
    partition_sha256   the split's content (Partition.content_sha256)
    model_class        the initial model's class (module and name)
    initial_sha256     the initial weights (names, shapes, dtypes, values)
    numeric_version    fedsim.version.NUMERIC_VERSION: raised whenever fedsim computes some run's numbers anew
    clock_sha256       a run on the simulated clock: its client profiles and availability (Clock.digest: the rates
                       drawn or read, a trace's windows), so a changed profile or trace file is another run

The run record (`<name>.json`) and the checkpoint (`<name>.ckpt`) hold these facts and their hash; the record is
the CSV's sidecar and also holds the sha256 of the CSV's bytes, the checkpoint that of the CSV's lines up to its
round. A resume, an extension and a sweep's reuse of a finished run compare them and refuse a mismatch in one
line naming the first fact that differs (`RunIdentity.difference`), so files that share a run's name are used
only if they are that run's. `RunIdentity.sha256` is also the key of what must differ between runs and repeat
within one (the run's own randomness, such as differential privacy's noise, can be derived from it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from fedsim.version import NUMERIC_VERSION

# Options that leave the numbers alone, so a resumed run may set them anew: how long it runs, how often it
# writes rows and checkpoints, where and how it computes, where its files are. --partition may name another
# file because the partition's content hash is checked. Every other option is part of the run's identity.
RESUMABLE_OPTIONS = frozenset({
    "rounds", "eval_every", "checkpoint_every", "executor", "cohort_chunk", "compile", "threads", "device",
    "data_dir", "download", "partition", "out_dir", "name", "overwrite", "quiet", "debug", "log", "mlflow_uri",
})

# The facts after the options, and how a refusal names them.
_FACTS = {
    "dataset_sha256": "the dataset's content (sha256)",
    "partition_sha256": "the partition (sha256 of its split)",
    "model_class": "the model's class",
    "initial_sha256": "the model's initial weights (sha256)",
    "numeric_version": "fedsim's numeric version (the numbers it computes)",
    "clock_sha256": "the client profiles and availability (sha256)",
}


@dataclass(frozen=True)
class RunIdentity:
    """What decides a run's numbers (the module docstring), as {"options": {...}, fact: value, ...}."""

    facts: dict

    @property
    def sha256(self) -> str:
        """The identity's hash: equal for two runs exactly when every fact is equal."""
        return hashlib.sha256(_canonical(self.facts).encode()).hexdigest()

    def to_dict(self) -> dict:
        """As written in the run record and the checkpoint."""
        return {"sha256": self.sha256, "facts": self.facts}

    @classmethod
    def from_dict(cls, saved) -> RunIdentity | None:
        """The identity a record or checkpoint holds; None where it holds none (written by an earlier fedsim)."""
        if not isinstance(saved, dict) or not isinstance(saved.get("facts"), dict):
            return None
        return cls(_plain(saved["facts"]))

    def difference(self, other: RunIdentity, mine: str = "one", theirs: str = "the other") -> str | None:
        """The first fact on which `other` differs, in words ("--lr is 0.05 in <mine>, 0.5 in <theirs>"), else
        None. Options come first, in Config's order."""
        ours, others = self.facts.get("options", {}), other.facts.get("options", {})
        for key in [*ours, *(k for k in others if k not in ours)]:
            if key not in ours or key not in others or _canonical(ours[key]) != _canonical(others[key]):
                return (f"--{key.replace('_', '-')} is {_shown(ours.get(key, 'unset'))} in {mine}, "
                        f"{_shown(others.get(key, 'unset'))} in {theirs}")
        for key, words in _FACTS.items():
            if _canonical(self.facts.get(key)) != _canonical(other.facts.get(key)):
                return f"{words} is {_shown(self.facts.get(key))} in {mine}, {_shown(other.facts.get(key))} in {theirs}"
        return None


def run_identity(config, dataset_sha256: str, partition_sha256: str, model_class: str,
                 initial_sha256: str, clock_sha256: str | None = None) -> RunIdentity:
    """The identity of a run of `config` (a fedsim Config) on that data, partition and initial model, and on those
    client profiles (`clock_sha256`; None, and not a fact, without the simulated clock)."""
    from fedsim.config import FIELDS, field_types

    floats = {name for name, hint in field_types().items() if hint in (float, float | None)}
    options = {}
    for name in FIELDS:
        if name not in RESUMABLE_OPTIONS:
            value = getattr(config, name)
            # 1 and 1.0 (a TOML integer for a float option) are one value: a run's identity is its numbers'
            options[name] = float(value) if name in floats and isinstance(value, int) else value
    facts = {"options": options, "dataset_sha256": dataset_sha256, "partition_sha256": partition_sha256,
             "model_class": model_class, "initial_sha256": initial_sha256, "numeric_version": NUMERIC_VERSION}
    if clock_sha256 is not None:  # runs without a clock keep the identity they had before it existed
        facts["clock_sha256"] = clock_sha256
    return RunIdentity(_plain(facts))


def identity_of(config, dataset, partition, model, clock=None) -> RunIdentity:
    """The identity of a run of `config` on a fedsim Dataset, a Partition and its initial model (an nn.Module
    holding its initial weights), and its simulated clock (fedsim.engine.clock.Clock, or None): `run_identity` of
    their hashes. Usable inside setup, before the Experiment."""
    from fedsim.core.state import model_state

    model_class = f"{type(model).__module__}.{type(model).__qualname__}"
    return run_identity(config, dataset.fingerprint(), partition.meta.get("sha256"), model_class,
                        weights_sha256(model_state(model)), None if clock is None else clock.digest())


def weights_sha256(state: dict) -> str:
    """A hash of a model's state (names, shapes, dtypes and values), to tell initial models apart."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _plain(value):
    """`value` as it reads back from a JSON file (tuples become lists), its keys in their order."""
    return json.loads(json.dumps(value, default=str))


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _shown(value) -> str:
    text = value if isinstance(value, str) else _canonical(value)
    return text[:12] + "..." if isinstance(value, str) and len(value) == 64 else text  # a sha256: its start
