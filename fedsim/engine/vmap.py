"""The fast path: the whole cohort trained at once with torch.func.vmap over stacked client states.

It does exactly the work of SequentialExecutor (local.py, the reference): the same batches from the same
keyed generators, the same optimizer math, clipping and phase hooks, client by client. How batching keeps
that exact:

- Stacking: each client's state, and each ctx tensor that differs between clients, gets a leading cohort
  dimension; ctx tensors every job shares (FedProx's global weights) go in once, unbatched. One step is
  one row gather of the batches, idx of shape (clients, batch), one vmapped forward pass of the functional
  model that gives every client's objective, and one autograd backward pass of their sum: clients share no
  parameters, so each gets exactly its own gradient.
- Linear layers (outer.py): under SGD, with no gradient correction or clipping, a Linear weight's gradient
  is kept as its two factors (the layer's input and output gradient) and added to the weight in place, never
  formed: for a stacked cohort, writing and reading the formed gradients was most of a step on the CPU. A
  phase's LinearTerm (FedProx's proximal pull, SCAFFOLD's c − c_i) joins that update in place too.
- Linear-only models (folded.py) run the same step without vmap: the clients' rows folded into one batch,
  each Linear per client as one batched matmul, where a check at construction shows the numbers are vmap's.
- Unequal step counts: clients are sorted by their steps in the phase (size, and a straggler's shorter work),
  most first, so the clients still training are always a prefix of the stack, and each step works on views
  of that prefix. A client that has taken all its steps
  drops out of the prefix, so it takes no step it would not take alone: its parameters, optimizer state and
  step count stay as they were. All clients in the prefix have taken the same number of steps, so the step
  counter is one number.
- Partial batches (the last batch of an epoch): batches are padded to the widest batch with a 0/1 mask, and
  the cross-entropy is the mask-weighted mean, i.e. F.cross_entropy over the real rows. A phase with its
  own `loss`, and a model with BatchNorm or any other mixing of a batch's rows (padded rows would enter its
  batch statistics; `_rows_interact` tries each model), get no padded rows: a step whose real batch sizes
  differ runs once per size, on copies of those clients' stacks.
- BatchNorm: each client's running statistics and batch count are stacked with its state (`rest`), and in
  train mode BatchNorm updates batched running statistics in place under vmap. The updates
  reach the stack through the prefix views; the once-per-size groups write theirs back.
- The optimizer updates the stacked parameters in place (`OptimizerSpec.step_`, torch._foreach ops): with
  K clients stacked, out-of-place updates allocate K-times-model-sized temporaries every step.

Memory grows with the chunk (`chunk` clients at once), not with the cohort. `compile=True` wraps the
vmapped forward pass in torch.compile (AOTAutograd compiles its backward too): one compile per distinct
stack size (a full chunk; then, as clients finish, one dynamic-size graph and one for a single client; with
BatchNorm, also per real batch width).

Models with dropout or with BatchNorm's cumulative average (momentum=None), and algorithms with
`vmap_ok = False`, stay with the sequential executor (`vmap_unsupported_reason`).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from fedsim.core import rng
from fedsim.core.hooks import ClientJob, ClientResult, Phase
from fedsim.engine.folded import FoldedLinears, foldable, folding_matches_vmap
from fedsim.engine.local import ClientData, LocalSpec, batch_schedule, client_objective, local_work
from fedsim.engine.optim import GradientTerm, clip_by_global_norm
from fedsim.engine.outer import LinearTaps, OuterProduct, tappable_linears, weight_key
from fedsim.engine.threads import ThreadChooser
from fedsim.errors import FedsimError


def vmap_unsupported_reason(model: nn.Module, algorithm=None) -> str | None:
    """Why the vmap executor cannot give the sequential executor's numbers here; None when it can."""
    if algorithm is not None and not getattr(algorithm, "vmap_ok", True):
        why = getattr(algorithm, "no_vmap", None) or "needs per-client work that vmap cannot batch"
        return f"the algorithm {getattr(algorithm, 'name', type(algorithm).__name__)} {why} (vmap_ok = False)"
    for name, m in model.named_modules():
        if isinstance(m, nn.RNNBase | nn.RNNCellBase):
            return f"the model has a recurrent layer ({name}: {type(m).__name__}): torch.func.vmap has no batching " \
                   "rule for its kernel"
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.momentum is None:
            return f"the model has BatchNorm with momentum=None ({name}: its cumulative average divides by " \
                   "float(num_batches_tracked), a per-client number vmap cannot batch)"
        p = m.p if isinstance(m, nn.modules.dropout._DropoutNd) else getattr(m, "dropout", 0.0)
        if isinstance(p, float) and p > 0:
            return f"the model has dropout ({name or type(m).__name__}: its random masks would differ from the " \
                   "sequential executor's)"
    return None


def _has_batch_statistics(model: nn.Module) -> bool:
    """Whether a layer computes statistics over the batch's rows (BatchNorm; a norm tracking running stats)."""
    return any(isinstance(m, _BatchNorm) or (isinstance(m, _NormBase) and m.track_running_stats)
               for m in model.modules())


def _rows_interact(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether a row's output depends on the other rows of its batch (a batch mean in the model's forward, say):
    the first three rows of `x` alone, and with a fourth row beside them, in train mode, on copies of the state."""
    if len(x) < 4:
        return False
    state = {k: v.detach().clone() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    training = model.training
    model.train()
    try:
        with torch.no_grad():
            alone = functional_call(model, {k: v.clone() for k, v in state.items()}, (x[:3],))
            beside = functional_call(model, state, (x[:4],))[:3]
    finally:
        model.train(training)
    if not isinstance(alone, torch.Tensor):  # not a classifier's logits: nothing here to compare
        return False
    if not (torch.isfinite(alone).all() and torch.isfinite(beside).all()):  # NaN tells nothing: assume they do
        return True  # (and the run's first loss stops it as diverged)
    return not torch.allclose(alone, beside, rtol=1e-5, atol=1e-6 * float(alone.abs().max()))


def _head(tree, n: int, dims=None):
    """The first n clients of every stacked tensor in `tree` (leaves with dim None are shared, kept)."""
    if dims is None:
        return tree_map(lambda t: t[:n] if isinstance(t, torch.Tensor) else t, tree)
    return tree_map(lambda t, d: t if d is None else t[:n], tree, dims)


def _take(tree, sel: torch.Tensor, dims=None):
    if dims is None:
        return tree_map(lambda t: t[sel] if isinstance(t, torch.Tensor) else t, tree)
    return tree_map(lambda t, d: t if d is None else t[sel], tree, dims)


def _stack_ctx(jobs: list[ClientJob]):
    """The jobs' ctx as one tree: tensors shared by every job stay unbatched (in_dim None), others stack."""
    flat = [tree_flatten(job.ctx) for job in jobs]
    spec = flat[0][1]
    if any(s != spec for _, s in flat):
        raise ValueError("the vmap executor needs every client's ctx to have the same structure")
    leaves, dims = [], []
    for column in zip(*(f[0] for f in flat), strict=True):
        first = column[0]
        if not isinstance(first, torch.Tensor) or all(c is first for c in column):
            leaves.append(first)
            dims.append(None)
        else:
            leaves.append(torch.stack(column))
            dims.append(0)
    return tree_unflatten(leaves, spec), tree_unflatten(dims, spec)


def _stack(states: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


def default_chunk(model: nn.Module, data: ClientData, spec: LocalSpec, cohort: int) -> int:
    """Clients trained together: the whole cohort on CPU; on CUDA as many as half the free memory holds."""
    if data.x.device.type != "cuda":
        return cohort
    free, _ = torch.cuda.mem_get_info(data.x.device)
    state = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    slots = {"sgd": 1}.get(spec.optimizer.name, 2)  # a momentum buffer counted: a sweep's stack may mix
    sample = data.x[:1].numel() * data.x.element_size()
    # per client: state, params copy, grads, optimizer slots, the result; activations ~ 64 inputs per row
    per_client = state * (4 + slots) + spec.batch_size * sample * 64
    return max(1, min(cohort, int(0.5 * free // per_client)))


class VmapExecutor:
    """Trains the cohort together: torch.func.vmap over stacked states, in chunks of `chunk` clients."""

    name = "vmap"

    def __init__(self, model: nn.Module, data: ClientData, spec: LocalSpec, chunk: int | None = None,
                 compile: bool = False, threads: ThreadChooser | None = None):
        if chunk is not None and chunk < 1:
            raise FedsimError(f"--cohort-chunk must be >= 1 (got {chunk})")
        self.model, self.data, self.spec, self.chunk, self.compile = model, data, spec, chunk, compile
        self.threads = threads or ThreadChooser(fixed=torch.get_num_threads())
        self.param_names = [k for k, _ in model.named_parameters()]
        self.buffer_names = {k for k, _ in model.named_buffers()}
        # padded rows would enter BatchNorm's statistics, or whatever else a row's output takes from its batch
        self.real_rows_only = _has_batch_statistics(model) or _rows_interact(model, data.x)
        self.folded = not compile and foldable(model) and folding_matches_vmap(model, data.x)
        how = "a Linear-only model: the clients' rows folded into one batch, each Linear per client as one " \
              "batched matmul" if self.folded else "torch.func.vmap"
        self.reason = f"trains the cohort together ({how}) " + \
            (f"in chunks of {chunk}" if chunk else "as a whole cohort (chunks by free memory on CUDA)") + \
            (", torch.compile'd step" if compile else "")

    def train(self, phases: list[Phase], jobs: list[ClientJob], round: int, lr: float) -> list[ClientResult]:
        if not jobs:
            return []
        self.model.train()
        order = sorted(range(len(jobs)), key=lambda i: -self.data.size(jobs[i].data_rows))  # stable
        chunk = self.chunk or default_chunk(self.model, self.data, self.spec, len(jobs))
        results: list[ClientResult | None] = [None] * len(jobs)
        for lo in range(0, len(order), chunk):
            part = order[lo : lo + chunk]
            for i, res in zip(part, self._train_chunk(phases, [jobs[i] for i in part], round, lr), strict=True):
                results[i] = res
        # leave torch's global generator as the sequential executor does (it seeds it for each client in turn)
        last = jobs[-1]
        torch.manual_seed(rng.keyed_torch_seed(self.spec.seed if last.seed is None else last.seed,
                                               *last.draw_keys(round)))
        return results

    def _train_chunk(self, phases, jobs, round, lr) -> list[ClientResult]:
        spec = self.spec
        sizes = [self.data.size(job.data_rows) for job in jobs]
        gens = [rng.keyed_rng(rng.BATCHES, spec.seed if job.seed is None else job.seed, *job.draw_keys(round))
                for job in jobs]
        ctx, ctx_dims = _stack_ctx(jobs)
        state = _stack([job.start for job in jobs])
        # each client's optimizer numbers (a sweep's runs with other values train together), one per client: the
        # learning rate always, momentum and weight decay where any is not 0 (0 keeps plain SGD's path: a sweep
        # stacks zero and non-zero values apart). So a client's arithmetic is the same whichever clients it trains
        # beside: a number would take other kernels (alpha in one fused multiply-add) and round otherwise.
        default = {"lr": lr, "momentum": spec.optimizer.momentum, "weight_decay": spec.optimizer.weight_decay}
        numbers = {k: [(job.optimizer or {}).get(k, v) for job in jobs] for k, v in default.items()}
        dtype = state[self.param_names[0]].dtype
        hyper = {k: torch.tensor(v, dtype=dtype, device=self.data.x.device) if k == "lr" or any(v) else 0.0
                 for k, v in numbers.items()}
        states, steps, losses = [], [], []
        for phase in phases:
            if phase.start is not None:
                state = _stack([job.ctx[phase.start] for job in jobs])
            schedules = [batch_schedule(g, n, spec.batch_size, *local_work(spec, phase, job))
                         for g, n, job in zip(gens, sizes, jobs, strict=True)]
            params = {k: state[k] for k in [*self.param_names, *sorted(phase.extra)]
                      if phase.trainable is None or k in phase.trainable or k in phase.extra}
            rest = {k: v for k, v in state.items() if k not in params}
            params, rest, phase_losses = self._train_phase_most_steps_first(phase, jobs, schedules, params, rest,
                                                                            ctx, ctx_dims, hyper)
            state = {**rest, **params}
            losses.append(phase_losses)
            states.append(state)
            steps.append([len(s) for s in schedules])
        losses = [t.cpu().numpy() for t in losses]  # per phase (steps, clients): client i took the first st[i]
        results = []
        for i, job in enumerate(jobs):
            own = np.concatenate([t[: st[i], i] for t, st in zip(losses, steps, strict=True)])
            finite = own[np.isfinite(own)]
            results.append(ClientResult(job.client, sizes[i], [{k: v[i].clone() for k, v in s.items()} for s in states],
                                        [st[i] for st in steps], float(own.sum()) / max(len(own), 1),
                                        float(finite[-1]) if len(finite) else float("nan"), numbers["lr"][i],
                                        round=job.draw_keys(round)[0]))
        return results

    def _batches(self, jobs, schedules):
        """Sample indices (steps, clients, width), padded, and the real batch sizes (steps, clients)."""
        width = max((len(b) for sched in schedules for b in sched), default=1)  # a lone last sample joins a batch
        pos = np.zeros((max(map(len, schedules), default=0), len(jobs), width), dtype=np.int64)
        counts = np.zeros(pos.shape[:2], dtype=np.int64)
        for c, sched in enumerate(schedules):
            for s, batch in enumerate(sched):
                pos[s, c, : len(batch)] = batch
                counts[s, c] = len(batch)
        pos = torch.from_numpy(pos).to(self.data.indices.device)
        idx = torch.stack([self.data.of(job.data_rows)[pos[:, c]] if self.data.size(job.data_rows) else pos[:, c]
                           for c, job in enumerate(jobs)], dim=1)
        return idx, counts

    def _train_phase_most_steps_first(self, phase, jobs, schedules, params, rest, ctx, ctx_dims, hyper):
        """`_train_phase` on the clients reordered by their steps in this phase, most first, and back: the chunk
        is ordered by size, which stragglers' shorter work (ClientJob.epochs/steps) can break. Returns the params,
        the rest (buffers updated in place) and the losses (steps, clients), in the chunk's order."""
        order = np.argsort([-len(s) for s in schedules], kind="stable")
        if (order == np.arange(len(order))).all():
            params, losses = self._train_phase(phase, jobs, schedules, params, rest, ctx, ctx_dims, hyper)
            return params, rest, losses
        sel = torch.from_numpy(order).to(self.data.x.device)
        back = torch.from_numpy(np.argsort(order)).to(self.data.x.device)
        rest = _take(rest, sel)  # a copy: the phase's in-place buffer updates land in it
        params, losses = self._train_phase(phase, [jobs[i] for i in order], [schedules[i] for i in order],
                                           _take(params, sel), rest, _take(ctx, sel, ctx_dims), ctx_dims,
                                           _take(hyper, sel))
        return _take(params, back), _take(rest, back), losses[:, back]

    def _train_phase(self, phase, jobs, schedules, params, rest, ctx, ctx_dims, hyper):
        """Train the stacked `params` (copied, then updated in place) with the optimizer numbers `hyper` (lr,
        momentum, weight_decay: numbers, or one per client); returns them after the phase, and the data losses
        (steps, clients), NaN where a client took no step."""
        spec, data = self.spec, self.data
        idx, counts = self._batches(jobs, schedules)
        mask = torch.from_numpy(np.arange(idx.shape[-1]) < counts[..., None]).to(data.x.device, torch.float32)
        num_steps = np.array([len(s) for s in schedules])
        assert (np.diff(num_steps) <= 0).all(), "clients must come largest first: finished ones leave the stack's end"
        taps = self._taps(phase, params)
        forward, finish = self._objective_fn(phase, ctx_dims, taps), self._finish_fn(phase, ctx_dims)
        params = {k: p.clone() for k, p in params.items()}
        live, opt_state, active = params, spec.optimizer.init(params, hyper["momentum"]), len(jobs)
        losses = torch.full((len(idx), len(jobs)), float("nan"), device=data.x.device)
        try:
            for s in range(len(idx)):
                now = int((num_steps > s).sum())
                if now < active:  # clients [now, active) took all their steps: they leave the stack, untouched
                    live, opt_state, rest = _head(live, now), _head(opt_state, now), _head(rest, now)
                    ctx, hyper, active = _head(ctx, now, ctx_dims), _head(hyper, now), now
                with self.threads.step():
                    i = idx[s, :active]
                    # index_select copies whole rows (a plain x[i] gathers element by element: 6x slower for MNIST)
                    x, y = (t.index_select(0, i.flatten()).view(*i.shape, *t.shape[1:]) for t in (data.x, data.y))
                    grads, loss = self._gradients(phase, forward, taps, live, rest, ctx, ctx_dims, x, y,
                                                  mask[s, :active], counts[s, :active])
                    term = GradientTerm.of(phase.linear_term, ctx)
                    with torch.no_grad():
                        if finish is not None:  # a correction and clipping see the whole gradient: term included
                            grads = finish(grads if term is None else term.added_to(grads, live), ctx)
                            term = None
                        opt_state = spec.optimizer.step_(live, grads, opt_state, hyper["lr"], term, hyper["momentum"],
                                                         hyper["weight_decay"])
                    losses[s, :active] = loss
        finally:
            if taps is not None:
                taps.remove()
        return params, losses

    def _gradients(self, phase, forward, taps, live, rest, ctx, ctx_dims, x, y, w, n):
        """One step's gradients for the stacked clients (tapped Linear weights' as OuterProducts), and their losses.

        A custom loss, BatchNorm, and any model whose rows interact see only real rows (no padding): when the
        clients' real batch sizes differ, the forward pass runs once per size, on copies of those clients' stacks,
        and the buffers it updates (BatchNorm's) are written back to `rest`. The objectives are summed for one
        backward pass: each client's parameters get its own gradient.
        """
        leaves = {k: p.detach().requires_grad_() for k, p in live.items()}
        padded = phase.loss is None and not self.real_rows_only
        if padded or (n == n[0]).all():
            width = x.shape[1] if padded else int(n[0])
            x, y, w = x[:, :width], y[:, :width], w[:, :width]
            probes = {} if taps is None else taps.probes(self.model, live, rest, x)
            objective, loss, inputs = forward(leaves, probes, rest, x, y, ctx, w)
            total, loss = objective.sum(), loss.detach()
        else:  # once per real batch size
            probes, total, loss = {}, 0.0, torch.empty(len(n), device=x.device)
            for size in np.unique(n):
                sel = torch.from_numpy(np.flatnonzero(n == size)).to(x.device)
                taken = _take(rest, sel)  # copies (advanced indexing): in-place buffer updates land here
                objective, lo, _ = forward(_take(leaves, sel), {}, taken, x[sel, :size], y[sel, :size],
                                           _take(ctx, sel, ctx_dims), w[sel, :size])
                total = total + objective.sum()
                for k, t in taken.items():
                    if k in self.buffer_names:
                        rest[k][sel] = t
                loss[sel] = lo.detach()
        found = torch.autograd.grad(total, [*leaves.values(), *probes.values()], allow_unused=True)
        grads = dict(zip(leaves, found, strict=False))
        for name, dy in zip(probes, found[len(leaves):], strict=True):
            key, seen = weight_key(name), inputs[name]  # (K, batch[, tokens...], features): every row the layer saw
            # the weight's own gradient, if any, is a penalty's: it stays beside the outer product
            grads[key] = OuterProduct(dy.reshape(len(dy), -1, dy.shape[-1]),
                                      seen.reshape(len(seen), -1, seen.shape[-1]), grads[key])
        return {k: torch.zeros_like(leaves[k]) if g is None else g for k, g in grads.items()}, loss

    def _taps(self, phase: Phase, params: dict) -> LinearTaps | None:
        """Taps for the Linear layers whose weight gradient can stay an outer product in this phase: plain
        cross-entropy (no custom loss), SGD, and no gradient correction or clipping (those need it formed)."""
        if phase.loss is not None or phase.correction is not None or self.spec.clip is not None \
                or self.spec.optimizer.name != "sgd":
            return None
        linears = tappable_linears(self.model, set(params))
        return LinearTaps(linears) if linears else None

    def _objective_fn(self, phase: Phase, ctx_dims, taps: LinearTaps | None):
        """vmap over clients of: (objective, data loss, tapped layers' inputs); autograd takes the gradients.
        A Linear-only model computes the same, folded (folded.py), wherever the phase keeps the default loss."""
        model = self.model
        if self.folded and phase.loss is None:
            penalty = None if phase.penalty is None else vmap(phase.penalty, in_dims=(0, ctx_dims))

            def folded_forward(params, probes, rest, x, y, ctx, w):
                state = {**params, **rest}
                with FoldedLinears(state, probes) as folded:
                    logits = functional_call(model, state, (x.flatten(0, 1),))
                rows = F.cross_entropy(logits, y.flatten(), reduction="none").view(len(w), -1)
                loss = (rows * w).sum(1) / w.sum(1)
                return loss if penalty is None else loss + penalty(params, ctx), loss, folded.inputs

            return folded_forward

        def client_forward(params, probes, rest, x, y, ctx, w):
            with taps.record(probes) if taps is not None else nullcontext({}) as inputs:
                objective, loss = client_objective(model, phase, params, rest, x, y, ctx, w,
                                                   detach=[weight_key(name) for name in probes])
            return objective, loss, dict(inputs)

        fn = vmap(client_forward, in_dims=(0, 0, 0, 0, 0, ctx_dims, 0))
        return torch.compile(fn, dynamic=None) if self.compile else fn

    def _finish_fn(self, phase: Phase, ctx_dims):
        """vmap over clients of the phase's gradient correction (SCAFFOLD), then clipping; None when neither."""
        correction, clip = phase.correction, self.spec.clip
        if correction is None and clip is None:
            return None

        def finish(grads, ctx):
            return clip_by_global_norm(grads if correction is None else correction(grads, ctx), clip)

        return vmap(finish, in_dims=(0, ctx_dims))
