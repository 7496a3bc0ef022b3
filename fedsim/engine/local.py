"""The local update, one client at a time: the reference every faster executor is held to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedsim.core import rng
from fedsim.core.hooks import ClientJob, ClientResult, Phase
from fedsim.engine.optim import GradientTerm, OptimizerSpec, clip_by_global_norm
from fedsim.engine.threads import ThreadChooser


@dataclass
class ClientData:
    """The training tensors on the device and each client's index set into them (CSR)."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor  # all clients' train indices, concatenated
    offsets: np.ndarray  # client c owns indices[offsets[c]:offsets[c + 1]]

    def of(self, client: int) -> torch.Tensor:
        return self.indices[int(self.offsets[client]) : int(self.offsets[client + 1])]

    def size(self, client: int) -> int:
        return int(self.offsets[client + 1] - self.offsets[client])


@dataclass(frozen=True)
class LocalSpec:
    """How every client trains locally: the client optimizer, batches, epochs or steps, clipping."""

    optimizer: OptimizerSpec
    batch_size: int
    epochs: int = 1
    steps: int | None = None  # a fixed number of steps instead of epochs
    clip: float | None = None
    seed: int = 0


def epoch_cuts(n: int, batch_size: int) -> list[int]:
    """Where an epoch of n samples is cut into batches: [0, B, 2B, ..., n], a lone last sample joined to the batch
    before it (BatchNorm cannot train on one sample)."""
    cuts = list(range(0, n, batch_size)) + [n]
    if len(cuts) > 2 and n - cuts[-2] == 1:
        del cuts[-2]
    return cuts


def batch_schedule(generator: np.random.Generator, n: int, batch_size: int, epochs: int,
                   steps: int | None) -> list[np.ndarray]:
    """Positions into a client's index set, one array per local step.

    Each epoch is a fresh permutation cut into batches (the last one may be smaller, as a DataLoader
    without drop_last, except that a lone last sample joins the batch before it: BatchNorm cannot
    train on one sample); with `steps`, epochs follow each other until that many batches are taken.
    """
    cuts = epoch_cuts(n, batch_size)
    batches: list[np.ndarray] = []
    for _ in range(epochs if steps is None else -(-steps // (len(cuts) - 1))):
        perm = generator.permutation(n)
        batches.extend(perm[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True))
    return batches if steps is None else batches[:steps]


def local_work(spec: LocalSpec, phase: Phase, job: ClientJob) -> tuple[int, int | None]:
    """A client's (epochs, steps) in a phase: the phase's own epochs, else the job's (a straggler's), else the
    spec's."""
    if phase.epochs:
        return phase.epochs, None
    return job.epochs or spec.epochs, job.steps or spec.steps


def row_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(logits, y, reduction="none") for (rows, classes) logits, as log-softmax and gather: under
    vmap, F.cross_entropy runs a Python decomposition of nll_loss at every call (0.5 ms a step)."""
    if logits.dim() != 2:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)


def client_objective(model: torch.nn.Module, phase: Phase, params: dict, rest: dict, x: torch.Tensor,
                     y: torch.Tensor, ctx: dict, weight: torch.Tensor | None = None, detach=()):
    """One client's (objective, data loss) on a batch: the phase's loss (default: cross-entropy) plus its penalty.

    `weight` (0/1 per row) marks the real rows of a padded batch (vmap executor): the cross-entropy is then the
    mean over those rows only. Params named in `detach` enter the data loss detached (the vmap executor takes
    their data gradient as an outer product, outer.py); the penalty still sees them.
    """
    state = {**params, **rest, **{k: params[k].detach() for k in detach}}
    if phase.loss is not None:
        loss = phase.loss(model, state, x, y, ctx)
    elif weight is None:
        loss = F.cross_entropy(functional_call(model, state, (x,)), y)
    else:
        loss = (row_cross_entropy(functional_call(model, state, (x,)), y) * weight).sum() / weight.sum()
    return (loss if phase.penalty is None else loss + phase.penalty(params, ctx)), loss


def whole_gradient(phase: Phase, spec: LocalSpec, grads: dict, params: dict, term: GradientTerm | None, ctx: dict):
    """(gradients, the linear term left for the optimizer): a correction and clipping see the whole gradient, so
    before them the term is added (formed); otherwise the optimizer adds it in its update."""
    if phase.correction is None and spec.clip is None:
        return grads, term
    if term is not None:
        grads = term.added_to(grads, params)
    if phase.correction is not None:
        grads = phase.correction(grads, ctx)
    return clip_by_global_norm(grads, spec.clip), None


def train_client(model: torch.nn.Module, data: ClientData, spec: LocalSpec, phases: list[Phase],
                 job: ClientJob, round: int, lr: float) -> ClientResult:
    """Run the algorithm's phases for one client; returns its state after each phase."""
    seed = spec.seed if job.seed is None else job.seed
    numbers = job.optimizer or {}  # its run's, in a sweep's stack
    lr, momentum, weight_decay = numbers.get("lr", lr), numbers.get("momentum"), numbers.get("weight_decay")
    keys = job.draw_keys(round)
    torch.manual_seed(rng.keyed_torch_seed(seed, *keys))
    generator = rng.keyed_rng(rng.BATCHES, seed, *keys)
    own = data.of(job.data_rows)
    n = len(own)
    model.train()
    param_names = [k for k, _ in model.named_parameters()]
    state, states, steps = job.start, [], []
    loss_sum = torch.zeros((), device=data.x.device)
    last_finite = torch.full((), float("nan"), device=data.x.device)
    for phase in phases:
        if phase.start is not None:
            state = {k: v.clone() for k, v in job.ctx[phase.start].items()}
        trainable = [k for k in param_names if phase.trainable is None or k in phase.trainable] + sorted(phase.extra)
        # own copies, updated in place by the optimizer (as torch.optim does): no new tensors per step
        params = {k: state[k].detach().clone().requires_grad_() for k in trainable}
        rest = {k: v for k, v in state.items() if k not in params}  # buffers (updated in place) and frozen
        opt_state = spec.optimizer.init(params, momentum)
        schedule = batch_schedule(generator, n, spec.batch_size, *local_work(spec, phase, job))
        order = own[torch.from_numpy(np.concatenate(schedule)).to(own.device)]
        start = 0
        for batch in schedule:
            idx = order[start : start + len(batch)]
            start += len(batch)
            objective, loss = client_objective(model, phase, params, rest, data.x[idx], data.y[idx], job.ctx)
            grads = dict(zip(params, torch.autograd.grad(objective, list(params.values())), strict=True))
            with torch.no_grad():
                grads, term = whole_gradient(phase, spec, grads, params, GradientTerm.of(phase.linear_term, job.ctx),
                                             job.ctx)
                opt_state = spec.optimizer.step_(params, grads, opt_state, lr, term, momentum, weight_decay)
            loss = loss.detach()
            loss_sum += loss
            last_finite = torch.where(torch.isfinite(loss), loss, last_finite)
        state = {**rest, **{k: p.detach() for k, p in params.items()}}
        states.append(state)
        steps.append(len(schedule))
    total_steps = max(sum(steps), 1)
    return ClientResult(job.client, n, states, steps, float(loss_sum) / total_steps, float(last_finite), lr,
                        round=keys[0])


class SequentialExecutor:
    """Trains the cohort one client after another on one template model (no module copies)."""

    name = "sequential"
    reason = "trains one client after another (the reference executor)"

    def __init__(self, model: torch.nn.Module, data: ClientData, spec: LocalSpec, threads: int = 1):
        self.model, self.data, self.spec = model, data, spec
        self.threads = ThreadChooser(fixed=threads)  # one client's step is too small to split over threads

    def train(self, phases: list[Phase], jobs: list[ClientJob], round: int, lr: float) -> list[ClientResult]:
        return [train_client(self.model, self.data, self.spec, phases, job, round, lr) for job in jobs]
