"""Pseudo numerical methods: PNDM / PLMS (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on
Manifolds") and iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator",
sec. 5 and App.); diffusers' ``PNDMScheduler`` and ``IPNDMScheduler``.

Both move the sample with DDIM's transfer (Liu et al. eq. 9, the deterministic DDIM step with a given
noise ``e``)::

    phi(x, t -> t', e) = (alpha_t' / alpha_t) x + (sigma_t' - alpha_t' sigma_t / alpha_t) e

and feed it a linear-multistep combination of the noise estimates ``eps_hat`` of earlier calls, the
Adams-Bashforth weights of a uniform grid (eq. 12; :func:`samplers.schedulers.lms.adams_bashforth_weights`,
e.g. ``(55 e_k - 59 e_{k-1} + 37 e_{k-2} - 9 e_{k-3}) / 24``).

**Order.** The transfer integrates exactly in the sigma-space level ``sigma / alpha`` (DDIM is Euler
there), but the weights assume steps uniform in the grid index. On a grid that is not uniform in the
level the combination mis-weights the noise over a step by ``O(h)``, a local error ``O(h^3)``: the methods
are second order whatever the number of terms (fitted 2.06-2.17 for PNDM, 2.0 for PLMS and iPNDM on
the EDM grid, 1.8-1.9 on flow with shift 3; tests/test_samplers_kd.py). On a grid uniform in the level
PNDM reaches its design order (fitted 3.44 at 16-128 steps).

* **PLMS** (``skip_prk_steps=True``, the Stable Diffusion setting): Adams-Bashforth from the first call,
  with diffusers' start: call 0 is DDIM, call 1 repeats the second time as a Heun step from the start
  (``phi(x_0, t_0 -> t_1, (e_0 + e_1) / 2)``, not kept), then orders 2, 3, 4.
* **PNDM** (default): three pseudo Runge-Kutta steps (eq. 13: RK4 in ``e`` with DDIM transfers from the
  step's start ``x_s``: four calls at ``t``, the half step twice, and ``t'``) warm the history up, then
  fourth-order PLMS. Every stage rebuilds its sample from ``x_s`` and the kept estimates (at most 4
  history tensors per call).
* **iPNDM**: Adams-Bashforth with orders 1, 2, 3, 4 from the start (no Runge-Kutta), the DDIM transfer
  to the next grid level.

**What is combined.** Each call's ``eps_hat`` by default (any prediction type). diffusers' PNDMScheduler
combines the raw network outputs and converts the combination once at the transfer's source
(``combine="output"``; the same thing for an epsilon model). For a v-prediction model that estimate is
off by ``O(h)``: first order (fitted 0.99-1.09), which is why it is not the default.

``set_alpha_to_one`` defaults to True here, so a run ends on clean data (diffusers' PNDMScheduler defaults
to False and stops at ``abar_0``; ``from_diffusers`` carries the value over). On a discrete table with a
spaced grid, PNDM steps by the stride ``T // n`` (a call at ``t`` transfers to
``t - T // n``) as diffusers does, even where the next call's time differs (``linspace`` spacing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from samplers import levels as lv
from samplers.plan import ESTIMATE, SAMPLE, Call, Plan, Update, build_plan, estimate_coefficients
from samplers.protocol import Scheduler
from samplers.schedulers.ddim import DDIMScheduler
from samplers.schedulers.lms import WarmUpRestart, adams_bashforth_weights
from samplers.schedules import DiscreteVPSchedule, VPCosineSchedule

F64 = torch.float64
RK4 = (1 / 6, 1 / 3, 1 / 3, 1 / 6)  # the classical Runge-Kutta weights of the four stages
PURE_NOISE_X0 = ("model", "zero")
COMBINE = ("eps", "output")


@dataclass
class Stage:
    """One call of a pseudo-numerical run: the model time, and ``x' = phi(x_src, src -> dst, sum w_j E_j)``.

    ``source`` is ``"self"`` (the call's input at its own time) or the name of a kept sample; ``terms`` maps
    ``"self"`` (this call's estimate) and earlier estimates (the index of their stage) to weights.
    """

    t: float
    src_t: float
    dst_t: float
    terms: dict[str | int, float]
    source: str = "self"
    keep: dict[str, str] = field(default_factory=dict)


def transfer(alpha_s: float, sigma_s: float, alpha_t: float, sigma_t: float) -> tuple[float, float]:
    """``(A, B)`` of DDIM's transfer ``x_t = A x_s + B e`` (Liu et al. eq. 9) in model space."""
    ratio = alpha_t / alpha_s
    return ratio, sigma_t - ratio * sigma_s


class _PseudoNumerical(WarmUpRestart, Scheduler):
    """Shared machinery: stages -> calls with DDIM transfers (model space, estimates are ``eps_hat``)."""

    kind = "ode-multistep"
    order = 2
    stochastic = False

    def final_alpha_sigma(self) -> tuple[float, float]:
        return 1.0, 0.0

    def _alpha_sigma(self, t: float) -> tuple[float, float]:
        if t < 0:
            return self.final_alpha_sigma()
        alpha, sigma = lv.alpha_sigma_at(self.schedule, torch.tensor([t], dtype=F64))
        return float(alpha[0]), float(sigma[0])

    @property
    def raw_outputs(self) -> bool:
        """Whether the multistep combination is of raw network outputs (``combine="output"``) rather than of
        each call's ``eps_hat``; the same thing for an epsilon model."""
        return self.config.get("combine", "eps") == "output" and self.prediction_type != "epsilon"

    def _transfer(self, src_t: float, dst_t: float) -> tuple[float, float]:
        """``(A, B)`` with ``x' = A x_src + B e`` for the combination ``e`` of the estimates: DDIM's transfer, with
        the raw outputs read as a noise estimate at the source (``eps = p_s x_src + q_s e``) when combined raw."""
        a_s, s_s = self._alpha_sigma(src_t)
        big_a, big_b = transfer(a_s, s_s, *self._alpha_sigma(dst_t))
        if not self.raw_outputs:
            return big_a, big_b
        one = torch.ones(1, dtype=F64)
        p, q = estimate_coefficients(self.prediction_type, a_s * one, s_s * one, one, "eps")
        return big_a + big_b * float(p[0]), big_b * float(q[0])

    def stage_calls(self, stages: list[Stage]) -> list[Call]:
        times = torch.tensor([s.t for s in stages], dtype=F64)
        at = lv.levels_at_times(self.schedule, times)
        calls = []
        for k, stage in enumerate(stages):
            keep = {**stage.keep, f"e{k}": ESTIMATE}
            own = stage.terms.get("self", 0.0)
            history = {f"e{j}" if isinstance(j, int) else j: w for j, w in stage.terms.items() if j != "self"}
            single = stage.source == "self" and not history and not self.raw_outputs
            if single and self._alpha_sigma(stage.src_t)[0] < 1e-8:
                update = self.pure_noise_update(*self._alpha_sigma(stage.dst_t), own)  # DDIM out of alpha = 0
            elif single:  # phi with one estimate is DDIM: x' = alpha' x0_hat + sigma' eps_hat
                a_t, s_t = self._alpha_sigma(stage.dst_t)
                update = Update(x0=a_t * own, eps=s_t * own)
            else:
                big_a, big_b = self._transfer(stage.src_t, stage.dst_t)
                weights = {name: big_b * w for name, w in history.items()}
                sample = big_a
                if stage.source != "self":
                    weights[stage.source] = big_a
                    sample = 0.0
                update = Update(sample=sample, eps=big_b * own, history=weights)
            calls.append(at.call(k, update, estimate="eps", keep=keep))
        return calls

    def plan_calls(self, levels: lv.Levels, start: int = 0) -> list[Call]:
        """The calls, with the multistep history starting empty at call ``start``."""
        raise NotImplementedError

    def make_plan(self, levels: lv.Levels, mu: float | None = None, start: int = 0) -> Plan:
        """The plan, with the multistep history starting empty at call ``start`` (a mid-schedule begin)."""
        if mu is not None:
            raise ValueError(f"{type(self).__name__} has no dynamic time shift; call set_timesteps without mu")
        # with raw outputs combined, the estimate is the raw output (an epsilon model's eps_hat is exactly that)
        plan = build_plan(
            self.plan_calls(levels, start),
            "epsilon" if self.raw_outputs else self.prediction_type,
            init_noise_sigma=self.initial_sigma(levels),
        )
        if self.raw_outputs:  # pred_original_sample is still read with the model's own prediction type
            p, q = estimate_coefficients(self.prediction_type, plan.model_alpha, plan.model_sigma, plan.input_scale)
            plan.x0_from_estimate = list(zip(p.tolist(), q.tolist(), strict=True))
        plan.extras["levels"] = levels
        return plan

    def pure_noise_update(self, alpha_t: float, sigma_t: float, weight: float) -> Update:
        """DDIM out of pure noise: ``x0_hat`` must come from the output (not from an epsilon or a score there)."""
        if self.prediction_type in ("epsilon", "score"):
            raise ValueError(
                f"prediction_type={self.prediction_type!r} cannot be used on this grid: it starts at pure noise "
                "(alpha = 0), where that output does not determine x0"
            )
        return Update(x0=alpha_t * weight, eps=sigma_t * weight)


class PNDMScheduler(_PseudoNumerical):
    """PNDM (pseudo Runge-Kutta warm-up, then PLMS), or PLMS alone with ``skip_prk_steps=True``."""

    name = "pndm"
    paper = "Liu et al. 2022, Pseudo Numerical Methods for Diffusion Models on Manifolds, eq. 9, 12, 13"
    default_spacing = "leading"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = True,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        combine: str = "eps",
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        self.nfe_per_step = 1 if skip_prk_steps else 4  # a pseudo Runge-Kutta step costs 4 calls

    def final_alpha_sigma(self) -> tuple[float, float]:
        # DDIM's rule (it reads only config.set_alpha_to_one and the schedule), borrowed unbound: not a DDIM self
        return DDIMScheduler.final_alpha_sigma(self)  # type: ignore[arg-type]

    def plan_calls(self, levels: lv.Levels, start: int = 0) -> list[Call]:
        t = levels.t.tolist()
        n = len(t)
        stride = None
        if levels.source == "spacing" and isinstance(self.schedule, DiscreteVPSchedule):
            stride = self.schedule.num_train_timesteps // n  # diffusers' t -> t - T // n
        target = (lambda i: t[i] - stride) if stride else (lambda i: t[i + 1] if i + 1 < n else -1.0)
        if self.config.skip_prk_steps:
            return self.stage_calls(self._skip_prk_stages(t, target, stride, start))
        return self.stage_calls(self._prk_stages(t, target, stride, start))

    def _plms(self, stages: list[Stage], ets: list[int], t: float, dst: float, start: int) -> None:
        """A PLMS call at ``t``: its estimate joins ``ets`` and the Adams-Bashforth combination of the last 4
        (of those from call ``start`` on) moves the input to ``dst``."""
        ets[:] = [k for k in ets if k >= start] + [len(stages)]
        weights = adams_bashforth_weights(min(len(ets), 4))
        terms: dict[str | int, float] = {"self": weights[0]}
        terms.update({ets[-1 - j]: weights[j] for j in range(1, len(weights))})
        stages.append(Stage(t, t, dst, terms))

    def _skip_prk_stages(self, t: list[float], target, stride: int | None, start: int) -> list[Stage]:
        stages: list[Stage] = []
        ets: list[int] = []
        self._plms(stages, ets, t[0], target(0), start)
        if len(t) > 1 and not self._pure_noise(t[0]):
            # diffusers' second call: Heun from the start sample, t_1 + stride (or t_0) -> t_1, not kept in ets
            stages[0].keep = {"x_start": SAMPLE}
            src = t[1] + stride if stride else t[0]
            stages.append(Stage(t[1], src, t[1], {"self": 0.5, 0: 0.5}, source="x_start"))
        for i in range(1, len(t)):
            self._plms(stages, ets, t[i], target(i), start)
        return stages

    def _pure_noise(self, t: float) -> bool:
        """Whether ``t`` is pure noise (alpha = 0, a flow schedule's t = 1), where no transfer can start."""
        return self._alpha_sigma(t)[0] < 1e-8

    def _prk_stages(self, t: list[float], target, stride: int | None, start: int) -> list[Stage]:
        stages: list[Stage] = []
        ets: list[int] = []
        first = 0
        if self._pure_noise(t[0]):  # the stages would transfer from alpha = 0: start with a DDIM step instead
            self._plms(stages, ets, t[0], target(0), start)
            first = 1
        blocks = min(first + 3, len(t) - 1)
        for i in range(first, blocks):
            if stride:  # diffusers: the half step's model time is t_{i+1} + q, its transfer target t_i - q
                half = stride // 2
                mid_t, first_dst, nxt = t[i + 1] + half, t[i] - half, t[i + 1]
            else:
                nxt = t[i + 1]
                mid_t = first_dst = (t[i] + nxt) / 2
            k = len(stages)
            ets.append(k)
            stages.append(Stage(t[i], t[i], first_dst, {"self": 1.0}, keep={"x_s": SAMPLE}))
            stages.append(Stage(mid_t, t[i], mid_t, {"self": 1.0}, source="x_s"))
            stages.append(Stage(mid_t, t[i], nxt, {"self": 1.0}, source="x_s"))
            terms: dict[str | int, float] = {"self": RK4[3], k: RK4[0], k + 1: RK4[1], k + 2: RK4[2]}
            stages.append(Stage(nxt, t[i], nxt, terms, source="x_s"))
        for i in range(max(blocks, first), len(t)):
            self._plms(stages, ets, t[i], target(i), start)
        return stages


class IPNDMScheduler(_PseudoNumerical):
    """iPNDM: Adams-Bashforth (orders 1-4 from the start) with DDIM transfers to the next grid level.

    diffusers' IPNDMScheduler has no prediction type or schedule of its own: it assumes a v-prediction model
    with ``alpha = cos(pi t / 2)`` (``schedule="vp_cosine"``, ``schedule_kwargs={"s": 0, "t_max": 1}``), on
    which the default grid is diffusers' (model-space ``sigma_i = sin^2(pi/2 (1 - i/n))``, from pure noise).
    Out of pure noise diffusers divides by ``max(alpha, 1e-8)`` and so takes ``x0_hat = 0``
    (``pure_noise_x0="zero"``, what ``from_diffusers`` sets): exact only for zero-mean data, otherwise an
    ``alpha_1 E[x0]`` error, first order in the step. Ours reads ``x0_hat`` from the model there.
    """

    name = "ipndm"
    order = 2
    default_spacing = "leading"  # as PNDM and DDIM; starting at t = T - 1 (alpha ~ 0.006) costs bfloat16 accuracy
    paper = "Zhang & Chen 2023, Fast Sampling of Diffusion Models with Exponential Integrator (iPNDM)"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        pure_noise_x0: str = "model",
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if trained_betas is not None:
            raise ValueError("trained_betas (diffusers' custom iPNDM sigmas) is not supported; pass sigmas= instead")
        if pure_noise_x0 not in PURE_NOISE_X0:
            raise ValueError(f"pure_noise_x0 must be one of {PURE_NOISE_X0}, got {pure_noise_x0!r}")

    def default_levels(self, n: int, mu: float | None) -> lv.Levels:
        """diffusers' grid on the model its IPNDMScheduler assumes (cosine with ``s = 0``, ``t_max = 1``:
        ``alpha = cos(pi t / 2)``): model-space ``sigma_i = sin^2(pi/2 (1 - i/n))``; else the default spacing."""
        schedule = self.schedule
        if not (isinstance(schedule, VPCosineSchedule) and schedule.s == 0.0 and schedule.t_max == 1.0):
            return super().default_levels(n, mu)
        u = np.linspace(1.0, 0.0, n + 1)[:-1]
        sigma = np.sin(u * math.pi / 2) ** 2
        t = np.arctan2(sigma, np.sqrt(1 - sigma**2)) * 2 / math.pi  # the time of that sigma on alpha^2 + sigma^2 = 1
        return self.levels_at_times(torch.from_numpy(t))

    def plan_calls(self, levels: lv.Levels, start: int = 0) -> list[Call]:
        t = levels.t.tolist()
        stages: list[Stage] = []
        for i in range(len(t)):
            weights = adams_bashforth_weights(min(i - start + 1, 4) if i >= start else 1)
            terms: dict[str | int, float] = {"self": weights[0]}
            terms.update({i - j: weights[j] for j in range(1, len(weights))})
            stages.append(Stage(t[i], t[i], t[i + 1] if i + 1 < len(t) else -1.0, terms))
        return self.stage_calls(stages)

    def pure_noise_update(self, alpha_t: float, sigma_t: float, weight: float) -> Update:
        """Out of pure noise: ``x0_hat`` from the output, or (``pure_noise_x0="zero"``) taken as 0 as diffusers'
        ``max(alpha, 1e-8)`` division does (exact only for zero-mean data)."""
        if self.config.pure_noise_x0 == "zero":
            return Update(eps=sigma_t * weight)
        return super().pure_noise_update(alpha_t, sigma_t, weight)


__all__ = ["IPNDMScheduler", "PNDMScheduler", "Stage", "transfer"]
