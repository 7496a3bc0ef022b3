"""`fedsim train` (being written)."""


def train() -> None:
    """Not yet available."""
    raise SystemExit("fedsim train: not yet available")
