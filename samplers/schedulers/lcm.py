"""Consistency-model samplers: LCM (Luo et al. 2023, "Latent Consistency Models: Synthesizing High-Resolution
Images with Few-Step Inference", Algorithm 3) and TCD (Zheng et al. 2024, "Trajectory Consistency
Distillation", eq. 13-14 and Algorithm 4); diffusers' ``LCMScheduler`` and ``TCDScheduler``.

A consistency model maps a noisy sample straight to the start of its probability-flow trajectory,
``f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat`` with the boundary condition ``c_skip(0) = 1``,
``c_out(0) = 0`` (Song et al. 2023, eq. 7; LCM eq. 4): ``c_skip = sigma_d^2 / ((s t)^2 + sigma_d^2)`` and
``c_out = s t / sqrt((s t)^2 + sigma_d^2)`` with ``sigma_d = 0.5`` and ``s = timestep_scaling`` (10 for
the latent models, whose ``t`` counts training timesteps). Multistep consistency sampling alternates
the map with fresh noise:

* **LCM**: ``x_{t'} = alpha_{t'} f(x_t, t) + sigma_{t'} z``; the last call returns ``f``.
* **TCD**: with ``gamma`` (diffusers' ``eta``) it maps to the intermediate ``s = floor((1 - gamma) t')``
  along DDIM, ``x_s = alpha_s x0_hat + sigma_s eps_hat``, then forward-noises to ``t'``
  (``q(x_{t'} | x_s)``); ``gamma = 0`` is deterministic DDIM onto the grid, ``gamma = 1`` is LCM-like.
  The last call lands at ``t = 0`` (diffusers' ``prev_timestep = 0``: ``abar_0``, not exactly clean).

Grid (both, on a training table): ``original_inference_steps`` evenly spaced distillation timesteps
``k - 1, 2k - 1, ..., T - 1`` (``k = T // original_inference_steps``), of which ``n`` are taken at
``floor(linspace(0, len, n, endpoint=False))`` from the top; ``strength < 1`` keeps the lower part
(img2img). On a continuous schedule the grid is the schedule's default one and ``timestep_scaling``
multiplies its model time. With an exact consistency model one LCM step returns the ODE endpoint and
every later step keeps the data distribution exactly (tests/test_samplers_kd.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from samplers import levels as lv
from samplers import schedules
from samplers.ops.reference import COEFF
from samplers.plan import Call, Plan, Update, build_plan, dynamic_threshold_coeffs
from samplers.protocol import Scheduler
from samplers.schedules import DiscreteVPSchedule

F64 = torch.float64
SIGMA_DATA = 0.5  # the boundary condition's sigma_d (LCM eq. 4)


def boundary_scalings(t: float, timestep_scaling: float) -> tuple[float, float]:
    """``(c_skip, c_out)`` of the consistency boundary condition at model time ``t`` (LCM eq. 4)."""
    scaled = t * timestep_scaling
    norm = scaled * scaled + SIGMA_DATA * SIGMA_DATA
    return SIGMA_DATA * SIGMA_DATA / norm, scaled / math.sqrt(norm)


def distillation_grid(num_train_timesteps: int, original_steps: int, n: int, strength: float = 1.0) -> np.ndarray:
    """LCM's ``n`` descending timesteps out of ``original_steps`` evenly spaced distillation timesteps."""
    if original_steps > num_train_timesteps:
        raise ValueError(
            f"original_inference_steps={original_steps} cannot exceed num_train_timesteps={num_train_timesteps}"
        )
    k = num_train_timesteps // original_steps
    origin = (np.arange(1, int(original_steps * strength) + 1) * k - 1)[::-1]
    return _take(origin, n, f"original_inference_steps x strength = {original_steps} x {strength}")


def _take(origin: np.ndarray, n: int, what: str) -> np.ndarray:
    if n > len(origin):
        raise ValueError(f"num_inference_steps={n} cannot exceed the {len(origin)} timesteps of {what}")
    return origin[np.floor(np.linspace(0, len(origin), n, endpoint=False)).astype(np.int64)]


class _ConsistencyScheduler(Scheduler):
    """Grid and ``set_timesteps`` options shared by LCM and TCD (model space, no history)."""

    kind = "consistency"
    order = 1
    stochastic = True
    default_spacing = "leading"
    # set_timesteps' (original_inference_steps, strength) for the grid being built; None before the first call
    _grid_options: tuple[int | None, float] | None = None

    # diffusers' LCMScheduler/TCDScheduler.set_timesteps take original_inference_steps third (before timesteps),
    # so positional calls differ from the base signature on purpose.
    def set_timesteps(  # type: ignore[override]
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        original_inference_steps: int | None = None,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        strength: float = 1.0,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        mu: float | None = None,
    ) -> None:
        """diffusers' LCM/TCD ``set_timesteps``: ``original_inference_steps`` overrides the config's for this
        grid; ``strength`` in (0, 1] keeps the lower part of the distillation grid (or of custom timesteps)."""
        if not 0.0 < float(strength) <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        if original_inference_steps is not None and (
            isinstance(original_inference_steps, bool) or int(original_inference_steps) < 1
        ):
            raise ValueError(f"original_inference_steps must be a positive int, got {original_inference_steps!r}")
        if timesteps is not None and strength < 1.0:
            custom = lv.custom_grid(timesteps, "timesteps")
            keep = min(int(len(custom) * strength), len(custom))
            timesteps = custom[len(custom) - keep :]
        previous = self._grid_options
        self._grid_options = (original_inference_steps, float(strength))
        try:
            super().set_timesteps(num_inference_steps, device, timesteps, sigmas, mu)
        except Exception:
            self._grid_options = previous
            raise

    def default_levels(self, n: int, mu: float | None) -> lv.Levels:
        schedule = self.schedule
        if not isinstance(schedule, DiscreteVPSchedule):
            return super().default_levels(n, mu)
        given, strength = self._grid_options or (None, 1.0)
        t = self.grid_timesteps(schedule.num_train_timesteps, n, given, strength)
        return lv.levels_at_times(schedule, torch.from_numpy(t.astype(np.float64)))

    def grid_timesteps(self, total: int, n: int, given: int | None, strength: float) -> np.ndarray:
        return distillation_grid(total, given or int(self.config.original_inference_steps), n, strength)

    def _at(self, t: float) -> tuple[float, float]:
        alpha, sigma = lv.alpha_sigma_at(self.schedule, torch.tensor([t], dtype=F64))
        return float(alpha[0]), float(sigma[0])


class LCMScheduler(_ConsistencyScheduler):
    name = "lcm"
    paper = "Luo et al. 2023, Latent Consistency Models, Alg. 3 and eq. 4 (Song et al. 2023, consistency models)"
    stochastic_when = "more than one step"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Sequence[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        _check_original_steps(original_inference_steps)

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        t = levels.t.tolist()
        clamped = bool(self.config.clip_sample or self.config.thresholding)
        clip = (
            float(self.config.clip_sample_range) if self.config.clip_sample and not self.config.thresholding else None
        )
        calls = []
        for i in range(len(t)):
            a_next, s_next = self._at(t[i + 1]) if i + 1 < len(t) else (1.0, 0.0)  # the last call returns f
            c_skip, c_out = boundary_scalings(t[i], float(self.config.timestep_scaling))
            interval = (float(levels.level[i]), s_next / a_next) if s_next else None
            if clamped:  # the estimate is the clamped x0_hat; f = c_skip x + c_out clip(x0_hat)
                update = Update(sample=a_next * c_skip, x0=a_next * c_out, noise=s_next)
            else:  # the estimate is f itself (make_plan), diffusers' `denoised`
                update = Update(x0=a_next, noise=s_next)
            calls.append(levels.call(i, update, clip=clip, brownian=interval))
        return calls

    def make_plan(self, levels: lv.Levels, mu: float | None = None) -> Plan:
        plan = super().make_plan(levels, mu)
        if not (self.config.clip_sample or self.config.thresholding):
            # the estimate becomes the consistency function f = c_skip x + c_out x0_hat (pred_original_sample
            # is then diffusers' `denoised`, what its LCM pipeline decodes)
            for i, t in enumerate(levels.t.tolist()):
                c_skip, c_out = boundary_scalings(t, float(self.config.timestep_scaling))
                p, q = float(plan.rows[i, COEFF["p"]]), float(plan.rows[i, COEFF["q"]])
                plan.rows[i, COEFF["p"]], plan.rows[i, COEFF["q"]] = c_skip + c_out * p, c_out * q
        return plan

    def _adjust_coeffs(self, coeffs, sample, model_output, uncond, index, state, noise=None):
        if not self.config.thresholding:
            return coeffs
        return dynamic_threshold_coeffs(
            coeffs, sample, model_output, uncond, self.config.dynamic_thresholding_ratio, self.config.sample_max_value
        )


class TCDScheduler(_ConsistencyScheduler):
    name = "tcd"
    paper = (
        "Zheng et al. 2024, Trajectory Consistency Distillation, eq. 13-14 and Alg. 4 (strategic stochastic sampling)"
    )
    stochastic_when = "eta (gamma) > 0"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Sequence[float] | None = None,
        original_inference_steps: int = 50,
        prediction_type: str = "epsilon",
        rescale_betas_zero_snr: bool = False,
        eta: float = 0.3,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        _check_original_steps(original_inference_steps)
        _check_gamma(eta)

    def grid_timesteps(self, total: int, n: int, given: int | None, strength: float) -> np.ndarray:
        if given is None:
            return super().grid_timesteps(total, n, given, strength)
        # diffusers' TCD: an explicit original_inference_steps makes every training timestep a candidate
        return _take(
            np.arange(0, int(total * strength))[::-1], n, f"num_train_timesteps x strength = {total} x {strength}"
        )

    def plan_calls(self, levels: lv.Levels, eta: float | None = None) -> list[Call]:
        gamma = float(self.config.eta if eta is None else eta)
        t = levels.t.tolist()
        discrete = isinstance(self.schedule, DiscreteVPSchedule)
        calls = []
        for i in range(len(t)):
            t_next = t[i + 1] if i + 1 < len(t) else 0.0
            t_s = math.floor((1 - gamma) * t_next) if discrete else (1 - gamma) * t_next
            a_s, s_s = self._at(t_s)
            a_next, s_next = self._at(t_next)
            renoise = gamma > 0 and i + 1 < len(t)
            ratio, variance = schedules.transition(a_s, s_s, a_next, s_next) if renoise else (1.0, 0.0)
            std = math.sqrt(max(variance, 0.0))
            update = Update(x0=ratio * a_s, eps=ratio * s_s, noise=std)  # q(x_t' | x_s) after DDIM to s (eq. 14)
            interval = (s_s / a_s, s_next / a_next) if std else None
            calls.append(levels.call(i, update, brownian=interval))
        return calls

    def make_plan(self, levels: lv.Levels, mu: float | None = None) -> Plan:
        plan = super().make_plan(levels, mu)
        plan.extras["levels"] = levels
        return plan

    def _step_overrides(self, eta: float | None = None, **kwargs: Any) -> dict[str, Any]:
        super()._step_overrides(**kwargs)
        return {"eta": eta}

    def _row_for_call(self, index: int, overrides: dict[str, Any]) -> torch.Tensor | None:
        eta = overrides.get("eta")
        if eta is None or float(eta) == float(self.config.eta):
            return None
        _check_gamma(eta)
        plan = self._require_plan()
        call = self.plan_calls(plan.extras["levels"], eta=float(eta))[index]
        brownian = self.config.get("noise") == "brownian"
        row = build_plan([call], self.prediction_type, init_noise_sigma=1.0, brownian=brownian).rows[0]
        row[COEFF["stream"]] = plan.rows[index, COEFF["stream"]]  # the call's own noise stream
        return row


def _check_original_steps(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"original_inference_steps must be a positive int, got {value!r}")


def _check_gamma(eta: float) -> None:
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta (TCD's gamma) must be in [0, 1], got {eta}")


__all__ = ["LCMScheduler", "TCDScheduler", "boundary_scalings", "distillation_grid"]
