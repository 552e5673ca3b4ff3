"""Numbers for people: counts in a few digits."""


def human(n: float) -> str:
    """A count in a few digits: 1.5M, 300k, 2.1G."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"
