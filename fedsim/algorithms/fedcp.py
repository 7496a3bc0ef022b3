"""FedCP: Zhang, Hua, Wang, Song, Xue, Ma, Guan, "FedCP: Separating Feature Information for Personalized Federated
Learning via Conditional Policy", KDD 2023 (arXiv:2307.01217); code followed: PFLlib's `clientcp.py` and
`servercp.py` (TsingZ0/PFLlib), the authors' TsingZ0/FedCP.

Differs from FedPer (base shared, head personal) by a conditional policy network (CPN) that splits each sample's
feature vector z (the head's input) into a personalized and a global part: (p, g) = the softmax over the pair of
CPN(z ⊙ ĉ) reshaped to (2, d), a Gumbel-softmax (τ = 1, soft) in training, ĉ the client's context c normalized.
The output is h_p(z ⊙ p) + h_g(z ⊙ g), h_p the client's own head and h_g the global head, held during local
training. CPN is Linear(d, 2d) -> LayerNorm -> ReLU; it and h_g are added beside the head (`extend_model`: the model
must have one Linear head, as the built-ins' and torchvision's `fc`), the split through a hook on the head. The
local loss is cross-entropy + λ·MMD(z, z_g) (`--cp-lam`), z_g the features of the received global base (held, in
train mode as PFLlib's copy, on copies of its BatchNorm statistics), MMD PFLlib's: RBF kernels with bandwidths
10, 15, 20, 50 over the batch. Base, h_p and CPN train. After training a client sets c = Σ_rows W_p (its trained
head's weight summed over the classes) and sends its base, CPN, and ½·(h_p + h_g) in h_g's place; the server
takes the sample-weighted mean of each (PFLlib's weights). c starts as one uniform draw, h_g as the initial head.
A client is evaluated with the global base, CPN and h_g and its own h_p and c, as PFLlib's next-round evaluation.
While h_g = h_p (a client's first training under full participation) the output is h_p(z) + b whatever the
policy says, so the policy gets no gradient then (as in PFLlib).
Deviations: at evaluation the policy is its softmax without Gumbel noise (PFLlib draws the noise at test time
too, so its accuracy is random; measured here, digits, mlp, 20 clients, Dir(0.1), 30 rounds, seeds 0-2: 86.8 /
82.8 / 87.3% without noise, 86.9 / 82.8 / 87.5% averaged over 5 noise draws); the initial c is one draw for every
client (PFLlib draws one per client: no effect under full participation, where c only enters while h_g = h_p;
the same setting gave identical numbers); a sampled client receives the current global h_g and CPN when it
starts (PFLlib sets them on the round's clients at its end: the same under full participation, PFLlib's
benchmark setting). The reported train loss includes the λ term. vmap_ok is False: the Gumbel noise is a random
draw at every step, which the vmap executor refuses. Default λ: the authors' script (5); PFLlib's main.py
default is 1. --freeze-base is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms.fedas import features_and_logits
from fedsim.algorithms.fedper import FedPer
from fedsim.algorithms.heads import add_beside_head, head_input
from fedsim.core.hooks import Phase
from fedsim.core.params import Params, option

BANDWIDTHS = (10.0, 15.0, 20.0, 50.0)  # PFLlib's RBF kernels


@dataclass(frozen=True)
class FedCPParams(Params):
    cp_lam: float = option(5.0, "weight λ of the MMD between the features and the global base's (the authors' "
                           "script: 5; PFLlib's -lam default 1)", low=0, per_client=True)


def policy_head(head):
    """The modules FedCP adds beside a Linear head (the CPN, h_g as a copy of the head, the context c), and the
    forward hook through which the head's output becomes h_p(z ⊙ p) + h_g(z ⊙ g)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    d, classes = head.in_features, head.out_features
    parts = nn.Module()
    parts.policy = nn.Sequential(nn.Linear(d, 2 * d), nn.LayerNorm(2 * d), nn.ReLU())
    parts.global_head = nn.Linear(d, classes, bias=head.bias is not None)
    parts.global_head.load_state_dict(head.state_dict())
    parts.register_buffer("context", torch.rand(d))

    def split(module, args, output):
        z = args[0]
        scores = parts.policy(z * F.normalize(parts.context, dim=-1)).unflatten(-1, (2, d))
        gates = F.gumbel_softmax(scores, tau=1.0, dim=-2) if module.training else F.softmax(scores, dim=-2)
        return F.linear(z * gates[..., 0, :], module.weight, module.bias) + parts.global_head(z * gates[..., 1, :])

    head.register_forward_hook(split)
    return parts


def mmd(x, y):
    """PFLlib's maximum mean discrepancy between the rows of x and of y: RBF kernels summed over BANDWIDTHS."""
    import torch

    xx, yy, xy = x @ x.T, y @ y.T, x @ y.T
    rx, ry = xx.diagonal(), yy.diagonal()
    dxx, dyy, dxy = rx[:, None] + rx - 2 * xx, ry[:, None] + ry - 2 * yy, rx[:, None] + ry - 2 * xy
    return sum(torch.exp(-0.5 * dxx / a) + torch.exp(-0.5 * dyy / a) - 2 * torch.exp(-0.5 * dxy / a)
               for a in BANDWIDTHS).mean()


class FedCP(FedPer):
    name = "fedcp"
    no_freeze_base = "trains its base"
    vmap_ok = False
    no_vmap = "draws Gumbel noise for its policy at every local step (random draws vmap refuses)"
    Params = FedCPParams

    @classmethod
    def extend_model(cls, model, head):
        add_beside_head(model, head, cls.name, policy_head)

    def __init__(self, config, keys, population: int = 1):
        self.head_name = sorted({k.rpartition(".")[0] for k in keys.head or ()})[0] if keys.head else None
        prefix = f"{self.head_name}.{self.name}."
        self.global_head = [k for k in keys.params if k.startswith(prefix + "global_head.")]
        self.context = prefix + "context"
        super().__init__(config, keys, population)

    def personal_keys(self):
        return super().personal_keys() | {self.context}

    def phases(self):
        return [Phase(trainable=frozenset(k for k in self.keys.params if k not in self.global_head), loss=self.loss)]

    def client_context(self, server, store, client):
        start = {**server.model, **store.get(client)}  # the received global base (with any --bn local part)
        frozen = {**start, **{k: start[k].clone() for k in self.keys.buffers}}  # train mode updates its BN copies
        return {"global": frozen, "cp_lam": server.model[self.context].new_tensor(self.params.cp_lam)}

    def loss(self, model, state, x, y, ctx):
        import torch
        import torch.nn.functional as F

        z, logits = features_and_logits(model, state, x, [self.head_name])
        with torch.no_grad():
            z_global = head_input(model, ctx["global"], x, self.head_name)
        return F.cross_entropy(logits, y) + ctx["cp_lam"] * mmd(z, z_global)

    def client_finish(self, server, store, result):
        trained = result.states[-1]
        weight = trained[f"{self.head_name}.weight"]
        store.put(result.client, {**{k: trained[k] for k in self.personal if k != self.context},
                                  self.context: weight.sum(0)})
        mixed = {k: 0.5 * trained[k.replace(f"{self.name}.global_head.", "")] + 0.5 * trained[k]
                 for k in self.global_head}
        return self.message(result, model={**trained, **mixed})
