"""Differential privacy: DP-FedAvg (client-level clipping and Gaussian noise, central or local), adaptive
clipping, and a real accountant (dp-accounting's RDP) that puts the ε spent in every CSV row.

    options.py      the --dp-* options' checks (Config.validate calls them)
    aggregation.py  clipping and noise on the stacked updates: the `averaging` that replaces FedAvg's mean,
                    and local DP's transform of what each client sends
    accountant.py   the DP event a round is, ε after r rounds, the noise multiplier a budget allows

`install_privacy` (called by fedsim.experiment.setup) puts them on the algorithm. What is protected: what the
algorithm's `average` sees, its shared state; personalized algorithms keep their personal part on the client.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from fedsim.errors import FedsimError
from fedsim.privacy.options import clip_norm, enabled

COLUMNS = ["epsilon", "dp_clip"]  # the CSV columns of a DP run

# Algorithms whose clients send the server more than their model, unprotected: refused
UNPROTECTED = {"scaffold": "its control variates Δc_i reach the server unclipped and un-noised"}


@dataclass
class Privacy:
    """A run's DP: the averaging installed on the algorithm, local DP's transform, the accountant, the record."""

    averaging: object  # aggregation.DPAveraging
    accountant: object  # accountant.Accountant
    transforms: tuple  # run_round's transforms (local DP's noise)
    record: dict  # every DP setting, for the run record

    def row(self, round: int) -> dict:
        return {"epsilon": self.accountant.epsilon(round), "dp_clip": self.averaging.used_clip}

    def restore(self, server) -> None:
        """Continue from `server` (a checkpoint's): adaptive clipping's clip norm."""
        self.averaging.load(server.extra.get("dp"))

    def after_round(self, server):
        """`server` with the DP state the next round starts from (checkpointed with it)."""
        return replace(server, extra={**server.extra, "dp": self.averaging.state()})


def install_privacy(config, algorithm, population: int, cohort: int) -> Privacy | None:
    """Check that `algorithm` can be protected, set its averaging (and local DP's transform); None without DP.
    `population`: clients with data (N); `cohort`: clients a round (m)."""
    if not enabled(config):
        return None
    from fedsim.privacy.accountant import Accountant, Accounting, noise_for_budget
    from fedsim.privacy.aggregation import DPAveraging, LocalNoise

    name = config.algo
    if not algorithm.plain_average:
        raise FedsimError(f"differential privacy clips and noises the plain average of the clients' models; {name} "
                          "weighs its clients its own way and cannot be protected: choose another --algo")
    if name in UNPROTECTED:
        raise FedsimError(f"differential privacy cannot protect {name}: {UNPROTECTED[name]}")
    if getattr(config, "aggregate", "mean") != "mean":
        raise FedsimError(f"--aggregate {config.aggregate} replaces the average that differential privacy noises: "
                          "use one of them")
    delta = config.dp_delta if config.dp_delta is not None else 1 / population
    noise = config.dp_noise
    if noise is None:
        noise = noise_for_budget(config.dp_epsilon, config.rounds, config.dp_mode, population, cohort, delta)
        if not config.quiet:
            print(f"differential privacy: noise multiplier {noise:.4f} spends epsilon {config.dp_epsilon:g} "
                  f"(delta {delta:.3g}) in {config.rounds} rounds", file=sys.stderr)
    clip = clip_norm(config.dp_clip)
    if clip is None and noise >= cohort / 10:
        raise FedsimError(f"--dp-clip adaptive with {cohort} clients a round can carry noise multipliers below "
                          f"{cohort / 10:g} (its count's noise is {cohort}/20), not {noise:.3g}: give --dp-clip C, "
                          "more clients a round, or a larger budget")
    averaging = DPAveraging(config.dp_mode, clip, noise, cohort, config.seed, config.dp_clip_quantile)
    algorithm.averaging = averaging
    transforms = ()
    if config.dp_mode == "local":
        transforms = (LocalNoise(clip, noise, config.seed, algorithm.shared),)
    accounting = Accounting(config.dp_mode, population, cohort, noise, delta)
    record = {"mode": config.dp_mode, "clip": config.dp_clip, "noise_multiplier": noise,
              "noise_from": "--dp-epsilon" if config.dp_noise is None else "--dp-noise",
              "target_epsilon": config.dp_epsilon, "delta": delta, "clients": population, "cohort": cohort,
              "denominator": cohort, "weights": "each client once (sample counts not used)",
              "protected": f"the shared state {name} averages ({len(algorithm.shared)} tensors); integer buffers "
                           "keep the global model's value",
              **accounting.describe()}
    if clip is None:
        record.update(clip_quantile=config.dp_clip_quantile, clip_initial=averaging.clip,
                      count_noise_std=averaging.count_std, update_noise_multiplier=averaging.update_noise)
    return Privacy(averaging, Accountant(accounting), transforms, record)
