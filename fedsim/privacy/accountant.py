"""The privacy accountant: dp-accounting's RDP accountant (Google) on the event one fedsim round is.

- central: a fixed-size cohort of m of the N clients with data, drawn without replacement, then the Gaussian
  sum of their clipped updates: `SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z/2))` per round. The
  RDP accountant accepts that event only under the replace-one neighbouring relation (one client's data
  replaced by another's), where the sum of clipped updates moves by up to 2C: so the Gaussian's multiplier
  relative to that sensitivity is z/2.
- local: every client releases its own clipped, noised update; the server sees who sent what, so sampling does
  not amplify, and ε bounds a client that took part in every round: `GaussianDpEvent(z/2)` composed per round
  (replace-one again: any two updates inside the C-ball are up to 2C apart).

Every round is the same event, and RDP composes by adding, so the RDP of r rounds is r times one round's:
one round's RDP is computed once (a third of a second for the without-replacement event) and ε after any
round, a resumed run's included, follows from the round number alone.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from fedsim.errors import FedsimError


def dp_accounting():
    try:
        import dp_accounting
    except ImportError:
        raise FedsimError("differential privacy needs dp-accounting: pip install dp-accounting") from None
    return dp_accounting


@dataclass(frozen=True)
class Accounting:
    """What the accountant needs of a run."""

    mode: str  # central | local
    population: int  # N: the clients with data
    cohort: int  # m: clients a round
    noise: float  # z: noise std / clip norm (central with adaptive clipping: the combined multiplier)
    delta: float

    def round_event(self):
        dp = dp_accounting()
        gaussian = dp.GaussianDpEvent(self.noise / 2)  # replace-one: sensitivity 2C
        if self.mode == "local":
            return gaussian
        return dp.SampledWithoutReplacementDpEvent(self.population, self.cohort, gaussian)

    def event(self, rounds: int):
        return dp_accounting().SelfComposedDpEvent(self.round_event(), rounds)

    @staticmethod
    def fresh_accountant():
        dp = dp_accounting()
        return dp.rdp.RdpAccountant(neighboring_relation=dp.NeighboringRelation.REPLACE_ONE)

    def describe(self) -> dict:
        return {"accountant": f"RDP (dp-accounting {_version()})",
                "neighbouring_relation": "replace-one (one client's data replaced by another's)",
                "event_per_round": repr(self.round_event()),
                "sampling": ("fixed-size cohort without replacement (fedsim's cohort draw)" if self.mode == "central"
                             else "none credited: the server sees each client's noised update")}


class Accountant:
    """ε spent after r rounds, at the run's δ."""

    def __init__(self, accounting: Accounting):
        self.accounting = accounting
        self._orders = self._per_round = None
        if accounting.noise > 0:
            accountant = accounting.fresh_accountant()
            accountant.compose(accounting.round_event())
            # the library keeps the composed RDP per order here; r rounds are r times it (see the docstring)
            self._orders, self._per_round = accountant._orders, accountant._rdp.copy()

    def epsilon(self, rounds: int) -> float:
        if self._per_round is None:
            return math.inf
        from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

        return float(compute_epsilon(self._orders, rounds * self._per_round, self.accounting.delta)[0])


SMALLEST_NOISE = 1e-2  # the budget search's lower end: less noise than this protects nothing


@functools.lru_cache(maxsize=32)
def noise_for_budget(epsilon: float, rounds: int, mode: str, population: int, cohort: int, delta: float) -> float:
    """The smallest noise multiplier z whose ε after `rounds` is at most `epsilon` (to 0.1% of the budget):
    dp-accounting's own search (`calibrate_dp_mechanism`, a bracketing bisection) over the RDP accountant."""
    dp = dp_accounting()

    def event(z: float):
        return Accounting(mode, population, cohort, z, delta).event(rounds)

    try:
        z = dp.calibrate_dp_mechanism(Accounting.fresh_accountant, event, epsilon, delta,
                                      dp.LowerEndpointAndGuess(SMALLEST_NOISE, 1.0), tol=1e-5)
    except dp.mechanism_calibration.NoBracketIntervalFoundError:
        least = Accountant(Accounting(mode, population, cohort, SMALLEST_NOISE, delta)).epsilon(rounds)
        if least <= epsilon:
            raise FedsimError(f"--dp-epsilon {epsilon:g} is more than even noise multiplier {SMALLEST_NOISE:g} spends "
                              f"in {rounds} rounds (epsilon {least:.3g}): a budget that large protects nothing; give a "
                              "smaller --dp-epsilon, or --dp-noise 0 to train without noise") from None
        raise FedsimError(f"--dp-epsilon {epsilon:g} needs more noise than the search reaches in {rounds} rounds: "
                          "give a larger --dp-epsilon or fewer --rounds") from None
    return float(z)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dp-accounting")
    except PackageNotFoundError:
        return "unknown"
