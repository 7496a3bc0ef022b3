"""GPFL: Zhang, Hua, Wang, Song, Xue, Ma, Cao, Guan, "GPFL: Simultaneously Learning Global and Personalized Feature
Information for Personalized Federated Learning", ICCV 2023 (arXiv:2308.10279); code followed: PFLlib's
`clientgpfl.py` and `servergpfl.py` (TsingZ0/PFLlib), the authors' TsingZ0/GPFL.

Differs from FedPer (base shared, head personal) by a conditional valve (CoV) between the base and the head and
global category embeddings (GCE). CoV(f, c) = ReLU(f ⊙ (γ(c) + 1) + β(c)), γ and β each Linear(d, d) -> ReLU ->
LayerNorm of a conditional input c; the head classifies CoV(f, c_p), f the base's features, and the global branch
f_G = CoV(f, c_g) is pulled to the class embeddings E (classes x d). The local loss is
    CE(h(CoV(f, c_p)), y) + CE(cos(f_G, E), y) + λ·‖f_G − E⁰_y‖₂                                (`--gpfl-lam`)
the second term the cross-entropy of the cosine similarities to each class's embedding (PFLlib's GCE loss, no
scale), E⁰ the embeddings received (held), the norm over the whole batch (PFLlib's `torch.norm`, not a mean).
Base and head train with the client optimizer, and E, γ and β with it too plus weight decay μ (`--gpfl-mu`;
PFLlib's separate SGD with weight_decay, here the penalty (μ/2)·‖w‖²). After training a client sets its inputs
from its trained E: c_g the mean of the class embeddings, c_p = Σ_y p_y E_y with p its label proportions (zeros
until then, as PFLlib's). The server takes the sample-weighted mean of the base, E, γ and β (PFLlib's three
means); the head and the inputs stay with the client, which is evaluated with the global base, E, γ, β and its
own head and inputs. E, γ, β and the inputs are added beside the head (`extend_model`: the model must have one
Linear head, as the built-ins' and torchvision's `fc`), the valve through a hook on the head's input.
Deviations: a client's inputs are set when it trains (PFLlib recomputes every client's at each round's end, a
client outside the round from the global E it last received: the same under full participation, PFLlib's
benchmark setting). The reported train loss is the objective without the weight decay (PFLlib's train loss
leaves it out too). Defaults: the authors' script for CNNs (λ 0.01, μ 0.1); PFLlib's main.py defaults are λ 1,
μ 0. --freeze-base is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.algorithms.fedper import FedPer
from fedsim.algorithms.heads import add_beside_head
from fedsim.core.hooks import Phase
from fedsim.core.params import Params, option


@dataclass(frozen=True)
class GPFLParams(Params):
    gpfl_lam: float = option(0.01, "weight λ of the global features' distance to their class embedding (the "
                             "authors' script for CNNs: 0.01; PFLlib's -lam default 1)", low=0, per_client=True)
    gpfl_mu: float = option(0.1, "weight decay μ of the embeddings and valves (the authors' script for CNNs: 0.1; "
                            "PFLlib's -mu default 0)", low=0, per_client=True)


def valve(parts, f, context):
    """CoV(f, c) = ReLU(f ⊙ (γ(c) + 1) + β(c))."""
    import torch.nn.functional as F

    return F.relu(f * (parts.gamma(context) + 1) + parts.beta(context))


def valves_and_embeddings(head):
    """The modules GPFL adds beside a Linear head (E, γ, β, the inputs c_p and c_g), and the hook through which the
    head classifies CoV(f, c_p)."""
    import torch
    from torch import nn

    d, classes = head.in_features, head.out_features
    parts = nn.Module()
    parts.embedding = nn.Embedding(classes, d)
    parts.gamma = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.LayerNorm(d))
    parts.beta = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.LayerNorm(d))
    parts.register_buffer("personal_input", torch.zeros(d))
    parts.register_buffer("generic_input", torch.zeros(d))
    head.register_forward_pre_hook(lambda _, args: (valve(parts, args[0], parts.personal_input),))
    return parts


class GPFL(FedPer):
    name = "gpfl"
    no_freeze_base = "trains its base"
    Params = GPFLParams

    @classmethod
    def extend_model(cls, model, head):
        add_beside_head(model, head, cls.name, valves_and_embeddings)

    def __init__(self, config, keys, population: int = 1):
        self.head_name = sorted({k.rpartition(".")[0] for k in keys.head or ()})[0] if keys.head else None
        prefix = f"{self.head_name}.{self.name}."
        self.embedding = prefix + "embedding.weight"
        self.inputs = [prefix + "personal_input", prefix + "generic_input"]
        self.decayed = frozenset(k for k in keys.params if k.startswith(prefix))  # E, γ, β
        super().__init__(config, keys, population)

    def personal_keys(self):
        return super().personal_keys() | set(self.inputs)

    def phases(self):
        return [Phase(loss=self.loss, penalty=self.decay)]

    def client_context(self, server, store, client):
        embedding = server.model[self.embedding]
        return {"embedding": embedding, "gpfl_lam": embedding.new_tensor(self.params.gpfl_lam),
                "gpfl_mu": embedding.new_tensor(self.params.gpfl_mu)}

    def decay(self, params, ctx):
        """(μ/2)·‖w‖² over E, γ and β: SGD's weight decay μ on them (a penalty: the reported loss leaves it out)."""
        return 0.5 * ctx["gpfl_mu"] * sum((params[k] ** 2).sum() for k in self.decayed)

    def loss(self, model, state, x, y, ctx):
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call

        head = model.get_submodule(self.head_name)
        parts, seen = getattr(head, self.name), []
        # f_G from the base's features, before the valve hook turns them into CoV(f, c_p)
        hook = head.register_forward_pre_hook(lambda _, args: seen.append(valve(parts, args[0], parts.generic_input)),
                                              prepend=True)
        try:
            logits = functional_call(model, state, (x,))
        finally:
            hook.remove()
        f_global, embedding = seen[0], state[self.embedding]
        cosine = F.normalize(f_global, dim=-1) @ F.normalize(embedding, dim=-1).T
        pull = torch.linalg.vector_norm(f_global - ctx["embedding"][y])
        return F.cross_entropy(logits, y) + F.cross_entropy(cosine, y) + ctx["gpfl_lam"] * pull

    def client_finish(self, server, store, result):
        import torch

        trained = result.states[-1]
        embedding = trained[self.embedding]
        labels = self.data.y[self.data.of(result.client)]
        share = torch.bincount(labels, minlength=len(embedding)).to(embedding.dtype) / len(labels)
        store.put(result.client, {**{k: trained[k] for k in self.personal if k not in self.inputs},
                                  self.inputs[0]: share @ embedding, self.inputs[1]: embedding.mean(0)})
        return self.message(result)
