"""FedBN: Li, Jiang, Zhang, Kamp, Dou, "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization", ICLR 2021 (arXiv:2102.07623).

Differs from FedAvg only in what is shared: every BatchNorm layer (weight, bias, running mean and variance,
batch count) stays with its client; everything else is averaged as FedAvg. Each client is evaluated with
its own BN state (`personal_model`); a client never sampled uses the initial BN state. The authors' code
keeps every state key whose name contains 'bn'; fedsim finds BN layers by type (`bn_state_keys`).
`--algo fedbn` is `--algo fedavg --bn local`. A model without BatchNorm makes FedBN exactly FedAvg (a
warning says so).
"""

from __future__ import annotations

import warnings

from fedsim.algorithms.fedavg import FedAvg


class FedBN(FedAvg):
    name = "fedbn"

    def __init__(self, config, keys, num_clients: int = 1):
        super().__init__(config, keys, num_clients)
        if not keys.bn:
            warnings.warn("fedbn: the model has no BatchNorm layers, so FedBN is FedAvg", stacklevel=2)

    def personal_keys(self):
        return set(self.keys.bn)
