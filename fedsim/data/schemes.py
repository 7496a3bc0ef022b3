"""The partition schemes by name, the one list the CLI, the config and the data layer use.

Imports nothing, so the config and `--help` can read it without loading numpy.
"""

SCHEMES = ("iid", "dirichlet", "shards", "labels", "quantity_skew", "natural")

# The parameter a scheme uses when none is given (NIID-Bench's and McMahan's values).
SCHEME_DEFAULTS = {"dirichlet": 0.5, "shards": 2, "labels": 2, "quantity_skew": 0.5}
