"""DPM-Solver(++) inversion: the multistep solvers run from data to noise (diffusers'
DPMSolverMultistepInverseScheduler), for editing pipelines that need the latent a clean sample maps to.

The probability-flow ODE is deterministic and can be integrated in either direction (Song et al. 2021, "Score-Based
Generative Modeling through SDEs", sec. 4.3; DDIM inversion, Song et al. 2021, sec. 4.3 and Mokady et al. 2023,
"Null-text Inversion"). DPM-Solver++ integrates it exactly the same way backwards: every update of
:mod:`samplers.schedulers.dpmsolver` holds for ``h = lambda_{k+1} - lambda_k < 0`` (Lu et al. 2022,
"DPM-Solver++", eq. 8 and Alg. 2), with the multistep warm-up and ``lower_order_final`` / ``euler_at_final``.

Grid (diffusers'): the timesteps **ascend**. ``set_timesteps(n)`` lays ``n + 1`` points from t = 0 to the
noisiest timestep (``lambda_min_clipped``) with ``timestep_spacing``, calls the model at the first ``n`` and ends
at the last: call ``k`` maps the sample at level ``k`` to level ``k + 1``. The first sample is the clean sample
itself, read as the noisy sample of the first (least noisy) training level; ``init_noise_sigma = 1`` (nothing is
scaled), and the output is the latent at the noisiest level, which the forward sampler then starts from.
With diffusers' flag grids (``use_karras_sigmas``, ``use_exponential_sigmas``, ``use_beta_sigmas``) the ``n``
levels ascend from the least to the most noisy table level and the last is repeated as the end, so diffusers'
last call is a no-op; we make the same call.

Not provided: the SDE algorithms (diffusers' give NaN backwards: ``sqrt(1 - e^{-2h})`` with h < 0; noise cannot be
un-added), diffusers' ``use_flow_sigmas`` here (its inverse lays the flow grid out *descending*, so it samples
instead of inverting), and custom ``timesteps`` / ``sigmas``. diffusers deduplicates repeated timesteps (Karras with
hundreds of steps) without its sigmas, which misaligns the two; we keep every call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from samplers import levels as lv
from samplers.plan import Plan
from samplers.schedulers.dpmsolver import DPMSolverMultistepScheduler
from samplers.schedulers.multistep import Grid
from samplers.schedules import TIMESTEP_SPACINGS, DiscreteVPSchedule

F64 = torch.float64


def inverse_timesteps(
    schedule: DiscreteVPSchedule, n: int, spacing: str, steps_offset: int, lambda_min_clipped: float
) -> torch.Tensor:
    """Ascending integer timesteps [n + 1] of diffusers' inverse multistep grid; the last is where the run ends.

    ``linspace``: ``round(linspace(0, T_max, n + 1))``; ``leading``: ``arange(n + 1) (T_max + 1) // (n + 1)`` plus
    ``steps_offset`` (the last one replaced by ``T_max``); ``trailing``: ``round(arange(T_max + 1, 0, -T / n))``
    reversed, minus one, then ``T_max``. ``T_max`` is the noisiest timestep above ``lambda_min_clipped``.
    """
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    total = schedule.num_train_timesteps
    if n > total:
        raise ValueError(f"num_inference_steps={n} cannot exceed num_train_timesteps={total}")
    lam = schedule.log_snr(torch.arange(total)) / 2
    clipped = int(
        torch.searchsorted(torch.flip(lam, [0]).contiguous(), torch.tensor(float(lambda_min_clipped), dtype=F64))
    )
    noisiest = total - 1 - clipped
    if spacing == "linspace":
        steps = np.linspace(0, noisiest, n + 1).round()[:-1]
    elif spacing == "leading":
        steps = (np.arange(n + 1) * ((noisiest + 1) // (n + 1))).round()[:-1] + steps_offset
    else:
        steps = np.arange(noisiest + 1, 0, -total / n).round()[::-1] - 1
    return torch.from_numpy(np.append(steps, noisiest).astype(np.int64)).to(F64)


class DPMSolverMultistepInverseScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++(2M) inversion by default; ``solver_order`` and ``algorithm_type="dpmsolver"`` as in sampling."""

    name = "dpmpp_2m_inverse"
    paper = (
        "Lu et al. 2022, DPM-Solver++ (Alg. 2) run from data to noise, as DDIM inversion "
        "(Song et al. 2021; Mokady et al. 2023, Null-text Inversion)"
    )
    order = 2
    stochastic = False
    stochastic_when = ""
    uses_mu = False
    cosine_skips_rounding = False  # diffusers' inverse class rounds karras times whatever the betas

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        solver_order: int | None = None,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str | None = None,
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        lambda_min_clipped: float = -math.inf,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if (algorithm_type or self.default_algorithm).startswith("sde-"):
            raise ValueError(
                f"algorithm_type={algorithm_type!r}: an SDE cannot be inverted (its noise cannot be taken back out); "
                "use 'dpmsolver++' or 'dpmsolver'"
            )
        self.setup_solver(solver_order, algorithm_type, solver_type, thresholding, None)
        self.check_common_config()

    # ---- grid: ascending, n calls and the end --------------------------------------------------

    def run_levels(self, n, timesteps, sigmas, mu) -> lv.Levels:
        """``n + 1`` ascending levels: the ``n`` calls, then where the run ends."""
        if timesteps is not None or sigmas is not None:
            raise ValueError(f"{type(self).__name__} takes a step count only (no custom timesteps or sigmas)")
        assert n is not None
        if self._flag_grid() is not None:  # diffusers' flag grid: n levels, the last repeated as the end
            levels = super().run_levels(n, None, None, None)
            index = torch.cat([torch.arange(n - 1, -1, -1), torch.tensor([0])])
        else:
            levels = super().run_levels(n + 1, None, None, None)
            index = torch.arange(n, -1, -1)
        return dataclasses.replace(levels, t=levels.t[index], alpha=levels.alpha[index], sigma=levels.sigma[index])

    def default_levels(self, n: int, mu: float | None) -> lv.Levels:
        """``n`` levels (descending, flipped by :meth:`run_levels`): diffusers' inverse spacing on a discrete table."""
        schedule, c = self.schedule, self.config
        if not isinstance(schedule, DiscreteVPSchedule):
            return super().default_levels(n, mu)
        t = inverse_timesteps(
            schedule, n - 1, c.timestep_spacing, c.steps_offset, c.get("lambda_min_clipped", -math.inf)
        )
        return lv.levels_at_times(schedule, t.flip(0))

    def grid(self, levels: lv.Levels) -> Grid:
        """The calls' levels and the end (the last entry of ``levels``), checked to rise in noise level."""
        grid = Grid(t=levels.t[:-1], alpha=levels.alpha, sigma=levels.sigma)
        lam = grid.lam
        steps = lam[1:] - lam[:-1]
        if not bool((steps[:-1] < 0).all()) or not float(steps[-1]) <= 0:
            raise ValueError(
                "an inversion grid must rise strictly in noise level (the last step may repeat a level); "
                f"got log(alpha/sigma) = {[round(v, 4) for v in lam.tolist()]}"
            )
        return grid

    def make_plan(self, levels: lv.Levels, mu: float | None = None, start: int = 0) -> Plan:
        """The plan; ``extras["end_alpha_sigma"]`` is where the run ends, ``(alpha, sigma)`` of the noisiest level."""
        plan = super().make_plan(levels, mu, start)
        plan.extras["end_alpha_sigma"] = (float(levels.alpha[-1]), float(levels.sigma[-1]))
        return plan

    def run_sigmas(self, levels: lv.Levels) -> torch.Tensor:
        """diffusers' ``sigmas``: the levels of the calls and the end, ascending (float32)."""
        return levels.level.to(torch.float32)

    def initial_sigma(self, levels: lv.Levels) -> float:
        return 1.0  # the clean sample itself, unscaled

    def final_alpha_sigma(self) -> tuple[float, float]:
        raise NotImplementedError("an inversion run ends at the last grid level (see grid())")
