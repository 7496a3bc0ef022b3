"""FedGen: Zhu, Hong, Zhou, "Data-Free Knowledge Distillation for Heterogeneous Federated Learning", ICML 2021
(arXiv:2105.10056); code followed: PFLlib's `clientgen.py` and `servergen.py` (TsingZ0/PFLlib), which simplify the
authors' zhuangdizhu/FedGen.

Differs from FedAvg by a generator G the server learns and sends with the model. G(y, ε) maps a label y and noise
ε to a feature, an input of the head. After averaging, the server trains G for `--gen-steps` Adam steps
(`--gen-lr`), each on --batch-size labels drawn from the clients' label distribution: the cross-entropy of the
averaged head's logits h(G(y, ε)) against y. Each client then trains on cross-entropy + λ·CE(h(G(y, ε)), y)
(`--gen-lam`), a fresh generated batch of --batch-size at every step, so its head learns the feature distribution
the heads agree on (the paper's local objective; G receives no gradient there). λ = 0 is FedAvg exactly. G is PFLlib's:
[ε, one_hot(y)] -> Linear(`--gen-noise-dim` + classes, `--gen-hidden`) -> BatchNorm -> ReLU -> Linear(-> the head's
input size), PyTorch's default initialization, ε uniform on [0, 1) (PFLlib's; its comment says Gaussian),
BatchNorm on the batch's statistics (PFLlib's G never leaves train mode), Adam with betas (0.9, 0.999), eps 1e-8.
Up: the model; down: the model and G.

From the aggregate only: PFLlib trains G on the sample-weighted mean of the cohort's logits, Σ_k w_k h_k(z),
before averaging; for a Linear head (the built-in models', torchvision's) that equals the averaged head's logits
h̄(z), which fedsim uses, so DP and the robust reducers cover G too. For a head of several layers h̄(z) is not
the mean of the logits (a deviation; the head must then be one module). The server's draws are keyed by (seed,
round), a client's by (seed, round, client), and G and its Adam moments are server state: resume gives the
uninterrupted numbers. The server knows the clients' label counts from the start (PFLlib's `qualified_labels`;
the paper has the clients send them).
Deviations: no learning-rate decay for G (PFLlib decays it with --learning_rate_decay); PFLlib's option to keep the
feature extractor local (`localize_feature_extractor`, off by default) is left out, as are the authors' further
terms (a KL term on the clients' outputs, G's diversity loss, their decaying weights). The reported train loss
includes the λ term, as PFLlib's. vmap_ok is False: each step draws fresh labels and noise (from the client's
keyed torch generator), random draws the vmap executor refuses. Cost: the server's Adam steps (1000 a round by
default, as PFLlib) take seconds a round on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedsim.algorithms.fedavg import FedAvg
from fedsim.algorithms.heads import head_input, head_module
from fedsim.core import rng
from fedsim.core.hooks import Phase
from fedsim.core.params import Params, option
from fedsim.core.state import num_bytes
from fedsim.errors import FedsimError

BETAS, EPS = (0.9, 0.999), 1e-8  # PFLlib's Adam for G


@dataclass(frozen=True)
class FedGenParams(Params):
    gen_lam: float = option(1.0, "weight λ of the generated features' cross-entropy in the local loss (PFLlib: 1; "
                            "0 = FedAvg)", low=0, per_client=True)
    gen_noise_dim: int = option(512, "size of the generator's noise input (PFLlib's noise_dim: 512)", low=1)
    gen_hidden: int = option(512, "width of the generator's hidden layer (PFLlib's hidden_dim: 512)", low=1)
    gen_lr: float = option(0.005, "the generator's Adam step size (PFLlib's generator_learning_rate: 0.005)", low=0,
                           low_open=True)
    gen_steps: int = option(1000, "the generator's Adam steps per round, on --batch-size labels each (PFLlib's "
                            "server_epochs: 1000)", low=0)


def generate(generator: dict, labels, noise, classes: int):
    """G(y, ε) = Linear(ReLU(BatchNorm(Linear([ε, one_hot(y)])))), BatchNorm on the batch's statistics; `generator`
    the state of `new_generator`'s nn.Sequential."""
    import torch
    import torch.nn.functional as F

    g = generator
    h = F.linear(torch.cat([noise, F.one_hot(labels, classes).to(noise.dtype)], dim=1), g["0.weight"], g["0.bias"])
    h = F.batch_norm(h, None, None, g["1.weight"], g["1.bias"], training=True)
    return F.linear(F.relu(h), g["3.weight"], g["3.bias"])


def new_generator(noise_dim: int, classes: int, hidden: int, features: int, device) -> dict:
    """G's initial state: PyTorch's default initialization of PFLlib's `Generative` layers."""
    from torch import nn

    layers = nn.Sequential(nn.Linear(noise_dim + classes, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                           nn.Linear(hidden, features)).to(device)
    return {k: v.detach() for k, v in layers.named_parameters()}


class FedGen(FedAvg):
    name = "fedgen"
    needs_head = True  # G's features enter the head
    vmap_ok = False
    no_vmap = "draws fresh labels and noise for its generator at every local step (random draws vmap refuses)"
    Params = FedGenParams

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        if config.batch_size < 2:
            raise FedsimError("fedgen's generator normalizes over a batch of --batch-size generated features: use "
                              "--batch-size 2 or more")

    def __init__(self, config, keys, population: int = 1):
        super().__init__(config, keys, population)
        self.head = sorted(keys.head)
        self.head_name = self.initial_generator = None

    def attach(self, model, data):
        import torch

        super().attach(model, data)
        self.head_name = head_module(model, self.keys.head, self.name)
        model.eval()
        with torch.no_grad():
            state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
            features = head_input(model, state, data.x[:1], self.head_name).shape[1]
            classes = model(data.x[:1]).shape[1]
        p = self.params
        self.initial_generator = new_generator(p.gen_noise_dim, classes, p.gen_hidden, features, data.x.device)

    def init_server(self, initial):
        import torch

        server = super().init_server(initial)
        g = self.initial_generator
        classes = g["0.weight"].shape[1] - self.params.gen_noise_dim
        counts = torch.bincount(self.data.y[self.data.indices], minlength=classes).to(g["0.weight"].dtype)
        server.extra.update(generator=g, label_probs=counts / counts.sum(),
                            adam={"m": {k: torch.zeros_like(v) for k, v in g.items()},
                                  "v": {k: torch.zeros_like(v) for k, v in g.items()}, "step": 0})
        return server

    def phases(self):
        return [Phase(loss=self.loss)]

    def client_context(self, server, store, client):
        lam = server.extra["label_probs"].new_tensor(self.params.gen_lam)
        return {"generator": server.extra["generator"], "label_probs": server.extra["label_probs"], "gen_lam": lam}

    def generated_loss(self, head, generator, label_probs, n: int, draws=None):
        """CE(h(G(y, ε)), y) on n labels drawn from `label_probs` and noise ε ~ U[0, 1) (from `draws`, a torch
        generator, else the global one); `head` the head's parameters, G's from `generator`."""
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call

        labels = torch.multinomial(label_probs, n, replacement=True, generator=draws)
        noise_dim = generator["0.weight"].shape[1] - len(label_probs)
        noise = torch.rand(n, noise_dim, generator=draws, device=label_probs.device, dtype=label_probs.dtype)
        z = generate(generator, labels, noise, len(label_probs))
        prefix = len(self.head_name) + 1
        logits = functional_call(self.model.get_submodule(self.head_name), {k[prefix:]: v for k, v in head.items()},
                                 (z,))
        return F.cross_entropy(logits, labels)

    def loss(self, model, state, x, y, ctx):
        """Cross-entropy + λ·CE(h(G(y', ε)), y') on --batch-size generated features (G is the server's: the
        gradient reaches the head only)."""
        import torch.nn.functional as F
        from torch.func import functional_call

        generated = self.generated_loss({k: state[k] for k in self.head}, ctx["generator"], ctx["label_probs"],
                                        self.config.batch_size)
        return F.cross_entropy(functional_call(model, state, (x,)), y) + ctx["gen_lam"] * generated

    def server_update(self, server, aggregate):
        server = super().server_update(server, aggregate)
        return replace(server, extra={**server.extra, **self.train_generator(server, aggregate.round)})

    def train_generator(self, server, round: int) -> dict:
        """`--gen-steps` Adam steps of G against the averaged head, from the Adam state in the server state (the
        arithmetic of torch.optim.Adam, PFLlib's optimizer for G, without loading torch's compiler with it);
        returns the new G and Adam state."""
        import torch

        head = {k: server.model[k].detach() for k in self.head}
        g = {k: v.clone().requires_grad_() for k, v in server.extra["generator"].items()}
        adam = server.extra["adam"]
        m, v, step = {k: t.clone() for k, t in adam["m"].items()}, {k: t.clone() for k, t in adam["v"].items()}, \
            int(adam["step"])
        probs = server.extra["label_probs"]
        seed = int(rng.keyed_rng(rng.GENERATOR, self.config.seed, round).integers(2**62))
        draws = torch.Generator(probs.device).manual_seed(seed)
        lr, (b1, b2) = self.params.gen_lr, BETAS
        for _ in range(self.params.gen_steps):
            grads = torch.autograd.grad(self.generated_loss(head, g, probs, self.config.batch_size, draws),
                                        list(g.values()))
            step += 1
            with torch.no_grad():
                for (k, p), grad in zip(g.items(), grads, strict=True):
                    m[k].lerp_(grad, 1 - b1)
                    v[k].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    denom = (v[k].sqrt() / (1 - b2**step) ** 0.5).add_(EPS)
                    p.addcdiv_(m[k], denom, value=-lr / (1 - b1**step))
        return {"generator": {k: p.detach() for k, p in g.items()}, "adam": {"m": m, "v": v, "step": step}}

    def bytes_down(self, server):
        """The model and G."""
        return super().bytes_down(server) + num_bytes(server.extra["generator"], server.extra["generator"])
