"""DPM-Solver and DPM-Solver++ multistep, ODE and SDE forms, orders 1-3.

Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around
10 Steps" (noise prediction, eq. 3.7 and Alg. 2) and "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models" (data prediction, Alg. 2 and App. B for the SDE form).

With ``lambda = log(alpha / sigma)``, ``h = lambda_{k+1} - lambda_k`` and the estimates ``m`` of this
and earlier calls (x0 for ``dpmsolver++``, eps for ``dpmsolver``), a step integrates the linear part
of the probability-flow ODE exactly and approximates ``m`` by a polynomial in lambda through the last
``order`` estimates: ``D0 = m_k``, ``D1 = (m_k - m_{k-1}) / r0`` with ``r0 = h_{k-1} / h`` (order 2,
"midpoint" weight 1/2 or the ``phi_2`` "heun" weight), and second divided differences for order 3::

    ++ :  x_{k+1} = (sigma_{k+1}/sigma_k) x_k + alpha_{k+1} (1 - e^{-h}) D0 + ...        (DPM-Solver++ eq. 8)
    eps:  x_{k+1} = (alpha_{k+1}/alpha_k) x_k - sigma_{k+1} (e^h - 1) D0 - ...           (DPM-Solver eq. 3.7)

The SDE forms integrate the reverse SDE the same way. For data prediction with k-diffusion's noise
fraction ``eta`` (``H = (1 + eta) h``; SDE-DPM-Solver++ is ``eta = 1``, the ODE ``eta = 0``)::

    x_{k+1} = (sigma_{k+1}/sigma_k) e^{-eta h} x_k + alpha_{k+1} [(1 - e^{-H}) D0 + phi_2 D1 + (1/2 - phi_2/H) D2]
              + sigma_{k+1} sqrt(1 - e^{-2 eta h}) z,        phi_2 = 1 - (1 - e^{-H}) / H

(``phi_2 D1`` is the "heun" weight; "midpoint" uses ``(1 - e^{-H}) / 2``). SDE-DPM-Solver++(1) is
exactly the posterior draw ``q(x_{k+1} | x_k, m_k)``. Warm-up and final-step rules follow diffusers'
DPMSolverMultistepScheduler (``lower_order_final``, ``euler_at_final``, ``final_sigmas_type``), so the
two agree call by call. Noise-prediction variants step into clean data with ``x0_hat`` (the
``h -> inf`` limit of their first-order step), where diffusers refuses ``final_sigmas_type="zero"``.

**Two findings about the third-order members** (both verified on the exact Gaussian oracle, tests in
``tests/test_dpmsolver.py``):

* DPM++ 3M as published (Lu et al. 2022 Alg. 2; diffusers; k-diffusion's ``sample_dpmpp_3m_sde`` at
  ``eta = 0``) weighs the second divided difference ``D2 = (D1_0 - D1_1) / (r0 + r1) ~ m'' h^2 / 2`` by
  ``1/2 - phi_2 / h``, half the weight the interpolating polynomial's integral gives (``2 (1/2 - phi_2/h)
  ~ h/3``). Its local error is therefore O(h^3) and the method is **second order** asymptotically (its
  first-order warm-up step alone would also cap it at two). It is kept as published, for parity, and
  declares ``order = 2``; at moderate step counts it is still clearly more accurate than 2M.
* diffusers' ``sde-dpmsolver++`` of order 3 writes the D2 weight as ``(1 - e^{-H} - H)/H^2 - 1/2``: the
  ``1/2`` has the wrong sign (the weight tends to -1 instead of 0 as h -> 0, an inconsistent update).
  This module uses the consistent weight ``1/2 - phi_2 / H``, which is k-diffusion's ``sample_dpmpp_3m_sde``,
  so ``from_diffusers`` refuses that one diffusers configuration rather than reproduce it.

Grids: diffusers' flags (``use_karras_sigmas``, ``use_lu_lambdas``, ``use_exponential_sigmas``,
``use_beta_sigmas``, ``use_flow_sigmas`` + ``flow_shift``) give diffusers' grids *and* its model
timesteps (rounded or truncated to integers while the update uses the exact level, see
:func:`diffusers_model_times`); ``sigma_schedule=`` names a grid with exact model times instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from samplers import grids
from samplers import levels as lv
from samplers.plan import Plan
from samplers.schedulers.multistep import Grid, MultistepScheduler, StepRule
from samplers.schedules import DiscreteVPSchedule, NoiseSchedule, RectifiedFlowSchedule

F64 = torch.float64
ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
SOLVER_TYPES = ("midpoint", "heun")
# How diffusers' DPM-Solver family turns a flag grid's continuous timesteps into the integers it feeds the
# model: rounded (karras, lu), or truncated by the int64 cast (exponential, beta, flow; and karras / lu with
# cosine betas, whose rounding diffusers skips before the same cast).
_ROUNDED = ("karras", "lu")
_TRUNCATED = ("exponential", "beta", "flow")


def diffusers_sigma_table(schedule: DiscreteVPSchedule) -> DiscreteVPSchedule:
    """The training table as diffusers' DPM-Solver schedulers read it for their flag grids.

    diffusers computes ``sqrt((1 - abar) / abar)`` in float32, where ``1 - abar`` cancels at small t (the
    lowest level of linear betas comes out 8.3e-5 too high). Flag grids span this table's ends and map
    levels to timesteps by log-sigma interpolation in it, so a grid built on the exact table would move
    every level by up to that much. Returned as a schedule whose ``sigmas`` are those float32 values.
    """
    abar = schedule.alphas_cumprod.to(torch.float32)
    table = ((1 - abar) / abar).sqrt().to(F64)
    return DiscreteVPSchedule(alphas_cumprod=1 / (1 + table**2))


def diffusers_model_times(levels: lv.Levels, grid: str, table: DiscreteVPSchedule | None, cosine: bool) -> lv.Levels:
    """``levels`` with the model times diffusers' DPM-Solver schedulers feed on a flag grid.

    diffusers maps each level of a ``use_*_sigmas`` grid to a fractional training timestep by log-sigma
    interpolation in ``table`` (:func:`diffusers_sigma_table`; flow grids: ``t = sigma * T``, already
    in ``levels.t``) and then rounds it (``karras``, ``lu``, unless the betas are cosine) or truncates it
    in the int64 cast, while its update keeps the exact level. So the calls keep their ``(alpha, sigma)``
    and only the model time moves.
    """
    if grid not in _ROUNDED + _TRUNCATED:
        raise ValueError(f"grid must be one of {_ROUNDED + _TRUNCATED}, got {grid!r}")
    t = levels.t if table is None else table.t_from_sigma(levels.level)
    t = torch.round(t) if grid in _ROUNDED and not cosine else torch.trunc(t)
    return dataclasses.replace(levels, t=t)


def data_prediction_weights(h: float, eta: float) -> tuple[float, float, float, float, float]:
    """``(carry, phi_1, phi_2, chi, noise)`` of a DPM-Solver++ step of log-SNR length ``h`` (alpha/sigma-free).

    With ``H = (1 + eta) h``: ``carry = e^{-eta h}`` (times ``sigma_t / sigma_s``), ``phi_1 = 1 - e^{-H}``,
    ``phi_2 = 1 - phi_1 / H`` (the heun D1 weight), ``chi = 1/2 - phi_2 / H`` (the published D2 weight)
    and ``noise = sqrt(1 - e^{-2 eta h})`` (times ``sigma_t``), all per unit ``alpha_t``. ``h = inf`` (a step
    into clean data, or out of pure noise) gives the limits: ``carry`` 1 for the ODE and 0 with noise.
    """
    if not math.isfinite(h):
        return (0.0, 1.0, 1.0, 0.5, 1.0) if eta > 0 else (1.0, 1.0, 1.0, 0.5, 0.0)
    big_h = (1 + eta) * h
    phi_1 = -math.expm1(-big_h)
    phi_2 = 1 - phi_1 / big_h
    chi = 0.5 - phi_2 / big_h
    return math.exp(-eta * h), phi_1, phi_2, chi, math.sqrt(-math.expm1(-2 * eta * h))


def divided_differences(r0: float, r1: float | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(D1, D2)`` as weights on ``(m_k, m_{k-1}, m_{k-2})``: the backward differences of multistep DPM-Solver.

    ``D1_0 = (m_k - m_{k-1}) / r0``; with ``r1`` (third order) ``D1_1 = (m_{k-1} - m_{k-2}) / r1``,
    ``D1 = D1_0 + r0 (D1_0 - D1_1) / (r0 + r1)`` and ``D2 = (D1_0 - D1_1) / (r0 + r1)`` (Lu et al. 2022,
    DPM-Solver++ Alg. 2); without ``r1``, ``D1 = D1_0`` and ``D2 = 0``.
    """
    d1_0 = (1 / r0, -1 / r0, 0.0)
    if r1 is None:
        return d1_0, (0.0, 0.0, 0.0)
    d1_1 = (0.0, 1 / r1, -1 / r1)
    diff = [p - q for p, q in zip(d1_0, d1_1, strict=True)]
    d1 = tuple(p + r0 / (r0 + r1) * q for p, q in zip(d1_0, diff, strict=True))
    return d1, tuple(q / (r0 + r1) for q in diff)


@dataclass(frozen=True)
class StepWeights:
    """The weights of one exponential-integrator step from ``(alpha_s, sigma_s)`` to ``(alpha_t, sigma_t)``.

    ``x_t = carry x_s + phi D0 + w D1 + chi D2 + noise z`` with ``w = heun`` (the ``phi_2`` weight, also the
    third-order D1 weight) or ``midpoint``; ``D`` are estimates of x0 (data prediction) or eps (noise
    prediction) and their divided differences, whose normalisation the caller chooses.
    """

    carry: float
    phi: float
    heun: float
    midpoint: float
    chi: float
    noise: float


def step_weights(estimate: str, a_s: float, s_s: float, a_t: float, s_t: float, eta: float, sde: bool) -> StepWeights:
    """:class:`StepWeights` of DPM-Solver++ (``estimate="x0"``, noise fraction ``eta``) or DPM-Solver (``"eps"``,
    ``sde``: SDE-DPM-Solver). The eps form needs ``sigma_t > 0`` and ``alpha_s > 0`` (the caller reads x0 there)."""
    if a_t == 0.0 and a_s > 0 and not sde:  # into pure noise (an inversion's end at a flow's t = 1): x_t = s_t eps_hat
        carry = s_t / s_s
        return (
            StepWeights(carry, -a_s * carry, 0.0, 0.0, 0.0, 0.0)
            if estimate == "x0"
            else StepWeights(0.0, s_t, 0.0, 0.0, 0.0, 0.0)
        )
    h = math.log(a_t / s_t) - math.log(a_s / s_s) if s_t > 0 and a_s > 0 else math.inf
    if estimate == "x0":
        carry, phi_1, phi_2, chi, noise = data_prediction_weights(h, eta)
        return StepWeights(carry * s_t / s_s, a_t * phi_1, a_t * phi_2, 0.5 * a_t * phi_1, a_t * chi, s_t * noise)
    sig_eh = a_t * s_s / a_s  # sigma_t e^h
    growth = sig_eh - s_t  # sigma_t (e^h - 1)
    scale = 2.0 if sde else 1.0
    return StepWeights(
        carry=a_t / a_s,
        phi=-scale * growth,
        heun=-scale * (growth / h - s_t),  # sigma_t ((e^h - 1) / h - 1)
        midpoint=-0.5 * scale * growth,
        chi=-(((growth - s_t * h) / h**2) - 0.5 * s_t),  # sigma_t ((e^h - 1 - h) / h^2 - 1/2)
        noise=math.sqrt(sig_eh**2 - s_t**2) if sde else 0.0,
    )


class DPMSolverMultistepScheduler(MultistepScheduler):
    """DPM-Solver++(2M) by default; ``solver_order`` and ``algorithm_type`` pick the other members.

    ``eta`` (SDE algorithms only; None means 1): k-diffusion's noise fraction of ``sample_dpmpp_2m_sde``
    and ``sample_dpmpp_3m_sde``; 0 gives the ODE solver. ``use_flow_sigmas`` / ``flow_shift`` /
    ``use_dynamic_shifting``: a rectified-flow model on diffusers' DPM-Solver flow grid.
    """

    name = "dpmpp_2m"
    paper = "Lu et al. 2022, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
    order = 2
    stochastic = False
    uses_mu = True  # with use_dynamic_shifting (flow models); refused otherwise
    default_algorithm: ClassVar[str] = "dpmsolver++"
    default_solver_order: ClassVar[int] = 2
    # diffusers' multistep class skips rounding karras / lu times with cosine betas (the int cast truncates)
    cosine_skips_rounding: ClassVar[bool] = True

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
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -math.inf,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        eta: float | None = None,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        self.setup_solver(solver_order, algorithm_type, solver_type, thresholding, eta)
        self.check_common_config()
        self.check_flow_config()

    def setup_solver(
        self,
        solver_order: int | None,
        algorithm_type: str | None,
        solver_type: str,
        thresholding: bool,
        eta: float | None,
    ) -> None:
        """Check the solver options of the DPM-Solver schedulers; set ``algorithm``, ``solver_order``, ``estimate``."""
        if solver_order is not None and solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3 (or None for the default), got {solver_order!r}")
        algorithm = algorithm_type or self.default_algorithm
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm_type must be one of {ALGORITHMS}, got {algorithm_type!r}")
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
        if algorithm == "sde-dpmsolver" and (solver_order or self.default_solver_order) == 3:
            raise ValueError("algorithm_type='sde-dpmsolver' has orders 1 and 2 (no third-order SDE-DPM-Solver)")
        if eta is not None and (algorithm != "sde-dpmsolver++" or not 0 <= eta or not math.isfinite(eta)):
            raise ValueError(
                f"eta (the SDE noise fraction) applies to algorithm_type='sde-dpmsolver++' only and must be a finite "
                f"number >= 0; got eta={eta!r} with algorithm_type={algorithm!r}"
            )
        if thresholding and not algorithm.endswith("++"):
            raise ValueError(
                f"thresholding clamps x0 estimates: it is implemented for the data-prediction algorithms "
                f"(dpmsolver++, sde-dpmsolver++), not for algorithm_type={algorithm!r}"
            )
        self.algorithm = algorithm
        self.solver_order = solver_order or self.default_solver_order
        self.estimate = "x0" if algorithm.endswith("++") else "eps"
        self.solver_type = solver_type

    @property
    def is_sde(self) -> bool:
        return self.algorithm.startswith("sde-")

    @property
    def eta(self) -> float:
        """k-diffusion's noise fraction: 0 for the ODE algorithms, config ``eta`` (default 1) for sde-dpmsolver++."""
        if not self.is_sde:
            return 0.0
        eta = self.config.get("eta")
        return 1.0 if eta is None else float(eta)

    # ---- grid: diffusers' flags, flow sigmas ---------------------------------------------------

    def check_flow_config(self) -> None:
        """``use_flow_sigmas`` runs a rectified-flow model on diffusers' DPM-Solver flow grid: check its options."""
        c = self.config
        if c.get("time_shift_type", "exponential") != "exponential":
            raise ValueError(f"time_shift_type must be 'exponential' (diffusers' only one), got {c.time_shift_type!r}")
        if not c.get("use_flow_sigmas", False):
            if c.get("use_dynamic_shifting", False):
                raise ValueError("use_dynamic_shifting shifts flow sigmas: it needs use_flow_sigmas=True")
            return
        if not c.get("flow_shift", 1.0) > 0:
            raise ValueError(f"flow_shift must be > 0, got {c.flow_shift!r}")
        others = [
            f for f in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas") if c.get(f)
        ]
        if others:
            raise ValueError(f"use_flow_sigmas and {others} are exclusive; pick one spacing")
        if c.get("schedule", "discrete") not in ("discrete", "flow") or c.get("schedule_kwargs") is not None:
            raise ValueError(
                "use_flow_sigmas runs a rectified-flow model (alpha = 1 - t, sigma = t, model time "
                f"t * num_train_timesteps); leave schedule at its default, got schedule={c.get('schedule')!r}"
            )
        if c.get("final_sigmas_type", "zero") != "zero":
            raise ValueError(
                "use_flow_sigmas ends at clean data: final_sigmas_type='sigma_min' would end a flow run at the VP "
                "table's first level used as a flow time (a diffusers quirk not reproduced here)"
            )

    def _make_schedule(self) -> NoiseSchedule:
        if self.config.get("use_flow_sigmas", False):
            return RectifiedFlowSchedule(timestep_scale=float(self.config.num_train_timesteps))
        return super()._make_schedule()

    def run_levels(self, n, timesteps, sigmas, mu) -> lv.Levels:
        c = self.config
        if (
            c.get("use_flow_sigmas", False)
            and timesteps is None
            and sigmas is None
            and c.get("sigma_schedule") is None
        ):
            assert n is not None
            return self._tagged(self._flow_levels(n, mu), "named")
        levels = super().run_levels(n, timesteps, sigmas, None)
        if c.get("rescale_betas_zero_snr", False) and bool((levels.alpha <= 0).any()):
            # diffusers' DPM-Solver schedulers clamp a zero-terminal-SNR table's last abar to 2^-24: its level
            # is capped at 4096 (ZERO_SNR_LEVEL), where alpha = 2^-12, and the model time stays
            level = torch.where(levels.alpha <= 0, torch.full_like(levels.t, lv.ZERO_SNR_LEVEL), levels.level)
            alpha, sigma = self.schedule.alpha_sigma_at_level(level)
            levels = dataclasses.replace(levels, alpha=alpha, sigma=sigma)
        flagged = self._flag_grid()
        if levels.source == "named" and flagged is not None:
            table = diffusers_sigma_table(self.schedule) if isinstance(self.schedule, DiscreteVPSchedule) else None
            cosine = self.cosine_skips_rounding and c.get("beta_schedule") == "squaredcos_cap_v2"
            levels = diffusers_model_times(levels, flagged, table, cosine)
        return levels

    def _flag_grid(self) -> str | None:
        """The grid a diffusers flag selects (None with ``sigma_schedule=``, whose times stay exact)."""
        if self.config.get("sigma_schedule") is not None:
            return None
        return grids.from_diffusers_flags(self.config)[0]

    def named_level_span(self, n: int) -> tuple[float, float]:
        """Flag grids span diffusers' float32 table (:func:`diffusers_sigma_table`); config sigma_min/max win."""
        if self._flag_grid() is None or not isinstance(self.schedule, DiscreteVPSchedule):
            return super().named_level_span(n)
        table = lv.capped_levels(diffusers_sigma_table(self.schedule).sigmas)
        c = self.config
        return float(c.get("sigma_min") or table[0]), float(c.get("sigma_max") or table[-1])

    def _flow_levels(self, n: int, mu: float | None) -> lv.Levels:
        """diffusers' flow grid: n + 1 times from ``1 - 1/T`` to 0 shifted by ``flow_shift`` (or by ``e^mu``)."""
        c = self.config
        _, params = grids.from_diffusers_flags({**c, "use_dynamic_shifting": False})
        if mu is not None:
            params.update(shift=None, mu=float(mu), kind=c.time_shift_type)
        flow_t = grids.make("flow", n, **params)
        levels = lv.levels_at_times(self.schedule, flow_t * float(c.num_train_timesteps))
        return diffusers_model_times(levels, "flow", None, cosine=False)

    def make_plan(self, levels: lv.Levels, mu: float | None = None, start: int = 0) -> Plan:
        if mu is not None and not self.config.get("use_dynamic_shifting", False):
            raise ValueError(f"{type(self).__name__} shifts by mu only with use_dynamic_shifting=True")
        return super().make_plan(levels, None, start)

    def final_alpha_sigma(self) -> tuple[float, float]:
        """``final_sigmas_type="sigma_min"``: diffusers' float32 first table level (:func:`diffusers_sigma_table`)."""
        if self.config.get("final_sigmas_type", "zero") == "zero" or not isinstance(self.schedule, DiscreteVPSchedule):
            return super().final_alpha_sigma()
        level = float(diffusers_sigma_table(self.schedule).sigmas[0])
        alpha = 1 / math.sqrt(1 + level**2)
        return alpha, level * alpha

    def initial_sigma(self, levels: lv.Levels) -> float:
        if self.config.get("use_flow_sigmas", False):
            return 1.0  # diffusers' DPM-Solver: unit noise, whatever the first flow time
        return super().initial_sigma(levels)

    # ---- the update ------------------------------------------------------------------------------

    def step_orders(self, grid: Grid, start: int) -> list[int]:
        """Order used at each call: warm-up from ``start``, lower order near the end, and first order
        wherever a log-SNR it would use is infinite (a step into clean data or out of alpha = 0)."""
        c = self.config
        n = len(grid)
        lam = grid.lam
        short = c.lower_order_final and n < 15
        orders = []
        for k in range(n):
            o = 1 if k <= start else min(self.solver_order, k - start + 1)
            if k == n - 1 and (c.euler_at_final or short or float(grid.sigma[-1]) == 0.0):
                o = 1
            elif k == n - 2 and short:
                o = min(o, 2)
            while o > 1 and not bool(torch.isfinite(lam[k - o + 1 : k + 2]).all()):
                o -= 1
            orders.append(o)
        return orders

    def step_rules(self, grid: Grid, start: int) -> list[StepRule]:
        return [self.step_rule(grid, k, order) for k, order in enumerate(self.step_orders(grid, start))]

    def step_rule(self, grid: Grid, k: int, order: int) -> StepRule:
        """Call ``k``'s update at the given order."""
        lam, alpha, sigma = grid.lam.tolist(), grid.alpha.tolist(), grid.sigma.tolist()
        a_s, s_s, a_t, s_t = alpha[k], sigma[k], alpha[k + 1], sigma[k + 1]
        interval = (lv.level_of(a_s, s_s), lv.level_of(a_t, s_t)) if self.is_sde else None
        if self.estimate == "eps" and (s_t == 0.0 or a_s == 0.0):
            # into clean data (x0_hat: the h -> inf limit) or out of pure noise (DDIM, the eps form's alpha_s = 0
            # limit): read x0_hat from the output rather than dividing by a zero alpha or sigma
            x0_weight, eps_weight = a_t, s_t
            return StepRule(sample=0.0, weights=(eps_weight,), extra={"x0": x0_weight})
        h = lam[k + 1] - lam[k]
        if h == 0.0:  # a repeated level (diffusers' inverse grids end so): the call changes nothing
            return StepRule(sample=1.0, weights=(0.0,))
        w = step_weights(self.estimate, a_s, s_s, a_t, s_t, self.eta, self.is_sde)
        weights = [w.phi, 0.0, 0.0]
        if order >= 2:
            r0 = (lam[k] - lam[k - 1]) / h
            r1 = (lam[k - 1] - lam[k - 2]) / h if order == 3 else None
            d1, d2 = divided_differences(r0, r1)
            w1 = w.heun if order == 3 or self.solver_type == "heun" else w.midpoint
            weights = [wi + w1 * p + w.chi * q for wi, p, q in zip(weights, d1, d2, strict=True)]
        return StepRule(sample=w.carry, weights=tuple(weights[:order]), noise=w.noise, brownian=interval)


class DPMSolver3MScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++(3M): third-order multistep data prediction, as published.

    Declared ``order = 2``: the published D2 weight is half the polynomial-exact one (module docstring),
    so the global error falls as ``h^2`` once the steps are small; the fitted order on the Gaussian
    oracle is 2.0 (``tests/test_dpmsolver.py``).
    """

    name = "dpmpp_3m"
    order = 2
    default_solver_order = 3


class DPMSolverSDEMultistepScheduler(DPMSolverMultistepScheduler):
    """SDE-DPM-Solver++(2M): the stochastic data-prediction form; keeps the data marginals."""

    name = "dpmpp_2m_sde"
    kind = "sde"
    paper = "Lu et al. 2022, DPM-Solver++, App. B (SDE-DPM-Solver++)"
    stochastic = True
    stochastic_when = "eta > 0"
    default_algorithm = "sde-dpmsolver++"


class DPMSolver3MSDEScheduler(DPMSolverSDEMultistepScheduler):
    """SDE-DPM-Solver++(3M), k-diffusion's ``sample_dpmpp_3m_sde`` (second order at ``eta = 0``, as 3M)."""

    name = "dpmpp_3m_sde"
    order = 2
    default_solver_order = 3


class DPMSolverNoisePredictionScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver (noise prediction) multistep, order 2 by default (``algorithm_type="sde-dpmsolver"`` for the SDE)."""

    name = "dpm_multistep"
    paper = "Lu et al. 2022, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling, eq. 3.7"
    stochastic = True  # with algorithm_type="sde-dpmsolver"
    stochastic_when = "algorithm_type = sde-dpmsolver"
    default_algorithm = "dpmsolver"
