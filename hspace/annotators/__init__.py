"""Annotators: score images for named attributes behind one interface (see :mod:`hspace.annotators.base`)."""

from hspace.annotators.base import Annotator

__all__ = ["Annotator"]
