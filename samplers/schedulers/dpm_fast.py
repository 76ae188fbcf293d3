"""DPM-Solver-fast: singlestep DPM-Solver-3 steps uniform in log-SNR, with a lower-order tail to spend exactly
a budget of model evaluations (k-diffusion's ``sample_dpm_fast``).

Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps",
sec. 3.4 ("DPM-Solver-fast", the order schedule) and Alg. 1 / 2 (DPM-Solver-2 with ``r1 = 1/2``, DPM-Solver-3
with ``r1 = 1/3, r2 = 2/3``), in noise prediction and in sigma space (``y = x / alpha``, level ``s``, time
``t = -log s``). A step from ``t`` to ``t'`` (``h = t' - t``, ``s_r = e^{-(t + r h)}``, ``eps`` the estimates
at the stages)::

    order 1:  y' = y - s' (e^h - 1) eps                                                     (eq. 3.7)
    order 2:  u1 = y - s_{r1} (e^{r1 h} - 1) eps
              y' = y - s' (e^h - 1) eps - s' / (2 r1) (e^h - 1) (eps1 - eps)                (Alg. 1)
    order 3:  u1 as above, then
              u2 = y - s_{r2} (e^{r2 h} - 1) eps - s_{r2} (r2 / r1) ((e^{r2 h} - 1) / (r2 h) - 1) (eps1 - eps)
              y' = y - s' (e^h - 1) eps - (s' / r2) ((e^h - 1) / h - 1) (eps2 - eps)         (Alg. 2)

Every stage jumps from the step's start ``y``, which is kept until the step's last call. ``set_timesteps(n)``
counts *model evaluations* (k-diffusion's ``nfe``): ``m = n // 3 + 1`` steps of orders ``[3, .., 3, 2, 1]``
(n % 3 == 0) or ``[3, .., 3, n % 3]``, between ``sigma_max`` and ``sigma_min`` (config, else the schedule's
range) evenly in log sigma. The run **ends at the last grid level** ``sigma_min > 0``, as k-diffusion's and the
paper's (which stops at ``t = epsilon``); there is no final denoising call. Custom ``sigmas=`` / ``timesteps=``
are the step boundaries (a final 0 is dropped), with ``orders`` (config) or third order everywhere.

``eta > 0`` (ancestral, k-diffusion): each step solves down to ``sigma_down`` of ``get_ancestral_step`` (no lower
than the last level) and adds ``sigma_up s_noise z`` on its last call; ``z`` stands for the Brownian increment
over the step ``[s(t), s(t')]``, k-diffusion's ``noise_sampler(sigma(t), sigma(t_next))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from samplers import levels as lv
from samplers import schedules
from samplers.plan import ESTIMATE, SAMPLE, Call, Update
from samplers.schedulers.sigma_space import SigmaSpaceScheduler
from samplers.schedules import DiscreteVPSchedule

F64 = torch.float64


def check_discrete_steps(schedule: object, n: int | None) -> None:
    """On a discrete table of T training steps a run takes at most T model evaluations (as every sampler here)."""
    if isinstance(schedule, DiscreteVPSchedule) and n is not None and n > schedule.num_train_timesteps:
        raise ValueError(f"num_inference_steps={n} cannot exceed num_train_timesteps={schedule.num_train_timesteps}")


def fast_orders(nfe: int) -> list[int]:
    """The order of each step for a budget of ``nfe`` model evaluations (Lu et al. 2022, sec. 3.4)."""
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    steps = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (steps - 2) + [2, 1]
    return [3] * (steps - 1) + [nfe % 3]


def ancestral_down_up(sigma_from: float, sigma_to: float, eta: float) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of an ancestral step (k-diffusion's ``get_ancestral_step``): ``sigma_up = eta``
    times the std of ``q(x_to | x_from, x0)`` in sigma space, capped at ``sigma_to``; ``down^2 + up^2 = to^2``."""
    if not eta:
        return sigma_to, 0.0
    _, variance = schedules.transition(1.0, sigma_to, 1.0, sigma_from)  # sigma_from^2 - sigma_to^2
    up = min(sigma_to, eta * math.sqrt(sigma_to**2 * variance / sigma_from**2))
    return math.sqrt(sigma_to**2 - up**2), up


class DPMSolverFastScheduler(SigmaSpaceScheduler):
    name = "dpm_fast"
    kind = "ode-single-step"
    paper = "Lu et al. 2022, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling, sec. 3.4"
    order = 3
    nfe_per_step = 1  # set_timesteps(n) counts model evaluations
    stochastic = True  # with eta > 0
    stochastic_when = "eta > 0"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        orders: Sequence[int] | None = None,
        eta: float = 0.0,
        s_noise: float = 1.0,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if not (eta >= 0 and math.isfinite(eta)) or not (s_noise >= 0 and math.isfinite(s_noise)):
            raise ValueError(f"eta and s_noise must be finite and >= 0, got eta={eta!r}, s_noise={s_noise!r}")
        if orders is not None and (not len(orders) or any(o not in (1, 2, 3) for o in orders)):
            raise ValueError(f"orders must list one order in (1, 2, 3) per step, got {orders!r}")

    # ---- grid: the step boundaries ----------------------------------------------------------------

    def run_levels(self, n, timesteps, sigmas, mu) -> lv.Levels:
        """``m + 1`` step boundaries for ``n`` evaluations (custom grids: as given); the step orders go with them."""
        self._budget = n if timesteps is None and sigmas is None else None  # read by plan_calls right after
        check_discrete_steps(self.schedule, n)
        if self._budget is not None:
            n = len(self._orders(self._budget, None)) + 1
        return super().run_levels(n, timesteps, sigmas, mu)

    def default_levels(self, n: int, mu: float | None) -> lv.Levels:
        """Boundaries evenly in log sigma (uniform log-SNR) between ``sigma_max`` and ``sigma_min``."""
        return lv.named_grid("exponential", n, self.schedule, self.named_level_span(n))

    def named_level_span(self, n: int) -> tuple[float, float]:
        return lv.level_range(self.schedule, self.config)

    def _orders(self, nfe: int | None, steps: int | None) -> list[int]:
        configured = self.config.get("orders")
        if configured is None:
            return fast_orders(nfe) if nfe is not None else [3] * int(steps or 0)
        orders = [int(o) for o in configured]
        if steps is not None and len(orders) != steps:
            raise ValueError(f"orders lists {len(orders)} steps but the grid has {steps} (levels - 1): {orders}")
        if nfe is not None and sum(orders) != nfe:
            raise ValueError(f"orders {orders} spend {sum(orders)} model evaluations, not num_inference_steps={nfe}")
        return orders

    # ---- calls ----------------------------------------------------------------------------------

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        s = levels.level.tolist()
        steps = len(s) - 1
        if steps < 1:
            raise ValueError("DPM-Solver-fast needs at least two grid levels (one step)")
        orders = self._orders(getattr(self, "_budget", None), steps)
        calls: list[Call] = []
        for i, order in enumerate(orders):
            calls += self._step_calls(levels, i, s[i], s[i + 1], s[-1], order)
        return calls

    def _step_calls(self, levels: lv.Levels, i: int, s: float, s_next: float, s_end: float, order: int) -> list[Call]:
        """The ``order`` calls of step ``i`` from level ``s`` to ``s_next`` (k-diffusion's ``dpm_solver_k_step``).

        The stage formulas weigh noise estimates; the step-start one is written as ``(y - x0_0) / s`` from the
        kept ``y`` and ``x0_0`` (and the current call's through the op's x0), so that no large term cancels
        in the update: at ``s ~ 15`` an eps-form step subtracts two ``O(s)`` tensors, which bfloat16 samples
        cannot hold to better than ``s / 256``.
        """
        c = self.config
        down, _ = ancestral_down_up(s, s_next, c.eta)
        target = max(down, s_end)  # t'' = min(t_end, -log sigma_down)
        up = math.sqrt(max(s_next**2 - target**2, 0.0)) * c.s_noise if c.eta else 0.0
        h = math.log(s / target)
        y, d = f"y{i}", f"d{i}"
        interval = {"brownian": (s, s_next)} if up else {}
        last = -target * math.expm1(h)  # the first-order weight on eps: -s' (e^h - 1)
        if order == 1:
            return [self.call_at(levels, i, Update(sample=1.0, eps=last, noise=up), **interval)]

        def from_start(eps_weight: float, start_eps_weight: float, noise: float = 0.0) -> Update:
            # y + start_eps_weight (y - x0_0) / s + eps_weight eps_current
            history = {y: 1 + start_eps_weight / s, d: -start_eps_weight / s}
            return Update(eps=eps_weight, history=history, noise=noise)

        r1 = 0.5 if order == 2 else 1 / 3
        s1 = s * math.exp(-r1 * h)
        first = Update(sample=1.0, eps=-s1 * math.expm1(r1 * h))
        calls = [self.call_at(levels, i, first, keep={y: SAMPLE, d: ESTIMATE})]
        if order == 2:
            w = -target / (2 * r1) * math.expm1(h)  # on (eps1 - eps)
            return calls + [self._stage(s1, from_start(w, last - w, up), interval)]
        r2 = 2 / 3
        s2 = s * math.exp(-r2 * h)
        w1 = -s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1)  # u2's weight on (eps1 - eps)
        w2 = -(target / r2) * (math.expm1(h) / h - 1)  # y''s weight on (eps2 - eps)
        calls.append(self._stage(s1, from_start(w1, -s2 * math.expm1(r2 * h) - w1), {}))
        calls.append(self._stage(s2, from_start(w2, last - w2, up), interval))
        return calls

    def _stage(self, level: float, update: Update, options: dict) -> Call:
        t = float(self.schedule.time_at_level(torch.tensor(level, dtype=F64)))
        return self.call_at_level(t, level, update, **options)
