"""What the asynchronous algorithms (FedBuff, FedAsync) share: they run on the simulated clock's event loop
(fedsim.engine.asynchronous) instead of synchronous rounds, weigh a stale update by s(τ), and train locally as
FedAvg (or FedProx, with --mu, as FedBuff's paper allows).

Staleness functions, as Xie, Koyejo, Gupta, "Asynchronous Federated Optimization" (arXiv:1903.03934), §5, with τ
the model versions the server made since the client's model:

    constant    s(τ) = 1
    polynomial  s(τ) = (1 + τ)^(−a)                       a = 0.5 is FedBuff's 1/sqrt(1 + τ) (Nguyen et al. 2022)
    hinge       s(τ) = 1 if τ <= b, else 1 / (a(τ − b) + 1)   (the paper uses a = 10, b = 4)
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.fedprox import FedProx
from fedsim.core.hooks import Phase
from fedsim.core.params import Params, option
from fedsim.errors import FedsimError

STALENESS = ("constant", "polynomial", "hinge")
SYNCHRONOUS_ONLY = (("stragglers", 0.0, "--stragglers"), ("client_dropout", 0.0, "--client-dropout"),
                    ("over_select", None, "--over-select"))


@dataclass(frozen=True)
class AsyncParams(Params):
    staleness: str = option("polynomial", "s(τ), the weight of an update τ model versions stale: constant, "
                            "polynomial (1+τ)^-a, hinge (1 if τ <= b else 1/(a(τ-b)+1)) (Xie et al.)",
                            choices=STALENESS)
    staleness_a: float = option(0.5, "a of the polynomial and hinge staleness (0.5: FedBuff's 1/sqrt(1+τ))", low=0)
    staleness_b: float = option(4.0, "b of the hinge staleness (the paper's 4)", low=0)
    mu: float = option(0.0, "FedProx's proximal weight in local training (0: FedAvg's)", low=0, per_client=True)


def staleness_weight(kind: str, a: float, b: float, tau: int) -> float:
    if kind == "polynomial":
        return (1.0 + tau) ** -a
    if kind == "hinge":
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    return 1.0


class Asynchronous(FedAvg):
    """The asynchronous algorithms' common part; a subclass sets `buffer_size` (the updates a server step applies)
    and its server update."""

    asynchronous = True

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        for name, off, flag in SYNCHRONOUS_ONLY:
            if getattr(config, name) != off:
                raise FedsimError(f"{flag} assumes synchronous rounds; {cls.name} is asynchronous (slow or failing "
                                  "clients come from the profiles, --availability and --deadline): drop it")

    def staleness_weight(self, tau: int) -> float:
        p = self.params
        return staleness_weight(p.staleness, p.staleness_a, p.staleness_b, tau)

    def phases(self):
        return FedProx.phases(self) if self.params.mu else [Phase()]

    def client_context(self, server, store, client):
        return FedProx.client_context(self, server, store, client) if self.params.mu else {}
