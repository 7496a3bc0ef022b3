"""What `--aggregate` and `--attack` change in an experiment, set up once (fedsim.experiment.setup calls this)."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.robust import MODEL_ATTACKS, check_setup
from fedsim.robust.aggregators import reducer_for
from fedsim.robust.attacks import ModelAttack, flip_labels, malicious_clients


@dataclass
class Robustness:
    labels: object  # the training labels the clients train on (label-flip: the malicious clients' flipped)
    malicious: object | None  # the malicious client ids (sorted); None: no attack
    stages: tuple  # the channel's stages (a model attack)
    reducer: object | None  # the channel's reducer --aggregate names; None: the weighted mean


def install_robustness(config, keys, partition, labels, num_classes: int, cohort_size: int) -> Robustness:
    """Check the options against the cohort, build the reducer `--aggregate` names, draw the malicious clients
    and poison their labels or what they send (the model's `keys`: BN statistics are not attacked)."""
    import numpy as np

    with_data = np.flatnonzero(partition.train_sizes > 0)
    check_setup(config, cohort_size, len(with_data))
    reducer = reducer_for(config)
    if config.attack is None:
        return Robustness(labels, None, (), reducer)
    malicious = malicious_clients(config.seed, with_data, config.malicious_fraction)
    if config.attack == "label-flip":
        labels = flip_labels(labels, [partition.train_indices(int(c)) for c in malicious], num_classes)
    stages = ()
    if config.attack in MODEL_ATTACKS:
        stages = (ModelAttack(config.attack, config.attack_scale, malicious, config.seed, keys.buffers),)
    return Robustness(labels, malicious, stages, reducer)
