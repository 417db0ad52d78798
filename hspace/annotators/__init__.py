"""Annotators: score images for named attributes behind one interface (see :mod:`hspace.annotators.base`)."""

from __future__ import annotations

from hspace.annotators.base import Annotator
from hspace.errors import HSpaceError

# Name -> loader; loaders import lazily so that naming one annotator never loads another's dependencies.
ANNOTATORS = ("testbed",)


def load_annotator(name: str) -> Annotator:
    """A built-in annotator by name (see :data:`ANNOTATORS`)."""
    if name == "testbed":
        from hspace.testbed.annotator import TestbedAnnotator

        return TestbedAnnotator.load()
    raise HSpaceError(f"unknown annotator {name!r}; built in: {', '.join(ANNOTATORS)}")


__all__ = ["ANNOTATORS", "Annotator", "load_annotator"]
