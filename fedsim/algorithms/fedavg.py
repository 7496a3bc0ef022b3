"""FedAvg, and the hooks every algorithm shares with it: an algorithm subclasses FedAvg and says only how it differs.

The engine owns the round loop (`fedsim.engine.round.run_round`) and the local training loop. The hooks:

    Params            the algorithm's options, declared once (fedsim.core.params)
    extend_model()    modules the algorithm adds to the model (FedCP's policy network, GPFL's valves): their
                      tensors are then state like the model's own, trained, sent or kept, and in its forward
    personal_keys()   which state stays with each client (FedBN: BN layers; FedPer/FedRep: the head)
    phases()          the stretches of local training and their loss/gradient changes (FedProx, SCAFFOLD,
                      FedRep's head-then-base, Ditto's personal model)
    client_context()  per-client tensors the phases read (the global weights, control variates)
    sends             the fields of the message a client sends, each summed or per-client (fedsim.core.channel)
    client_finish()   what a client keeps (its personal part, SCAFFOLD's c_i) and the Message it sends
    server_update()   the server's new state from the channel's Aggregate (the fields' means: FedAvg's model;
                      FedNova's normalization, server optimizers), never from a single client's message
    personal_model()  the model a client would use itself, for personalized accuracy
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedsim.core.channel import MODEL, Aggregate, Field, Message, summed
from fedsim.core.hooks import ClientJob, ClientResult, ClientStore, ModelKeys, Phase, ServerState
from fedsim.core.params import Params
from fedsim.core.state import State, clone, num_bytes
from fedsim.errors import FedsimError


@dataclass(frozen=True)
class NoParams(Params):
    """FedAvg reads only the general options (local training, rounds, ...)."""


class FedAvg:
    """FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS 2017 (arXiv:1602.05629). Clients run local SGD from the global model; the server
    takes the sample-weighted mean of their models (parameters and floating BN buffers; integer
    buffers stay integer). With `--bn local`, BN layers stay with each client (FedBN's behaviour).
    """

    name = "fedavg"
    needs_head = False  # personalized algorithms set this: the engine then finds the model's head
    personalized = False  # keeps a personal model part per client (and honours --freeze-base)
    vmap_ok = True  # False: the algorithm needs per-client Python work the vmap executor cannot batch
    no_vmap: str | None = None  # where vmap_ok is False, why (the run record's executor reason says it)
    # what a client sends: the channel's stages and reducer accept or refuse the algorithm by these declarations
    sends: dict[str, Field] = {MODEL: summed("the trained model's shared part (parameters and BN statistics)",
                                             centered=True)}
    phases_read: frozenset[str] = frozenset()  # general options the phases read (a loss's lr): they cannot stack
    straggler_policy = "drop"  # --stragglers when --straggler-policy is not given: drop them (FedProx's FedAvg)
    asynchronous = False  # True: runs on the simulated clock's event loop (fedsim.engine.asynchronous), not in rounds
    single_update: str | None = None  # how its server applies each update alone (FedAsync): a cohort of one
    Params = NoParams  # the algorithm's own options; a subclass declares its own (fedsim.core.params)

    no_freeze_base: str | None = None  # why a personalized algorithm cannot take --freeze-base, if it cannot
    no_bn_local: str | None = None  # why it cannot take --bn local, if it cannot

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse the combinations of options this algorithm cannot run (one FedsimError line). Config.validate
        calls it, so a sweep names the run before anything trains; a subclass adds its own after super()'s."""
        cls.Params.from_config(config)  # its own options' ranges and choices
        if config.freeze_base and not cls.personalized:
            raise FedsimError(f"--freeze-base is for personalized algorithms (fedper, fedrep, ditto, fedas), "
                              f"not {config.algo}")
        if config.freeze_base and cls.no_freeze_base:
            raise FedsimError(f"{cls.name} {cls.no_freeze_base}: drop --freeze-base")
        if config.bn == "local" and cls.no_bn_local:
            raise FedsimError(f"{cls.name} {cls.no_bn_local}; drop --bn local")

    @classmethod
    def extend_model(cls, model, head: list[str] | None) -> None:
        """Add the algorithm's own modules to `model`, in place, before its state keys are read (`head`: the head's
        keys, None where no split was asked for). Their parameters and buffers are then state like the model's
        own: trained by the executors, averaged or kept per client, checkpointed, and used by the model's forward
        (a hook on the head), evaluation included. Called again on the same model it changes nothing. FedAvg
        adds none."""

    def __init__(self, config, keys: ModelKeys, population: int = 1):
        self.check_config(config)
        self.config = config
        self.params = self.Params.from_config(config)
        self.keys = keys
        self.population = population  # N: the clients with data, any of which a round may sample
        self.model = self.data = None
        personal = self.personal_keys()
        self.personal = [k for k in keys.all if k in personal]
        self.shared = [k for k in keys.all if k not in personal]
        self.shared_params = [k for k in keys.params if k not in personal]
        self.sent = self.shared  # the keys of the model a client sends and receives

    def attach(self, model, data) -> None:
        """The engine hands over the template model and the clients' data (for FedAS-like hooks)."""
        self.model, self.data = model, data

    def training_data(self, data):
        """The client data local training draws from (called after `attach`): all of it; FedFomo holds each
        client's validation split out."""
        return data

    # --- what is whose ---------------------------------------------------------------------------
    def personal_keys(self) -> set[str]:
        return set(self.keys.bn) if self.config.bn == "local" else set()

    def personal_initial(self, initial: State) -> State:
        """Per-client state a client starts with (its personal part of the initial model)."""
        return clone(initial, self.personal)

    # --- server ------------------------------------------------------------------------------------
    def init_server(self, initial: State) -> ServerState:
        return ServerState(model=clone(initial))

    # --- client ------------------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        return [Phase()]

    def client_context(self, server: ServerState, store: ClientStore, client: int) -> dict:
        return {}

    def client_job(self, server: ServerState, store: ClientStore, client: int) -> ClientJob:
        start = clone(server.model, self.shared)
        start.update(clone(store.get(client), self.personal))
        return ClientJob(client, start, self.client_context(server, store, client))

    def client_finish(self, server: ServerState, store: ClientStore, result: ClientResult) -> Message:
        """Keep what the client keeps (its personal part); return the message it sends."""
        if self.personal:
            store.put(result.client, {k: result.states[-1][k] for k in self.personal})
        return self.message(result)

    def message(self, result: ClientResult, model: State | None = None, **fields) -> Message:
        """The Message of `result`: the model field (`model`, default the last phase's state) over the sent keys,
        and `fields`."""
        model = result.states[-1] if model is None else model
        return Message(result.client, result.num_samples, {MODEL: {k: model[k] for k in self.sent}, **fields},
                       result.loss, result.round)

    def server_update(self, server: ServerState, aggregate: Aggregate) -> ServerState:
        return replace(server, model={**server.model, **aggregate.means[MODEL]})

    # --- evaluation and accounting -----------------------------------------------------------------
    def personal_model(self, server: ServerState, store: ClientStore, client: int) -> State | None:
        """The model client `client` uses itself; None when that is the global model."""
        if not self.personal:
            return None
        return {**server.model, **store.get(client)}

    def personalization_phases(self) -> list[Phase]:
        """Local training each client runs from the model it uses before personalized evaluation, kept for that
        evaluation only (FedBABU's fine-tuning, Per-FedAvg's step); none for FedAvg."""
        return []

    def personalization_job(self, server: ServerState, store: ClientStore, job: ClientJob) -> ClientJob:
        """A client's personalization job, changed where an algorithm needs (its start, context, local work)."""
        return job

    def bytes_down(self, server: ServerState) -> int:
        """Bytes the server sends one client per round."""
        return num_bytes(server.model, self.sent)

    def bytes_up_of(self, server: ServerState, message: Message) -> int:
        """Bytes `message` takes: every tensor of its fields, a per-client number as 8 bytes (FedProto: only the
        prototypes of the classes the client holds)."""
        return message_bytes(message)


def message_bytes(message: Message) -> int:
    total = 0
    for value in message.fields.values():
        if isinstance(value, dict):
            total += num_bytes(value, value)
        elif hasattr(value, "element_size"):
            total += value.numel() * value.element_size()
        else:
            total += 8
    return total

