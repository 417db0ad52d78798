"""Argument types shared by the ``hspace`` command modules: comma-separated numbers."""

from __future__ import annotations

import argparse


def ints(text: str) -> list[int]:
    """Comma-separated integers: ``2,5,10``."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text!r}") from None


def floats(text: str) -> list[float]:
    """Comma-separated numbers: ``1,2.5``."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; got {text!r}") from None
