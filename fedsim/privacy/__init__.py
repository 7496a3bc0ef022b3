"""Differential privacy: DP-FedAvg (client-level clipping and Gaussian noise, central or local), adaptive
clipping, and a real accountant (dp-accounting's RDP) that puts the ε spent in every CSV row.

    options.py      the --dp-* options' checks (Config.validate calls them), δ's default, the noise key
    aggregation.py  DP's reducer and local DP's stage in the channel (fedsim.core.channel): clipping and noise
                    on everything a client sends
    accountant.py   the DP event a round is, ε after r rounds, the noise multiplier a budget allows

`install_privacy` (called by fedsim.experiment.setup) builds them. What is protected: everything the clients
send through the channel, which is all any algorithm's server update sees; an algorithm whose message has a
per-client field is refused by the channel (its declaration says why). Personalized algorithms keep their
personal part on the client, where it is never released.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from fedsim.privacy.options import clip_norm, default_delta, enabled

COLUMNS = ["epsilon", "dp_clip"]  # the CSV columns of a DP run


@dataclass
class Privacy:
    """A run's DP: the channel's reducer and stages, the accountant, the record."""

    reducer: object  # aggregation.DPReducer
    accountant: object  # accountant.Accountant
    stages: tuple  # the channel's per-client stages (local DP's noise)
    record: dict  # every DP setting, for the run record
    quiet: bool = False

    def row(self, round: int) -> dict:
        return {"epsilon": self.accountant.epsilon(round), "dp_clip": self.reducer.used_clip}

    def restore(self, server, rounds: int) -> None:
        """Continue from `server` (a checkpoint's): adaptive clipping's clip norm, and the noise multiplier the
        run's first rounds used. A resume that gives a `--dp-epsilon` run more rounds keeps that multiplier (the
        ε column stays the composition of the rounds as run) and says what the extra rounds spend."""
        saved = server.extra.get("dp")
        self.reducer.load(saved)
        if saved is None or "noise" not in saved or float(saved["noise"]) == self.reducer.noise:
            return
        from fedsim.privacy.accountant import Accountant

        noise = float(saved["noise"])
        self.reducer.set_noise(noise)
        for stage in self.stages:
            stage.noise = noise
        self.accountant = Accountant(replace(self.accountant.accounting, noise=noise))
        self.record.update(noise_multiplier=noise, noise_from="the checkpoint (the multiplier its rounds used)",
                           **self.accountant.accounting.describe())
        spent, target = self.accountant.epsilon(rounds), self.record["target_epsilon"]
        self.record["epsilon_after_rounds"] = spent
        if not self.quiet:
            print(f"differential privacy: resuming with the run's noise multiplier {noise:.4f}; {rounds} rounds "
                  f"spend epsilon {spent:.4g}" + (f", above the target {target:g}" if target and spent > target
                                                  else ""), file=sys.stderr)

    def after_round(self, server):
        """`server` with the DP state the next round starts from (checkpointed with it)."""
        return replace(server, extra={**server.extra, "dp": self.reducer.state()})


def install_privacy(config, population: int, cohort: int, noise_key: int) -> Privacy | None:
    """The run's DP (None without): the channel's reducer and its stages (local DP's noise; under --secure-agg,
    central DP's clipping on the client, since the server sees only the masked sum), the accountant, the record.
    `population`: clients with data (N); `cohort`: clients a round (m); `noise_key`: keys the noise draws."""
    if not enabled(config):
        return None
    from fedsim.privacy.accountant import Accountant, Accounting, noise_for_budget
    from fedsim.privacy.aggregation import ClientClip, DPReducer, LocalNoise

    delta = config.dp_delta if config.dp_delta is not None else default_delta(population)
    if delta >= 1 / population and not config.quiet:
        print(f"differential privacy: warning: --dp-delta {delta:g} is at least 1/N = 1/{population}: a mechanism "
              "may then publish one client's data outright and still meet it; use a delta well below 1/N",
              file=sys.stderr)
    noise = config.dp_noise
    if noise is None:
        noise = noise_for_budget(config.dp_epsilon, config.rounds, config.dp_mode, population, cohort, delta)
        if not config.quiet:
            print(f"differential privacy: noise multiplier {noise:.4f} spends epsilon {config.dp_epsilon:g} "
                  f"(delta {delta:.3g}) in {config.rounds} rounds", file=sys.stderr)
    clip = clip_norm(config.dp_clip)
    if clip is None and noise >= cohort / 10:
        from fedsim.errors import FedsimError

        raise FedsimError(f"--dp-clip adaptive with {cohort} clients a round can carry noise multipliers below "
                          f"{cohort / 10:g} (its count's noise is {cohort}/20), not {noise:.3g}: give --dp-clip C, "
                          "more clients a round, or a larger budget")
    reducer = DPReducer(config.dp_mode, clip, noise, cohort, noise_key, config.dp_clip_quantile)
    stages = (LocalNoise(clip, noise, noise_key),) if config.dp_mode == "local" else ()
    if config.dp_mode == "central" and config.secure_agg is not None:
        stages = (ClientClip(reducer),)
    accounting = Accounting(config.dp_mode, population, cohort, noise, delta)
    record = {"mode": config.dp_mode, "clip": config.dp_clip, "noise_multiplier": noise,
              "noise_from": "--dp-epsilon" if config.dp_noise is None else "--dp-noise",
              "target_epsilon": config.dp_epsilon, "delta": delta,
              "delta_from": "--dp-delta" if config.dp_delta is not None else "min(N^-1.1, 1e-5)",
              "clients": population, "cohort": cohort, "denominator": cohort,
              "weights": "each client once (sample counts not used)",
              "noise_key": ("--dp-noise-seed (shared on purpose)" if config.dp_noise_seed is not None
                            else "the run's identity"),
              "protected": "everything the clients send through the channel, as one clipped vector; integer "
                           "buffers keep the global model's value",
              "clipped_by": "each client" if config.dp_mode == "local" else
              "each client (--secure-agg: the server sees only the masked sum)" if config.secure_agg else "the server",
              **accounting.describe()}
    if clip is None:
        record.update(clip_quantile=config.dp_clip_quantile, clip_initial=reducer.clip,
                      count_noise_std=reducer.count_std, update_noise_multiplier=reducer.update_noise)
    return Privacy(reducer, Accountant(accounting), stages, record, config.quiet)
