"""LG-FedAvg: Liang, Liu, Ziyin, Allen, Auerbach, Brent, Salakhutdinov, Morency, "Think Locally, Act Globally:
Federated Learning with Local and Global Representations", 2020 (arXiv:2001.01523); code followed: PFLlib
(`clientlg.py`, `serverlg.py`).

Differs from FedPer by the reverse split: the base (every layer but the head, BN layers and buffers included) stays
with each client as its local representation; only the head (by default the model's last Linear layer, `--head`
names others) is sent and averaged as FedAvg. Local training updates base and head together from (own base, global
head); a client is evaluated with its own base and the global head, and a client never sampled uses the initial base.
The global model's test accuracy is not LG-FedAvg's product: its base is the initial one, never trained.
Deviation: the paper's experiments start from a FedAvg-trained global model (its code loads one); fedsim (as PFLlib)
starts from the initial model. --freeze-base trains only the head: the local bases then stay at their initial values.
"""

from __future__ import annotations

from fedsim.algorithms.fedper import FedPer


class LGFedAvg(FedPer):
    name = "lgfedavg"

    def personal_keys(self):
        return {k for k in self.keys.all if k not in set(self.keys.head)}
