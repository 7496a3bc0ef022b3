"""FedAvg (McMahan et al., AISTATS 2017): the defaults of every hook, see `fedsim.algorithms.base`."""

from fedsim.algorithms.base import FedAvg

__all__ = ["FedAvg"]
