"""hspace: semantic editing directions in the h-space of diffusion models (arXiv 2303.11073).

The core library: model loading, the h hook, sampling with capture and injection. torch and numpy
only, no Prefect and no Zarr, so it is usable from a notebook.
"""

from hspace.bank import Bank, Direction, latest_version, list_versions, load_bank, publish
from hspace.editing import edit
from hspace.errors import HSpaceError
from hspace.hook import compose_delta, h_hook
from hspace.models import LoadedModel, load_model, weight_fingerprint
from hspace.sampler import SampleResult, sample

__version__ = "0.1.0"

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
