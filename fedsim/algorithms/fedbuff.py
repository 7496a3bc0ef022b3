"""FedBuff: Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba, "Federated Learning with Buffered Asynchronous
Aggregation", AISTATS 2022 (arXiv:2106.06639), Algorithm 1.

Differs from FedAvg in running asynchronously (fedsim.engine.asynchronous): `--concurrency` clients train at once,
each sends its update Δ_i (its trained model minus the model it received, however stale), and once the server has
buffered `--buffer-size` K of them it steps with their mean, each weighed by s(τ) = 1/sqrt(1 + τ) (the paper's;
`--staleness`), as FedAvgM's server: v ← β·v + Δ̄, w ← w + η·v (`--server-lr` η, `--server-momentum` β, 0 by
default). The buffer is a cohort for the channel: DP clips each Δ_i and noises the buffer's sum (the paper's DP
variant), robust reducers filter it. Deviation: Δ̄ is sample-weighted as fedsim's FedAvg (the paper's mean is
uniform; under DP or a robust reducer it is uniform here too). With every client taking the same time,
K = concurrency = m, η = 1 and β = 0 it is synchronous FedAvg with m clients a round, up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedsim.algorithms.asynchronous import Asynchronous, AsyncParams
from fedsim.algorithms.serveropt import FedAvgM
from fedsim.core.channel import MODEL, summed
from fedsim.core.params import option

DELTA = "delta"


@dataclass(frozen=True)
class FedBuffParams(AsyncParams):
    buffer_size: int = option(10, "K: client updates the server buffers before it steps (the paper's 10)", low=1)
    server_lr: float = option(1.0, "server step size η on the buffer's mean update", low=0, low_open=True)
    server_momentum: float = option(0.0, "server momentum β on the buffer's mean update", low=0, high=1,
                                    high_open=True)


class FedBuff(Asynchronous, FedAvgM):
    name = "fedbuff"
    Params = FedBuffParams
    sends = {DELTA: summed("the client's update: its trained model minus the model it received (however stale)")}

    @property
    def buffer_size(self) -> int:
        return self.params.buffer_size

    def client_finish(self, server, store, result):
        sent = super().client_finish(server, store, result)  # keeps the client's personal part (--bn local)
        return replace(sent, fields={DELTA: {k: v - server.model[k] for k, v in sent.fields[MODEL].items()}})

    def server_update(self, server, aggregate):
        mean = {k: server.model[k] + d for k, d in aggregate.means[DELTA].items()}
        return super().server_update(server, replace(aggregate, means={MODEL: mean}))
