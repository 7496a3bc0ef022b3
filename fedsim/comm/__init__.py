"""Communication: compressed updates (--compress, --compress-down, --error-feedback) and simulated secure
aggregation (--secure-agg), both stages of the channel (fedsim.core.channel); they import only fedsim.core.

    codecs.py     the codecs (QSGD, int8, top-k, random-k, scaled sign): a tensor's decoded value and its exact
                  size on the wire
    compress.py   the compression stage (with error feedback's per-client residuals) and the broadcast's codec
    secagg.py     SecAgg / SecAgg+: the masking stage, the secure sum that is the channel's reducer, the bytes of
                  the protocol's messages
    install.py    what the options build for a run (fedsim.experiment.setup calls it)

This file holds the options' names and checks; like config.py, which calls `check_options`, it loads neither torch
nor numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from fedsim.core.channel import SUMMED
from fedsim.errors import FedsimError

CODECS = ("qsgd:B", "int8", "topk:F", "randk:F", "sign")
DOWN_CODECS = ("qsgd", "int8")  # --compress-down: a quantized model is still a model; a sparsified one is not
SECURE_AGG = ("secagg", "secagg+")
QSGD_BITS = (2, 32)  # one bit is the sign: B = 1 would leave no level
DEFAULT_BUCKET = 512  # QSGD's bucket (the default of IST-DASLab/smart-quantizer, the QSGD authors' group's code)
SECAGG_SUMMED_ONLY = "it shows the server only the sum of what the cohort sends"


@dataclass(frozen=True)
class CodecSpec:
    """A parsed `--compress` value: the codec's name and its parameter (QSGD's bits B, top-k's and random-k's
    fraction F as an exact fraction, so that k = ⌈F·d⌉ has no rounding error; None for int8 and sign)."""

    name: str
    bits: int | None = None
    fraction: Fraction | None = None

    def __str__(self) -> str:
        if self.bits is not None:
            return f"{self.name}:{self.bits}"
        return f"{self.name}:{self.fraction}" if self.fraction is not None else self.name


def parse_codec(text: str, option: str = "--compress") -> CodecSpec:
    """`qsgd:B`, `int8`, `topk:F`, `randk:F` or `sign`, checked: one line naming `option` when it is not one."""
    name, _, value = text.partition(":")
    if name in ("int8", "sign"):
        if value:
            raise FedsimError(f"{option} {text}: {name} takes no parameter (write {name})")
        return CodecSpec(name)
    if name == "qsgd":
        low, high = QSGD_BITS
        if not value.isdigit() or not low <= int(value) <= high:
            raise FedsimError(f"{option} {text}: B, the bits per coordinate (one of them the sign), must be an "
                              f"integer from {low} to {high}, e.g. qsgd:4")
        return CodecSpec(name, bits=int(value))
    if name in ("topk", "randk"):
        try:
            fraction = Fraction(value)
        except (ValueError, ZeroDivisionError):
            fraction = None
        if fraction is None or not 0 < fraction <= 1:
            raise FedsimError(f"{option} {text}: F, the fraction of coordinates sent, must be a number in (0, 1], "
                              f"e.g. {name}:0.01")
        return CodecSpec(name, fraction=fraction)
    raise FedsimError(f"unknown {option} {text!r}: choose one of {', '.join(CODECS)}")


def check_options(config, algorithm) -> None:
    """The communication options together, before anything is loaded: one line naming the option. (What needs
    the cohort size, the threshold and the graph's degree, is checked by `check_setup`.) `algorithm`: the run's
    algorithm class, whose declarations say what its clients send (`sends`) and whether it runs in rounds
    (`asynchronous`: FedBuff's and FedAsync's server sends each client the model when it starts)."""
    codec = None if config.compress is None else parse_codec(config.compress)
    asynchronous = algorithm.asynchronous
    if codec is not None and not any(spec.kind == SUMMED for spec in algorithm.sends.values()):
        raise FedsimError(f"--compress encodes the summed fields a client sends, and {config.algo}'s clients send "
                          f"none ({', '.join(algorithm.sends)}: the server keeps each as sent): drop --compress")
    if asynchronous and config.compress_down is not None:
        raise FedsimError(f"--compress-down encodes a round's broadcast; {config.algo} sends each client the current "
                          "model when it starts: drop --compress-down (--compress encodes what clients send)")
    if asynchronous and config.secure_agg is not None:
        raise FedsimError(f"--secure-agg masks a synchronous round's cohort, who share keys before they train; "
                          f"{config.algo}'s updates arrive one by one from clients that started at different times: "
                          "use a synchronous --algo")
    if config.compress_down is not None:
        down = parse_codec(config.compress_down, "--compress-down")
        if down.name not in DOWN_CODECS:
            raise FedsimError(f"--compress-down {config.compress_down}: the server broadcasts the model itself, "
                              f"which a sparsified or sign-only code would destroy; choose qsgd:B or int8")
    if config.error_feedback and codec is None:
        raise FedsimError("--error-feedback needs --compress (it keeps what the codec did not send)")
    qsgd_used = (codec is not None and codec.name == "qsgd") or (
        config.compress_down is not None and config.compress_down.startswith("qsgd"))
    if config.bucket_size is not None and not qsgd_used:
        raise FedsimError("--bucket-size is for --compress qsgd:B or --compress-down qsgd:B")
    if config.secure_agg is None:
        given = [f"--{name.replace('_', '-')}" for name, default in
                 (("secagg_bits", 32), ("secagg_threshold", None), ("secagg_neighbors", None),
                  ("secagg_range", 8.0)) if getattr(config, name) != default]
        if given:
            raise FedsimError(f"{' and '.join(given)} need --secure-agg secagg or secagg+")
        return
    if config.secure_agg not in SECURE_AGG:
        raise FedsimError(f"unknown --secure-agg {config.secure_agg!r}: choose one of {', '.join(SECURE_AGG)}")
    if codec is not None:
        raise FedsimError(f"--compress {config.compress} cannot be used with --secure-agg: the server receives "
                          "masked field elements, as dense as the field is wide, so no codec's saving would remain")
    if config.secagg_neighbors is not None:
        if config.secure_agg != "secagg+":
            raise FedsimError("--secagg-neighbors is the degree of SecAgg+'s graph: use it with --secure-agg secagg+")
        if config.secagg_neighbors % 2:
            raise FedsimError(f"--secagg-neighbors must be even (got {config.secagg_neighbors}): each client's "
                              "neighbours are the K/2 before and the K/2 after it on a random cycle of the cohort")


def check_setup(config, cohort: int, neighbors: int) -> None:
    """What needs the cohort size `cohort` and the graph's degree `neighbors` (each client's secrets are shared
    among its neighbours and itself): one line naming the option."""
    if config.secure_agg is None:
        return
    if config.secagg_neighbors is not None and config.secagg_neighbors > cohort - 1:
        raise FedsimError(f"--secagg-neighbors {config.secagg_neighbors} is more than the other {cohort - 1} "
                          f"clients of a round's cohort of {cohort}")
    holders = neighbors + 1
    where = f"the cohort of {cohort}" if config.secure_agg == "secagg" else \
        f"each client's {neighbors} neighbours and itself"
    if config.secagg_threshold is not None and config.secagg_threshold > holders:
        raise FedsimError(f"--secagg-threshold {config.secagg_threshold} is above the {holders} holders of a "
                          f"client's shares ({where}): no round could ever be unmasked; lower it")
