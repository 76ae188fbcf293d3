"""A 50-step diffusers loop against ours, for the parity tests of the multistep samplers (UniPC, DEIS, SA-Solver,
DDIM inversion): one deterministic model, the same start, the same noise, and the float64 reference harness.

**The harness.** diffusers builds its training table with a float32 cumulative product (8e-5 relative error
in sigma at t = 0) and keeps its grid levels in float32; the Karras / exponential / beta grids span that
table's ends, and DEIS-3 and SA-Solver-(3, 4) compute their coefficients from the float32 levels with heavy
cancellation (8.8e-5 relative drift for DEIS-3 at 50 steps). Where a test says ``float64=True`` the reference
therefore runs on our float64 table (``alphas_cumprod`` set before ``set_timesteps``) with its ``sigmas``
made float64 after it, so that it computes its own closed forms in float64 (the samples stay float32).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from samplers.integrations.diffusers import from_diffusers, to_diffusers

F64 = torch.float64
SHAPE = (2, 3, 8, 8)
STD = 0.3


def gaussian_model(abar: torch.Tensor | None, prediction_type: str) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """model(x model-space [B, C, H, W], t) -> output: the exact denoiser of data N(mu, 0.3^2), mu in [-0.5, 0.5].

    ``abar`` [T] float64 is the training table (interpolated linearly at fractional t); None means rectified
    flow (alpha = 1 - t / 1000, sigma = t / 1000).
    """
    mu = 0.5 * torch.tanh(torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(7), dtype=F64))

    def model(x: torch.Tensor, t: Any) -> torch.Tensor:
        t = float(t)
        if abar is None:
            alpha, sigma = 1 - t / 1000, t / 1000
        else:
            low = min(int(t), len(abar) - 2)
            a = (1 - (t - low)) * abar[low] + (t - low) * abar[low + 1]
            alpha, sigma = float(a) ** 0.5, float(1 - a) ** 0.5
        x64 = x.to(F64)
        x0 = mu + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (x64 - alpha * mu)
        eps = (x64 - alpha * x0) / sigma
        outputs = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "flow_prediction": eps - x0, "sample": x0}
        return outputs[prediction_type].to(torch.float32)

    return model


def loop(
    scheduler: Any,
    model: Callable,
    x_start: torch.Tensor,
    steps: int,
    *,
    set_kwargs: Mapping[str, Any] | None = None,
    noise: list[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    float64: bool = False,
    begin: int = 0,
) -> torch.Tensor:
    """A pipeline's loop from ``begin``; ``noise[i]`` is call i's explicit noise, ``float64`` the reference harness."""
    scheduler.set_timesteps(steps, **(set_kwargs or {}))
    if float64:
        scheduler.sigmas = scheduler.sigmas.to(F64)
    if begin:
        scheduler.set_begin_index(begin)
    x = x_start * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for i, t in enumerate(scheduler.timesteps[begin:], start=begin):
        kwargs: dict[str, Any] = {}
        if noise is not None:
            kwargs["noise"] = noise[i]
        if generator is not None and takes_generator:
            kwargs["generator"] = generator
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, **kwargs).prev_sample
    return x


def reference(class_name: str, config: Mapping[str, Any], float64: bool) -> Any:
    """diffusers' scheduler; with ``float64`` on our float64 training table (module docstring)."""
    import diffusers

    ref = getattr(diffusers, class_name)(**config)
    if float64 and not config.get("use_flow_sigmas"):
        table = from_diffusers(ref).schedule.alphas_cumprod.clone()
        if config.get("rescale_betas_zero_snr"):
            table[-1] = 2.0**-24  # diffusers' own substitute for the zero terminal SNR
        ref.alphas_cumprod = table
    return ref


def parity(
    class_name: str,
    config: Mapping[str, Any],
    *,
    steps: int = 50,
    float64: bool = False,
    set_kwargs: Mapping[str, Any] | None = None,
    noise_module: str | None = None,
    begin: int = 0,
    start: str = "noise",
) -> dict[str, float]:
    """``max|ours - diffusers| / max|diffusers|`` for ours through ``from_diffusers`` (explicit noise) and through
    the ``to_diffusers`` wrapper (drawing from a generator as diffusers does); also the reference's ``scale``.

    ``noise_module``: the diffusers module whose ``randn_tensor`` draws the reference's noise (recorded per
    call). ``start``: ``"noise"`` (standard normal) or ``"data"`` (an inversion's clean start).
    """
    import diffusers

    ref = reference(class_name, config, float64)
    prediction = config.get("prediction_type", "epsilon")
    model = gaussian_model(None if config.get("use_flow_sigmas") else ref.alphas_cumprod.to(F64), prediction)
    x_start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    if start == "data":
        x_start = 0.3 * x_start
    drawn: list[torch.Tensor] = []
    module = getattr(diffusers.schedulers, noise_module) if noise_module else None
    original = module.randn_tensor if module else None
    if module is not None:

        def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
            z = original(*args, **kwargs)
            drawn.append(z.clone())
            return z

        module.randn_tensor = recording
    try:
        expected = loop(
            ref, model, x_start, steps, set_kwargs=set_kwargs, generator=torch.Generator().manual_seed(11),
            float64=float64, begin=begin,
        )  # fmt: skip
    finally:
        if module is not None:
            module.randn_tensor = original
    scale = float(expected.abs().max())
    assert bool(torch.isfinite(expected).all()), f"diffusers' {class_name} {dict(config)} gave non-finite samples"
    ours = from_diffusers(ref)
    noise = [torch.zeros_like(x_start)] * begin + drawn if module is not None else None
    native = loop(ours, model, x_start, steps, set_kwargs=set_kwargs, noise=noise, begin=begin)
    wrapped = loop(
        to_diffusers(from_diffusers(ref)), model, x_start, steps, set_kwargs=set_kwargs,
        generator=torch.Generator().manual_seed(11), begin=begin,
    )  # fmt: skip
    return {
        "native": float((native - expected).abs().max()) / scale,
        "wrapper": float((wrapped - expected).abs().max()) / scale,
        "scale": scale,
    }
