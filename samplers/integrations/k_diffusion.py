"""k-diffusion-style sampling: ``sample_<name>(model, x, sigmas, ...)`` over a denoiser ``D(x, sigma)``.

k-diffusion (and the pipelines built on it: ComfyUI, A1111) works in *sigma space*: the sample is
``x = x_model / alpha`` with noise level ``sigma = sigma_model / alpha``, and the network is wrapped
as a denoiser ``D(x, sigma) ~ E[x0 | x]`` (Karras et al. 2022, eq. 2-3). In our terms that is the
EDM schedule (``alpha = 1``, model time = sigma) with a ``sample`` (x0) prediction. So each
function here configures one of *our* schedulers that way on the caller's ``sigmas`` and drives it
call by call: the coefficients come from its plan and the update from the fused op
(``samplers.ops``), and no step formula is written a second time.

    denoiser = DiscreteVPDenoiser(unet, alphas_cumprod)            # eps-model -> D(x, sigma)
    sigmas = get_sigmas_karras(20, denoiser.sigma_min, denoiser.sigma_max)
    x = sample_heun(denoiser, torch.randn(4, 4, 64, 64) * sigmas[0], sigmas)

Pieces:

* samplers: :func:`sample_euler`, :func:`sample_euler_ancestral`, :func:`sample_heun` (k-diffusion's
  signatures, callback dict and random-number order), :func:`sample_ddim`, :func:`sample_ddpm`, and
  :func:`sample_scheduler` for any registered scheduler that takes ``schedule="edm"``;
* denoisers: :class:`Denoiser` (a network on any of our noise schedules), :class:`DiscreteVPDenoiser`
  (``alphas_cumprod`` tables: epsilon / v / x0 models), :class:`FlowDenoiser` (rectified flow);
* sigma grids: :func:`get_sigmas_karras`, :func:`get_sigmas_exponential`,
  :func:`get_sigmas_polyexponential`, :func:`get_sigmas_vp`, :func:`append_zero`.

Shapes: ``x`` is ``[B, ...]``; ``sigmas`` is a descending 1-D tensor ``[N + 1]`` whose last entry is
usually 0 (only the last may be 0); the denoiser is called as ``model(x, sigma * ones(B), **extra_args)``
and returns x0_hat shaped like ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import trange

from samplers import parameterization, schedules
from samplers.levels import level_range
from samplers.plan import estimate_coefficients
from samplers.protocol import SamplerState, Scheduler
from samplers.registry import get as get_scheduler
from samplers.schedules import DiscreteVPSchedule, NoiseSchedule, RectifiedFlowSchedule

F64 = torch.float64

DenoiserFn = Callable[..., torch.Tensor]  # D(x [B, ...], sigma [B], **extra_args) -> x0_hat [B, ...]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (sigma, sigma_next) -> N(0, I) like x
Callback = Callable[[dict[str, Any]], None]

__all__ = [
    "Denoiser",
    "DiscreteVPDenoiser",
    "FlowDenoiser",
    "append_zero",
    "default_noise_sampler",
    "get_sigmas_exponential",
    "get_sigmas_karras",
    "get_sigmas_polyexponential",
    "get_sigmas_vp",
    "sample_ddim",
    "sample_ddpm",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_scheduler",
    # group "samp-kd"
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpmpp_2s_ancestral",
    "sample_lms",
]


# --------------------------------------------------------------------------------------------
# Sigma grids (built on samplers.schedules; float64 math, float32 result as k-diffusion returns)
# --------------------------------------------------------------------------------------------


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """``[N] -> [N + 1]``: the final level 0 (x0 itself) that sampling grids end on."""
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _grid(levels: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    return append_zero(levels.to(torch.float32)).to(device)


def get_sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """EDM's rho-spaced levels (Karras et al. 2022, eq. 5) from ``sigma_max`` to ``sigma_min``, then 0: ``[n + 1]``."""
    return _grid(schedules.karras_sigmas(n, float(sigma_min), float(sigma_max), rho), device)


def get_sigmas_polyexponential(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``log sigma`` moving as ``ramp^rho`` from ``log sigma_max`` to ``log sigma_min`` (ramp 1 -> 0), then 0.

    This is the VE (NCSN) schedule ``sigma_min (sigma_max / sigma_min)^t`` at ``t = ramp^rho``.
    """
    t = torch.linspace(1.0, 0.0, n, dtype=F64) ** rho
    return _grid(schedules.VESchedule(float(sigma_min), float(sigma_max)).alpha_sigma(t)[1], device)


def get_sigmas_exponential(
    n: int, sigma_min: float, sigma_max: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Levels evenly spaced in ``log sigma`` (NCSN's geometric sequence), then 0: ``[n + 1]``."""
    return get_sigmas_polyexponential(n, sigma_min, sigma_max, 1.0, device)


def get_sigmas_vp(
    n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The continuous VP-SDE (Song et al. 2021, ``beta(t) = beta_min + beta_d t``) at ``t`` evenly from 1
    to ``eps_s``, as sigma-space levels ``sigma / alpha``, then 0: ``[n + 1]``."""
    schedule = schedules.VPLinearSchedule(beta_min, beta_min + beta_d)
    return _grid(schedule.ve_sigma(torch.linspace(1.0, eps_s, n, dtype=F64)), device)


# --------------------------------------------------------------------------------------------
# Denoisers: a network of any prediction type -> D(x, sigma)
# --------------------------------------------------------------------------------------------


class Denoiser(torch.nn.Module):
    """``D(x, sigma)``: a network trained on ``schedule`` with ``prediction_type``, read as x0_hat.

    For a sigma-space level ``sigma`` the network runs at model time ``t(sigma)`` (the schedule's
    inverse of ``sigma_t / alpha_t``) on its own input scale ``alpha_t * x``, and its output becomes
    x0 through ``parameterization`` -- the same ``(p, q)`` our schedulers use. This generalises
    k-diffusion's ``CompVisDenoiser`` (epsilon), ``CompVisVDenoiser`` / ``VDenoiser`` (v) and a
    flow-matching wrapper to every schedule and prediction type here.

    Args:
        model: ``model(x_in [B, ...], t [B], **kwargs) -> output [B, ...]``.
        schedule: the training schedule (any :class:`samplers.schedules.NoiseSchedule`).
        prediction_type: ``epsilon``, ``v_prediction``, ``sample``, ``flow`` or ``score``.
        quantize: feed the nearest integer timestep (discrete schedules whose model only knows integers).

    Mapping ``sigma -> t`` runs in float64 on the host (one small copy per call); levels outside the
    schedule's range are clamped to its ends, as k-diffusion's discrete wrappers do.
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        schedule: NoiseSchedule,
        prediction_type: str = "epsilon",
        quantize: bool = False,
    ) -> None:
        super().__init__()
        self.inner_model = model
        self.schedule = schedule
        self.prediction_type = parameterization.canonical_prediction_type(prediction_type)
        self.quantize = quantize

    @property
    def sigma_min(self) -> float:
        """Smallest sigma-space level the training schedule reaches."""
        return level_range(self.schedule, {})[0]

    @property
    def sigma_max(self) -> float:
        """Largest sigma-space level the training schedule reaches."""
        return level_range(self.schedule, {})[1]

    def sigma_to_t(self, sigma: torch.Tensor, quantize: bool | None = None) -> torch.Tensor:
        """Model times [B] (host) for sigma-space levels [B]: float64, or int64 nearest timesteps when quantizing."""
        t = self.schedule.time_at_level(torch.as_tensor(sigma).detach().to("cpu", F64).reshape(-1))
        return t.round().long() if (self.quantize if quantize is None else quantize) else t

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma-space levels ``sigma_t / alpha_t`` (float64) at model times ``t``."""
        return self.schedule.ve_sigma(torch.as_tensor(t, dtype=F64))

    def get_sigmas(self, n: int) -> torch.Tensor:
        """``n`` levels at the schedule's default model times, then 0: ``[n + 1]`` float32."""
        return _grid(self.t_to_sigma(self.schedule.default_times(n)), "cpu")

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """x0_hat [B, ...] for sigma-space samples ``x`` [B, ...] at levels ``sigma`` ([B] or scalar)."""
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(batch)
        if sigma.shape != (batch,):
            raise ValueError(f"sigma must be a scalar or have shape [batch={batch}], got {tuple(sigma.shape)}")
        t = self.sigma_to_t(sigma, quantize=False)
        alpha, sigma_model = self.schedule.alpha_sigma(t)  # model space at the exact (unquantized) level
        p, q = estimate_coefficients(self.prediction_type, alpha, sigma_model, alpha)
        view = (batch,) + (1,) * (x.dim() - 1)
        col = lambda v: v.to(device=x.device, dtype=x.dtype).view(view)  # noqa: E731
        # float32 times at least: a half-precision t (up to 999) would lose the fraction.
        t_model = t.round().long() if self.quantize else t.to(F64 if x.dtype == F64 else torch.float32)
        out = self.inner_model(x * col(alpha), t_model.to(x.device), **kwargs)
        return col(p) * x + col(q) * out


class DiscreteVPDenoiser(Denoiser):
    """An ``alphas_cumprod``-table model (DDPM / Stable Diffusion UNets) as ``D(x, sigma)``.

    Sigma-space levels are ``sqrt((1 - abar) / abar)``; fractional timesteps between table entries
    interpolate ``log sigma`` linearly (k-diffusion's ``DiscreteSchedule``, our ``DiscreteVPSchedule``).
    ``prediction_type="epsilon"`` is k-diffusion's ``CompVisDenoiser``, ``"v_prediction"`` its
    ``CompVisVDenoiser``.
    """

    schedule: DiscreteVPSchedule  # built from alphas_cumprod below

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        alphas_cumprod: torch.Tensor | Sequence[float],
        prediction_type: str = "epsilon",
        quantize: bool = False,
    ) -> None:
        schedule = DiscreteVPSchedule(alphas_cumprod=torch.as_tensor(alphas_cumprod, dtype=F64))
        super().__init__(model, schedule, prediction_type, quantize)

    @property
    def sigmas(self) -> torch.Tensor:
        """The training table's levels [T], ascending with the timestep."""
        return self.schedule.sigmas

    def get_sigmas(self, n: int | None = None) -> torch.Tensor:
        """``n`` levels at timesteps evenly from ``T - 1`` to 0 (all ``T`` table levels if None), then 0."""
        if n is None:
            return _grid(self.sigmas.flip(0), "cpu")
        t = torch.linspace(self.schedule.num_train_timesteps - 1, 0, n, dtype=F64)
        return _grid(self.schedule.sigma_at(t), "cpu")


class FlowDenoiser(Denoiser):
    """A rectified-flow model (``x_t = (1 - t) x0 + t eps``, output the velocity ``eps - x0``) as ``D(x, sigma)``.

    Sigma space here is the true VE picture of the flow: ``sigma = t / (1 - t)`` and the model sees
    ``x / (1 + sigma)``; every sampler (ancestral ones included) keeps its meaning. ``t = 1`` is
    ``sigma = inf``, so grids start just below it (:meth:`get_sigmas`).

    Args:
        timestep_scale: what the model is fed per unit of t (SD3 / diffusers feed ``1000 t``).
    """

    def __init__(
        self, model: Callable[..., torch.Tensor], timestep_scale: float = 1.0, prediction_type: str = "flow"
    ) -> None:
        super().__init__(model, RectifiedFlowSchedule(timestep_scale), prediction_type)

    def get_sigmas(self, n: int, shift: float = 1.0, t_max: float = 1.0 - 1e-3) -> torch.Tensor:
        """``n`` levels at flow times evenly from ``t_max`` to ``1/n`` after SD3's shift (eq. 23), then 0."""
        t = schedules.flow_time_shift(torch.linspace(t_max, 1.0 / n, n, dtype=F64), shift)
        return _grid(t / (1 - t), "cpu")


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------


def default_noise_sampler(x: torch.Tensor) -> NoiseSampler:
    """Fresh ``randn_like(x)`` at every call (k-diffusion's default)."""
    return lambda sigma, sigma_next: torch.randn_like(x)


def _check_inputs(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Validate ``x`` and ``sigmas``; return ``sigmas`` as a 1-D tensor. Errors name the argument."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating torch.Tensor [B, ...], got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty batch dimension first, got shape {tuple(x.shape)}")
    if not isinstance(sigmas, torch.Tensor):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 noise levels, got shape {tuple(sigmas.shape)}")
    host = sigmas.detach().to("cpu", F64)
    if not bool(torch.isfinite(host).all()) or bool((host < 0).any()):
        raise ValueError(f"sigmas must be finite and >= 0, got {host.tolist()}")
    if bool((host[1:] > host[:-1]).any()):
        raise ValueError(f"sigmas must be descending (non-increasing), got {host.tolist()}")
    if bool((host[:-1] == 0).any()):
        raise ValueError(f"sigmas may reach 0 only at its last entry, got {host.tolist()}")
    return sigmas


def _on_edm(name: str, sigmas: torch.Tensor, **config: Any) -> Scheduler:
    """Our scheduler ``name`` in a denoiser's coordinates, planned on the non-zero levels of ``sigmas``.

    On the EDM schedule ``alpha = 1`` and the model time is sigma itself, so the custom timesteps are
    the levels and a ``sample`` (x0) prediction is exactly ``D(x, sigma)``.
    """
    scheduler = get_scheduler(name, schedule="edm", prediction_type="sample", **config)
    levels = sigmas.detach().to("cpu", F64)
    scheduler.set_timesteps(timesteps=levels[levels > 0])
    return scheduler


def _denoise(model: DenoiserFn, x: torch.Tensor, sigma: torch.Tensor, extra_args: dict[str, Any]) -> torch.Tensor:
    denoised = model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)
    if not isinstance(denoised, torch.Tensor) or denoised.shape != x.shape:
        got = tuple(denoised.shape) if isinstance(denoised, torch.Tensor) else type(denoised).__name__
        raise ValueError(f"the denoiser must return x0_hat shaped like x {tuple(x.shape)}, got {got}")
    return denoised.to(x.dtype)  # mixed-precision models may answer in another dtype


def _level(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A 0-d noise level in ``sigmas``' dtype and device (what k-diffusion hands to models and callbacks)."""
    return torch.as_tensor(float(value), dtype=like.dtype, device=like.device)


@torch.no_grad()
def sample_scheduler(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    scheduler: str = "euler",
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    **config: Any,
) -> torch.Tensor:
    """Run our registered scheduler ``scheduler`` (configured by ``config``) over ``sigmas``, k-diffusion style.

    The scheduler is planned on the EDM schedule with an x0 output at the non-zero levels of
    ``sigmas`` and stepped call by call; ``x`` [B, ...] starts at ``sigmas[0]`` and the run stops at
    ``sigmas[-1]`` (0: a clean sample). Every call the plan marks stochastic gets
    ``noise_sampler(sigma, sigma_next) * s_noise``; schedulers that draw data-dependent noise
    themselves (predictor-corrector) use their own Philox stream. ``callback`` receives
    ``{x, i, sigma, sigma_hat, denoised}`` per model call, before the update.
    """
    sigmas = _check_inputs(x, sigmas)
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    sched = _on_edm(scheduler, sigmas, **config)
    plan = sched._require_plan()
    levels = plan.model_sigma  # alpha = 1: the model-space sigma is the sigma-space level
    stop = float(sigmas[-1])
    calls = int((levels > stop).sum())  # levels descend: the calls above the final level
    state = sched.init_state()
    for k in trange(calls, disable=disable):
        sigma = _level(levels[k], sigmas)
        denoised = _denoise(model, x, sigma, extra_args)
        if callback is not None:
            callback({"x": x, "i": k, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        noise = None
        if plan.stochastic_calls[k]:
            # the interval the call's noise stands for (its Brownian increment), else this level to the next
            interval = plan.noise_intervals[k] or (
                float(levels[k]),
                float(levels[k + 1]) if k + 1 < len(levels) else 0.0,
            )
            noise = noise_sampler(_level(interval[0], sigmas), _level(interval[1], sigmas)).to(x.dtype) * s_noise
        out, state = sched.step_functional(state, denoised, float(plan.timesteps[k]), x, noise=noise)
        x = out.prev_sample
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Euler down to ``sigma_down`` plus fresh noise ``sigma_up`` (our ``euler_ancestral`` scheduler).

    ``sigma_up = eta * sqrt(posterior variance)``, ``sigma_up^2 + sigma_down^2 = sigma_next^2``; the noise is
    ``noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise``, not drawn on the step into 0. ``eta`` in [0, 1].
    """
    return sample_scheduler(
        model, x, sigmas, "euler_ancestral", extra_args, callback, disable, s_noise, noise_sampler, eta=eta
    )


@torch.no_grad()
def sample_ddim(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12 and 16) on the caller's levels: our ``ddim`` scheduler, unclipped.

    In sigma space DDIM's eta-family is exactly Euler ancestral with the same eta (eta = 0: Euler).
    """
    return sample_scheduler(
        model, x, sigmas, "ddim", extra_args, callback, disable, s_noise, noise_sampler, eta=eta, clip_sample=False
    )


@torch.no_grad()
def sample_ddpm(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    variance_type: str = "fixed_small",
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): draw from ``q(x_next | x, x0_hat)`` each step.

    ``fixed_small`` (the posterior variance) is Euler ancestral with eta = 1; ``fixed_large`` adds the
    forward transition's variance instead.
    """
    return sample_scheduler(
        model,
        x,
        sigmas,
        "ddpm",
        extra_args,
        callback,
        disable,
        s_noise,
        noise_sampler,
        variance_type=variance_type,
        clip_sample=False,
    )


def _churn_std(sigma: float, sigma_hat: float) -> float:
    """Std that raises the noise level from ``sigma`` to ``sigma_hat``: the forward transition in sigma space."""
    _, variance = schedules.transition(1.0, sigma, 1.0, sigma_hat)
    return math.sqrt(max(variance, 0.0))


def _karras_algorithm2(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None,
    callback: Callback | None,
    disable: bool | None,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    second_order: bool,
    scheduler: str = "heun",
) -> torch.Tensor:
    """Karras et al. 2022, Algorithm 2, with (Heun) or without (Euler) the correction of lines 9-11.

    The grid -- ``sigma_hat_i`` and each call's coefficients -- is our ``heun`` scheduler's plan (or another
    churned two-call scheduler's: ``dpm2``); its first call of a step *is* the Euler step from ``sigma_hat_i``
    (line 8), or DPM2's move to the midpoint. The churn of lines 5-6 is
    added here at the start of each step from ``torch.randn_like`` (drawn every step, used or not), as
    k-diffusion does, so the plan is built with its own in-update churn switched off (``s_noise=0``).
    """
    sigmas = _check_inputs(x, sigmas)
    host = sigmas.detach().to("cpu", F64)  # one copy per run: the per-step comparisons below stay on the host
    extra_args = extra_args or {}
    steps = len(sigmas) - 1
    planned = int((host > 0).sum())
    # gamma = s_churn / (number of steps); the plan divides by its level count, one more when sigmas[-1] > 0.
    sched = _on_edm(scheduler, sigmas, s_churn=s_churn * planned / steps, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=0.0)
    plan = sched._require_plan()
    starts = [k for k, used in enumerate(plan.use) if not used]  # each step's first call
    for i in trange(steps, disable=disable):
        k = starts[i]
        sigma, sigma_hat = sigmas[i], _level(plan.model_sigma[k], sigmas)
        level, level_hat = float(host[i]), float(plan.model_sigma[k])
        z = torch.randn_like(x) * s_noise
        if level_hat > level:  # lines 5-6: x_hat = x + sqrt(sigma_hat^2 - sigma^2) z
            x = x + z * _churn_std(level, level_hat)
        denoised = _denoise(model, x, sigma_hat, extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
        out, state = sched.step_functional(SamplerState(step_index=k), denoised, float(plan.timesteps[k]), x)
        corrector = k + 1 < len(plan.use) and bool(plan.use[k + 1])  # line 9: not on the step into 0
        if second_order and corrector:
            denoised_2 = _denoise(model, out.prev_sample, _level(plan.model_sigma[k + 1], sigmas), extra_args)
            out, _ = sched.step_functional(state, denoised_2, float(plan.timesteps[k + 1]), out.prev_sample)
        x = out.prev_sample
    return x


@torch.no_grad()
def sample_euler(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler steps on the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` with optional
    EDM churn (Karras et al. 2022, Algorithm 2 without its second-order correction)."""
    return _karras_algorithm2(model, x, sigmas, extra_args, callback, disable, s_churn, s_tmin, s_tmax, s_noise, False)


@torch.no_grad()
def sample_heun(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Heun's second-order method with EDM's stochastic churn (Karras et al. 2022, Algorithm 2); two
    model calls per step except the Euler step into sigma = 0."""
    return _karras_algorithm2(model, x, sigmas, extra_args, callback, disable, s_churn, s_tmin, s_tmax, s_noise, True)


# ---- group "samp-kd" (issue 13): sample_lms, sample_dpm_2, sample_dpm_2_ancestral, sample_dpmpp_2s_ancestral
# (k-diffusion 0.1.1.post1 has no sample_lcm).


def _first_calls_only(callback: Callback | None) -> Callback | None:
    """k-diffusion reports once per step: forward the first call of each two-call step (calls 0, 2, 4, ...)."""
    if callback is None:
        return None

    def per_step(info: dict[str, Any]) -> None:
        if info["i"] % 2 == 0:
            callback({**info, "i": info["i"] // 2})

    return per_step


@torch.no_grad()
def sample_lms(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    order: int = 4,
) -> torch.Tensor:
    """Linear multistep in sigma (our ``lms`` scheduler, orders 1-4) with exact Lagrange-integral weights."""
    return sample_scheduler(model, x, sigmas, "lms", extra_args, callback, disable, solver_order=order)


@torch.no_grad()
def sample_dpm_2(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver-2 steps in sigma space (our ``dpm2``) with EDM churn, drawn as k-diffusion draws it."""
    return _karras_algorithm2(
        model, x, sigmas, extra_args, callback, disable, s_churn, s_tmin, s_tmax, s_noise, True, "dpm2"
    )


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM2 down to ``sigma_down`` plus ``noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up`` (our
    ``dpm2_ancestral``); ``eta`` in [0, 1]."""
    return sample_scheduler(
        model,
        x,
        sigmas,
        "dpm2_ancestral",
        extra_args,
        _first_calls_only(callback),
        disable,
        s_noise,
        noise_sampler,
        eta=eta,
    )


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2S) down to ``sigma_down`` plus ancestral noise (our ``dpmpp_2s_ancestral``); ``eta`` in [0, 1]."""
    return sample_scheduler(
        model,
        x,
        sigmas,
        "dpmpp_2s_ancestral",
        extra_args,
        _first_calls_only(callback),
        disable,
        s_noise,
        noise_sampler,
        eta=eta,
    )


# --------------------------------------------------------------------------------------------
# DPM-Solver family (samp-dpm): multistep DPM-Solver++ (ODE and SDE), DPM-Solver-fast, DPM++ SDE
# --------------------------------------------------------------------------------------------


__all__ += [
    "brownian_noise_sampler",
    "sample_dpm_fast",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
]


def brownian_noise_sampler(x: torch.Tensor, seed: int | None = None) -> NoiseSampler:
    """Our counter-based Brownian tree as a k-diffusion ``noise_sampler(sigma, sigma_next)``.

    It returns ``(W(b(sigma_next)) - W(b(sigma))) / sqrt|b(sigma_next) - b(sigma)|`` of one Brownian path per
    sample (``samplers.ops.brownian_normal``, Brownian time ``b = sigma / (1 + sigma)``): the draws our
    schedulers' ``noise="brownian"`` mode makes, so overlapping intervals are correlated (DPM++ SDE) and runs
    with different step counts share one path, as with k-diffusion's ``BrownianTreeNoiseSampler`` (whose
    Brownian time is sigma itself, so its numbers differ). ``seed=None`` draws one from torch's global RNG.
    """
    from samplers import ops
    from samplers.plan import brownian_time

    seeds = ops.batch_seeds(ops.seed_from_generator(None) if seed is None else int(seed), x.shape[0], device=x.device)
    numel = x[0].numel()

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        ends = [torch.full((x.shape[0],), brownian_time(float(v)), device=x.device) for v in (sigma, sigma_next)]
        return ops.brownian_normal(seeds, 0, ends[0], ends[1], numel).view_as(x).to(x.dtype)

    return sample


def _sde_noise(x: torch.Tensor, noise_sampler: NoiseSampler | None) -> NoiseSampler:
    return noise_sampler if noise_sampler is not None else brownian_noise_sampler(x)


@torch.no_grad()
def sample_dpmpp_2m(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), midpoint form, first order on the first step and into 0.

    Our ``dpmpp_2m`` without diffusers' lower-order final steps (k-diffusion has none).
    """
    return sample_scheduler(model, x, sigmas, "dpmpp_2m", extra_args, callback, disable, lower_order_final=False)


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    solver_type: str = "midpoint",
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) with noise fraction ``eta`` (``eta = 0``: the 2M ODE), midpoint or heun.

    Noise: ``noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise`` per step (none into 0); by default our
    Brownian tree (:func:`brownian_noise_sampler`) seeded from torch's global RNG.
    """
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    return sample_scheduler(
        model,
        x,
        sigmas,
        "dpmpp_2m_sde",
        extra_args,
        callback,
        disable,
        s_noise,
        _sde_noise(x, noise_sampler),
        eta=float(eta),
        solver_type=solver_type,
        lower_order_final=False,
    )


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """SDE-DPM-Solver++(3M) with noise fraction ``eta``: our ``dpmpp_3m_sde`` with the heun D1 weight (also on
    its second-order warm-up step) and no lower-order final steps, as k-diffusion's. Noise as
    :func:`sample_dpmpp_2m_sde`. Second order as n grows (see ``samplers.schedulers.dpmsolver``)."""
    return sample_scheduler(
        model,
        x,
        sigmas,
        "dpmpp_3m_sde",
        extra_args,
        callback,
        disable,
        s_noise,
        _sde_noise(x, noise_sampler),
        eta=float(eta),
        solver_type="heun",
        lower_order_final=False,
    )


@torch.no_grad()
def sample_dpm_fast(
    model: DenoiserFn,
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    n: int,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver-fast (Lu et al. 2022, sec. 3.4): ``n`` model evaluations in steps of order 3 (then 2, 1)
    evenly in log sigma from ``sigma_max`` down to ``sigma_min``, where the run ends (no final denoising).

    Our ``dpm_fast`` scheduler on those step boundaries. ``eta > 0``: ancestral steps with
    ``noise_sampler(sigma, sigma_next) * s_noise`` per step (default ``randn_like``, as k-diffusion's).
    ``callback`` gets ``{x, i, sigma, sigma_hat, denoised}`` at every model evaluation.
    """
    from samplers.schedulers.dpm_fast import fast_orders

    if not (float(sigma_min) > 0 and float(sigma_max) > 0):
        raise ValueError(f"sigma_min and sigma_max must be > 0, got {sigma_min!r}, {sigma_max!r}")
    if not float(sigma_max) > float(sigma_min):
        raise ValueError(f"sigma_max must exceed sigma_min (reverse sampling is not supported), got {sigma_max!r}")
    orders = fast_orders(int(n))
    log_sigmas = torch.linspace(math.log(float(sigma_max)), math.log(float(sigma_min)), len(orders) + 1, dtype=F64)
    sigmas = log_sigmas.exp().to(torch.float32)
    return sample_scheduler(
        model, x, sigmas, "dpm_fast", extra_args, callback, disable, s_noise, noise_sampler, orders=orders, eta=eta
    )


@torch.no_grad()
def sample_dpmpp_sde(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    r: float = 1 / 2,
) -> torch.Tensor:
    """DPM++ SDE: DPM-Solver++(2S) with an ancestral step at each of its two stages (our ``dpmpp_sde``).

    The two draws of a step are increments of one Brownian path over ``[sigma_mid, sigma]`` and
    ``[sigma_next, sigma]``: ``noise_sampler(sigma, sigma_mid)`` then ``noise_sampler(sigma, sigma_next)``, by
    default our Brownian tree (:func:`brownian_noise_sampler`), which correlates them as k-diffusion's does.
    """
    return sample_scheduler(
        model,
        x,
        sigmas,
        "dpmpp_sde",
        extra_args,
        callback,
        disable,
        s_noise,
        _sde_noise(x, noise_sampler),
        eta=eta,
        r=r,
        noise="brownian",  # the noise sampler's draws are each call's own Brownian increment
    )


# --------------------------------------------------------------------------------------------
# Papers-only samplers (issue 13, group samp-papers): our schedulers on the caller's sigmas, with
# k-diffusion's calling convention. No k-diffusion function exists for them, except that RES 2M and its
# ancestral variant at eta = 1 are sample_dpmpp_2m_sde(solver_type="heun") at eta = 0 and 1.
# --------------------------------------------------------------------------------------------

__all__ += [
    "sample_er_sde",
    "sample_gradient_estimation",
    "sample_res_multistep",
    "sample_res_multistep_ancestral",
    "sample_restart",
    "sample_seeds_2",
    "sample_seeds_3",
]


@torch.no_grad()
def sample_res_multistep(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> torch.Tensor:
    """RES 2M (Zhang et al. 2023): our ``res_multistep`` (DPM-Solver++(2M) with the phi_2 weight)."""
    return sample_scheduler(model, x, sigmas, "res_multistep", extra_args, callback, disable)


@torch.no_grad()
def sample_res_multistep_ancestral(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """RES 2M to ``sigma_down`` plus ``noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up``."""
    return sample_scheduler(
        model, x, sigmas, "res_multistep_ancestral", extra_args, callback, disable, s_noise, noise_sampler, eta=eta
    )


@torch.no_grad()
def sample_er_sde(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    solver_order: int = 3,
    noise_scale: str = "recommended",
) -> torch.Tensor:
    """ER-SDE-Solver-``solver_order`` (Cui et al. 2023) with the noise-scale function ``noise_scale``."""
    return sample_scheduler(
        model,
        x,
        sigmas,
        "er_sde",
        extra_args,
        callback,
        disable,
        s_noise,
        noise_sampler,
        solver_order=solver_order,
        noise_scale=noise_scale,
    )


@torch.no_grad()
def sample_seeds_2(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    r: float = 0.5,
) -> torch.Tensor:
    """SEEDS-2 (Gonzalez et al. 2023); ``noise_sampler`` is asked for each call's own sub-interval."""
    return sample_scheduler(model, x, sigmas, "seeds_2", extra_args, callback, disable, s_noise, noise_sampler, r=r)


@torch.no_grad()
def sample_seeds_3(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """SEEDS-3 (Gonzalez et al. 2023); three calls per step, each with noise over its own sub-interval."""
    return sample_scheduler(model, x, sigmas, "seeds_3", extra_args, callback, disable, s_noise, noise_sampler)


@torch.no_grad()
def sample_gradient_estimation(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    ge_gamma: float = 2.0,
) -> torch.Tensor:
    """Gradient estimation (Permenter & Yuan 2024) with weight ``ge_gamma`` on the current eps estimate."""
    return sample_scheduler(model, x, sigmas, "gradient_estimation", extra_args, callback, disable, gamma=ge_gamma)


@torch.no_grad()
def sample_restart(
    model: DenoiserFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    restart_intervals: list | None = None,
) -> torch.Tensor:
    """Restart sampling (Xu et al. 2023): Heun on ``sigmas`` plus the restart cycles of ``restart_intervals``
    (``[[steps, repeats, t_min, t_max], ...]``; None: our default). ``sigmas`` must end at 0: the cycles
    are part of the run, which has no stopping point in the middle."""
    if float(_check_inputs(x, sigmas)[-1]) != 0.0:
        raise ValueError("sample_restart needs sigmas ending at 0 (the restart cycles belong to the whole run)")
    return sample_scheduler(
        model,
        x,
        sigmas,
        "restart",
        extra_args,
        callback,
        disable,
        s_noise,
        noise_sampler,
        restart_intervals=restart_intervals,
    )
