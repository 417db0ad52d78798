"""The h hook: read and edit h_t, the output of ``unet.mid_block`` (Sec. III of the paper).

The hook is set per U-Net pass by the sampler (which step, which edit) and is always removed when the
``with`` block ends, also on errors, so a model is never left edited. A hook acts only on the passes of the
thread that attached it: threads sampling with one shared model (a thread runner's tasks, a server's
requests) each attach their own, and every pass runs every attached hook.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from hspace.errors import HSpaceError


def compose_delta(edits: Sequence[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """delta h_{T:1} = sum_j gamma_j v_j for directions v_j of shape (T, C, H, W) (Sec. V: directions add)."""
    if not edits:
        raise HSpaceError("compose_delta needs at least one (direction, gamma) pair")
    shapes = {tuple(direction.shape) for direction, _ in edits}
    if len(shapes) != 1:
        raise HSpaceError(f"directions to combine must share one shape (T, C, H, W); got {sorted(shapes)}")
    return sum(gamma * direction.float() for direction, gamma in edits)  # type: ignore[return-value]


@dataclass
class HHook:
    """What the hook does on the next mid-block pass.

    Attributes
    ----------
    delta : Tensor or None
        Added to h_t: shape (C, H, W) for every sample or (B, C, H, W) per sample. None edits nothing.
    replace : Tensor or None
        Used instead of the U-Net's own h_t (before ``delta``): the h-swap of Fig. 2a.
    captured : Tensor or None
        After a pass with ``capture`` set, h_t as the rest of the U-Net saw it (edit included).
    thread : int
        The thread whose passes it reads and edits (``threading.get_ident()``); others' pass through.
    """

    delta: torch.Tensor | None = None
    replace: torch.Tensor | None = None
    capture: bool = False
    captured: torch.Tensor | None = field(default=None, repr=False)
    thread: int = field(default_factory=threading.get_ident)

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if threading.get_ident() != self.thread:
            return output  # another thread's pass of a shared model
        h = output if self.replace is None else self.replace.to(output.dtype).expand_as(output)
        h = h if self.delta is None else h + self.delta.to(output.dtype)
        if self.capture:
            self.captured = h.detach()
        return h


@contextmanager
def h_hook(unet: torch.nn.Module) -> Iterator[HHook]:
    """Attach an :class:`HHook` to ``unet.mid_block`` for the duration of the block."""
    mid_block = getattr(unet, "mid_block", None)
    if mid_block is None:
        raise HSpaceError("this U-Net has no mid_block, so it has no h-space to read or edit")
    hook = HHook()
    handle = mid_block.register_forward_hook(hook)
    try:
        yield hook
    finally:
        handle.remove()
