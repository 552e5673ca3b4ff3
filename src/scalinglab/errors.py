"""Errors a user can cause.

Anything a user can get wrong (a bad path, an empty corpus, a bad number, a corrupted archive)
raises `UserError`. The CLI turns it into one line on stderr and exit code 2; the library lets it
propagate so notebooks see an ordinary exception.
"""


class UserError(Exception):
    """A problem the user can fix. The message names the problem and the fix in one line."""

    exit_code = 2


def positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Check that a user-supplied number is finite and positive (or >= 0)."""
    import math

    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"{name} must be a finite number {bound}, got {value!r}")
    return value
