"""Small text helpers shared by the parts that report state to people."""

from __future__ import annotations


def one_line(text: str, limit: int = 300) -> str:
    """``text`` with its whitespace runs (newlines too) as single spaces, cut to ``limit``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
