"""diffusers' grid conventions for the multistep solvers whose grids are chosen by sigma flags (public base).

diffusers' ``UniPCMultistepScheduler``, ``DEISMultistepScheduler`` and ``SASolverScheduler`` pick their
noise levels with flags (``use_karras_sigmas``, ``use_exponential_sigmas``, ``use_beta_sigmas``,
``use_flow_sigmas`` with ``flow_shift``) and share conventions that :class:`MultistepScheduler` alone
does not reproduce. This base adds them, so that a flag means here exactly what it means there:

1. **Model times of flagged grids.** The solver steps between the grid's exact levels, but the model is
   fed whole timesteps: the Karras level's timestep rounded, the exponential and beta ones truncated,
   and on flow grids ``int(T s)``. (``sigma_schedule=`` grids, ours, keep the exact times.)
2. **Flow sigmas.** ``use_flow_sigmas`` means a rectified-flow model (``alpha = 1 - s``, ``sigma = s``),
   whatever the betas; the grid is :func:`samplers.grids.flow` with the class's spacing (``"unipc"`` or
   ``"dpm"``, :func:`samplers.grids.from_diffusers_flags`), shifted by ``flow_shift`` or, with
   ``use_dynamic_shifting``, by ``set_timesteps(mu=...)``; ``init_noise_sigma`` is 1.
3. **Where a named grid ends.** With ``final_sigmas_type="sigma_min"`` (DEIS and SA-Solver always behave
   so) a run over a named or custom grid ends at the grid's own last level, listed twice: the last call
   steps by ``h = 0``, the identity, and its model evaluation is wasted, as in diffusers. On the default
   spacing of a discrete table the run ends at the first training timestep instead (the base rule).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from samplers import grids
from samplers import levels as lv
from samplers.plan import Plan
from samplers.schedulers.multistep import Grid, MultistepScheduler
from samplers.schedules import DiscreteVPSchedule, NoiseSchedule, RectifiedFlowSchedule

F64 = torch.float64
# diffusers' timestep of a flagged level: rounded (Karras) or truncated by the int64 cast (the others).
_ROUNDED_FLAGS = ("use_karras_sigmas",)
_TRUNCATED_FLAGS = ("use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas")


class FlaggedMultistepScheduler(MultistepScheduler):
    """:class:`MultistepScheduler` with the grid conventions of diffusers' UniPC, DEIS and SA-Solver classes."""

    # UniPC lowers a first flow level of 1 by this much (keeps log(alpha) finite there); DEIS and SA-Solver do not.
    flow_top_offset: ClassVar[float] = 0.0

    # ---- which flag chose the grid ----------------------------------------------------------------

    def check_grid_flags(self) -> None:
        """Refuse contradictory flags at construction (diffusers uses one spacing at a time)."""
        grids.from_diffusers_flags(self.config)
        if self.config.get("shift_terminal") and not self.config.get("use_flow_sigmas"):
            raise ValueError("shift_terminal applies to flow sigmas only; set use_flow_sigmas=True or drop it")
        shift = self.config.get("flow_shift", 1.0)
        if not (isinstance(shift, (int, float)) and shift > 0):
            raise ValueError(f"flow_shift must be > 0, got {shift!r}")

    def grid_flag(self) -> str | None:
        """The diffusers flag that picks this run's grid (None: ``sigma_schedule`` or the default spacing)."""
        if self.config.get("sigma_schedule") is not None:
            return None
        return next((f for f in _ROUNDED_FLAGS + _TRUNCATED_FLAGS if self.config.get(f)), None)

    @property
    def flow_flagged(self) -> bool:
        """Whether ``use_flow_sigmas`` chose a flow grid on a rectified-flow schedule (diffusers' meaning)."""
        return self.grid_flag() == "use_flow_sigmas" and self.schedule.family == "flow"

    # ---- schedule and levels ------------------------------------------------------------------------

    def _make_schedule(self) -> NoiseSchedule:
        c = self.config
        if c.get("use_flow_sigmas") and c.get("schedule", "discrete") in (None, "discrete"):
            return RectifiedFlowSchedule(timestep_scale=float(c.num_train_timesteps))  # the model sees T s
        return super()._make_schedule()

    def run_levels(
        self, n: int | None, timesteps: torch.Tensor | None, sigmas: torch.Tensor | None, mu: float | None
    ) -> lv.Levels:
        flag = self.grid_flag()
        if flag == "use_flow_sigmas" and timesteps is None and sigmas is None:
            assert n is not None
            levels = self._tagged(self._flow_levels(n, mu), "named")
        else:
            levels = super().run_levels(n, timesteps, sigmas, mu)
        if flag is None or levels.source != "named":
            return levels
        return self._diffusers_times(levels, flag)

    def _flow_levels(self, n: int, mu: float | None) -> lv.Levels:
        _, params = grids.from_diffusers_flags(self.config)
        if self.config.get("use_dynamic_shifting"):
            params["mu"] = mu  # grids.flow asks for mu when it is missing
        flow_t = grids.flow(n, **params)
        if self.flow_top_offset and abs(float(flow_t[0]) - 1.0) < self.flow_top_offset:
            flow_t[0] = 1.0 - self.flow_top_offset
        if isinstance(self.schedule, RectifiedFlowSchedule):
            return lv.levels_at_times(self.schedule, flow_t * self.schedule.timestep_scale)
        # another schedule: the same noise-to-signal ratio t / (1 - t), as every flow grid here
        levels = lv.capped_levels(flow_t / (1 - flow_t))
        return lv.levels_at_levels(self.schedule, lv.levels_from_sigmas(self.schedule, levels))

    def _diffusers_times(self, levels: lv.Levels, flag: str) -> lv.Levels:
        """The whole timesteps diffusers feeds the model at a flagged grid's levels (the levels stay exact)."""
        schedule = self.schedule
        if flag == "use_flow_sigmas":
            if not isinstance(schedule, RectifiedFlowSchedule):
                return levels
        elif not isinstance(schedule, DiscreteVPSchedule):
            return levels
        t = levels.t.round() if flag in _ROUNDED_FLAGS else levels.t.floor()
        return lv.Levels(t, levels.alpha, levels.sigma, source=levels.source)

    def initial_sigma(self, levels: lv.Levels) -> float:
        return 1.0 if self.flow_flagged else super().initial_sigma(levels)

    # ---- where the run ends ---------------------------------------------------------------------------

    def repeats_last_level(self, levels: lv.Levels) -> bool:
        """Whether the run ends at its own last level (diffusers' ``sigma_min`` on named and custom grids)."""
        return self.config.get("final_sigmas_type", "zero") == "sigma_min" and levels.source in ("named", "sigmas")

    def grid(self, levels: lv.Levels) -> Grid:
        if not self.repeats_last_level(levels):
            return super().grid(levels)
        grid = Grid(
            t=levels.t,
            alpha=torch.cat([levels.alpha, levels.alpha[-1:]]),
            sigma=torch.cat([levels.sigma, levels.sigma[-1:]]),
        )
        lam = grid.lam[:-1]
        if not bool((lam[1:] > lam[:-1]).all()):
            raise ValueError(
                "the sampling grid must strictly decrease in noise level (repeated or rising timesteps/sigmas); "
                f"got log(alpha/sigma) = {[round(v, 4) for v in lam.tolist()]}"
            )
        return grid

    def run_sigmas(self, levels: lv.Levels) -> torch.Tensor:
        """diffusers' ``scheduler.sigmas``: the run's levels and where it ends (flow times on flow grids)."""
        grid = self.grid(levels)
        if self.flow_flagged:
            values = grid.sigma / (grid.alpha + grid.sigma)
        else:
            values = torch.nan_to_num(grid.sigma / grid.alpha, posinf=lv.ZERO_SNR_LEVEL)
        return values.to(torch.float32)

    def make_plan(self, levels: lv.Levels, mu: float | None = None, start: int = 0) -> Plan:
        # mu (the dynamic flow shift) has chosen the levels already; the solver's rows do not read it
        return super().make_plan(levels, None, start)

    # ---- shared step helpers --------------------------------------------------------------------------

    @staticmethod
    def finite_order(lam: list[float], first: int, last: int, order: int) -> int:
        """The highest order <= ``order`` whose nodes ``first - order + 1 .. last`` all have finite log-SNR.

        A node at alpha = 0 (lambda = -inf) or a step into clean data (lambda = +inf) cannot be a node
        of an interpolating polynomial in lambda; lower-order rules take over there.
        """
        while order > 1 and not all(math.isfinite(v) for v in lam[first - order + 1 : last + 1]):
            order -= 1
        return order


def lagrange_monomials(nodes: list[float]) -> list[list[float]]:
    """Coefficients ``c[i][j]`` of the Lagrange basis on ``nodes``: ``L_i(v) = sum_j c[i][j] v^j`` (float64)."""
    out = []
    for i, xi in enumerate(nodes):
        poly = [1.0]
        denom = 1.0
        for j, xj in enumerate(nodes):
            if j == i:
                continue
            poly = [a - xj * b for a, b in zip([0.0, *poly], [*poly, 0.0], strict=True)]  # poly * (v - xj)
            denom *= xi - xj
        out.append([c / denom for c in poly])
    return out


def exp_poly_integral(coeffs: list[float], rate: float, lower: float) -> float:
    """``int_lower^0 exp(rate v) P(v) dv`` for ``P(v) = sum_j coeffs[j] v^j``, ``lower <= 0`` (may be -inf).

    Closed form: the antiderivative of ``e^{rv} P`` is ``e^{rv} sum_k (-1)^k P^(k) / r^(k+1)``; with
    ``rate > 0`` the lower end's term vanishes as ``lower -> -inf``.
    """
    deriv = list(coeffs)
    at_zero, at_lower = 0.0, 0.0
    sign = 1.0
    scale = 1.0 / rate
    decay = math.exp(rate * lower) if math.isfinite(lower) else 0.0
    while deriv:
        at_zero += sign * scale * deriv[0]
        if decay:
            at_lower += sign * scale * sum(c * lower**j for j, c in enumerate(deriv))
        deriv = [j * c for j, c in enumerate(deriv)][1:]
        sign, scale = -sign, scale / rate
    return at_zero - decay * at_lower


__all__ = ["FlaggedMultistepScheduler", "exp_poly_integral", "lagrange_monomials"]
