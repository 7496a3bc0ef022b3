"""fedsim: simulate federated learning with many clients in one process.

    import fedsim
    df = fedsim.run(fedsim.Config(algo="fedprox", mu=0.01, rounds=20))
    df = fedsim.run(fedsim.Config(algo="fedprox"), model=MyCNN(), dataset=fedsim.Dataset.from_tensors(...))
    df = fedsim.run(resume="results/digits-fedprox-mlp-seed0.csv", rounds=40)  # continue it from its checkpoint

Heavy modules (torch) load on first use, so `fedsim --help` stays fast.
"""

import os

from fedsim.version import __version__

# Intel MKL's matrix products are bitwise the same whatever the number of threads only in its strict conditional
# numerical reproducibility mode. Without it a run's numbers depend on torch's CPU threads, which fedsim chooses by
# timing (engine/threads.py) and torchrun's ranks share out, so the same run, resumed or run again, could differ in
# the 6th digit. MKL reads this before its first product (set after that, it does nothing); a user's value is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__all__ = ["Config", "Dataset", "run", "load_checkpoint", "load_partition", "load_dataset", "build_partition",
           "__version__"]


def __getattr__(name):
    if name == "Config":
        from fedsim.config import Config

        return Config
    if name == "run":
        from fedsim.experiment import run

        return run
    if name == "load_checkpoint":
        from fedsim.checkpoint import load_checkpoint

        return load_checkpoint
    if name in ("load_partition", "build_partition"):
        from fedsim.data import partition, partition_build

        return getattr(partition if name == "load_partition" else partition_build, name)
    if name in ("load_dataset", "Dataset"):
        from fedsim.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
