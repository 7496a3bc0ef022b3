"""Every random choice draws from a generator keyed by (purpose, seed, round, client).

So results do not depend on the order clients are trained in, on the executor, or on resuming.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

COHORT, BATCHES, TORCH = 1, 2, 3
MALICIOUS, ATTACK = 4, 5  # fedsim.robust: the fixed malicious subset (seed); an attacker's noise
STRAGGLERS, DROPOUT = 6, 7  # --stragglers: who straggles (round) and its local work (round, client); --client-dropout
DP_NOISE, DP_LOCAL_NOISE, DP_COUNT = 8, 9, 10  # fedsim.privacy: the server's noise (round), a client's (round,
#                                                client), adaptive clipping's noised count (round)
EVAL_SAMPLE, EVAL_CLIENTS = 11, 12  # --eval-sample's test rows, --eval-clients' clients: (seed) only, fixed for a run
SPEED, BANDWIDTH, AVAILABILITY = 13, 14, 15  # the simulated clock (fedsim.engine.profiles): client speeds and
#                                              bandwidths (seed), availability (seed: diurnal phases; round: Bernoulli)
GENERATOR = 16  # FedGen: the server's draws of labels and noise training its generator (round)
CODEC, DOWNLINK = 17, 18  # fedsim.comm: a stochastic codec's draws (run key, round, client); the broadcast's (round)
SECAGG_ROUNDING, SECAGG_PAIR, SECAGG_SELF, SECAGG_GRAPH = 19, 20, 21, 22  # fedsim.comm.secagg: a client's
#   stochastic rounding (run key, round, client), a pair's mask seed (run key, round, u, v), a client's own mask
#   (run key, round, client), SecAgg+'s graph (run key, round)


def keyed_rng(purpose: int, seed: int, *keys: int) -> np.random.Generator:
    import numpy as np

    return np.random.default_rng([purpose, seed, *keys])


def keyed_torch_seed(seed: int, round: int, client: int, *more: int) -> int:
    """A torch seed for a client's round (dropout and other in-model randomness)."""
    return int(keyed_rng(TORCH, seed, round, client, *more).integers(2**62))
