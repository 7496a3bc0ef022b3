"""FedPer: Arivazhagan, Aggarwal, Singh, Choudhary, "Federated Learning with Personalization Layers", 2019
(arXiv:1912.00818).

Differs from FedAvg only in what is shared: the head (by default the model's last Linear layer, `--head`
names others) stays with each client; the base is averaged as FedAvg. Local training updates base and head
together from (global base, own head); a client is evaluated with the global base and its own head, and a
client never sampled uses the initial head. With --bn local the BN layers stay local too.

`--freeze-base` (also honoured by FedRep, Ditto and FedAS, which build on `local_trainable`): only the
head's parameters train locally, the base stays as received (a frozen-backbone personalization). BN running
statistics in the base still update in train mode and are averaged as the base is.
"""

from __future__ import annotations

from fedsim.algorithms.fedavg import FedAvg
from fedsim.core.hooks import ModelKeys, Phase
from fedsim.errors import FedsimError


def head_params(keys: ModelKeys, algo: str) -> frozenset[str]:
    if not keys.head:
        raise FedsimError(f"{algo} needs the model's head: name the head module(s) with --head")
    return frozenset(k for k in keys.params if k in set(keys.head))


def linear_head(model, keys: ModelKeys, algo: str, why: str, bias: bool = False) -> str:
    """The name of the model's head module, which must be one Linear layer, with a bias where `bias` (`why`: what
    the algorithm does with it); one FedsimError line saying to name another with --head otherwise."""
    from torch import nn

    modules = sorted({k.rpartition(".")[0] for k in head_params(keys, algo)})
    if len(modules) != 1 or not isinstance(model.get_submodule(modules[0]), nn.Linear) or (
            bias and model.get_submodule(modules[0]).bias is None):
        raise FedsimError(f"{algo} needs the head to be one Linear layer{' with a bias' if bias else ''} ({why}; "
                          f"now {', '.join(modules)}): name it with --head")
    return modules[0]


def local_trainable(keys: ModelKeys, freeze_base: bool, algo: str) -> frozenset[str] | None:
    """The parameters local training updates: the head's under --freeze-base, else all (None)."""
    return head_params(keys, algo) if freeze_base else None


class FedPer(FedAvg):
    name = "fedper"
    needs_head = True
    personalized = True

    def __init__(self, config, keys, num_clients: int = 1):
        self.head_params = head_params(keys, self.name)
        self.base_params = frozenset(k for k in keys.params if k not in self.head_params)
        super().__init__(config, keys, num_clients)

    def personal_keys(self):
        return super().personal_keys() | set(self.keys.head)

    def phases(self):
        return [Phase(trainable=local_trainable(self.keys, self.config.freeze_base, self.name))]
