"""diffusers parity of the k-diffusion / diffusers classics (issue 13): LMS, KDPM2 (+ ancestral), PNDM / PLMS,
iPNDM, LCM, TCD, EDM Euler, FlowMatch Heun and FlowMatch Euler with stochastic sampling.

Each case runs diffusers' own scheduler and ours (``from_diffusers``: natively with the recorded noise, and
wrapped by ``to_diffusers`` drawing from the same generator) through a pipeline-style loop with the same
deterministic model, float32, and requires ``max |ours - theirs| / max |theirs| <= 1e-5``.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from test_integrations_diffusers import SHAPE, _gaussian_model, _loop  # noqa: E402

from samplers.integrations.diffusers import (  # noqa: E402
    SUPPORTED_CLASSES,
    UnsupportedConfigError,
    from_diffusers,
    samplers_config_to_diffusers,
    to_diffusers,
)

F64 = torch.float64
TOL = 1e-5
NOISY_MODULES = (
    "scheduling_k_dpm_2_ancestral_discrete",
    "scheduling_lcm",
    "scheduling_tcd",
    "scheduling_edm_euler",
    "scheduling_flow_match_euler_discrete",
)


def _edm_model(prediction_type: str, sigma_data: float = 0.5):
    """An EDM-preconditioned network F(c_in x, c_noise) whose denoised output is the exact Gaussian denoiser."""
    gen = torch.Generator().manual_seed(7)  # the data of _gaussian_model: N(mu, 0.3^2)
    mu = 0.5 * torch.tanh(torch.randn(SHAPE[1:], generator=gen, dtype=F64))
    sign = 1.0 if prediction_type == "epsilon" else -1.0

    def model(x_in: torch.Tensor, t) -> torch.Tensor:
        sigma = math.exp(4 * float(t))
        norm = sigma * sigma + sigma_data * sigma_data
        x = x_in.to(F64) * math.sqrt(norm)
        x0 = mu + 0.09 / (0.09 + sigma * sigma) * (x - mu)
        c_skip, c_out = sigma_data**2 / norm, sign * sigma * sigma_data / math.sqrt(norm)
        return ((x0 - c_skip * x) / c_out).to(torch.float32)

    return model


def _cosine_v_model():
    """A v-prediction model with alpha = cos(pi t / 2), sigma = sin(pi t / 2) (what diffusers' IPNDM assumes)."""
    gen = torch.Generator().manual_seed(7)
    mu = 0.5 * torch.tanh(torch.randn(SHAPE[1:], generator=gen, dtype=F64))

    def model(x: torch.Tensor, t) -> torch.Tensor:
        alpha, sigma = math.cos(math.pi * float(t) / 2), math.sin(math.pi * float(t) / 2)
        x64 = x.to(F64)
        x0 = mu + alpha * 0.09 / (alpha * alpha * 0.09 + sigma * sigma) * (x64 - alpha * mu)
        eps = (x64 - alpha * x0) / sigma
        return (alpha * eps - sigma * x0).to(torch.float32)

    return model


def _model_for(reference, class_name: str, config: dict):
    if class_name.startswith("FlowMatch"):
        return _gaussian_model(None, "flow")
    if class_name == "EDMEulerScheduler":
        return _edm_model(config.get("prediction_type", "epsilon"), config.get("sigma_data", 0.5))
    if class_name == "IPNDMScheduler":
        return _cosine_v_model()
    return _gaussian_model(reference.alphas_cumprod.to(F64), config.get("prediction_type", "epsilon"))


def _cases():
    cases = []
    for spacing in ("linspace", "leading", "trailing"):
        for pred in ("epsilon", "v_prediction"):
            cfg = {"timestep_spacing": spacing, "prediction_type": pred}
            tag = f"{spacing}-{pred}"
            cases += [
                pytest.param("LMSDiscreteScheduler", cfg, {}, id=f"lms-{tag}"),
                pytest.param("KDPM2DiscreteScheduler", cfg, {}, id=f"dpm2-{tag}"),
                pytest.param("KDPM2AncestralDiscreteScheduler", cfg, {}, id=f"dpm2a-{tag}"),
            ]
        for skip in (True, False):
            cfg = {"timestep_spacing": spacing, "skip_prk_steps": skip, "set_alpha_to_one": False}
            cases.append(pytest.param("PNDMScheduler", cfg, {}, id=f"pndm-{spacing}-skip{skip}"))
    for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        for class_name in ("LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"):
            short = {"LMSDiscreteScheduler": "lms", "KDPM2DiscreteScheduler": "dpm2"}.get(class_name, "dpm2a")
            cases.append(pytest.param(class_name, {flag: True}, {}, id=f"{short}-{flag}"))
    sd = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    cases += [
        pytest.param("LMSDiscreteScheduler", {"prediction_type": "sample"}, {}, id="lms-sample"),
        pytest.param(
            "LMSDiscreteScheduler", {**sd, "timestep_spacing": "leading", "steps_offset": 1}, {}, id="lms-sd"
        ),
        pytest.param("PNDMScheduler", {**sd, "skip_prk_steps": True, "steps_offset": 1}, {}, id="pndm-sd_plms"),
        pytest.param("PNDMScheduler", {"set_alpha_to_one": True}, {}, id="pndm-alpha_one"),
        # diffusers combines raw v outputs (from_diffusers sets combine="output")
        pytest.param(
            "PNDMScheduler", {"prediction_type": "v_prediction", "skip_prk_steps": True}, {}, id="pndm-v_plms"
        ),
        pytest.param("PNDMScheduler", {"prediction_type": "v_prediction"}, {}, id="pndm-v_prk"),
        pytest.param("IPNDMScheduler", {}, {}, id="ipndm"),
        pytest.param("LCMScheduler", {}, {}, id="lcm"),
        pytest.param("LCMScheduler", {"prediction_type": "v_prediction"}, {}, id="lcm-v"),
        pytest.param("LCMScheduler", {"prediction_type": "sample", "clip_sample": True}, {}, id="lcm-sample_clip"),
        pytest.param("LCMScheduler", {"original_inference_steps": 100}, {}, id="lcm-orig100"),
        pytest.param("TCDScheduler", {}, {"eta": 0.3}, id="tcd-eta0.3"),
        pytest.param("TCDScheduler", {}, {"eta": 0.0}, id="tcd-eta0"),
        pytest.param("TCDScheduler", {"prediction_type": "v_prediction"}, {"eta": 1.0}, id="tcd-v-eta1"),
        pytest.param("EDMEulerScheduler", {}, {}, id="edm_euler"),
        pytest.param("EDMEulerScheduler", {"prediction_type": "v_prediction"}, {}, id="edm_euler-v"),
        pytest.param("EDMEulerScheduler", {"sigma_schedule": "exponential"}, {}, id="edm_euler-exponential"),
        pytest.param(
            "EDMEulerScheduler", {"final_sigmas_type": "sigma_min", "rho": 5.0}, {}, id="edm_euler-sigma_min"
        ),
        pytest.param(
            "EDMEulerScheduler",
            {},
            {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 10.0, "s_noise": 1.003},
            id="edm_euler-churn",
        ),
        pytest.param("FlowMatchHeunDiscreteScheduler", {}, {}, id="flow_heun"),
        pytest.param("FlowMatchHeunDiscreteScheduler", {"shift": 3.0}, {}, id="flow_heun-shift3"),
        pytest.param("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}, {}, id="flow_sde"),
        pytest.param(
            "FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True, "shift": 3.0}, {}, id="flow_sde-shift3"
        ),
        pytest.param(
            "FlowMatchEulerDiscreteScheduler",
            {"stochastic_sampling": True, "use_dynamic_shifting": True},
            {"mu": 0.8},
            id="flow_sde-dynamic",
        ),
    ]
    return cases


@pytest.mark.parametrize("class_name, config, run_kwargs", _cases())
def test_fifty_step_parity(class_name, config, run_kwargs, monkeypatch):
    reference = getattr(diffusers, class_name)(**config)
    model = _model_for(reference, class_name, config)
    x_start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    set_kwargs = {k: v for k, v in run_kwargs.items() if k == "mu"}
    step_kwargs = {k: v for k, v in run_kwargs.items() if k != "mu"}
    drawn: dict[int, torch.Tensor] = {}
    call = [0]
    for name in NOISY_MODULES:
        module = getattr(diffusers.schedulers, name)

        def recording(*args, _original=module.randn_tensor, **kwargs):
            noise = _original(*args, **kwargs)
            drawn[call[0]] = noise.clone()
            return noise

        monkeypatch.setattr(module, "randn_tensor", recording)
    takes_generator = "generator" in inspect.signature(reference.step).parameters
    make_generator = (lambda: torch.Generator().manual_seed(1234)) if takes_generator else (lambda: None)
    hook = lambda i: call.__setitem__(0, i)  # noqa: E731
    loop = dict(set_kwargs=set_kwargs, step_kwargs=step_kwargs)
    expected = _loop(reference, model, x_start, 50, generator=make_generator(), hook=hook, **loop)
    scale = float(expected.abs().max())
    assert bool(torch.isfinite(expected).all()) and 0 < scale < 50

    ours = from_diffusers(reference)
    assert type(ours) is SUPPORTED_CLASSES[class_name]
    native = _loop(ours, model, x_start, 50, noise_for_call=drawn, **loop)
    wrapped = _loop(to_diffusers(from_diffusers(reference)), model, x_start, 50, generator=make_generator(), **loop)
    assert native.dtype == wrapped.dtype == torch.float32
    assert float((native - expected).abs().max()) / scale <= TOL
    assert float((wrapped - expected).abs().max()) / scale <= TOL
    noisy = step_kwargs["eta"] > 0 if "eta" in step_kwargs else ours.is_stochastic or bool(step_kwargs.get("s_churn"))
    assert bool(drawn) == noisy, "noise drawn exactly when the run is stochastic"


@pytest.mark.parametrize(
    "class_name, config",
    [
        ("LMSDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "trailing"}),
        ("KDPM2AncestralDiscreteScheduler", {"use_beta_sigmas": True}),
        ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}),
        ("IPNDMScheduler", {}),
        ("LCMScheduler", {"original_inference_steps": 30, "clip_sample": True}),
        ("TCDScheduler", {"timestep_scaling": 5.0}),
        ("EDMEulerScheduler", {"sigma_schedule": "exponential", "sigma_max": 20.0}),
        ("FlowMatchHeunDiscreteScheduler", {"shift": 3.0}),
        ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}),
    ],
)
def test_config_round_trips_through_diffusers(class_name, config):
    """from_diffusers then to_diffusers(native=True) gives back diffusers' class with the same numerics."""
    reference = getattr(diffusers, class_name)(**config)
    ours = from_diffusers(reference)
    name, back = samplers_config_to_diffusers(ours)
    assert name == class_name
    rebuilt = getattr(diffusers, class_name)(**back)
    for key, value in config.items():
        if key != "timestep_scaling":  # TCD's is never read, so it is not carried
            assert rebuilt.config[key] == value, key
    assert type(from_diffusers(rebuilt)) is type(ours) and dict(from_diffusers(rebuilt).config) == dict(ours.config)


def test_our_defaults_that_diffusers_cannot_express_block_native_conversion():
    import samplers

    with pytest.raises(UnsupportedConfigError, match="pure_noise_x0"):
        to_diffusers(samplers.get("ipndm"), native=True)  # ours reads x0 from the model out of pure noise
    with pytest.raises(UnsupportedConfigError, match="preconditioning"):
        to_diffusers(samplers.get("edm_euler"), native=True)  # ours reads any prediction type by default
    with pytest.raises(UnsupportedConfigError, match="solver_order"):
        to_diffusers(samplers.get("lms", solver_order=2), native=True)  # diffusers takes order per step()
    assert type(to_diffusers(samplers.get("lms"), native=True)).__name__ == "LMSDiscreteScheduler"


@pytest.mark.parametrize(
    "class_name, config",
    [("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}), ("EDMEulerScheduler", {})],
)
def test_img2img_partial_run_matches(class_name, config):
    """Image-to-image: the run begins at call ``t_start * order`` (set_begin_index) from add_noise at that
    timestep. (Not LMS: diffusers then keeps the order-4 weights and drops the terms of the missing
    derivatives, an inconsistent first steps; ours restarts the warm-up at orders 1, 2, 3.)"""
    reference = getattr(diffusers, class_name)(**config)
    wrapper = to_diffusers(from_diffusers(reference))
    assert wrapper.order == reference.order
    model = _model_for(reference, class_name, config)
    image = 0.5 * torch.tanh(torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    results = []
    for scheduler in (reference, wrapper):
        scheduler.set_timesteps(30)
        start = 12 * scheduler.order
        timesteps = scheduler.timesteps[start:]
        scheduler.set_begin_index(start)
        x = scheduler.add_noise(image, noise, timesteps[:1])
        for t in timesteps:
            x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
        results.append(x)
    assert float((results[0] - results[1]).abs().max()) <= TOL * float(results[0].abs().max())
