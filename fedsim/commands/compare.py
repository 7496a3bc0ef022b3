"""`fedsim compare` (being written)."""


def compare() -> None:
    """Not yet available."""
    raise SystemExit("fedsim compare: not yet available")
