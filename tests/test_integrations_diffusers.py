"""The diffusers drop-in against the real diffusers package: step-for-step parity with its schedulers,
its own golden full-loop numbers, real pipelines with a tiny random UNet, and the config mapping.

No downloads: models are built from configs with seeded random weights.
"""

from __future__ import annotations

import copy
import inspect
import math
import pickle
import subprocess
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import samplers  # noqa: E402
from samplers.integrations.diffusers import (  # noqa: E402
    SUPPORTED_CLASSES,
    SamplersScheduler,
    UnsupportedConfigError,
    diffusers_config_to_samplers,
    from_diffusers,
    samplers_config_to_diffusers,
    to_diffusers,
)

F64 = torch.float64
SHAPE = (2, 3, 8, 8)
STOCHASTIC_MODULES = ("scheduling_ddpm", "scheduling_ddim", "scheduling_euler_ancestral_discrete")


# --------------------------------------------------------------------------------------------
# A fixed deterministic "model": the exact denoiser of Gaussian data, written in the diffusers class's
# own prediction type, so trajectories stay in the data range as with a trained network.
# --------------------------------------------------------------------------------------------


def _gaussian_model(abar: torch.Tensor | None, prediction_type: str, learned_range: bool = False):
    """model(x [B, C, H, W] model-space, t) -> output; data ~ N(mu, 0.3^2) with mu in [-0.5, 0.5].

    ``abar`` [T] float64 is the training schedule (linearly interpolated for fractional t); None means
    rectified flow (alpha = 1 - t/1000, sigma = t/1000). With ``learned_range`` a second block of
    channels carries a variance interpolation value in [-1, 1] (DDPM's learned_range).
    """
    gen = torch.Generator().manual_seed(7)
    mu = 0.5 * torch.tanh(torch.randn(SHAPE[1:], generator=gen, dtype=F64))
    std = 0.3

    def model(x: torch.Tensor, t) -> torch.Tensor:
        t = float(t)
        if abar is None:
            alpha, sigma = 1 - t / 1000, t / 1000
        else:
            low = min(int(t), len(abar) - 2)
            a = (1 - (t - low)) * abar[low] + (t - low) * abar[low + 1]
            alpha, sigma = float(a) ** 0.5, float(1 - a) ** 0.5
        x64 = x.to(F64)
        x0 = mu + alpha * std**2 / (alpha**2 * std**2 + sigma**2) * (x64 - alpha * mu)
        eps = (x64 - alpha * x0) / sigma
        targets = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "flow": eps - x0, "sample": x0}
        out = targets[prediction_type]
        if learned_range:
            out = torch.cat([out, torch.tanh(x64 + t / 500)], dim=1)
        return out.to(torch.float32)

    return model


def _loop(
    scheduler,
    model,
    x_start,
    steps,
    *,
    set_kwargs=None,
    step_kwargs=None,
    noise_for_call=None,
    generator=None,
    hook=None,
):
    """A pipeline's loop: set_timesteps, scale the start by init_noise_sigma, scale_model_input, step."""
    scheduler.set_timesteps(steps, **(set_kwargs or {}))
    x = x_start * getattr(scheduler, "init_noise_sigma", 1.0)
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        kwargs = dict(step_kwargs or {})
        if generator is not None:
            kwargs["generator"] = generator
        if noise_for_call is not None and i in noise_for_call:
            kwargs["noise"] = noise_for_call[i]
        if hook is not None:
            hook(i)
        x = scheduler.step(model(model_in, t), t, x, **kwargs).prev_sample
    return x


_SD_BETAS = (torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2).tolist()  # as a trained_betas list


def _parity_cases():
    cases = []
    for spacing in ("leading", "trailing", "linspace"):
        for pred in ("epsilon", "v_prediction"):
            cfg = {"timestep_spacing": spacing, "prediction_type": pred}
            tag = f"{spacing}-{pred}"
            cases += [
                pytest.param("DDPMScheduler", cfg, {}, id=f"ddpm-{tag}"),
                pytest.param("DDIMScheduler", cfg, {"eta": 0.0}, id=f"ddim_eta0-{tag}"),
                pytest.param("DDIMScheduler", cfg, {"eta": 1.0}, id=f"ddim_eta1-{tag}"),
                pytest.param("EulerDiscreteScheduler", cfg, {}, id=f"euler-{tag}"),
                pytest.param("EulerAncestralDiscreteScheduler", cfg, {}, id=f"euler_a-{tag}"),
                pytest.param("HeunDiscreteScheduler", cfg, {}, id=f"heun-{tag}"),
            ]
    cases += [
        pytest.param("FlowMatchEulerDiscreteScheduler", {"shift": 1.0}, {}, id="flow-shift1"),
        pytest.param("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, {}, id="flow-shift3"),
        pytest.param(
            "FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": True}, {"mu": 0.8}, id="flow-dynamic"
        ),
        pytest.param(
            "FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "shift_terminal": 0.1}, {}, id="flow-shift_terminal"
        ),
        pytest.param(
            "FlowMatchEulerDiscreteScheduler",
            {"use_dynamic_shifting": True, "time_shift_type": "linear"},
            {"mu": 0.8},
            id="flow-dynamic_linear",
        ),
        # options beyond the defaults
        pytest.param(
            "DDPMScheduler", {"variance_type": "fixed_large", "clip_sample": False}, {}, id="ddpm-fixed_large"
        ),
        pytest.param("DDPMScheduler", {"variance_type": "learned_range"}, {}, id="ddpm-learned_range"),
        pytest.param("DDPMScheduler", {"beta_schedule": "squaredcos_cap_v2"}, {}, id="ddpm-cosine"),
        pytest.param("DDPMScheduler", {"beta_schedule": "sigmoid", "clip_sample": False}, {}, id="ddpm-sigmoid"),
        pytest.param(
            "DDPMScheduler",
            {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
            {},
            id="ddpm-threshold",
        ),
        pytest.param(
            "DDIMScheduler",
            {"thresholding": True, "clip_sample": False, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
            {"eta": 0.0},
            id="ddim-threshold",
        ),
        pytest.param(
            "DDIMScheduler",
            {
                "set_alpha_to_one": False,
                "steps_offset": 1,
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "beta_end": 0.012,
            },
            {"eta": 0.5},
            id="ddim-sd_like",
        ),
        pytest.param(
            "DDIMScheduler",
            {
                "rescale_betas_zero_snr": True,
                "timestep_spacing": "trailing",
                "prediction_type": "v_prediction",
                "clip_sample": False,
            },
            {"eta": 0.0},
            id="ddim-zero_snr",
        ),
        pytest.param(
            "DDIMScheduler",
            {"clip_sample_range": 0.5},
            {"eta": 0.0, "use_clipped_model_output": True},
            id="ddim-clipped_output",
        ),
        pytest.param(
            "DDPMScheduler",
            {"trained_betas": _SD_BETAS, "steps_offset": 1, "clip_sample": False},
            {},
            id="ddpm-trained_betas",
        ),
        pytest.param(
            "EulerDiscreteScheduler",
            {"use_karras_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1},
            {},
            id="euler-karras_leading",
        ),
        pytest.param(
            "EulerDiscreteScheduler",
            {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
            {},
            id="euler-zero_snr",
        ),
        pytest.param(
            "HeunDiscreteScheduler",
            {"use_karras_sigmas": True, "timestep_spacing": "trailing"},
            {},
            id="heun-karras_trailing",
        ),
        pytest.param("EulerDiscreteScheduler", {"use_exponential_sigmas": True}, {}, id="euler-exponential"),
        pytest.param(
            "EulerDiscreteScheduler",
            {"use_beta_sigmas": True, "timestep_spacing": "trailing"},
            {},
            id="euler-beta_trailing",
        ),
        pytest.param("HeunDiscreteScheduler", {"use_beta_sigmas": True}, {}, id="heun-beta"),
        pytest.param("HeunDiscreteScheduler", {"use_exponential_sigmas": True}, {}, id="heun-exponential"),
        pytest.param(
            "EulerAncestralDiscreteScheduler",
            {
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "timestep_spacing": "leading",
                "steps_offset": 1,
            },
            {},
            id="euler_a-sd_like",
        ),
    ]
    return cases


@pytest.mark.parametrize("class_name, config, run_kwargs", _parity_cases())
def test_fifty_step_parity_with_diffusers(class_name, config, run_kwargs, monkeypatch):
    """50-step loops, float32, same model and noise: ours (native, explicit noise) and the wrapper
    (drawing from a generator like diffusers) both within 1e-5 of diffusers' own scheduler."""
    reference = getattr(diffusers, class_name)(**config)
    is_flow = class_name.startswith("FlowMatch")
    prediction = "flow" if is_flow else config.get("prediction_type", "epsilon")
    learned = config.get("variance_type") == "learned_range"
    model = _gaussian_model(None if is_flow else reference.alphas_cumprod.to(F64), prediction, learned)
    x_start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    set_kwargs = {k: v for k, v in run_kwargs.items() if k == "mu"}
    step_kwargs = {k: v for k, v in run_kwargs.items() if k != "mu"}

    # diffusers, recording the noise it draws (per call) from a seeded generator
    drawn: dict[int, torch.Tensor] = {}
    call = [0]
    for name in STOCHASTIC_MODULES:
        module = getattr(diffusers.schedulers, name)
        original = module.randn_tensor

        def recording(*args, _original=original, **kwargs):
            noise = _original(*args, **kwargs)
            drawn[call[0]] = noise.clone()
            return noise

        monkeypatch.setattr(module, "randn_tensor", recording)
    takes_generator = "generator" in inspect.signature(reference.step).parameters
    expected = _loop(
        reference,
        model,
        x_start,
        50,
        set_kwargs=set_kwargs,
        step_kwargs=step_kwargs,
        generator=torch.Generator().manual_seed(1234) if takes_generator else None,
        hook=lambda i: call.__setitem__(0, i),
    )
    assert bool(torch.isfinite(expected).all()) and float(expected.abs().max()) < 5

    ours = from_diffusers(reference)
    assert type(ours) is SUPPORTED_CLASSES[class_name]
    native = _loop(ours, model, x_start, 50, set_kwargs=set_kwargs, step_kwargs=step_kwargs, noise_for_call=drawn)
    wrapper = to_diffusers(from_diffusers(reference))
    wrapped = _loop(
        wrapper,
        model,
        x_start,
        50,
        set_kwargs=set_kwargs,
        step_kwargs=step_kwargs,
        generator=torch.Generator().manual_seed(1234) if takes_generator else None,
    )
    assert native.dtype == wrapped.dtype == torch.float32
    assert float((native - expected).abs().max()) < 1e-5
    assert float((wrapped - expected).abs().max()) < 1e-5
    if ours.is_stochastic and step_kwargs.get("eta", 1.0) > 0:
        assert drawn, "a stochastic run should have drawn noise"


@pytest.mark.parametrize(
    "config",
    [{"beta_schedule": "squaredcos_cap_v2"}, {"timestep_spacing": "linspace", "prediction_type": "v_prediction"}],
)
def test_ddpm_residual_is_diffusers_float32_rounding(config, monkeypatch):
    """DDPM shows the largest gap above (5-8e-6). It is diffusers' float32 schedule arithmetic (a float32
    cumprod, then ``1 - abar_t / abar_s`` near t = 0): run diffusers' own step in float64 on a float64
    schedule, and ours in float32 lands within 1e-6 of it while diffusers' float32 run does not."""
    reference = diffusers.DDPMScheduler(**config)
    ours = from_diffusers(reference)
    model = _gaussian_model(reference.alphas_cumprod.to(F64), config.get("prediction_type", "epsilon"))
    x_start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    noises = torch.randn((50, *SHAPE), generator=torch.Generator().manual_seed(10))
    call = [0]
    module = diffusers.schedulers.scheduling_ddpm
    monkeypatch.setattr(
        module, "randn_tensor", lambda shape, generator=None, device=None, dtype=None: noises[call[0]].to(dtype)
    )
    hook = lambda i: call.__setitem__(0, i)  # noqa: E731
    theirs32 = _loop(reference, model, x_start, 50, hook=hook)
    exact = diffusers.DDPMScheduler(**config)
    exact.betas, exact.alphas_cumprod = ours.betas.clone(), ours.alphas_cumprod.clone()  # float64 schedule
    exact.alphas, exact.one = 1 - exact.betas, torch.tensor(1.0, dtype=F64)
    theirs64 = _loop(exact, lambda x, t: model(x, t).to(F64), x_start.to(F64), 50, hook=hook)
    ours32 = _loop(ours, model, x_start, 50, noise_for_call=dict(enumerate(noises)))
    ours_error = float((ours32 - theirs64).abs().max())
    theirs_error = float((theirs32 - theirs64).abs().max())
    assert ours_error < 1e-6 < theirs_error
    assert float((ours32 - theirs32).abs().max()) < 1e-5


@pytest.mark.parametrize("class_name", ["DDIMScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler"])
def test_img2img_style_partial_run_matches(class_name):
    """Image-to-image pipelines start mid-schedule (set_begin_index, or for DDIM just a later first timestep)
    from add_noise at the first kept timestep."""
    reference = getattr(diffusers, class_name)(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    wrapper = to_diffusers(from_diffusers(reference))
    model = _gaussian_model(reference.alphas_cumprod.to(F64), "epsilon")
    image = 0.5 * torch.tanh(torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    results = []
    for scheduler in (reference, wrapper):
        scheduler.set_timesteps(30)
        start = 12 * scheduler.order
        timesteps = scheduler.timesteps[start:]
        if hasattr(reference, "set_begin_index"):  # DDIM's pipelines just start from the later timestep
            scheduler.set_begin_index(start)
        x = scheduler.add_noise(image, noise, timesteps[:1])
        for t in timesteps:
            x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
        results.append(x)
    assert float((results[0] - results[1]).abs().max()) < 1e-5


def test_flow_custom_sigmas_are_shifted_as_in_diffusers():
    """Flux-style custom sigmas: diffusers shifts them (static or dynamic); the wrapper does the same."""
    sigmas = torch.linspace(1.0, 1 / 20, 20).tolist()
    for config, mu in (({"shift": 3.0}, None), ({"use_dynamic_shifting": True}, 1.1)):
        reference = diffusers.FlowMatchEulerDiscreteScheduler(**config)
        wrapper = to_diffusers(from_diffusers(reference))
        reference.set_timesteps(sigmas=sigmas, mu=mu)
        wrapper.set_timesteps(sigmas=sigmas, mu=mu)
        torch.testing.assert_close(wrapper.timesteps, reference.timesteps, rtol=1e-6, atol=1e-3)
        model = _gaussian_model(None, "flow")
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
        expected = _loop(reference, model, x, None, set_kwargs={"sigmas": sigmas, "mu": mu})
        got = _loop(wrapper, model, x, None, set_kwargs={"sigmas": sigmas, "mu": mu})
        assert float((got - expected).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="timesteps without sigmas"):
        wrapper.set_timesteps(timesteps=[900.0, 500.0, 100.0])
    # diffusers' set_shift() keeps the grid's lower end of the constructor's shift: not a config we can map
    reference = diffusers.FlowMatchEulerDiscreteScheduler()
    reference.set_shift(2.5)
    with pytest.raises(UnsupportedConfigError, match="set_shift"):
        from_diffusers(reference)
    with pytest.raises(ValueError, match="end with the final level 0"):
        to_diffusers(samplers.get("euler")).set_timesteps(sigmas=[10.0, 1.0, 0.1])


# --------------------------------------------------------------------------------------------
# diffusers' own golden full-loop numbers (tests/schedulers/test_scheduler_*.py), through the wrapper
# --------------------------------------------------------------------------------------------


def _deterministic_sample() -> torch.Tensor:
    """The [4, 3, 8, 8] ramp diffusers' scheduler tests start from: 0, 1/N, ... laid out channel-first."""
    n = 4 * 3 * 8 * 8
    return (torch.arange(n) / n).reshape(3, 8, 8, 4).permute(3, 0, 1, 2)


def _ramp_model(sample: torch.Tensor, t) -> torch.Tensor:
    return sample * t / (t + 1)  # diffusers' dummy model, operation order kept


def _golden_loop(scheduler, kind: str, steps: int | None, use_generator: bool) -> torch.Tensor:
    sample = _deterministic_sample()
    generator = torch.manual_seed(0) if use_generator else None
    extra = {"generator": generator} if use_generator else {}
    if kind == "train_grid":  # DDPM: every training timestep, no set_timesteps
        for t in reversed(range(len(scheduler))):
            sample = scheduler.step(_ramp_model(sample, t), t, sample, **extra).prev_sample
    elif kind == "ddim":  # eta passed positionally, as diffusers' DDIM test does
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            sample = scheduler.step(_ramp_model(sample, t), t, sample, 0.0).prev_sample
    else:  # sigma space; the test feeds the *scaled* sample to step (their loop's quirk, kept)
        scheduler.set_timesteps(steps)
        sample = sample * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            sample = scheduler.scale_model_input(sample, t)
            sample = scheduler.step(_ramp_model(sample, t), t, sample, **extra).prev_sample
    return sample


_DDPM = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "variance_type": "fixed_small",
    "clip_sample": True,
}
_DDIM = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": True,
}
_K = {"num_train_timesteps": 1100, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}


@pytest.mark.parametrize(
    "class_name, config, kind, steps, use_generator, total, mean",
    [
        pytest.param("DDPMScheduler", _DDPM, "train_grid", None, True, 258.9606, 0.3372, id="ddpm"),
        pytest.param(
            "DDPMScheduler",
            {**_DDPM, "prediction_type": "v_prediction"},
            "train_grid",
            None,
            True,
            202.0296,
            0.2631,
            id="ddpm-v",
        ),
        pytest.param("DDIMScheduler", _DDIM, "ddim", 10, False, 172.0067, 0.223967, id="ddim"),
        pytest.param(
            "DDIMScheduler",
            {**_DDIM, "prediction_type": "v_prediction"},
            "ddim",
            10,
            False,
            52.5302,
            0.0684,
            id="ddim-v",
        ),
        pytest.param(
            "DDIMScheduler",
            {**_DDIM, "set_alpha_to_one": False, "beta_start": 0.01},
            "ddim",
            10,
            False,
            149.0784,
            0.1941,
            id="ddim-no_alpha_one",
        ),
        pytest.param("EulerDiscreteScheduler", _K, "sigma", 10, True, 10.0807, 0.0131, id="euler"),
        pytest.param(
            "EulerDiscreteScheduler",
            {**_K, "use_karras_sigmas": True},
            "sigma",
            10,
            True,
            124.52299499511719,
            0.16213932633399963,
            id="euler-karras",
        ),
        pytest.param("EulerAncestralDiscreteScheduler", _K, "sigma", 10, True, 152.3192, 0.1983, id="euler_a"),
        pytest.param(
            "EulerAncestralDiscreteScheduler",
            {**_K, "prediction_type": "v_prediction"},
            "sigma",
            10,
            True,
            108.4439,
            0.1412,
            id="euler_a-v",
        ),
        pytest.param("HeunDiscreteScheduler", _K, "sigma", 10, False, 0.1233, 0.0002, id="heun"),
    ],
)
def test_diffusers_golden_full_loops(class_name, config, kind, steps, use_generator, total, mean):
    """The sums/means diffusers' own tests pin, with their tolerances (1e-2 on the sum, 1e-3 on the mean)."""
    reference = getattr(diffusers, class_name)(**config)
    theirs = _golden_loop(reference, kind, steps, use_generator)
    assert abs(float(theirs.abs().sum()) - total) < 1e-2  # the loop above is faithful to their test
    wrapper = to_diffusers(from_diffusers(reference))
    ours = _golden_loop(wrapper, kind, steps, use_generator)
    assert abs(float(ours.abs().sum()) - total) < 1e-2
    assert abs(float(ours.abs().mean()) - mean) < 1e-3
    assert float((ours - theirs).abs().max()) < 1e-4


# --------------------------------------------------------------------------------------------
# Real pipelines with a tiny random UNet
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    return unet.eval()


@pytest.mark.parametrize(
    "pipeline, scheduler_class, call_kwargs",
    [
        pytest.param("DDPMPipeline", "DDPMScheduler", {}, id="ddpm"),
        pytest.param("DDIMPipeline", "DDIMScheduler", {"eta": 0.0}, id="ddim-eta0"),
        pytest.param("DDIMPipeline", "DDIMScheduler", {"eta": 1.0}, id="ddim-eta1"),
    ],
)
def test_pipeline_images_match_diffusers_scheduler(tiny_unet, pipeline, scheduler_class, call_kwargs):
    """Same generator seed, same images: the wrapper draws in-step noise exactly as diffusers does."""
    pipe = getattr(diffusers, pipeline)(unet=tiny_unet, scheduler=getattr(diffusers, scheduler_class)())
    pipe.set_progress_bar_config(disable=True)

    def images():
        out = pipe(
            batch_size=2,
            generator=torch.Generator().manual_seed(0),
            num_inference_steps=12,
            output_type="np",
            **call_kwargs,
        )
        return torch.from_numpy(out.images)

    expected = images()
    pipe.scheduler = to_diffusers(from_diffusers(pipe.scheduler))
    assert isinstance(pipe.scheduler, SamplersScheduler)
    got = images()
    assert got.shape == expected.shape == (2, 8, 8, 3)
    assert float(expected.std()) > 0.05  # a real, non-constant image
    # images are in [0, 1]; 1e-4 is far below one 8-bit level (float32 rounding through a random UNet)
    assert float((got - expected).abs().max()) < 1e-4
    if call_kwargs.get("eta", 1.0) > 0:  # stochastic: a different seed must change the images
        other = pipe(
            batch_size=2,
            generator=torch.Generator().manual_seed(1),
            num_inference_steps=12,
            output_type="np",
            **call_kwargs,
        )
        assert float((torch.from_numpy(other.images) - got).abs().max()) > 1e-2


def test_pipeline_from_pretrained_accepts_and_round_trips_the_wrapper(tiny_unet, tmp_path):
    """``from_pretrained(..., scheduler=obj)`` type-checks against SchedulerMixin; save/load keeps ours."""
    diffusers.DDPMPipeline(unet=tiny_unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path / "base")
    wrapper = to_diffusers(samplers.get("ddpm", clip_sample=False, timestep_spacing="trailing"))
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "base", scheduler=wrapper)
    assert pipe.scheduler is wrapper
    pipe.save_pretrained(tmp_path / "ours")
    reloaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "ours")
    assert isinstance(reloaded.scheduler, SamplersScheduler)
    assert type(reloaded.scheduler.scheduler) is type(wrapper.scheduler)
    assert dict(reloaded.scheduler.scheduler.config) == dict(wrapper.scheduler.config)
    with pytest.raises(ValueError, match="should be"):  # diffusers' own check still rejects a non-scheduler
        diffusers.DiffusionPipeline.from_pretrained(tmp_path / "base", scheduler=tiny_unet)


# --------------------------------------------------------------------------------------------
# The diffusers surface of the wrapper
# --------------------------------------------------------------------------------------------


def test_step_signature_matches_the_diffusers_class_so_pipelines_pass_eta_only_to_ddim():
    for class_name in SUPPORTED_CLASSES:
        reference = getattr(diffusers, class_name)()
        wrapper = to_diffusers(from_diffusers(reference))
        params = inspect.signature(wrapper.step).parameters
        theirs = inspect.signature(reference.step).parameters
        # the probe Stable Diffusion pipelines run (prepare_extra_step_kwargs)
        assert ("eta" in params) == ("eta" in theirs), class_name
        assert "generator" in params
        assert list(params)[:3] == ["model_output", "timestep", "sample"]
    ddim = to_diffusers(samplers.get("ddim"))
    assert list(inspect.signature(ddim.step).parameters)[3:8] == [
        "eta",
        "use_clipped_model_output",
        "generator",
        "variance_noise",
        "return_dict",
    ]
    with pytest.raises(TypeError):
        to_diffusers(samplers.get("euler")).step(torch.zeros(1, 1), 0, torch.zeros(1, 1), eta=0.0)


def test_wrapper_surface_matches_diffusers():
    reference = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading", steps_offset=1
    )
    wrapper = to_diffusers(from_diffusers(reference))
    assert isinstance(wrapper, diffusers.SchedulerMixin) and isinstance(wrapper, diffusers.ConfigMixin)
    assert wrapper.order == reference.order == 1 and len(wrapper) == len(reference) == 1000
    assert wrapper.config.steps_offset == 1 and wrapper.config["_samplers_name"] == "euler"
    # before set_timesteps diffusers already has a full-length grid; so does the wrapper
    assert math.isclose(float(wrapper.init_noise_sigma), float(reference.init_noise_sigma), rel_tol=1e-5)
    reference.set_timesteps(30, device="cpu")
    wrapper.set_timesteps(30, device="cpu")
    torch.testing.assert_close(wrapper.timesteps.float(), reference.timesteps, rtol=0, atol=1e-4)
    assert wrapper.timesteps.device.type == "cpu" and wrapper.num_inference_steps == 30
    assert math.isclose(float(wrapper.init_noise_sigma), float(reference.init_noise_sigma), rel_tol=1e-5)
    torch.testing.assert_close(wrapper.sigmas, reference.sigmas, rtol=1e-5, atol=0)  # delegated attribute
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    t = reference.timesteps[3]
    torch.testing.assert_close(
        wrapper.add_noise(x, x.flip(0), t[None]), reference.add_noise(x, x.flip(0), t[None]), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        wrapper.scale_model_input(x, reference.timesteps[0]),
        reference.scale_model_input(x, reference.timesteps[0]),
        rtol=1e-5,
        atol=1e-6,
    )
    out = wrapper.step(torch.zeros(SHAPE), wrapper.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and len(out) == 2 and wrapper.step_index == 1
    wrapper.set_begin_index(5)
    assert wrapper.begin_index == 5
    assert copy.deepcopy(wrapper).config == wrapper.config
    clone = pickle.loads(pickle.dumps(wrapper))
    assert isinstance(clone, SamplersScheduler) and dict(clone.scheduler.config) == dict(wrapper.scheduler.config)


def test_config_edits_by_pipelines_are_honoured():
    """Stable Diffusion pipelines rewrite ``scheduler._internal_dict`` (steps_offset=1); diffusers then
    uses the new value at the next set_timesteps, and so must the wrapper."""
    from diffusers.configuration_utils import FrozenDict

    wrapper = to_diffusers(samplers.get("ddim", steps_offset=0))
    wrapper.set_timesteps(5)
    assert wrapper.timesteps.tolist() == [800, 600, 400, 200, 0]
    wrapper._internal_dict = FrozenDict({**wrapper.config, "steps_offset": 1})
    wrapper.set_timesteps(5)
    assert wrapper.timesteps.tolist() == [801, 601, 401, 201, 1]
    assert wrapper.scheduler.config.steps_offset == 1


def test_noise_modes():
    """diffusers mode: the generator's randn_tensor draw; philox mode: our in-op noise (seeded once per run)."""
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    out = torch.zeros(SHAPE)

    def first_step(wrapper, seed):
        wrapper.set_timesteps(10)
        t = wrapper.timesteps[0]
        return wrapper.step(out, t, x, generator=torch.Generator().manual_seed(seed)).prev_sample

    diff_mode = to_diffusers(samplers.get("ddpm", clip_sample=False))
    reference = diffusers.DDPMScheduler(clip_sample=False)
    reference.set_timesteps(10)
    expected = reference.step(out, reference.timesteps[0], x, generator=torch.Generator().manual_seed(4)).prev_sample
    torch.testing.assert_close(first_step(diff_mode, 4), expected, rtol=1e-5, atol=1e-5)
    philox = to_diffusers(samplers.get("ddpm", clip_sample=False), noise="philox")
    a, b = first_step(philox, 4), first_step(philox, 4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # reproducible
    assert float((a - expected).abs().max()) > 1e-2  # but not diffusers' numbers
    assert SamplersScheduler.from_config(philox.config).noise == "philox"
    with pytest.raises(ValueError, match="noise must be one of"):
        to_diffusers(samplers.get("ddpm"), noise="numpy")
    # explicit noise always wins: variance_noise (DDIM's name) and noise are the same thing
    ddim = to_diffusers(samplers.get("ddim"))
    ddim.set_timesteps(10)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    r1 = ddim.step(out, ddim.timesteps[0], x, eta=1.0, variance_noise=z).prev_sample
    ddim.set_timesteps(10)
    r2 = ddim.step(out, ddim.timesteps[0], x, eta=1.0, noise=z).prev_sample
    torch.testing.assert_close(r1, r2, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Config mapping and round trips
# --------------------------------------------------------------------------------------------

_ROUND_TRIP_CONFIGS = [
    ("DDPMScheduler", {}),
    (
        "DDPMScheduler",
        {
            "variance_type": "learned_range",
            "prediction_type": "v_prediction",
            "timestep_spacing": "trailing",
            "rescale_betas_zero_snr": True,
        },
    ),
    (
        "DDPMScheduler",
        {"trained_betas": torch.linspace(1e-4, 0.02, 100).tolist(), "num_train_timesteps": 100, "thresholding": True},
    ),
    (
        "DDIMScheduler",
        {"set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False, "beta_schedule": "scaled_linear"},
    ),
    (
        "EulerDiscreteScheduler",
        {"use_karras_sigmas": True, "sigma_min": 0.03, "sigma_max": 14.0, "timestep_spacing": "trailing"},
    ),
    ("EulerAncestralDiscreteScheduler", {"prediction_type": "v_prediction", "steps_offset": 1}),
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1}),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "base_image_seq_len": 128, "max_shift": 1.5}),
    ("FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": True, "time_shift_type": "exponential"}),
]


@pytest.mark.parametrize("class_name, config", _ROUND_TRIP_CONFIGS)
def test_config_round_trips(class_name, config, tmp_path):
    reference = getattr(diffusers, class_name)(**config)
    ours = from_diffusers(reference)
    theirs = dict(reference.config)
    shared = set(theirs) & set(ours.config)
    assert shared and all(ours.config[k] == theirs[k] for k in shared if k != "trained_betas")
    # back to diffusers' own class: the same config
    native = to_diffusers(ours, native=True)
    assert type(native) is type(reference)
    public = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    assert public(native.config) == public(reference.config)
    # the wrapper: config, save_config / from_pretrained, and from a diffusers-saved config
    wrapper = to_diffusers(ours)
    wrapper.save_config(tmp_path / "ours")
    loaded = SamplersScheduler.from_pretrained(tmp_path / "ours")
    assert public(loaded.config) == public(wrapper.config) == dict(ours.config)
    reference.save_config(tmp_path / "theirs")
    via_diffusers_file = SamplersScheduler.from_pretrained(tmp_path / "theirs")
    assert dict(via_diffusers_file.scheduler.config) == dict(ours.config)
    assert from_diffusers(wrapper).config == ours.config
    # diffusers' own from_config reads the wrapper's config (DDIMPipeline.__init__ does exactly this)
    back = getattr(diffusers, class_name).from_config(wrapper.config)
    assert {k: back.config[k] for k in public(reference.config)} == public(reference.config)
    # ours reads the wrapper's saved file too (it ignores the '_' metadata)
    assert type(ours).from_pretrained(tmp_path / "ours").config == ours.config


def test_from_config_takes_overrides_and_diffusers_hidden_keys():
    # a Stable Diffusion 1.x scheduler file carries PNDM/DDIM keys; Euler built from it keeps them hidden
    sd_config = {
        "_class_name": "PNDMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "clip_sample": False,
        "trained_betas": None,
    }
    euler = diffusers.EulerDiscreteScheduler.from_config(sd_config)
    assert euler.config.skip_prk_steps is True  # kept by diffusers for swapping back, never read by Euler
    ours = from_diffusers(euler)
    assert ours.config.steps_offset == 1 and ours.config.beta_schedule == "scaled_linear"
    # the diffusers idiom: SamplersScheduler.from_config(pipe.scheduler.config, **changes)
    wrapper = SamplersScheduler.from_config(euler.config, use_karras_sigmas=True)
    assert wrapper.config.use_karras_sigmas is True and wrapper.config["_samplers_name"] == "euler"
    with pytest.raises(TypeError, match="unexpected"):
        SamplersScheduler.from_config(euler.config, use_karras_sigma=True)
    model, unused = SamplersScheduler.from_config(euler.config, return_unused_kwargs=True, foo=1)
    assert unused == {"foo": 1} and isinstance(model, SamplersScheduler)
    pndm = SamplersScheduler.from_config(sd_config)  # the file itself maps to our PNDM (PLMS)
    assert pndm.scheduler.name == "pndm" and pndm.config.skip_prk_steps is True
    with pytest.raises(UnsupportedConfigError, match="ScoreSdeVeScheduler"):
        SamplersScheduler.from_config({**sd_config, "_class_name": "ScoreSdeVeScheduler"})
    # a mapping without _class_name needs class_name=
    ddim = from_diffusers({"steps_offset": 1}, class_name="DDIMScheduler")
    assert ddim.config.steps_offset == 1 and ddim.config.clip_sample is True  # diffusers' defaults fill the rest
    with pytest.raises(ValueError, match="_class_name"):
        from_diffusers({"steps_offset": 1})


@pytest.mark.parametrize(
    "class_name, config, option",
    [
        ("DDPMScheduler", {"variance_type": "learned"}, "variance_type"),
        ("DDPMScheduler", {"variance_type": "fixed_large_log"}, "variance_type"),
        ("DDPMScheduler", {"beta_schedule": "laplace"}, "beta_schedule"),
        ("EulerDiscreteScheduler", {"final_sigmas_type": "sigma_min"}, "final_sigmas_type"),
        ("EulerDiscreteScheduler", {"interpolation_type": "log_linear"}, "interpolation_type"),
        (
            "EulerDiscreteScheduler",
            {"timestep_type": "continuous", "prediction_type": "v_prediction"},
            "timestep_type",
        ),
        ("HeunDiscreteScheduler", {"clip_sample": True}, "clip_sample"),
        ("HeunDiscreteScheduler", {"beta_schedule": "exp"}, "beta_schedule"),
        ("FlowMatchEulerDiscreteScheduler", {"invert_sigmas": True}, "invert_sigmas"),
        ("TCDScheduler", {"clip_sample": True}, "clip_sample"),  # diffusers' TCD step never clips
        ("FlowMatchEulerDiscreteScheduler", {"use_karras_sigmas": True}, "use_karras_sigmas"),
    ],
)
def test_unsupported_options_raise_naming_the_option(class_name, config, option):
    with pytest.raises(UnsupportedConfigError, match=rf"\b{option}="):
        diffusers_config_to_samplers(class_name, config)
    try:
        reference = getattr(diffusers, class_name)(**config)
    except Exception:
        return
    with pytest.raises(UnsupportedConfigError, match=rf"\b{option}="):
        from_diffusers(reference)


def test_values_that_cannot_change_numerics_are_accepted():
    # timestep_type matters only with v_prediction, time_shift_type only with dynamic shifting,
    # Heun's clip_sample_range only with clip_sample
    assert (
        from_diffusers(diffusers.EulerDiscreteScheduler(timestep_type="continuous")).config.prediction_type
        == "epsilon"
    )
    assert from_diffusers(diffusers.FlowMatchEulerDiscreteScheduler(time_shift_type="linear")).config.shift == 1.0
    assert from_diffusers(diffusers.HeunDiscreteScheduler(clip_sample_range=3.0)).name == "heun"


def test_unknown_options_and_classes_are_errors(monkeypatch):
    import samplers.integrations.diffusers as integration

    # an option of the diffusers class the mapping does not know (a newer diffusers) is never dropped
    rules = dict(integration._RULES["DDIMScheduler"])
    del rules["set_alpha_to_one"]
    monkeypatch.setitem(integration._RULES, "DDIMScheduler", rules)
    with pytest.raises(UnsupportedConfigError, match=r"set_alpha_to_one=True: an option of diffusers' DDIMScheduler"):
        from_diffusers(diffusers.DDIMScheduler())
    monkeypatch.undo()
    with pytest.raises(UnsupportedConfigError, match="ScoreSdeVeScheduler"):  # a class no mapping covers
        from_diffusers(diffusers.ScoreSdeVeScheduler())

    class Custom(diffusers.DDIMScheduler):  # may change the numerics: refuse rather than guess
        pass

    with pytest.raises(UnsupportedConfigError, match="not one of diffusers' own"):
        from_diffusers(Custom())


def test_our_options_without_a_diffusers_name_block_native_conversion():
    for name, options, option in [
        ("ddim", {"eta": 0.5}, "eta"),
        ("heun", {"s_churn": 1.0}, "s_churn"),
        ("euler_ancestral", {"eta": 0.5}, "eta"),
        ("ddpm", {"schedule": "vp_cosine"}, "schedule"),
        ("ddpm", {"variance_type": "learned"}, "variance_type"),
    ]:
        with pytest.raises(UnsupportedConfigError, match=rf"\b{option}="):
            samplers_config_to_diffusers(samplers.get(name, **options))
    with pytest.raises(UnsupportedConfigError, match="no diffusers counterpart"):
        to_diffusers(samplers.get("langevin"), native=True)
    # any of ours still wraps (here one diffusers has no class for)
    wrapper = to_diffusers(samplers.get("langevin"))
    wrapper.set_timesteps(5)
    assert len(wrapper.timesteps) > 0


def test_package_import_does_not_import_diffusers():
    code = "import sys, samplers, samplers.integrations; assert 'diffusers' not in sys.modules, 'diffusers imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
