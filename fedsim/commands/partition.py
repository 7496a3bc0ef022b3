"""`fedsim partition` (being written)."""


def partition() -> None:
    """Not yet available."""
    raise SystemExit("fedsim partition: not yet available")
