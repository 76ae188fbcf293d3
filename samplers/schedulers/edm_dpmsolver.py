"""DPM-Solver++ multistep on EDM's noise levels and, optionally, EDM's preconditioned network (diffusers'
EDMDPMSolverMultistepScheduler).

Lu et al. 2022, "DPM-Solver++" (Alg. 2, the updates of :mod:`samplers.schedulers.dpmsolver`) in the variance-
exploding space of Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM):
``alpha = 1``, ``sigma`` the noise level, so ``lambda = -log sigma`` and the first-order step is
``x' = (sigma'/sigma) x + (1 - sigma'/sigma) D``. The levels are EDM's (eq. 5: ``sigma_schedule="karras"`` with
``rho``, or ``"exponential"``) between the config's ``sigma_min`` and ``sigma_max``; the run ends at 0 or, with
``final_sigmas_type="sigma_min"``, at ``sigma_min`` (diffusers then repeats that level: its last call is a no-op).

**EDM preconditioning** (``edm_preconditioning=True``, what diffusers' EDM schedulers assume; Karras et al.
2022, Table 1, :func:`edm_preconditioning`): the network sees ``c_in x`` at time ``c_noise = log(sigma) / 4``
and its output ``F`` is read as ``D = c_skip x + c_out F`` (prediction_type ``"epsilon"``, diffusers' name for
this F-target) or ``c_skip x - c_out F`` (``"v_prediction"``), with ``sigma_data`` the data's std. Without it
(the default) the model sees ``x`` itself at time ``sigma`` and every prediction type has its usual meaning,
on the EDM schedule or on any other (the grid is then EDM's range within the levels that schedule reaches).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from samplers import levels as lv
from samplers.ops.reference import COEFF
from samplers.plan import Call, Plan
from samplers.schedulers.dpm_fast import check_discrete_steps
from samplers.schedulers.dpmsolver import DPMSolverMultistepScheduler
from samplers.schedulers.multistep import Grid

F64 = torch.float64
EDM_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")
# EDM's F-target readout sign per diffusers' prediction_type name
_EDM_OUTPUT_SIGN = {"epsilon": 1.0, "v_prediction": -1.0}


def edm_preconditioning(sigma: float, sigma_data: float) -> tuple[float, float, float, float]:
    """``(c_skip, c_out, c_in, c_noise)`` of Karras et al. 2022, Table 1, at noise level ``sigma``:
    ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)``, ``c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)``,
    ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``, ``c_noise = log(sigma) / 4``."""
    norm = sigma * sigma + sigma_data * sigma_data
    return sigma_data**2 / norm, sigma * sigma_data / math.sqrt(norm), 1 / math.sqrt(norm), math.log(sigma) / 4


class EDMDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++(2M) on EDM's Karras levels (``solver_order``, ``algorithm_type="sde-dpmsolver++"`` as usual)."""

    name = "edm_dpmpp_2m"
    paper = (
        "Lu et al. 2022, DPM-Solver++ (Alg. 2), on Karras et al. 2022's (EDM) noise levels (eq. 5) "
        "and preconditioning (Table 1)"
    )
    order = 2
    stochastic = True  # with algorithm_type="sde-dpmsolver++"
    stochastic_when = "algorithm_type = sde-dpmsolver++"
    uses_mu = False

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        sigma_schedule: str = "karras",
        num_train_timesteps: int = 1000,
        prediction_type: str = "epsilon",
        rho: float = 7.0,
        solver_order: int | None = None,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str | None = None,
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        final_sigmas_type: str = "zero",
        edm_preconditioning: bool = False,
        eta: float | None = None,
        schedule: str = "edm",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if (algorithm_type or self.default_algorithm) not in EDM_ALGORITHMS:
            raise ValueError(f"algorithm_type must be one of {EDM_ALGORITHMS}, got {algorithm_type!r}")
        if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        if edm_preconditioning:
            if self.prediction_type not in _EDM_OUTPUT_SIGN:
                raise ValueError(
                    "with edm_preconditioning the model output is EDM's F: prediction_type must be 'epsilon' "
                    f"(D = c_skip x + c_out F) or 'v_prediction' (D = c_skip x - c_out F), got {prediction_type!r}"
                )
            if schedule != "edm":
                raise ValueError(
                    f"edm_preconditioning runs on the EDM schedule (alpha = 1), got schedule={schedule!r}"
                )
        self.setup_solver(solver_order, algorithm_type, solver_type, thresholding, eta)
        self.check_common_config()

    # ---- grid ---------------------------------------------------------------------------------------

    def named_spacing(self) -> tuple[str, dict[str, Any]] | None:
        """``sigma_schedule`` with EDM's ``rho`` for the Karras levels."""
        name, params = self.config.sigma_schedule, dict(self.config.get("sigma_schedule_kwargs") or {})
        if name is None:
            return super().named_spacing()
        if name == "karras":
            params.setdefault("rho", float(self.config.rho))
        return name, params

    def run_levels(self, n, timesteps, sigmas, mu) -> lv.Levels:
        check_discrete_steps(self.schedule, n)
        return super().run_levels(n, timesteps, sigmas, mu)

    def named_level_span(self, n: int) -> tuple[float, float]:
        """EDM's ``[sigma_min, sigma_max]``, within the levels the schedule reaches."""
        lo, hi = lv.reachable_level_range(self.schedule)
        return max(float(self.config.sigma_min), lo), min(float(self.config.sigma_max), hi)

    def final_alpha_sigma(self) -> tuple[float, float]:
        if self.config.final_sigmas_type == "zero":
            return 1.0, 0.0
        level = float(self.config.sigma_min)
        alpha, sigma = self.schedule.alpha_sigma_at_level(torch.tensor(level, dtype=F64))
        return float(alpha), float(sigma)

    def grid(self, levels: lv.Levels) -> Grid:
        """As the multistep base, but the last call may sit at the final level (``final_sigmas_type="sigma_min"``
        on a grid ending at ``sigma_min``, as diffusers': that call changes nothing)."""
        fa, fs = self.final_alpha_sigma()
        grid = Grid(
            t=levels.t,
            alpha=torch.cat([levels.alpha, torch.tensor([fa], dtype=F64)]),
            sigma=torch.cat([levels.sigma, torch.tensor([fs], dtype=F64)]),
        )
        steps = grid.lam[1:] - grid.lam[:-1]
        if not bool((steps[:-1] > 0).all()) or not float(steps[-1]) >= 0:
            raise ValueError(
                "the sampling grid must strictly decrease in noise level (only the final level may repeat the "
                f"last one); got log(alpha/sigma) = {[round(v, 4) for v in grid.lam.tolist()]}"
            )
        return grid

    def initial_sigma(self, levels: lv.Levels) -> float:
        if self.config.edm_preconditioning:
            return math.sqrt(self.config.sigma_max**2 + 1)  # diffusers' EDM value (for sigma_data = 1)
        return super().initial_sigma(levels)

    # ---- calls and the preconditioned readout ---------------------------------------------------------

    def multistep_calls(self, levels: lv.Levels, start: int) -> list[Call]:
        calls = super().multistep_calls(levels, start)
        if not self.config.edm_preconditioning:
            return calls
        out = []
        for call, level in zip(calls, levels.level.tolist(), strict=True):
            _, _, c_in, c_noise = edm_preconditioning(level, self.config.sigma_data)
            # the model sees c_in x (model space: c_in x0 + c_in sigma eps) at time c_noise
            out.append(dataclasses.replace(call, t=c_noise, alpha=c_in, sigma=c_in * level, input_scale=c_in))
        return out

    def make_plan(self, levels: lv.Levels, mu: float | None = None, start: int = 0) -> Plan:
        """The plan; with EDM preconditioning each call reads ``D = c_skip x +- c_out F`` (replacing the readout of
        the named prediction type: the DPM-Solver++ rows use only D, the sample and earlier D's)."""
        plan = super().make_plan(levels, mu, start)
        if self.config.edm_preconditioning:
            sign = _EDM_OUTPUT_SIGN[self.prediction_type]
            for k, level in enumerate(levels.level.tolist()):
                c_skip, c_out, _, _ = edm_preconditioning(level, self.config.sigma_data)
                plan.rows[k, COEFF["p"]] = c_skip
                plan.rows[k, COEFF["q"]] = sign * c_out
        return plan

    def levels_at_model_times(self, t: torch.Tensor) -> torch.Tensor:
        """Noise levels of model times (``exp(4 t)`` with EDM preconditioning, where t is c_noise)."""
        return torch.exp(4 * t) if self.config.edm_preconditioning else t

    def working_alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``add_noise``'s (alpha, sigma) of the sample: with EDM preconditioning the model times are c_noise."""
        if not self.config.edm_preconditioning:
            return super().working_alpha_sigma(t)
        level = self.levels_at_model_times(t.detach().cpu().to(F64))
        alpha, sigma = self.schedule.alpha_sigma_at_level(level)
        return (alpha / alpha).to(t.device), (sigma / alpha).to(t.device)
