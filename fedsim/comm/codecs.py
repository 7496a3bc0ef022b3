"""The codecs of `--compress` and `--compress-down`: each turns one tensor (flattened) into what the server decodes,
and says exactly how many bytes its encoding takes. The encoding itself is not built: the sizes below are those of
a fixed-width encoding of the values the codec sends (values as float32, indices as ⌈log2 d⌉-bit integers or a
d-bit bitmap, whichever is smaller; no entropy coding).

- `qsgd:B`: Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-Efficient SGD via Gradient Quantization
  and Encoding", NeurIPS 2017 (arXiv:1610.02132). The tensor is cut into buckets of `--bucket-size` coordinates;
  each coordinate v_i of a bucket v is sent as ‖v‖₂·sign(v_i)·ξ_i/s, ξ_i = l or l + 1 at random where
  l ≤ s|v_i|/‖v‖₂ < l + 1, with P(l + 1) = s|v_i|/‖v‖₂ − l: unbiased, with E‖Q(v) − v‖² ≤ min(n/s², √n/s)·‖v‖²
  (Lemma 3.1) for a bucket of n. B bits a coordinate carry its sign and a level in 0..s, s = 2^(B−1) − 1 (so
  qsgd:2 is ternary); a bucket adds its norm (float32). The paper's Elias coding of the levels is not used.
- `int8`: deterministic per-tensor affine quantization to 256 levels between the tensor's minimum and maximum
  (round to nearest; what production inference stacks use): biased. One byte a coordinate, plus the minimum and
  the step (float32 each).
- `topk:F`: the k = ⌈F·d⌉ coordinates of largest magnitude of each tensor of d coordinates, the others zero:
  biased; values plus indices. With --error-feedback (Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory",
  NeurIPS 2018) what is not sent is kept and added next time.
- `randk:F`: k = ⌈F·d⌉ coordinates drawn uniformly without replacement, scaled by d/k (unbiased); under
  --error-feedback unscaled (Stich et al.'s rand-k with memory: error feedback needs a contraction). The indices
  come from a seed the server can replay (Konečný et al., "Federated Learning: Strategies for Improving
  Communication Efficiency", 2016, random masks): values plus an 8-byte seed per message.
- `sign`: the sign of each coordinate times the tensor's mean magnitude ‖x‖₁/d, one bit a coordinate plus the
  scale (float32): scaled signSGD, and with --error-feedback EF-signSGD (Karimireddy, Rebjock, Stich, Jaggi,
  "Error Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML 2019). A zero is sent as +.
"""

from __future__ import annotations

import math

FLOAT = 4  # bytes of a float32 value, scale or norm
SEED = 8  # bytes of random-k's seed


def index_bits(d: int, k: int) -> int:
    """Bits that say which k of d coordinates are sent: k indices of ⌈log2 d⌉ bits, or a d-bit bitmap."""
    return min(k * math.ceil(math.log2(d)) if d > 1 else 0, d)


def ordered_sums(rows):
    """Each row's sum (a float64 torch tensor of rows), added in one fixed order (numpy's pairwise summation, one
    thread), so that a codec's scale does not depend on how many threads torch's parallel reductions use."""
    import numpy as np
    import torch

    return torch.as_tensor(np.add.reduce(rows.detach().double().cpu().numpy(), axis=-1)).to(rows.device)


def kept(fraction, d: int) -> int:
    """k = ⌈F·d⌉ (F an exact Fraction), at least 1."""
    return max(1, math.ceil(fraction * d))


class QSGD:
    stochastic = True
    message_bytes = 0

    def __init__(self, bits: int, bucket: int):
        self.bits, self.bucket, self.levels = bits, bucket, 2 ** (bits - 1) - 1

    def size(self, d: int) -> int:
        return math.ceil(d * self.bits / 8) + FLOAT * math.ceil(d / self.bucket)

    def __call__(self, x, generator):
        import torch

        d, b, s = x.numel(), self.bucket, self.levels
        pad = (-d) % b
        v = torch.cat([x.double(), x.new_zeros(pad, dtype=torch.float64)]).view(-1, b)
        norms = ordered_sums(v * v).sqrt().unsqueeze(1)
        scaled = v.abs() / norms.clamp_min(torch.finfo(torch.float64).tiny) * s
        low = scaled.floor()
        up = torch.rand(v.shape, generator=generator, dtype=torch.float64).to(x.device) < scaled - low
        out = norms * v.sign() * (low + up) / s
        return out.reshape(-1)[:d].to(x.dtype)


class Int8:
    stochastic = False
    message_bytes = 0

    def size(self, d: int) -> int:
        return d + 2 * FLOAT

    def __call__(self, x, generator=None):
        low, high = x.min(), x.max()
        step = (high - low) / 255
        if step == 0:
            return x.clone()
        return low + ((x - low) / step).round().clamp(0, 255) * step


class TopK:
    stochastic = False
    message_bytes = 0

    def __init__(self, fraction):
        self.fraction = fraction

    def size(self, d: int) -> int:
        k = kept(self.fraction, d)
        return FLOAT * k + math.ceil(index_bits(d, k) / 8)

    def __call__(self, x, generator=None):
        import torch

        index = x.abs().topk(kept(self.fraction, x.numel()), sorted=False).indices
        return torch.zeros_like(x).index_copy_(0, index, x[index])


class RandK:
    stochastic = True
    message_bytes = SEED

    def __init__(self, fraction, unbiased: bool = True):
        self.fraction, self.unbiased = fraction, unbiased

    def size(self, d: int) -> int:
        return FLOAT * kept(self.fraction, d)

    def __call__(self, x, generator):
        import torch

        d = x.numel()
        k = kept(self.fraction, d)
        index = torch.randperm(d, generator=generator)[:k].to(x.device)
        values = x[index] * (d / k) if self.unbiased else x[index]
        return torch.zeros_like(x).index_copy_(0, index, values)


class Sign:
    stochastic = False
    message_bytes = 0

    def size(self, d: int) -> int:
        return math.ceil(d / 8) + FLOAT

    def __call__(self, x, generator=None):
        import torch

        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype) * (ordered_sums(x.abs()) / x.numel()).to(x.dtype)


def make_codec(spec, bucket: int | None = None, error_feedback: bool = False):
    """The codec of a parsed --compress value (fedsim.comm.CodecSpec)."""
    from fedsim.comm import DEFAULT_BUCKET

    if spec.name == "qsgd":
        return QSGD(spec.bits, bucket or DEFAULT_BUCKET)
    if spec.name == "int8":
        return Int8()
    if spec.name == "topk":
        return TopK(spec.fraction)
    if spec.name == "randk":
        return RandK(spec.fraction, unbiased=not error_feedback)
    return Sign()


def generator(purpose: int, key: int, *more: int):
    """A CPU torch generator keyed by (purpose, the run's key, more): the same draws on every device, executor and
    process, and after a resume."""
    import torch

    from fedsim.core import rng

    return torch.Generator().manual_seed(int(rng.keyed_rng(purpose, key, *more).integers(2**62)))
