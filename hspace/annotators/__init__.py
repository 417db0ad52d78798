"""Annotators: score images for named attributes behind one interface (see :mod:`hspace.annotators.base`).

Built in (:func:`load_annotator`):

* ``"testbed"``: the testbed CNN (:mod:`hspace.testbed.annotator`); options ``path``, ``batch``.
* ``"clip"``: open_clip zero-shot scores from prompt pairs (:mod:`hspace.annotators.clip`); options
  ``model``, ``pretrained``, ``prompts``, ``name``, ``batch``, ``device``, ``cache_dir``.
* ``"faces"``: MTCNN face probability, box, landmarks and pose proxies (:mod:`hspace.annotators.faces`);
  options ``min_side``, ``min_face_size``, ``thresholds``, ``factor``, ``batch``, ``device``.
* a user classifier (:mod:`hspace.annotators.classifier`): ``"classifier:<path>"``, or simply a path whose
  name ends in ``.ts``, ``.torchscript`` or ``.safetensors``; options ``config``, ``select``, ``output``,
  ``name``, ``batch``, ``device``. Paths to pickles (``.pt``, ``.pth``, ``.pkl``, ...) go there too, to be
  refused with a message that says how to export the model instead.

Each annotator's dependencies are imported only when it is loaded: naming ``faces`` never imports open_clip.
:func:`class_thresholds` says which of an annotator's attributes are binary, and where their classes
split, without loading it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from hspace.annotators.base import Annotator
from hspace.errors import HSpaceError

ANNOTATORS = ("testbed", "clip", "faces")
CLASSIFIER_PREFIX = "classifier:"
# Names ending so are paths of user classifiers (the pickle ones only to be refused with advice).
CLASSIFIER_SUFFIXES = (".ts", ".torchscript", ".safetensors", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def load_annotator(name: str, /, **options: Any) -> Annotator:
    """An annotator by name: a built-in (:data:`ANNOTATORS`) or a user classifier path (module docstring).

    Parameters
    ----------
    name : str
        ``"testbed"``, ``"clip"``, ``"faces"``, ``"classifier:<path>"`` or a path ending in one of
        :data:`CLASSIFIER_SUFFIXES`.
    **options
        Passed to the annotator's loader (see the module docstring).

    Returns
    -------
    Annotator

    Raises
    ------
    HSpaceError
        For an unknown name (the message lists the built-ins) or whatever the loader refuses.
    """
    _, loader, arguments = _resolve(name)
    try:
        inspect.signature(loader).bind(*arguments, **options)
    except TypeError as error:  # an option this annotator does not take
        raise HSpaceError(
            f"annotator {name!r} does not take these options ({error}); it takes "
            f"{_option_names(loader, len(arguments))}"
        ) from None
    return loader(*arguments, **options)


def class_thresholds(name: str) -> dict[str, float]:
    """The class thresholds annotator ``name`` declares (:attr:`Annotator.class_thresholds`), read from its
    class: no weights are loaded and no file is read. ``{}`` where all its attributes are continuous.

    Raises
    ------
    HSpaceError
        For an unknown name, as :func:`load_annotator`.
    """
    annotator_class, _, _ = _resolve(name)
    return dict(annotator_class.class_thresholds)


def _resolve(name: str) -> tuple[type[Annotator], Callable[..., Annotator], tuple[Any, ...]]:
    """The class of annotator ``name``, its loader and the loader's positional arguments; imports only its module."""
    if not isinstance(name, str):
        raise HSpaceError(f"annotator name must be a string; got {type(name).__name__}")
    if name == "testbed":
        from hspace.testbed.annotator import TestbedAnnotator

        return TestbedAnnotator, TestbedAnnotator.load, ()
    if name == "clip":
        from hspace.annotators.clip import ClipAnnotator

        return ClipAnnotator, ClipAnnotator.load, ()
    if name == "faces":
        from hspace.annotators.faces import FaceAnnotator

        return FaceAnnotator, FaceAnnotator, ()
    if name.startswith(CLASSIFIER_PREFIX) or name.lower().endswith(CLASSIFIER_SUFFIXES):
        from hspace.annotators.classifier import ClassifierAnnotator, load_classifier

        return ClassifierAnnotator, load_classifier, (name.removeprefix(CLASSIFIER_PREFIX),)
    raise HSpaceError(
        f"unknown annotator {name!r}; built in: {', '.join(ANNOTATORS)}, or a user classifier "
        f"as '{CLASSIFIER_PREFIX}<path>' (TorchScript .ts, or .safetensors with a JSON config)"
    )


def _option_names(loader: Any, positional: int) -> str:
    names = list(inspect.signature(loader).parameters)[positional:]
    return ", ".join(names) or "no options"


__all__ = ["ANNOTATORS", "Annotator", "class_thresholds", "load_annotator"]
