"""Secure aggregation, simulated exactly: the server learns the sum of what the cohort sends and nothing of any one
client's message.

SecAgg: Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth, "Practical Secure Aggregation
for Privacy-Preserving Machine Learning", CCS 2017 (the honest-but-curious protocol: no consistency round, no
signatures). SecAgg+: Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020: the masks and the secret shares run over a random k-regular graph of the
cohort instead of all pairs (fedsim's graph: a random Harary graph, each client joined to the k/2 before and after
it on a random cycle; Flower's `secaggplus` mod is the implementation users know).

A round, for the cohort C (every client sampled, including those that will drop out) and the senders S ⊆ C:
1. Each client u of C advertises two public keys and sends each neighbour v (all of C for SecAgg; its graph
   neighbours for SecAgg+) an encrypted share of its mask seed b_u and of its key s_u (t-out-of-(k+1) Shamir
   shares among its neighbours and itself; the threshold t is `--secagg-threshold`).
2. Each sender u quantizes its vector x_u (every summed field of its message, a model as its update, fedsim.core.
   channel), each coordinate clipped to [−R, R] (R = `--secagg-range`) and stochastically rounded to an integer
   level in [−L, L]; it multiplies the levels by its weight (its sample count for a sample-weighted field, 1 for a
   uniform one; the count itself is appended, so the server learns Σ n_i and no n_i) and sends
       y_u = w_u·q_u + PRG(b_u) + Σ_{v∈N(u), u<v} PRG(s_uv) − Σ_{v∈N(u), v<u} PRG(s_uv)   mod 2^B   (B = --secagg-bits)
   L = ⌊(2^(B−1) − 1) / (|C|·w_max)⌋ (w_max: the largest client's sample count, a public bound, or 1), so the
   cohort's sum never wraps around the field.
3. The server sums the y_u of S, removes the senders' own masks PRG(b_u) and, for every client v that dropped
   after step 1, its pairwise masks with its senders, both from the shares the senders return (simulated: the
   seeds are recomputed where at least t holders of the secret sent; below t the round fails as the protocol
   would: the server keeps its state, the log says why, the CSV's `secagg_failed` is 1). The sum is
   dequantized: Σ w_u·q_u·R/L.

The reducer (`SecureSum`) receives only the masked vectors; with central DP the clients clip their own updates
(a stage before the masking) and the server noises the unmasked sum (the DP reducer's `reduce_sum`). Seeds are
keyed by (the run's key, round, the pair or client) (fedsim.core.rng), so the masks are the same on every
process and after a resume. Integer tensors (BN's num_batches_tracked) are not sent: they keep the global
model's value, as under DP.

Bytes, counted in the CSV's bytes_up and bytes_down: public keys 32 bytes (X25519), a Shamir share 32 bytes, a
client id 4, authenticated encryption 28 (AES-GCM's nonce and tag); a masked coordinate B bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from fedsim.comm import SECAGG_SUMMED_ONLY
from fedsim.comm.codecs import generator
from fedsim.core import rng
from fedsim.core.channel import SAMPLES, SUMMED, UNIFORM, Message, stack_updates, unstack
from fedsim.errors import FedsimError

KEY_BYTES, SHARE_BYTES, ID_BYTES, AEAD_BYTES = 32, 32, 4, 28
SHARES_MESSAGE = 2 * ID_BYTES + 2 * SHARE_BYTES + AEAD_BYTES  # to one neighbour: shares of b_u and s_u, encrypted
MASKED = "secagg"  # the field of a masked message


@dataclass(frozen=True)
class Traffic:
    """One client's bytes in a round of the protocol with `neighbors` neighbours and a masked vector of
    `coordinates` field elements of `bits` bits."""

    neighbors: int
    coordinates: int
    bits: int

    @property
    def keys_up(self) -> int:  # step 1: its two public keys, its encrypted shares
        return 2 * KEY_BYTES + self.neighbors * SHARES_MESSAGE

    @property
    def masked_up(self) -> int:  # step 2
        return math.ceil(self.coordinates * self.bits / 8)

    @property
    def unmask_up(self) -> int:  # step 3: one share per neighbour (of b_v if v sent, of s_v if it dropped)
        return self.neighbors * (ID_BYTES + SHARE_BYTES)

    @property
    def sender_up(self) -> int:
        return self.keys_up + self.masked_up + self.unmask_up

    @property
    def keys_down(self) -> int:  # its neighbours' ids and public keys, the shares they sent it
        return self.neighbors * (ID_BYTES + 2 * KEY_BYTES + SHARES_MESSAGE)

    def senders_down(self, senders: int) -> int:  # step 3: which of its neighbours sent
        return senders * ID_BYTES


def levels(bits: int, cohort: int, max_weight: int) -> int:
    """L: the integer levels of [0, R] such that the cohort's weighted sum fits the field's signed range."""
    return (2 ** (bits - 1) - 1) // (cohort * max_weight)


def default_neighbors(cohort: int) -> int:
    """SecAgg+'s degree when --secagg-neighbors is not given: 2⌈log2 m⌉ (Bell et al.: O(log n)), at most m − 1."""
    return min(2 * math.ceil(math.log2(max(cohort, 2))), cohort - 1)


def neighbors(cohort, degree: int, key: int, round: int) -> dict[int, tuple[int, ...]]:
    """Each client's neighbours in the round's graph: all the others when `degree` ≥ |cohort| − 1 (SecAgg),
    else its degree/2 predecessors and successors on a cycle of the cohort in a keyed random order (SecAgg+)."""
    cohort = [int(c) for c in cohort]
    m = len(cohort)
    if degree >= m - 1:
        return {u: tuple(v for v in cohort if v != u) for u in cohort}
    order = [cohort[i] for i in rng.keyed_rng(rng.SECAGG_GRAPH, key, round).permutation(m)]
    out = {}
    for p, u in enumerate(order):
        out[u] = tuple(sorted({order[(p + j) % m] for j in range(1, degree // 2 + 1)}
                              | {order[(p - j) % m] for j in range(1, degree // 2 + 1)}))
    return out


@dataclass
class Round:
    """What the masking stage tells the server about a round: public (who was in the cohort, the graph, the
    vector's layout), never a client's values."""

    round: int
    cohort: list[int]
    graph: dict[int, tuple[int, ...]]
    parts: list  # (field, key) of each tensor of the vector, as stack_updates lays it out
    template: Message  # zeros of the summed fields' shapes (for unstack)
    levels: int
    weighted: bool  # the vector ends with the sender's sample count


class SecureAggregation:
    """The protocol's settings, shared by its stage (`Mask`) and its reducer (`SecureSum`). `cohort_of(round)`:
    the round's sampled clients (None: the senders, no dropout); `max_weight`: the largest client's sample count;
    `by_samples`: sample-weighted fields are weighted (the weighted mean; False under DP, where each client
    counts once)."""

    def __init__(self, mode: str, bits: int, threshold: int | None, degree: int | None, bound: float, key: int,
                 max_weight: int, by_samples: bool, cohort_of=None, sampled: int | None = None):
        self.mode, self.bits, self.threshold, self.degree, self.bound = mode, bits, threshold, degree, bound
        self.key, self.max_weight, self.by_samples, self.cohort_of = key, max_weight, by_samples, cohort_of
        self.sampled = sampled  # the most clients a round samples
        self.field = (1 << bits) - 1  # the modulus minus 1: x & field is x mod 2^B
        self.current: Round | None = None

    def traffic(self, sends, message: Message, cohort: int | None = None) -> Traffic:
        """A sender's traffic for `message` (before masking) in a round of `cohort` clients (default: the most a
        round samples). A field a stage adds before the masking (DP's adaptive count, one coordinate) is not in
        `sends` and not counted here; the masking stage counts it."""
        coordinates = sum(v.numel() for f, spec in sends.items() if spec.kind == SUMMED
                          for v in message.fields[f].values() if v.is_floating_point())
        weighted = self.by_samples and any(spec.kind == SUMMED and spec.weight == SAMPLES for spec in sends.values())
        return Traffic(self.degree_for(cohort or self.sampled), coordinates + weighted, self.bits)

    def degree_for(self, cohort: int) -> int:
        if self.mode == "secagg":
            return cohort - 1
        return default_neighbors(cohort) if self.degree is None else min(self.degree, cohort - 1)

    def threshold_for(self, cohort: int) -> int:
        holders = self.degree_for(cohort) + 1
        return holders // 2 + 1 if self.threshold is None else self.threshold

    def prg(self, purpose: int, round: int, *ids: int, size: int):
        import torch

        return torch.randint(0, 1 << self.bits, (size,), generator=generator(purpose, self.key, round, *ids),
                             dtype=torch.int64)


class Mask:
    """The stage: each sender's vector quantized, weighted and masked into the field (step 2)."""

    name = "secure aggregation (--secure-agg)"
    needs_summed_only = SECAGG_SUMMED_ONLY

    def __init__(self, protocol: SecureAggregation):
        self.protocol = protocol

    def __call__(self, sends, messages, server, round: int):
        import torch

        p = self.protocol
        senders = [m.client for m in messages]
        cohort = sorted(set(senders) | set(int(c) for c in (p.cohort_of(round) if p.cohort_of else ())))
        graph = neighbors(cohort, p.degree_for(len(cohort)), p.key, round)
        x, parts = stack_updates(sends, messages, server.model)
        device = x.device
        sizes = [messages[0].fields[f][k].numel() for f, k in parts]
        by_samples = [p.by_samples and sends[f].weight == SAMPLES for f, _ in parts]
        weighted = any(by_samples)
        for f, _ in parts:
            if sends[f].weight not in (SAMPLES, UNIFORM):
                raise FedsimError(f"secure aggregation cannot weigh field {f!r} by another field")
        level = levels(p.bits, len(cohort), p.max_weight if weighted else 1)
        template = Message(-1, 0, {f: {k: torch.zeros_like(v) for k, v in messages[0].fields[f].items()}
                                   for f, spec in sends.items() if spec.kind == SUMMED})
        p.current = Round(round, cohort, graph, parts, template, level, weighted)
        size = x.shape[1] + weighted
        masks = self.masks(graph, senders, round, size)
        traffic = Traffic(len(graph[senders[0]]), size, p.bits)
        out = []
        for m, row in zip(messages, x.cpu(), strict=True):
            scaled = row.double().clamp(-p.bound, p.bound) * (level / p.bound)
            low = scaled.floor()
            draws = generator(rng.SECAGG_ROUNDING, p.key, round, m.client)
            q = (low + (torch.rand(scaled.shape, generator=draws, dtype=torch.float64) < scaled - low)).long()
            weights = torch.tensor([m.num_samples if s else 1 for s in by_samples], dtype=torch.int64)
            value = q * weights.repeat_interleave(torch.tensor(sizes))
            if weighted:
                value = torch.cat([value, torch.tensor([m.num_samples], dtype=torch.int64)])
            y = ((value & p.field) + masks[m.client]) & p.field
            out.append(replace(m, fields={MASKED: {"y": y.to(device)}}, size=traffic.sender_up))
        return out

    def masks(self, graph, senders, round: int, size: int) -> dict:
        """Each sender's total mask: its own PRG(b_u) plus ± the PRG of each pair it shares with a neighbour."""
        p = self.protocol
        total = {u: p.prg(rng.SECAGG_SELF, round, u, size=size) for u in senders}
        sending = set(senders)
        for u in senders:
            for v in graph[u]:
                if v in sending and v < u:  # this pair was added from v's side
                    continue
                r = p.prg(rng.SECAGG_PAIR, round, min(u, v), max(u, v), size=size)
                total[u] = (total[u] + r if u < v else total[u] - r) & p.field
                if v in sending:
                    total[v] = (total[v] + r if v < u else total[v] - r) & p.field
        return total


class SecureSum:
    """The reducer: the senders' masked vectors summed in the field, the masks removed, the sum dequantized; then
    the weighted means (or, with `then`, DP's noised sum: its `reduce_sum`)."""

    name = "secure aggregation (--secure-agg)"
    needs_summed_only = SECAGG_SUMMED_ONLY
    uses_samples = False  # the server learns Σ n_i, not the counts
    columns = ("secagg_failed",)

    def __init__(self, protocol: SecureAggregation, then=None):
        self.protocol, self.then = protocol, then

    def __call__(self, sends, messages, server, round: int):
        import torch

        p, r = self.protocol, self.protocol.current
        senders = [m.client for m in messages]
        sending = set(senders)
        dropped = [v for v in r.cohort if v not in sending]
        traffic = Traffic(len(r.graph[senders[0]]), messages[0].fields[MASKED]["y"].numel(), p.bits)
        info = {"bytes_up": len(dropped) * traffic.keys_up,
                "bytes_down": len(r.cohort) * traffic.keys_down
                + sum(traffic.senders_down(sum(v in sending for v in r.graph[u])) for u in senders)}
        short = self.shortfall(r, sending, dropped)
        if short is not None:
            return {}, len(messages), {**info, "secagg_failed": 1, "failed": short}
        total = messages[0].fields[MASKED]["y"].cpu() * 0
        for m in messages:
            total = (total + m.fields[MASKED]["y"].cpu()) & p.field
        for u in senders:
            total = (total - p.prg(rng.SECAGG_SELF, round, u, size=total.numel())) & p.field
        for v in dropped:  # its pairwise masks with the senders, from its key s_v rebuilt from their shares
            for u in r.graph[v]:
                if u in sending:
                    mask = p.prg(rng.SECAGG_PAIR, round, min(u, v), max(u, v), size=total.numel())
                    total = (total - mask if u < v else total + mask) & p.field
        signed = torch.where(total > p.field >> 1, total - (1 << p.bits), total)
        device = next(iter(server.model.values())).device
        sums = (signed[: len(signed) - r.weighted].double() * (p.bound / r.levels)).float().to(device)
        if self.then is not None:
            return self.dp(sends, sums, server, round, info)
        samples = float(signed[-1]) if r.weighted else None
        sizes = [r.template.fields[f][k].numel() for f, k in r.parts]
        divisors = torch.tensor([samples if p.by_samples and sends[f].weight == SAMPLES else len(messages)
                                 for f, _ in r.parts], dtype=torch.float32)
        mean = sums / divisors.repeat_interleave(torch.tensor(sizes)).to(device)
        return unstack(sends, r.template, r.parts, mean, server.model), len(messages), {**info, "secagg_failed": 0}

    def dp(self, sends, sums, server, round: int, info: dict):
        """DP's reducer on the unmasked sum: the algorithm's fields apart from the fields a stage added."""
        import torch

        r, start, added, parts, pieces = self.protocol.current, 0, {}, [], []
        for f, k in r.parts:
            n = r.template.fields[f][k].numel()
            if f in self.then.added:
                added[f] = sums[start:start + n]
            else:
                parts.append((f, k))
                pieces.append(sums[start:start + n])
            start += n
        own = {f: spec for f, spec in sends.items() if f not in self.then.added}
        means, count, more = self.then.reduce_sum(own, r.template, parts, torch.cat(pieces), added, server, round)
        return means, count, {**info, **more, "secagg_failed": 0}

    def shortfall(self, r: Round, sending: set, dropped: list) -> str | None:
        """Why the masks cannot be removed (fewer than t holders of a needed secret sent), or None."""
        t = self.protocol.threshold_for(len(r.cohort))
        needed = [(u, 1 + sum(v in sending for v in r.graph[u])) for u in sorted(sending)]
        needed += [(v, sum(u in sending for u in r.graph[v])) for v in dropped
                   if any(u in sending for u in r.graph[v])]
        client, held = min(needed, key=lambda pair: pair[1])
        if held >= t:
            return None
        if self.protocol.mode == "secagg":
            return (f"secure aggregation failed in round {r.round}: {len(sending)} of the cohort's {len(r.cohort)} "
                    f"clients sent, below --secagg-threshold {t}; the server keeps its model")
        return (f"secure aggregation failed in round {r.round}: {held} of the holders of client {client}'s shares "
                f"sent, below --secagg-threshold {t}; the server keeps its model")
