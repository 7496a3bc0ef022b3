"""The DP options' checks (no torch, no dp-accounting: Config.validate calls them for every run)."""

from __future__ import annotations

import math

from fedsim.errors import FedsimError

MODES = ("central", "local")
ADAPTIVE = "adaptive"
DEFAULT_CLIP_QUANTILE = 0.5  # Config.dp_clip_quantile's default


def enabled(config) -> bool:
    """DP is on when a noise multiplier or a privacy budget is given."""
    return config.dp_noise is not None or config.dp_epsilon is not None


def default_delta(population: int) -> float:
    """δ when --dp-delta is not given: min(N^−1.1, 1e−5), well below 1/N (a δ of 1/N allows a mechanism that
    publishes one client's data outright)."""
    return min(population ** -1.1, 1e-5)


def clip_norm(text: str) -> float | None:
    """`--dp-clip`'s value: the clip norm C, or None for adaptive clipping."""
    return None if text == ADAPTIVE else float(text)


def check_options(config) -> None:
    """The DP options together: one line naming what to change."""
    if config.dp_mode not in MODES:
        raise FedsimError(f"unknown --dp-mode {config.dp_mode!r}: choose one of {', '.join(MODES)}")
    if config.dp_clip is not None and config.dp_clip != ADAPTIVE:
        try:
            clip = float(config.dp_clip)
        except ValueError:
            clip = math.nan
        if not (math.isfinite(clip) and clip > 0):
            raise FedsimError(f"--dp-clip must be a positive number or 'adaptive' (got {config.dp_clip!r})")
    if config.dp_clip_quantile != DEFAULT_CLIP_QUANTILE and config.dp_clip != ADAPTIVE:
        raise FedsimError("--dp-clip-quantile is the quantile of update norms that --dp-clip adaptive tracks: it "
                          "needs --dp-clip adaptive (a fixed --dp-clip C ignores it)")
    if not enabled(config):
        given = [f"--{name.replace('_', '-')}" for name, default in
                 (("dp_clip", None), ("dp_delta", None), ("dp_mode", "central"), ("dp_noise_seed", None))
                 if getattr(config, name) != default]
        if given:
            raise FedsimError(f"{' and '.join(given)} need --dp-noise Z or --dp-epsilon E (differential privacy "
                              "is off without one)")
        return
    if config.dp_noise is not None and config.dp_epsilon is not None:
        raise FedsimError("give --dp-noise (the noise multiplier) or --dp-epsilon (the budget it is computed "
                          "from), not both")
    if config.aggregate != "mean":
        raise FedsimError(f"--aggregate {config.aggregate} and differential privacy are both the channel's reducer "
                          "(a robust filter cannot see the noised sum): use one of them")
    if config.dp_clip is None:
        raise FedsimError("differential privacy needs --dp-clip C (the clip norm of a client's update) or "
                          "--dp-clip adaptive")
    if config.dp_clip == ADAPTIVE and config.dp_mode == "local":
        raise FedsimError("--dp-clip adaptive needs the server's noised count of clipped clients: use it with "
                          "--dp-mode central, or give --dp-clip C with --dp-mode local")
