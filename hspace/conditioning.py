"""Text conditioning of a Stable Diffusion U-Net: the prompt, classifier-free guidance, and where an edit goes.

A text-conditional model samples eps~ = eps(x_t, t, c_neg) + w (eps(x_t, t, c) - eps(x_t, t, c_neg)) (classifier-free
guidance, Ho & Salimans 2022, as diffusers' ``StableDiffusionPipeline`` computes it), with both passes in one
U-Net batch: the negative (unconditional) half first, then the conditional half. h-space is read from the
conditional half (the one the prompt steers); an edit is added to h in both halves (``edit_branch="both"``, the
default, so the guided difference keeps the edit's own effect) or in the conditional half only (``"cond"``).
With w = 1 there is no guidance: one conditional pass, as in diffusers.

Notation (<variable> -> <name>):
    cond     -> c, the prompt's CLIP text embeddings (B, L, D)
    uncond   -> c_neg, the negative prompt's (the empty prompt by default)
    guidance -> w, the guidance scale
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from hspace.errors import HSpaceError

EDIT_BRANCHES = ("both", "cond")
# StableDiffusionPipeline's default guidance scale.
DEFAULT_GUIDANCE = 7.5


@dataclass(frozen=True, kw_only=True)
class Conditioning:
    """What a text-conditional model is sampled with: part of what fixes a sample, so corpora and banks record it.

    Attributes
    ----------
    prompt : str
        The prompt of every sample (a corpus may give one per sample instead, :func:`check_prompts`).
    negative_prompt : str
        The prompt of the unconditional half of guidance; the empty prompt, as in diffusers, by default.
    guidance : float
        The guidance scale w >= 1; 1 runs the conditional pass alone.
    edit_branch : str
        Which half of the guided batch an edit of h is added to: ``both`` or ``cond``.
    """

    prompt: str = ""
    negative_prompt: str = ""
    guidance: float = DEFAULT_GUIDANCE
    edit_branch: str = "both"

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise HSpaceError("the prompt and the negative prompt must be strings")
        if not isinstance(self.guidance, (int, float)) or not 1.0 <= self.guidance < math.inf:
            raise HSpaceError(
                f"guidance must be a number >= 1 (1 = no classifier-free guidance; diffusers' default is "
                f"{DEFAULT_GUIDANCE}); got {self.guidance!r}"
            )
        if self.edit_branch not in EDIT_BRANCHES:
            raise HSpaceError(f"edit branch must be one of {', '.join(EDIT_BRANCHES)}; got {self.edit_branch!r}")

    @property
    def guided(self) -> bool:
        """Whether the unconditional pass runs (w > 1, as ``StableDiffusionPipeline.do_classifier_free_guidance``)."""
        return self.guidance > 1.0

    def record(self) -> dict[str, Any]:
        """JSON-ready, for a corpus's settings or a bank's sampler record."""
        return {**asdict(self), "guidance": float(self.guidance)}

    def sampling(self) -> dict[str, Any]:
        """What changes an unedited sample (the record without ``edit_branch``): a bank is refused for a model
        sampled otherwise."""
        return {k: v for k, v in self.record().items() if k != "edit_branch"}


@dataclass(frozen=True)
class TextEncoder:
    """A CLIP tokenizer and text encoder, as a Stable Diffusion pipeline folder holds them."""

    tokenizer: Any
    encoder: torch.nn.Module

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP embeddings (B, L, D) of ``prompts``, padded to the tokenizer's length, exactly as
        ``StableDiffusionPipeline.encode_prompt`` makes them (no clip skip, no attention mask unless the
        encoder's config asks for one)."""
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = next(self.encoder.parameters()).device
        mask = tokens.attention_mask.to(device) if getattr(self.encoder.config, "use_attention_mask", False) else None
        with torch.no_grad():
            return self.encoder(tokens.input_ids.to(device), attention_mask=mask)[0].float()

    def digest(self) -> str:
        """sha256 of the tokenizer's full definition (vocabulary, merges, special tokens): a different tokenizer
        gives different samples, so the model fingerprint covers it with the weights."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            definition: Any = sorted(self.tokenizer.get_vocab().items())
        else:
            # Without the padding and truncation state, which each call with padding="max_length" sets anew.
            definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        text = json.dumps([definition, self.tokenizer.model_max_length], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Guidance:
    """The embeddings one sampler call runs with: per sample, on the U-Net's device."""

    cond: torch.Tensor
    uncond: torch.Tensor | None
    scale: float
    edit_branch: str

    def guide(self, eps_uncond: torch.Tensor, eps_cond: torch.Tensor) -> torch.Tensor:
        """eps~ = eps_uncond + w (eps_cond - eps_uncond), as ``StableDiffusionPipeline`` combines the halves."""
        return eps_uncond + self.scale * (eps_cond - eps_uncond)


def parse_conditioning(
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance: float | None = None,
    edit_branch: str | None = None,
    *,
    prompts: Sequence[str] | None = None,
    recorded: dict[str, Any] | None = None,
) -> Conditioning | None:
    """The conditioning the arguments ask for, each unset one taken from ``recorded`` (a corpus's or bank's
    conditioning) or else at its default; None when every one is unset and nothing is recorded (an
    unconditional model's run, or a text model's own conditioning). ``prompts`` (one per sample) excludes
    ``prompt``."""
    if prompts is not None and prompt is not None:
        raise HSpaceError("give either one prompt for every sample or a prompt list, not both")
    given: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "guidance": guidance,
        "edit_branch": edit_branch,
    }
    if prompts is None and recorded is None and all(value is None for value in given.values()):
        return None
    defaults = {**asdict(Conditioning()), **(recorded or {})}
    return Conditioning(**{key: defaults[key] if value is None else value for key, value in given.items()})


def check_prompts(prompts: Sequence[str], samples: int) -> tuple[str, ...]:
    """A prompt list for a corpus: one string per sample."""
    prompts = tuple(prompts)
    if not all(isinstance(p, str) for p in prompts):
        raise HSpaceError("a prompt list must hold strings, one per sample")
    if len(prompts) != samples:
        raise HSpaceError(
            f"the prompt list has {len(prompts)} prompts but there are {samples} samples: give one prompt per "
            "sample, or one prompt for all"
        )
    return prompts


def make_guidance(
    text: TextEncoder, conditioning: Conditioning, prompts: Sequence[str], dtype: torch.dtype
) -> Guidance:
    """Embed one prompt per sample (and the negative prompt, when guided) for a sampler call."""
    cond = text.embed(prompts)
    uncond = text.embed([conditioning.negative_prompt] * len(prompts)) if conditioning.guided else None
    return Guidance(
        cond=cond.to(dtype),
        uncond=None if uncond is None else uncond.to(dtype),
        scale=float(conditioning.guidance),
        edit_branch=conditioning.edit_branch,
    )


def tiny_vocabulary() -> dict[str, int]:
    """A byte-level CLIP vocabulary with no merges: each byte is a token (alone or ending a word), then
    ``<|startoftext|>`` and ``<|endoftext|>``; 514 tokens. Any text tokenizes, with no download."""
    # GPT-2's byte -> printable character table, which CLIP's BPE vocabularies are written in.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in characters)
    characters.update({b: chr(256 + n) for n, b in enumerate(extra)})
    symbols = [characters[b] for b in sorted(characters)]
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}
