"""Euler steps of the EDM sampler with optional churn (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Algorithm 2 without the second-order correction; diffusers'
``EDMEulerScheduler``).

In sigma space the probability-flow ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma`` (eq. 3); EDM's
default grid is the rho-spaced levels of eq. 5 (``sigma_schedule="karras"``, sigma 0.002 to 80, rho 7).
One Euler call per level::

    x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (x_hat - x0_hat) / sigma_hat                 (line 8)

with the churn of lines 4-6: ``gamma = min(S_churn / N, sqrt(2) - 1)`` inside ``[S_tmin, S_tmax]``,
``sigma_hat = (1 + gamma) sigma_i`` and ``x_hat = x_i + S_noise sqrt(sigma_hat^2 - sigma_i^2) z``.
As diffusers does, the model is evaluated at the un-churned ``(x_i, sigma_i)`` and its output is read
at ``(x_hat, sigma_hat)`` (the churn is applied inside the step): ``x0_hat = p_hat x_hat + q_hat out``
with the readout of ``sigma_hat``. So the row is ``x_{i+1} = (1 + r) x_i - r E + (1 + r - r p_hat) k z``
with ``r = (sigma_{i+1} - sigma_hat) / sigma_hat``, ``E = p_hat x_i + q_hat out`` and ``k`` the churn std.

``preconditioning="edm"`` is the network wrapper of EDM Table 1 that diffusers' class assumes: the
model sees ``c_in x`` at model time ``c_noise = ln(sigma) / 4`` and its raw output ``F`` gives
``x0_hat = c_skip x + c_out F`` (``c_skip = sigma_d^2 / (sigma^2 + sigma_d^2)``, ``c_out = sigma sigma_d /
sqrt(sigma^2 + sigma_d^2)``; diffusers calls this ``prediction_type="epsilon"`` and negates ``c_out`` for
``"v_prediction"``). Without it (the default) the model is any network of ``prediction_type`` on the
configured schedule, read as every other sampler here reads it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from samplers import levels as lv
from samplers.ops.reference import COEFF
from samplers.plan import Call, Plan, Update, build_plan, estimate_coefficients
from samplers.schedulers.heun import churn_levels
from samplers.schedulers.sigma_space import SigmaSpaceScheduler

F64 = torch.float64
PRECONDITIONINGS = (None, "edm")
FINAL_SIGMAS = ("zero", "sigma_min")
EDM_PREDICTIONS = {"epsilon": 1.0, "v_prediction": -1.0}  # diffusers' names for +F and -F
CHURN_OPTIONS = ("s_churn", "s_tmin", "s_tmax", "s_noise")


class EDMEulerScheduler(SigmaSpaceScheduler):
    name = "edm_euler"
    kind = "ode-single-step"
    paper = "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models, Alg. 2, eq. 5"
    order = 1
    stochastic = True  # only when s_churn > 0
    stochastic_when = "s_churn > 0"

    def __init__(
        self,
        sigma_min: float | None = 0.002,
        sigma_max: float | None = 80.0,
        sigma_data: float = 0.5,
        sigma_schedule: str | None = "karras",
        num_train_timesteps: int = 1000,
        prediction_type: str = "epsilon",
        rho: float = 7.0,
        final_sigmas_type: str = "zero",
        preconditioning: str | None = None,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        schedule: str = "edm",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if preconditioning not in PRECONDITIONINGS:
            raise ValueError(f"preconditioning must be one of {PRECONDITIONINGS}, got {preconditioning!r}")
        if preconditioning == "edm" and prediction_type not in EDM_PREDICTIONS:
            raise ValueError(
                f"with preconditioning='edm' the network output is EDM's F: prediction_type must be one of "
                f"{tuple(EDM_PREDICTIONS)} (diffusers' names for +F and -F), got {prediction_type!r}"
            )
        if final_sigmas_type not in FINAL_SIGMAS:
            raise ValueError(f"final_sigmas_type must be one of {FINAL_SIGMAS}, got {final_sigmas_type!r}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        _check_churn(s_churn, s_noise)

    # ---- grid -----------------------------------------------------------------------------------

    def named_spacing(self) -> tuple[str, dict[str, Any]] | None:
        named = super().named_spacing()
        if named is not None and named[0] == "karras" and "rho" not in named[1]:
            return named[0], {**named[1], "rho": float(self.config.rho)}
        return named

    def named_level_span(self, n: int) -> tuple[float, float]:
        """The configured ``sigma_min`` / ``sigma_max`` (EDM's 0.002 and 80), within what the schedule reaches."""
        lo, hi = lv.level_range(self.schedule, self.config)
        reach_lo, reach_hi = lv.reachable_level_range(self.schedule)
        return max(lo, reach_lo), min(hi, reach_hi)

    def initial_sigma(self, levels: lv.Levels) -> float:
        if self.config.preconditioning == "edm":  # diffusers' sqrt(sigma_max^2 + 1), whatever the grid
            return math.sqrt(float(self.config.sigma_max or levels.level[0]) ** 2 + 1)
        return self.prior_std(float(levels.level[0]))

    # ---- calls ----------------------------------------------------------------------------------

    def churn(self, levels: lv.Levels, options: dict[str, float] | None = None) -> tuple[list[float], list[float]]:
        """``(sigma_hat, churn std k)`` per call (Algorithm 2, lines 4-6), with per-call ``options`` overrides."""
        c = {**{k: float(self.config[k]) for k in CHURN_OPTIONS}, **(options or {})}
        return churn_levels(levels.level.tolist(), c["s_churn"], c["s_tmin"], c["s_tmax"], c["s_noise"])

    def readout(self, level: float) -> tuple[float, float]:
        """``(p, q)`` with ``x0_hat = p x + q out`` for an output read at sigma-space ``level``."""
        if self.config.preconditioning == "edm":
            sd = float(self.config.sigma_data)
            norm = level * level + sd * sd
            return sd * sd / norm, EDM_PREDICTIONS[self.prediction_type] * level * sd / math.sqrt(norm)
        alpha, sigma = self.schedule.alpha_sigma_at_level(torch.tensor([level], dtype=F64))
        p, q = estimate_coefficients(self.prediction_type, alpha, sigma, alpha)
        return float(p[0]), float(q[0])

    def edm_calls(self, levels: lv.Levels, options: dict[str, float] | None = None) -> list[Call]:
        sigma = levels.level.tolist()
        final = 0.0 if self.config.final_sigmas_type == "zero" else sigma[-1]
        sigma_hat, churn = self.churn(levels, options)
        calls = []
        for i, s in enumerate(sigma):
            s_next = sigma[i + 1] if i + 1 < len(sigma) else final
            r = (s_next - sigma_hat[i]) / sigma_hat[i]
            p_hat, _ = self.readout(sigma_hat[i])
            update = Update(sample=1 + r, x0=-r, noise=(1 + r - r * p_hat) * churn[i])
            interval = (s, sigma_hat[i]) if churn[i] else None
            if self.config.preconditioning == "edm":
                c_in = 1 / math.sqrt(s * s + float(self.config.sigma_data) ** 2)
                t = 0.25 * math.log(s)  # EDM's c_noise
                calls.append(Call(t, c_in, s * c_in, update, input_scale=c_in, brownian=interval))
            else:
                calls.append(self.call_at(levels, i, update, brownian=interval))
        return calls

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        return self.edm_calls(levels)

    def make_plan(self, levels: lv.Levels, mu: float | None = None, options: dict[str, float] | None = None) -> Plan:
        """The plan, with each call's estimate read at its churned level ``sigma_hat`` (module docstring)."""
        plan = build_plan(
            self.edm_calls(levels, options),
            self.prediction_type,
            init_noise_sigma=self.initial_sigma(levels),
            brownian=self.config.get("noise") == "brownian",
            sigmas=self.run_sigmas(levels),
        )
        for i, s_hat in enumerate(self.churn(levels, options)[0]):
            plan.rows[i, COEFF["p"]], plan.rows[i, COEFF["q"]] = self.readout(s_hat)
        plan.extras["levels"] = levels
        return plan

    def run_sigmas(self, levels: lv.Levels) -> torch.Tensor:
        final = levels.level[-1:] if self.config.final_sigmas_type == "sigma_min" else torch.zeros(1, dtype=F64)
        return torch.cat([levels.level, final]).to(torch.float32)

    # ---- per-call churn (diffusers passes s_churn & co. to step()) -------------------------------

    def _step_overrides(
        self,
        s_churn: float | None = None,
        s_tmin: float | None = None,
        s_tmax: float | None = None,
        s_noise: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        super()._step_overrides(**kwargs)
        given = {"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": s_noise}
        return {k: float(v) for k, v in given.items() if v is not None and float(v) != float(self.config[k])}

    def _row_for_call(self, index: int, overrides: dict[str, Any]) -> torch.Tensor | None:
        if not overrides:
            return None
        _check_churn(overrides.get("s_churn", 0.0), overrides.get("s_noise", 1.0))
        plan = self._require_plan()
        cache = plan.extras.setdefault("override_rows", {})
        key = tuple(sorted(overrides.items()))
        if key not in cache:
            cache[key] = self.make_plan(plan.extras["levels"], options=overrides).rows
        row = cache[key][index].clone()
        row[COEFF["stream"]] = plan.rows[index, COEFF["stream"]]
        return row

    # ---- forward noising in this sampler's time ---------------------------------------------------

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """``x0 + sigma(t) noise``; with EDM preconditioning the timesteps are ``c_noise = ln(sigma) / 4``."""
        if self.config.preconditioning != "edm":
            return super().add_noise(original_samples, noise, timesteps)
        t = torch.as_tensor(timesteps, dtype=F64).reshape(-1)
        if t.numel() == 1:
            t = t.expand(original_samples.shape[0])
        if t.shape != (original_samples.shape[0],) or not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"timesteps must be finite, a scalar or [batch={original_samples.shape[0]}], got {t.tolist()[:8]}"
            )
        sigma = torch.exp(4 * t).to(original_samples.device, original_samples.dtype)
        return original_samples + noise * sigma.view(-1, *([1] * (original_samples.dim() - 1)))


def _check_churn(s_churn: float, s_noise: float) -> None:
    if s_churn < 0 or s_noise < 0:
        raise ValueError(f"s_churn and s_noise must be >= 0, got s_churn={s_churn}, s_noise={s_noise}")


__all__ = ["EDMEulerScheduler"]
