"""FedBABU: Oh, Kim, Yun, "FedBABU: Toward Enhanced Representation for Federated Image Classification", ICLR 2022
(arXiv:2106.06042); code followed: the authors' (jhoon-oh/FedBABU: `--local_upt_part body --aggr_part body`,
`--ft_ep 5`) and PFLlib (`clientbabu.py`, `serverbabu.py`).

Differs from FedAvg in two places. During federated training the head (by default the model's last Linear layer,
`--head` names others) stays at its random initialization: clients train only the base (the body) and the server
averages and sends only the base. Before personalized evaluation every client fine-tunes the whole model (body and
head) for `--finetune-epochs` epochs on its own training data from the current global model; the fine-tuned models
are evaluated and dropped, never kept or sent (the engine runs `personalization_phases`, fedsim/experiment.py).
The test-accuracy columns are the global model's, with its untrained head. Each evaluated round costs
--finetune-epochs epochs over every client's data (all clients at once under the vmap executor): --eval-every
spaces them out.
Deviations: the fine-tuning runs at every evaluated round (the paper reports it at the end; PFLlib fine-tunes once,
after the last round), with the client optimizer, --lr (decayed as in that round) and --batch-size of training;
it starts from the current global model, where PFLlib fine-tunes each client's own local model (the base it
trained in its last round, not the last global base; its `fine_tune` runs on `self.model` after the last
round, which sends no model); --finetune-epochs 0 evaluates the global model itself. --freeze-base is refused (the
head is what stays frozen).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.fedper import head_params
from fedsim.core.hooks import Phase
from fedsim.core.params import Params, option


@dataclass(frozen=True)
class FedBABUParams(Params):
    finetune_epochs: int = option(5, "epochs each client fine-tunes the whole model before its personalized "
                                  "evaluation (the authors' code: 5; 0 evaluates the global model)", low=0)


class FedBABU(FedAvg):
    name = "fedbabu"
    no_freeze_base = "trains the base and keeps the head frozen"
    needs_head = True
    personalized = True  # by fine-tuning before evaluation (no personal part is kept between rounds)
    Params = FedBABUParams

    def __init__(self, config, keys, num_clients: int = 1):
        super().__init__(config, keys, num_clients)
        head = set(keys.head or ()) | head_params(keys, self.name)
        # what is trained, sent and averaged: the head is the same everywhere, averaging it would only add rounding
        self.sent = [k for k in self.shared if k not in head]
        self.trainable = frozenset(k for k in keys.params if k not in head)  # BN kept by --bn local trains too

    def phases(self):
        return [Phase(trainable=self.trainable)]


    def personalization_phases(self):
        return [Phase(epochs=self.params.finetune_epochs)] if self.params.finetune_epochs else []
