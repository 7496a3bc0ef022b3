"""What `--compress`, `--compress-down`, `--error-feedback` and `--secure-agg` change in an experiment, set up once
(fedsim.experiment.setup calls `install_communication`), and the byte counts the round loop reads from it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from fedsim.comm import DEFAULT_BUCKET, check_setup, parse_codec
from fedsim.core.channel import SAMPLES, SUMMED
from fedsim.errors import FedsimError


@dataclass
class Communication:
    """A run's communication: the channel's stages (compression or masking), the reducer's wrapper (the secure
    sum), the broadcast's codec, the record, and the bytes counted so far (for the compression ratios)."""

    stages: tuple = ()
    compress: object = None  # compress.Compress (holds error feedback's residuals)
    protocol: object = None  # secagg.SecureAggregation
    broadcast: object = None  # compress.Broadcast (--compress-down)
    record: dict = field(default_factory=dict)
    totals: dict = field(default_factory=lambda: {"raw_down": 0, "down": 0})
    cohort: tuple = (0, ())  # (round, the clients it sampled): secure aggregation's key holders

    def reducer(self, reducer):
        """The channel's reducer: `reducer` (None: the weighted mean), or under --secure-agg the secure sum that
        hands the unmasked sum to it (DP's `reduce_sum`)."""
        if self.protocol is None:
            return reducer
        from fedsim.comm.secagg import SecureSum

        if reducer is not None and not hasattr(reducer, "reduce_sum"):  # Config.validate refuses it first
            raise FedsimError(f"{reducer.name} cannot run under --secure-agg: it needs each client's value")
        return SecureSum(self.protocol, reducer)

    def broadcast_of(self, algorithm, server, round: int):
        """(the server state as the clients receive it, the bytes each of them receives)."""
        down = algorithm.bytes_down(server)
        received, saved = (server, 0) if self.broadcast is None else self.broadcast(server, round)
        self.totals["raw_down"] += down
        self.totals["down"] += down - saved
        return received, down - saved

    def sampled(self, round: int, cohort) -> None:
        """The clients `round` sampled (those that will drop out or report late too): under --secure-agg they all
        shared keys, and the masks of those that do not send are removed from their senders'."""
        self.cohort = (round, tuple(int(c) for c in cohort))

    def cohort_of(self, round: int):
        return self.cohort[1] if self.cohort[0] == round else ()

    def wire_size(self, algorithm, server, message) -> int:
        """Bytes `message` takes on the wire, before the channel encodes it (a clock's upload time, a late or
        asynchronous client's count): the codec's count, the protocol's for a sender, else the algorithm's."""
        if self.compress is not None:
            return self.compress.size(algorithm.sends, message, self.compress.sizes(algorithm.sends, message))
        if self.protocol is not None:
            return self.protocol.traffic(algorithm.sends, message, len(self.cohort[1]) or None).sender_up
        return algorithm.bytes_up_of(server, message)

    def bytes_up(self, algorithm, server, result) -> int:
        """What the round's clients sent: the channel's count of the messages it reduced (as encoded, with its
        protocol's messages), and those that came too late to count (`result.late`)."""
        up = 0 if result.aggregate is None else result.aggregate.bytes_up
        return up + sum(self.wire_size(algorithm, server, m) for m in result.late)

    def after_round(self, server):
        """`server` with error feedback's residuals (checkpointed with it)."""
        if self.compress is None or not self.compress.error_feedback:
            return server
        from fedsim.comm.compress import RESIDUALS

        return replace(server, extra={**server.extra, RESIDUALS: self.compress.state()})

    def restore(self, server) -> None:
        """Continue from `server` (a checkpoint's): error feedback's residuals."""
        if self.compress is not None and self.compress.error_feedback:
            from fedsim.comm.compress import RESIDUALS

            self.compress.load(server.extra.get(RESIDUALS))

    def summary(self) -> dict:
        """The compression ratios of the rounds this process ran (raw bytes / bytes on the wire), for the record."""
        t, out = self.totals, {}
        if self.compress is not None and self.compress.sent:
            out["compression_ratio_up"] = round(self.compress.raw / self.compress.sent, 4)
        if self.broadcast is not None and t["down"]:
            out["compression_ratio_down"] = round(t["raw_down"] / t["down"], 4)
        return out


def install_communication(config, algorithm, train_sizes, cohort: int, key: int,
                          private: bool = False) -> Communication:
    """The run's communication. `train_sizes`: every client's sample count (the largest bounds a weight under
    --secure-agg); `cohort`: clients a round; `key`: the run's key, which keys every draw; `private`: DP is on
    (each client then counts once). The round loop tells it each round's sampled clients (`sampled`)."""
    comm = Communication()
    if config.compress is not None:
        from fedsim.comm.codecs import make_codec
        from fedsim.comm.compress import Compress

        spec = parse_codec(config.compress)
        comm.compress = Compress(make_codec(spec, config.bucket_size, config.error_feedback), key,
                                 config.error_feedback)
        comm.stages = (comm.compress,)
        comm.record.update(compress=str(spec), error_feedback=config.error_feedback)
        if spec.name == "qsgd":
            comm.record["bucket_size"] = config.bucket_size or DEFAULT_BUCKET
    if config.compress_down is not None:
        from fedsim.comm.codecs import make_codec
        from fedsim.comm.compress import Broadcast

        if not algorithm.sent:
            raise FedsimError(f"{config.algo} broadcasts no model: drop --compress-down")
        spec = parse_codec(config.compress_down, "--compress-down")
        comm.broadcast = Broadcast(make_codec(spec, config.bucket_size), key, algorithm.sent)
        comm.record.update(compress_down=str(spec), compress_down_applies_to="the model the server broadcasts "
                           "(the round starts from the decoded model)")
    if config.secure_agg is not None:
        with_data = int(sum(n > 0 for n in train_sizes))
        sampled = min(math.ceil((config.over_select or 1) * cohort), with_data)  # --over-select samples more
        comm.protocol = secure_aggregation(config, algorithm, train_sizes, sampled, key, comm.cohort_of, private)
        comm.stages = (*comm.stages, _mask(comm.protocol))
        comm.record["secure_agg"] = _describe(comm.protocol, sampled)
    return comm


def _mask(protocol):
    from fedsim.comm.secagg import Mask

    return Mask(protocol)


def secure_aggregation(config, algorithm, train_sizes, cohort: int, key: int, cohort_of, private: bool):
    """SecAgg's settings for this run, checked against `cohort`, the most clients a round samples: one line naming
    the option to change."""
    from fedsim.comm.secagg import SecureAggregation, levels

    by_samples = not private
    weighted = by_samples and any(s.kind == SUMMED and s.weight == SAMPLES for s in algorithm.sends.values())
    max_weight = int(max(train_sizes)) if weighted else 1
    protocol = SecureAggregation(config.secure_agg, config.secagg_bits, config.secagg_threshold,
                                 config.secagg_neighbors, config.secagg_range, key, max_weight, by_samples, cohort_of,
                                 cohort)
    check_setup(config, cohort, protocol.degree_for(cohort))
    if levels(config.secagg_bits, cohort, max_weight) < 1:
        need = math.ceil(math.log2(cohort * max_weight + 1)) + 1
        raise FedsimError(f"--secagg-bits {config.secagg_bits} cannot hold the sum of {cohort} clients' updates "
                          f"weighted by up to {max_weight} samples: give at least {need} (more for finer levels)")
    return protocol


def _describe(protocol, cohort: int) -> dict:
    from fedsim.comm.secagg import levels

    level = levels(protocol.bits, cohort, protocol.max_weight)
    return {"protocol": "SecAgg (Bonawitz et al. 2017)" if protocol.mode == "secagg"
            else "SecAgg+ (Bell et al. 2020)", "field_bits": protocol.bits, "range": protocol.bound,
            "levels": level, "step": protocol.bound / level, "neighbors": protocol.degree_for(cohort),
            "threshold": protocol.threshold_for(cohort),
            "weights": "sample counts (the server learns their sum)" if protocol.max_weight > 1 else "each client once",
            "max_weight": protocol.max_weight, "not_sent": "integer buffers keep the global model's value"}
