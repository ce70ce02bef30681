"""How woqconv's messages count things: "1 layer", "2 layers"."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1 (``plural`` for irregular nouns)."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"
