"""FedRep: Collins, Hassani, Mokhtari, Shakkottai, "Exploiting Shared Representations for Personalized
Federated Learning", ICML 2021 (arXiv:2102.07078).

Differs from FedPer only in local training, which alternates: first `--head-epochs` epochs on the head with
the base frozen (from the received global base and the client's own head), then the local epochs
(`--local-epochs` or `--local-steps`) on the base with the new head frozen. The base is averaged as FedAvg;
the head stays with the client. Each phase starts a fresh client optimizer (PFLlib uses two optimizers).
With --freeze-base only the head phase runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms.fedper import FedPer
from fedsim.core.hooks import Phase
from fedsim.core.params import Params, option


@dataclass(frozen=True)
class FedRepParams(Params):
    head_epochs: int = option(1, "head-only epochs before the base epochs (PFLlib: 1)", low=1)


class FedRep(FedPer):
    name = "fedrep"
    Params = FedRepParams

    def phases(self):
        head = Phase(trainable=self.head_params, epochs=self.params.head_epochs)
        return [head] if self.config.freeze_base else [head, Phase(trainable=self.base_params)]
