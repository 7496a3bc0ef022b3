"""What `--aggregate` and `--attack` change in an experiment, set up once (fedsim.experiment.setup calls this)."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.robust import MODEL_ATTACKS, check_setup
from fedsim.robust.aggregators import averaging_for
from fedsim.robust.attacks import flip_labels, malicious_clients, model_attack


@dataclass
class Robustness:
    labels: object  # the training labels the clients train on (label-flip: the malicious clients' flipped)
    malicious: object | None  # the malicious client ids (sorted); None: no attack
    transforms: tuple  # run_round's transforms of what the clients send (a model attack)


def install_robustness(config, algorithm, partition, labels, num_classes: int, cohort_size: int) -> Robustness:
    """Check the options against the algorithm and the cohort, give `algorithm` the robust averaging
    `--aggregate` names, draw the malicious clients and poison their labels or what they send."""
    import numpy as np

    with_data = np.flatnonzero(partition.train_sizes > 0)
    check_setup(config, algorithm.plain_average, cohort_size, len(with_data))
    averaging = averaging_for(config)
    if averaging is not None:
        algorithm.averaging = averaging
    if config.attack is None:
        return Robustness(labels, None, ())
    malicious = malicious_clients(config.seed, with_data, config.malicious_fraction)
    if config.attack == "label-flip":
        labels = flip_labels(labels, [partition.train_indices(int(c)) for c in malicious], num_classes)
    transforms = ()
    if config.attack in MODEL_ATTACKS:
        transforms = (model_attack(config.attack, config.attack_scale, malicious, config.seed,
                                   algorithm.shared_params),)
    return Robustness(labels, malicious, transforms)
