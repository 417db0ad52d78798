"""J v and J^T u for J_t = d eps(x_t, h_t) / d h_t (eq. 6-8), by automatic differentiation; J is never formed.

:func:`jacobian_products` gives the two products that the subspace iteration of
:func:`hspace.jacobian.jacobian_directions` uses:

* ``J V`` (eq. 8), a batched forward-mode JVP: the U-Net runs on k columns at once, h_t + a v_i in
  column i, and the derivative in a is carried by dual tensors (``torch.autograd.forward_ad``);
* ``J^T U`` (eq. 7), one reverse-mode VJP over the same k columns.

Columns are independent, so one U-Net pass over a batch of k columns gives all k products. x_t enters
only through the down path and the skip connections, which do not depend on h: the down path runs once
at batch 1 and its skip connections are broadcast (as views) to the k columns, so a column costs only
the up path.

Forward-mode AD and attention: PyTorch's fused scaled-dot-product attention kernel for the CPU has no
forward-mode derivative (``NotImplementedError`` from ``_scaled_dot_product_flash_attention_for_cpu``,
measured with torch 2.14). While differentiating, every ``Attention`` module of the U-Net gets diffusers'
classic :class:`~diffusers.models.attention_processor.AttnProcessor` (explicit baddbmm + softmax, which
has forward and reverse derivatives on every device), and its previous processor is put back afterwards,
also on errors. We prefer this to ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`` because that context
switches process-wide backend flags, changing the attention kernel of every model on every thread,
whereas the processor swap touches only the model being differentiated. Do not sample with the same
model object from another thread while :func:`hspace.jacobian.jacobian_directions` runs on it.

A text-conditional model's eps is the guided eps~ = eps_u + w (eps_c - eps_u) (:mod:`hspace.conditioning`): each
product runs the conditional pass and, when guided, the unconditional one, with the edit in both (or only in the
conditional one, ``edit_branch="cond"``), as the sampler adds it; the prompt embeddings are broadcast to the
columns like the skip connections.

Notation (<variable> -> <name in paper>):
    x_t        -> x_t, the noisy image (or latent) at the step (held fixed)
    delta      -> a v, the change added to h_t (the argument we differentiate in)
    mask       -> M (eq. 10): eps~ = eps * M
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor
from torch.autograd import forward_ad

from hspace.hook import h_hook
from hspace.models import LoadedModel
from hspace.sampler import guidance_of


@contextmanager
def jacobian_products(
    model: LoadedModel, x_t: torch.Tensor, t: int | torch.Tensor, mask: torch.Tensor | None, chunk: int
) -> Iterator[tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]]:
    """``(jvp, vjp)`` of f(delta) = eps(x_t, h_t + delta) * M, on rows of shape (n, d_in) / (n, d_out).

    Inside the block the U-Net has the h hook (delta added to h_t), a pre-hook on every up block that
    broadcasts the skip connections of the batch-1 down path to the n columns, and classic attention
    processors; all are removed on exit.
    """
    unet = model.unet
    device = unet.device
    dtype = next(unet.parameters()).dtype
    mask = None if mask is None else mask.to(device=device, dtype=dtype)
    x_t = x_t.to(device=device, dtype=dtype)
    h_shape, image_shape = model.h_shape, model.latent_shape
    guidance = guidance_of(model, 1, None)

    with _classic_attention(unet), _broadcast_skips(unet), h_hook(unet) as hook:

        def eps_of(delta: torch.Tensor | None, text: torch.Tensor | None) -> torch.Tensor:
            hook.delta = delta
            try:  # x_t at batch 1; h_t + delta at batch n (see _broadcast_skips)
                return unet(x_t, t).sample if text is None else unet(x_t, t, encoder_hidden_states=text).sample
            finally:
                hook.delta = None

        def f(delta: torch.Tensor) -> torch.Tensor:  # (n, C_h, H_h, W_h) -> (n, C, S, S)
            if guidance is None:
                eps = eps_of(delta, None)
            else:
                eps = eps_of(delta, guidance.cond)
                if guidance.uncond is not None:  # the sampler's guided eps~
                    eps_u = eps_of(delta if guidance.edit_branch == "both" else None, guidance.uncond)
                    eps = guidance.guide(eps_u, eps)
            return eps if mask is None else eps * mask  # eq. 10: eps~ = eps (.) M

        def jvp(v: torch.Tensor) -> torch.Tensor:  # J V (eq. 8), batched forward mode
            out = []
            for part in v.to(device=device, dtype=dtype).split(chunk):
                part = part.reshape(-1, *h_shape)
                # Forward mode with dual tensors: delta = 0 + a v_i in row i, tangent d eps / da.
                # (torch.autograd.forward_ad rather than torch.func.jvp: same numbers, 1.7x less
                # overhead per pass on the tiny model, measured.)
                with forward_ad.dual_level():
                    eps = f(forward_ad.make_dual(torch.zeros_like(part), part))
                    tangent = forward_ad.unpack_dual(eps).tangent
                out.append(tangent.reshape(len(part), -1).cpu())
            return torch.cat(out)

        def vjp(u: torch.Tensor) -> torch.Tensor:  # J^T U (eq. 7), one reverse pass per chunk
            out = []
            for part in u.to(device=device, dtype=dtype).split(chunk):
                delta = torch.zeros(len(part), *h_shape, device=device, dtype=dtype, requires_grad=True)
                with torch.enable_grad():
                    (grad,) = torch.autograd.grad(f(delta), delta, grad_outputs=part.reshape(-1, *image_shape))
                out.append(grad.reshape(len(part), -1).cpu())
            return torch.cat(out)

        yield jvp, vjp


@contextmanager
def _classic_attention(unet: torch.nn.Module) -> Iterator[None]:
    """Give every Attention module diffusers' classic AttnProcessor (forward-mode AD, see the module
    docstring); put the previous processor objects back on exit, also on errors."""
    previous = {module: module.processor for module in unet.modules() if isinstance(module, Attention)}
    try:
        for module in previous:
            module.set_processor(AttnProcessor())
        yield
    finally:
        for module, processor in previous.items():
            module.set_processor(processor)


@contextmanager
def _broadcast_skips(unet: torch.nn.Module) -> Iterator[None]:
    """Pre-hooks on the up blocks: expand batch-1 skip connections to the batch of h (views, no copies).

    x_t enters the up path only through the skip connections, which do not depend on h; so the down
    path runs once at batch 1 and each of the n columns reuses it.
    """

    def expand(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        # UNet2DModel calls up_block(hidden_states, res_hidden_states_tuple, temb); UNet2DConditionModel passes
        # keywords, with the prompt embeddings (encoder_hidden_states) at batch 1 too.
        positional, keywords = list(args), dict(kwargs)
        hidden = positional[0] if positional else keywords["hidden_states"]
        batch = hidden.shape[0]
        if len(positional) > 1:
            positional[1] = tuple(s.expand(batch, *s.shape[1:]) for s in positional[1])
        else:
            keywords["res_hidden_states_tuple"] = tuple(
                s.expand(batch, *s.shape[1:]) for s in keywords["res_hidden_states_tuple"]
            )
        text = keywords.get("encoder_hidden_states")
        if text is not None:
            keywords["encoder_hidden_states"] = text.expand(batch, *text.shape[1:])
        return tuple(positional), keywords

    up_blocks = cast(torch.nn.ModuleList, unet.up_blocks)
    handles = [block.register_forward_pre_hook(expand, with_kwargs=True) for block in up_blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
