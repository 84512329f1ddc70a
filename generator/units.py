"""How the generator writes numbers and durations for people (tables, panels, ROADMAP.md)."""

from __future__ import annotations


def si(x: float) -> str:
    """3 significant figures with an SI suffix: 6.74B, 1.2T, 835k."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def duration(hours: float) -> str:
    """A wall time in the largest unit that keeps it readable: 40 s, 12.5 min, 3.2 h, 53.0 days, 7.3 years."""
    if hours < 1 / 3600:
        return "under 1 s"
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    if hours < 2 * 365 * 24:
        return f"{hours / 24:.1f} days"
    return f"{hours / (365 * 24):.1f} years"
