"""The settings that fix a corpus's content (:class:`CorpusSpec`), as the group attribute ``hspace`` records them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from hspace.errors import HSpaceError

SCHEMA_VERSION = 2
# Version 1 is version 2 without chunk checksums: still read and resumed, with a note that damage in its
# chunks may go unseen.
UNCHECKSUMMED_VERSION = 1
H_DTYPES = ("float16", "float32")
# Recorded but not compared when reopening: a newer hspace may resume a corpus it can read.
NOT_COMPARED = ("package_version", "schema_version")
# Settings added after schema version 1 shipped, with the value every corpus built before them has.
ADDED_SETTINGS: dict[str, Any] = {
    "precision": "fp32",
    "microbatch": None,
    "latent_shape": None,
    "conditioning": None,
    "prompts": None,
    "latents": False,
}


@dataclass(frozen=True, kw_only=True)
class CorpusSpec:
    """Everything that fixes the corpus's content: reopening with any other value is an error."""

    model: str
    fingerprint: str
    scheduler_class: str
    scheduler_config: dict[str, Any]
    samples: int
    shard_size: int
    steps: int
    timesteps: tuple[int, ...]
    eta: tuple[float, ...]
    h_shape: tuple[int, int, int]
    h_dtype: str
    image_shape: tuple[int, int, int]
    base_seed: int
    package_version: str
    # The U-Net's dtype (hspace.models.PRECISIONS); h is stored as h_dtype whatever it is.
    precision: str = "fp32"
    # Samples per U-Net pass; None is the sampler's default (1 on the CPU, so that a sample is bitwise the
    # same in any batch; the whole shard on a GPU).
    microbatch: int | None = None
    # The latent kinds' x_t shape (hspace.models.LoadedModel.latent_shape); None for a pixel model, whose x_t is
    # the image (image_shape).
    latent_shape: tuple[int, int, int] | None = None
    # A text-conditional model's prompt, negative prompt and guidance (Conditioning.sampling()), and the prompt
    # of each sample when a list was given (then the conditioning's prompt is unused).
    conditioning: dict[str, Any] | None = None
    prompts: tuple[str, ...] | None = None
    # Also store each sample's final latent (the latent kinds' x_0 before decoding), array ``latents``.
    latents: bool = False

    def __post_init__(self) -> None:
        if self.samples <= 0:
            raise HSpaceError(f"samples must be a positive integer; got {self.samples}")
        if self.shard_size <= 0:
            raise HSpaceError(f"batch must be a positive integer; got {self.shard_size}")
        if self.h_dtype not in H_DTYPES:
            raise HSpaceError(f"h dtype must be one of {', '.join(H_DTYPES)}; got {self.h_dtype!r}")
        if self.microbatch is not None and self.microbatch <= 0:
            raise HSpaceError(f"microbatch must be a positive integer; got {self.microbatch}")
        if self.latents and self.latent_shape is None:
            raise HSpaceError("only a latent model's corpus can store latents: leave out --latents for a pixel model")

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of x_t (and x_T, and eps): the latent for the latent kinds, else the image."""
        return self.image_shape if self.latent_shape is None else self.latent_shape

    @property
    def data_arrays(self) -> tuple[str, ...]:
        """The samples' arrays, written shard by shard (``done`` marks each shard's)."""
        return ("h", "x0", "seed", *(("latents",) if self.latents else ()))

    @property
    def n_shards(self) -> int:
        return -(-self.samples // self.shard_size)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """[start, stop) sample indices of a shard; the last one is short when b does not divide N."""
        if not 0 <= shard < self.n_shards:
            raise HSpaceError(f"shard {shard} does not exist: this corpus has shards 0..{self.n_shards - 1}")
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.samples)

    def to_attrs(self) -> dict[str, Any]:
        # JSON round trip so that tuples and lists compare equal after reading back.
        return json.loads(json.dumps({"schema_version": SCHEMA_VERSION, **asdict(self)}))

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> CorpusSpec:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in attrs.items() if k in names}
        for key in ("timesteps", "eta", "h_shape", "image_shape", "latent_shape", "prompts"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)
