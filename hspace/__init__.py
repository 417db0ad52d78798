"""hspace: semantic editing directions in the h-space of diffusion models (arXiv 2303.11073).

The core library: model loading, the h hook, sampling with capture and injection. torch and numpy
only, no Prefect and no Zarr, so it is usable from a notebook.

The public names below are imported on first use (PEP 562), so that ``import hspace`` (and with it the
``hspace`` command's ``--help``) does not import torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hspace.bank import Bank, Direction, latest_version, list_versions, load_bank, publish
    from hspace.editing import edit
    from hspace.errors import HSpaceError
    from hspace.hook import compose_delta, h_hook
    from hspace.models import LoadedModel, load_model, weight_fingerprint
    from hspace.sampler import SampleResult, sample

# public name -> the module that defines it
_MODULES = {
    "Bank": "hspace.bank",
    "Direction": "hspace.bank",
    "latest_version": "hspace.bank",
    "list_versions": "hspace.bank",
    "load_bank": "hspace.bank",
    "publish": "hspace.bank",
    "edit": "hspace.editing",
    "HSpaceError": "hspace.errors",
    "compose_delta": "hspace.hook",
    "h_hook": "hspace.hook",
    "LoadedModel": "hspace.models",
    "load_model": "hspace.models",
    "weight_fingerprint": "hspace.models",
    "SampleResult": "hspace.sampler",
    "sample": "hspace.sampler",
}

__all__ = [
    "Bank",
    "Direction",
    "edit",
    "latest_version",
    "list_versions",
    "load_bank",
    "publish",
    "HSpaceError",
    "LoadedModel",
    "SampleResult",
    "__version__",
    "compose_delta",
    "h_hook",
    "load_model",
    "sample",
    "weight_fingerprint",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        value: Any = version("hspace")
    elif name in _MODULES:
        value = getattr(importlib.import_module(_MODULES[name]), name)
    else:
        raise AttributeError(f"module 'hspace' has no attribute {name!r}")
    globals()[name] = value  # once found, an ordinary module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
