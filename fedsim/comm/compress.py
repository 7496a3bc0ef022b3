"""Compressed updates: the channel stage of `--compress` (with `--error-feedback`), and the codec of the server's
broadcast (`--compress-down`).

The stage encodes each client's message before it leaves the client and hands the reducer what the server decodes.
It encodes every floating tensor of every summed field (fedsim.core.channel), a model as its update (the model
minus the global model the client received, so the codec sees w_i − w), any other field as it is (SCAFFOLD's
Δc_i), each tensor on its own (a top-k of each, a scale or norms of each). Integer tensors (BN's
num_batches_tracked) and per-client fields (FedNova's step count) go as they are, at their raw size. The message's
size on the wire becomes the codec's exact count of all of it (fedsim.comm.codecs); the algorithm's own count
(FedProto's, of the classes a client holds) is replaced by it: a codec sends its tensors whole.

Error feedback (Stich et al. 2018; Karimireddy et al. 2019): client i sends C(Δ_i + e_i) and keeps
e_i ← Δ_i + e_i − C(Δ_i + e_i), so that everything it ever sent plus its residual is the sum of its updates. The
residuals are per-client state, kept here and written to the server state's `extra["ef"]` after each round (so
the checkpoint carries them; under torchrun every process runs the channel on the same gathered messages and
holds the same residuals). A client that drops out keeps its residual.

A stochastic codec's draws are keyed by (the run's key, round, client) (fedsim.core.rng.CODEC).
"""

from __future__ import annotations

from dataclasses import replace

from fedsim.comm.codecs import generator
from fedsim.core import rng
from fedsim.core.channel import PER_CLIENT, SUMMED, stack_updates, with_fields

RESIDUALS = "ef"  # the server state's extra entry holding error feedback's residuals


def decoded_fields(sends, message, parts, flat, center) -> dict:
    """The summed fields of `message` with their floating tensors replaced by `flat` (laid out as
    `stack_updates`' rows): a centered field's tensors are `center` plus their part; other tensors as sent."""
    fields, start = {}, 0
    for f, k in parts:
        like = message.fields[f][k]
        value = flat[start:start + like.numel()].reshape(like.shape).to(like.dtype)
        fields.setdefault(f, dict(message.fields[f]))[k] = center[k] + value if sends[f].centered else value
        start += like.numel()
    return fields


def raw_bytes(value) -> int:
    """Bytes of a field sent as it is: its tensors, a plain number as 8 (fedsim.algorithms.fedavg's count)."""
    if isinstance(value, dict):
        return sum(v.numel() * v.element_size() for v in value.values())
    return value.numel() * value.element_size() if hasattr(value, "element_size") else 8


class Compress:
    """The channel stage of `--compress`: every client's summed fields through `codec`, with error feedback's
    residuals when `error_feedback`; `key` keys a stochastic codec's draws."""

    name = "--compress"
    needs_summed_only = None  # per-client fields go as they are

    def __init__(self, codec, key: int, error_feedback: bool = False):
        self.codec, self.key, self.error_feedback = codec, key, error_feedback
        self.residuals: dict = {}  # client -> its residual, a flat vector laid out as `stack_updates`' rows
        self.raw = self.sent = 0  # bytes of the messages encoded so far: as the algorithm counts them, as sent

    def __call__(self, sends, messages, server, round: int):
        updates, parts = stack_updates(sends, messages, server.model)
        sizes = self.sizes(sends, messages[0])
        residuals, out = dict(self.residuals), []
        for m, update in zip(messages, updates, strict=True):
            if self.error_feedback and m.client in residuals:
                update = update + residuals[m.client]
            draws = generator(rng.CODEC, self.key, round, m.client) if self.codec.stochastic else None
            sent = self.encode(update, sizes, draws)
            if self.error_feedback:
                residuals[m.client] = update - sent
            decoded = replace(with_fields(m, **decoded_fields(sends, m, parts, sent, server.model)),
                              size=self.size(sends, m, sizes))
            self.raw, self.sent = self.raw + (m.size or 0), self.sent + decoded.size
            out.append(decoded)
        self.residuals = residuals
        return out

    @staticmethod
    def sizes(sends, message) -> list[int]:
        """The coordinates of each floating tensor of `message`'s summed fields, as `stack_updates` lays them out."""
        return [v.numel() for f, spec in sends.items() if spec.kind == SUMMED for v in message.fields[f].values()
                if v.is_floating_point()]

    def encode(self, update, sizes: list[int], draws):
        """`update` as the server decodes it, each tensor (of `sizes` coordinates) encoded on its own."""
        import torch

        return torch.cat([self.codec(part, draws) for part in update.split(sizes)])

    def size(self, sends, message, sizes: list[int]) -> int:
        """Bytes of `message` on the wire: the codec's count of each floating tensor of its summed fields, the
        rest as it is."""
        total = self.codec.message_bytes + sum(self.codec.size(n) for n in sizes)
        for name, spec in sends.items():
            value = message.fields[name]
            if spec.kind == PER_CLIENT:
                total += raw_bytes(value)
            elif spec.kind == SUMMED:
                total += sum(v.numel() * v.element_size() for v in value.values() if not v.is_floating_point())
        return total

    def state(self) -> dict:
        return dict(self.residuals)

    def load(self, state: dict | None) -> None:
        self.residuals = {int(c): v for c, v in (state or {}).items()}


class Broadcast:
    """`--compress-down`: the server's model as the clients receive it, each floating tensor of the keys it sends
    (`sent`) encoded by `codec` (a quantizer), the draws keyed by (the run's key, round): one encoding broadcast to
    every client. The round then starts from the decoded model: the clients and the server hold the same global
    model (the server's full-precision copy is not kept), so the clients' updates and the server's aggregate agree
    on what they are relative to."""

    def __init__(self, codec, key: int, sent):
        self.codec, self.key, self.sent = codec, key, list(sent)

    def __call__(self, server, round: int):
        """(the server state with the model the clients receive, the bytes the codec saves on each copy)."""
        draws = generator(rng.DOWNLINK, self.key, round) if self.codec.stochastic else None
        model, saved = dict(server.model), 0
        for k in self.sent:
            v = server.model[k]
            if v.is_floating_point():
                model[k] = self.codec(v.reshape(-1).float(), draws).reshape(v.shape).to(v.dtype)
                saved += v.numel() * v.element_size() - self.codec.size(v.numel())
        return replace(server, model=model), saved
