"""The fedsim version, in a module of its own so that any layer can read it without importing the package's API."""

__version__ = "0.1.0"

# Raised by one whenever a change to fedsim makes some run's numbers differ from what the previous version
# computed (a fix, a new default, another summation order): part of every run's identity (fedsim/identity.py), so
# a resume or a sweep never continues or reuses a run whose numbers came from another computation. The package
# version (__version__) changes for other reasons too; this changes for this one only.
NUMERIC_VERSION = 1
