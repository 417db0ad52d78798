"""The annotator interface shared by the testbed, CLIP, face and user-classifier annotators."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from hspace.errors import HSpaceError


class Annotator(ABC):
    """Scores images for named attributes.

    Attributes
    ----------
    name : str
        Identifier, used in storage paths (``annotations/<name>/<attribute>``).
    attributes : tuple of str
        What :meth:`score` returns, column by column.
    class_thresholds : mapping of str to float
        The attributes whose scores are class probabilities, each with the score that splits its two
        classes: eq. 11 draws their examples from each side of it rather than from the extremes
        (``hspace.directions.top_bottom``). Declared on the class, so it is known without loading weights
        (:func:`hspace.annotators.class_thresholds`); empty by default.
    """

    name: str
    attributes: tuple[str, ...]
    class_thresholds: Mapping[str, float] = MappingProxyType({})

    @property
    def config(self) -> dict:
        """What fixes the scores (weight checksums, prompts, options), JSON-able: recorded with the scores in
        the corpus, so annotations made by other weights are never mixed with these."""
        return {}

    @abstractmethod
    def score(self, images: np.ndarray) -> np.ndarray:
        """Scores of shape (n, len(attributes)), float32, for uint8 images of shape (n, 3, H, W)."""

    def scores_by_attribute(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`score` as a dict of (n,) arrays keyed by attribute."""
        scores = self.score(images)
        return {name: scores[:, i] for i, name in enumerate(self.attributes)}

    @staticmethod
    def check_images(images: np.ndarray) -> None:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise HSpaceError(f"annotators take uint8 images of shape (n, 3, H, W); got {got}")
        if min(images.shape[-2:]) < 1:
            raise HSpaceError(f"annotators take images at least 1 pixel wide; got shape {images.shape}")
