"""Errors the CLI turns into one line on stderr and an exit code (never a traceback)."""


class FedsimError(Exception):
    """A problem with the user's input or files: one clear line, exit code 2."""

    exit_code = 2


class DivergenceError(FedsimError):
    """Training produced a NaN/inf loss or weights: exit code 3, rows already written stay."""

    exit_code = 3

    def __init__(self, message: str, round: int, client: int | None):
        super().__init__(message)
        self.round = round
        self.client = client
