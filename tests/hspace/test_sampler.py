"""The sampler against diffusers' own DDIM pipeline and against a hand computation of eq. 2-5."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMPipeline, DDPMScheduler

from hspace.errors import HSpaceError
from hspace.hook import compose_delta, h_hook
from hspace.sampler import derive_seeds, make_scheduler, parse_eta, sample

STEPS = 10


def pipeline_images(model, seeds, eta, steps=STEPS):
    """diffusers' DDIMPipeline with one CPU generator per sample: the stream our sampler promises."""
    pipeline = DDIMPipeline(unet=model.unet, scheduler=DDPMScheduler.from_config(model.scheduler_config))
    pipeline.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return pipeline(
        batch_size=len(seeds), generator=generators, eta=eta, num_inference_steps=steps, output_type="pt"
    ).images


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_unedited_sampling_equals_diffusers_ddim_pipeline(tiny, eta):
    seeds = [11, 12, 13]
    # Same batch composition as the pipeline (one U-Net pass for all three).
    ours = sample(tiny, seeds, steps=STEPS, eta=eta, microbatch=len(seeds), capture=False)
    assert (ours.images - pipeline_images(tiny, seeds, eta)).abs().max() <= 1e-5
    # One sample at a time (our CPU default) against the pipeline on that sample alone.
    alone = sample(tiny, [seeds[1]], steps=STEPS, eta=eta, capture=False)
    assert (alone.images - pipeline_images(tiny, [seeds[1]], eta)).abs().max() <= 1e-5


def test_eta_per_step_equals_the_scalar_and_a_schedule_changes_the_result(tiny):
    scalar = sample(tiny, [5], steps=STEPS, eta=1.0, capture=False).images
    listed = sample(tiny, [5], steps=STEPS, eta=[1.0] * STEPS, capture=False).images
    assert torch.equal(scalar, listed)
    mixed = sample(tiny, [5], steps=STEPS, eta=[0.0] * 5 + [1.0] * 5, capture=False).images
    assert not torch.equal(scalar, mixed)


def test_a_sample_is_bitwise_the_same_in_a_batch_and_alone(tiny):
    seeds = derive_seeds(7, 0, 4)
    batch = sample(tiny, seeds, steps=STEPS, eta=1.0)
    for i in (0, 2):
        alone = sample(tiny, [seeds[i]], steps=STEPS, eta=1.0)
        assert torch.equal(batch.images[i], alone.images[0])
        assert torch.equal(batch.h[i], alone.h[0])


def test_whole_batch_passes_agree_with_one_at_a_time_up_to_rounding(tiny):
    seeds = [1, 2, 3, 4]
    one = sample(tiny, seeds, steps=STEPS, eta=1.0, microbatch=1)
    four = sample(tiny, seeds, steps=STEPS, eta=1.0, microbatch=4)
    assert (one.images - four.images).abs().max() <= 1e-4
    assert (one.h - four.h).abs().max() <= 1e-4


def test_capture_shape_and_gamma_zero_is_exactly_unedited(tiny):
    plain = sample(tiny, [3, 4], steps=STEPS, eta=1.0)
    assert plain.h.shape == (2, STEPS, *tiny.h_shape)
    assert plain.timesteps == tuple(range(900, -1, -100))
    direction = torch.randn(STEPS, *tiny.h_shape, generator=torch.Generator().manual_seed(0))
    zero = sample(tiny, [3, 4], steps=STEPS, eta=1.0, delta=0.0 * direction)
    assert torch.equal(zero.images, plain.images)
    assert torch.equal(zero.h, plain.h)
    edited = sample(tiny, [3, 4], steps=STEPS, eta=1.0, delta=5.0 * direction)
    assert (edited.images - plain.images).abs().max() > 1e-2
    # The captured h is the edited one, and the first step sees exactly h_T + delta_T.
    assert torch.allclose(edited.h[:, 0], plain.h[:, 0] + 5.0 * direction[0], atol=1e-5)


def test_several_directions_add_with_their_own_gammas(tiny):
    g = torch.Generator().manual_seed(1)
    v1, v2 = (torch.randn(STEPS, *tiny.h_shape, generator=g) for _ in range(2))
    delta = compose_delta([(v1, 2.0), (v2, -0.5)])
    assert torch.allclose(delta, 2.0 * v1 - 0.5 * v2)
    combined = sample(tiny, [9], steps=STEPS, delta=delta).images
    explicit = sample(tiny, [9], steps=STEPS, delta=2.0 * v1 - 0.5 * v2).images
    assert torch.equal(combined, explicit)
    with pytest.raises(HSpaceError, match="share one shape"):
        compose_delta([(v1, 1.0), (v1[:2], 1.0)])


def test_per_sample_delta_edits_only_its_sample(tiny):
    direction = torch.randn(STEPS, *tiny.h_shape, generator=torch.Generator().manual_seed(2))
    per_sample = torch.stack([torch.zeros_like(direction), 3.0 * direction])
    edited = sample(tiny, [1, 2], steps=STEPS, delta=per_sample).images
    plain = sample(tiny, [1, 2], steps=STEPS).images
    assert torch.equal(edited[0], plain[0])
    assert not torch.equal(edited[1], plain[1])
    with pytest.raises(HSpaceError, match="delta has shape"):
        sample(tiny, [1, 2], steps=STEPS, delta=direction[:3])


def test_hook_is_removed_after_sampling_and_after_errors(tiny):
    sample(tiny, [1], steps=2)
    assert len(tiny.unet.mid_block._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="boom"), h_hook(tiny.unet):
        raise RuntimeError("boom")
    assert len(tiny.unet.mid_block._forward_hooks) == 0


def _hand_asyrp(model, seed, steps, eta, delta):
    """eq. 2-5 written out: P_t (clipped, as the config says) from the edited eps, D_t from the unedited eps."""
    scheduler = make_scheduler(model.scheduler_config, steps)
    a = scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((1, *model.image_shape), generator=generator)
    stride = scheduler.config.num_train_timesteps // steps
    with h_hook(model.unet) as hook, torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            hook.delta = delta[i]
            eps_edit = model.unet(x, t).sample
            hook.delta = None
            eps_orig = model.unet(x, t).sample
            a_t = a[t]
            a_prev = a[t - stride] if t - stride >= 0 else torch.tensor(1.0)
            p_edit = ((x - (1 - a_t).sqrt() * eps_edit) / a_t.sqrt()).clamp(-1, 1)
            sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
            z = torch.randn((1, *model.image_shape), generator=generator)
            x = a_prev.sqrt() * p_edit + (1 - a_prev - sigma**2).sqrt() * eps_orig + sigma * z
    return (x / 2 + 0.5).clamp(0, 1)


def test_asyrp_matches_the_hand_computation_and_differs_from_the_default(tiny):
    direction = torch.randn(STEPS, *tiny.h_shape, generator=torch.Generator().manual_seed(3))
    delta = 4.0 * direction
    asyrp = sample(tiny, [21], steps=STEPS, eta=1.0, delta=delta, asyrp=True).images
    assert (asyrp - _hand_asyrp(tiny, 21, STEPS, 1.0, delta)).abs().max() <= 1e-5
    default = sample(tiny, [21], steps=STEPS, eta=1.0, delta=delta).images
    assert (asyrp - default).abs().max() > 1e-3
    # With no edit, Asyrp is plain sampling.
    plain = sample(tiny, [21], steps=STEPS, eta=1.0).images
    assert torch.equal(sample(tiny, [21], steps=STEPS, eta=1.0, asyrp=True).images, plain)


@pytest.mark.parametrize(
    ("eta", "message"),
    [(-0.1, "eta must lie in"), (1.5, "eta must lie in"), ([0.5, 0.5], "eta has 2 values but there are 10 steps")],
)
def test_bad_eta_is_refused(eta, message):
    with pytest.raises(HSpaceError, match=message):
        parse_eta(eta, STEPS)


def test_bad_steps_are_refused(tiny):
    with pytest.raises(HSpaceError, match="steps must be a positive integer"):
        make_scheduler(tiny.scheduler_config, 0)
    with pytest.raises(HSpaceError, match="exceeds the model's 1000 training timesteps"):
        make_scheduler(tiny.scheduler_config, 1001)


def test_derived_seeds_do_not_depend_on_the_split():
    assert derive_seeds(3, 0, 10)[4:7] == derive_seeds(3, 4, 7)
    assert len(set(derive_seeds(3, 0, 1000))) == 1000
    assert derive_seeds(3, 0, 5) != derive_seeds(4, 0, 5)


def test_replacing_h_with_another_samples_h(tiny):
    donor = sample(tiny, [31], steps=STEPS)
    own = sample(tiny, [32], steps=STEPS)
    swapped = sample(tiny, [32], steps=STEPS, replace_h=donor.h)
    assert torch.equal(swapped.h, donor.h)  # the U-Net saw the donor's h at every step
    assert not torch.equal(swapped.images, own.images)
    # Replacing h by the sample's own h changes nothing.
    assert torch.equal(sample(tiny, [32], steps=STEPS, replace_h=own.h).images, own.images)


def test_threads_sampling_one_shared_model_each_get_their_own_edit_and_capture(tiny):
    """Each thread's hook acts on its own passes only: a thread runner's tasks share the cached model."""
    import threading

    delta = 50.0 * torch.randn(STEPS, *tiny.h_shape, generator=torch.Generator().manual_seed(3))
    jobs = {"edited": dict(seeds=[1], delta=delta), "plain": dict(seeds=[2])}
    alone = {name: sample(tiny, steps=STEPS, capture=True, **job) for name, job in jobs.items()}
    together: dict[str, list] = {name: [] for name in jobs}
    start = threading.Barrier(len(jobs))

    def run(name: str) -> None:
        start.wait()
        for _ in range(4):
            together[name].append(sample(tiny, steps=STEPS, capture=True, **jobs[name]))

    threads = [threading.Thread(target=run, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in jobs:
        assert len(together[name]) == 4
        for result in together[name]:
            assert torch.equal(result.images, alone[name].images) and torch.equal(result.h, alone[name].h), name
