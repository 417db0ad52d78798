"""Editing in h-space: sample with h_t + delta h_t at every step (Sec. III), one edit or a grid of them.

:func:`edit` applies a bank's named directions to some seeds (the notebook API); :func:`edit_grid` draws
Fig. 3's layout, one row per direction and per seed one column per gamma, for any directions;
:func:`change_maps` measures where edits of one sample change its pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from hspace.bank import Bank
from hspace.errors import HSpaceError
from hspace.models import LoadedModel
from hspace.sampler import make_scheduler, sample, to_uint8


def edit(
    model: LoadedModel,
    seeds: int | Sequence[int],
    gammas: Mapping[str, float],
    bank: Bank,
    *,
    steps: int | None = None,
    eta: float | Sequence[float] | None = None,
    asyrp: bool = False,
    microbatch: int | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """Sample ``seeds`` with h_t + sum_j gamma_j v_{j,t} at every step (Sec. III, V); uint8 (n, 3, S, S).

    Parameters
    ----------
    model : LoadedModel
        Must have the bank's weight fingerprint and h shape. Loaded in fp32 (the default), it runs in any
        precision (:meth:`~hspace.models.LoadedModel.at_precision`: a cast copy per call; to edit often, load
        it in the bank's precision).
    seeds : int or sequence of int
        One image per seed; the same seed with ``gammas={}`` is the unedited image.
    gammas : dict of str to float
        Edit strength per direction name, e.g. ``{"smile": 4.0, "yaw": -2.0}``; directions add.
    bank : Bank
    steps : int, optional
        Must equal the bank's T when given (a direction has one vector per step).
    eta : float or sequence of float, optional
        Default: the eta recorded in the bank.
    asyrp : bool
        Asyrp editing (see :func:`hspace.sampler.sample`).
    microbatch : int, optional
        Passed to :func:`hspace.sampler.sample`.
    precision : str, optional
        The U-Net's precision (``hspace.models.PRECISIONS``). Default: the one recorded in the bank, the
        one its directions were found in.

    Returns
    -------
    ndarray of shape (n, 3, S, S), uint8
        ``to_uint8(sample(model, seeds, steps=T, eta=eta, delta=bank.delta(gammas)).images)``.
    """
    bank.check_model(model)
    model = model.at_precision(bank.precision if precision is None else precision)
    if steps is not None and steps != bank.steps:
        raise HSpaceError(
            f"the directions of bank {bank.url} version {bank.version} have T = {bank.steps} steps, so "
            f"they are applied with steps={bank.steps}, not {steps}"
        )
    if bank.timesteps is not None:
        timesteps = tuple(int(t) for t in make_scheduler(model.scheduler_config, bank.steps).timesteps)
        if timesteps != bank.timesteps:
            raise HSpaceError(
                f"bank {bank.url} version {bank.version} was built with timesteps "
                f"{list(bank.timesteps)[:4]}..., but this model's scheduler gives "
                f"{list(timesteps)[:4]}..."
            )
    seeds = [int(seeds)] if isinstance(seeds, (int, np.integer)) else list(seeds)
    delta = bank.delta(gammas) if gammas else None
    result = sample(
        model,
        seeds,
        steps=bank.steps,
        eta=bank.eta if eta is None else eta,
        delta=delta,
        capture=False,
        asyrp=asyrp,
        microbatch=microbatch,
    )
    return to_uint8(result.images).numpy()


def edit_grid(
    model: LoadedModel,
    seeds: Sequence[int],
    directions: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor,
    gammas: Sequence[float],
    *,
    steps: int,
    eta: float | Sequence[float] = 1.0,
    microbatch: int | None = None,
) -> np.ndarray:
    """Fig. 3's grid: row d holds, per seed s, one column per gamma g: ``seeds[s]`` sampled with
    delta h_t = g v_{d,t} at every step (Sec. III).

    Each sample replays its own x_T and z_{T:1}, so the column with g = 0 is the unedited sample.

    Parameters
    ----------
    model : LoadedModel
    seeds : sequence of int
    directions : dict of name -> Tensor (T, C, H, W), or a sequence (or one tensor) of those
        One row each, in order.
    gammas : sequence of float
    steps : int
        T, the length of every direction.
    eta : float or sequence of T floats
    microbatch : int, optional
        Passed to :func:`hspace.sampler.sample` (None: its default, a bitwise batch-independent sample
        on the CPU).

    Returns
    -------
    ndarray of shape (len(directions), len(seeds) * len(gammas), 3, S, S), uint8
        Column ``s * len(gammas) + g``.
    """
    vectors = list(directions.values()) if isinstance(directions, Mapping) else list(directions)
    row_seeds = [int(s) for _ in vectors for s in seeds for _ in gammas]
    deltas = torch.stack([g * v for v in vectors for _ in seeds for g in gammas])
    result = sample(model, row_seeds, steps=steps, eta=eta, delta=deltas, capture=False, microbatch=microbatch)
    images = to_uint8(result.images).numpy()
    return images.reshape(len(vectors), len(seeds) * len(gammas), *images.shape[1:])


def change_maps(
    model: LoadedModel,
    seed: int,
    deltas: Sequence[torch.Tensor],
    *,
    steps: int,
    eta: float | Sequence[float] = 1.0,
) -> torch.Tensor:
    """Per pixel, the mean over channels of |edited - unedited| ([0, 1] images) of ``seed`` sampled with each h
    delta (T, C, H, W) at every step: (len(deltas), S, S).

    The unedited sample and the edits are sampled in one batch, each replaying the seed's x_T and z_{T:1}.
    """
    runs = [torch.zeros(steps, *model.h_shape), *deltas]
    images = sample(
        model,
        [seed] * len(runs),
        steps=steps,
        eta=eta,
        delta=torch.stack(runs),
        capture=False,
        microbatch=len(runs),
    ).images
    return (images[1:] - images[:1]).abs().mean(1)
