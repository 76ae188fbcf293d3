"""DEIS: the diffusion exponential integrator sampler of Zhang & Chen 2023, log-rho multistep, orders 1-3.

Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator" (ICLR). In the
variables ``rho = sigma / alpha`` (the sigma-space level) and ``y = x / alpha`` the probability-flow
ODE is ``dy / d rho = eps(x)`` exactly, so a step from node ``s`` to ``t`` is (eq. 14, "rhoAB")::

    x_t = alpha_t (x_s / alpha_s + sum_j C_j eps_{k-j}),     C_j = int_{rho_s}^{rho_t} L_j(log rho) d rho

with ``L_j`` the Lagrange basis through the last ``order`` nodes in ``u = log rho`` (the "logrho"
polynomial extrapolation of diffusers' DEISMultistepScheduler, ``solver_type="logrho"``). Order 1 is
DDIM. The integrals are taken in closed form in float64 (``int e^u P(u) du``, :func:`exp_poly_integral`). A
step into clean data (``rho_t = 0``, an infinite step in log-SNR) is first order, ``x0_hat``: extrapolating
a polynomial in ``log rho`` down to ``rho = 0`` would not shrink with the step size.

**Order.** DEIS-p has local error ``O(h^(p+1))`` in its steady state, but the first step is first order
(and the second second order), as in the reference: with a uniform step that warm-up error is
``O(h^2)``, so the global order of DEIS-3 tends to 2 as the steps shrink (measured 3.3, 2.9, 2.4 from 10
to 80 steps on a uniform log-SNR grid; see the test). On grids whose first steps are short in
log-SNR (Karras spacing) DEIS-3 stays third order over the usual step counts. ``order = 2`` is the
default ``solver_order``'s.

Grids, warm-up and ``lower_order_final`` (only below 15 steps) follow diffusers' DEISMultistepScheduler;
its default grid ends at the first training timestep (``final_sigmas_type="sigma_min"`` here, which
``from_diffusers`` sets), ours at clean data by default. With ``thresholding`` the noise estimates are
rebuilt from the clamped x0 (as the reference does), which keeps each call's sample and x0 estimate: two
history tensors per earlier call, four at order 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from samplers import levels as lv
from samplers.plan import ESTIMATE, SAMPLE, Call, Update
from samplers.schedulers.flagged_multistep import FlaggedMultistepScheduler, exp_poly_integral, lagrange_monomials
from samplers.schedulers.multistep import Grid, StepRule

ORDERS = (1, 2, 3)


def logrho_weights(u: list[float], u_t: float, rho_s: float) -> list[float]:
    """``C_j = int_{rho_s}^{rho_t} L_j(log rho) d rho`` for the nodes ``u = [log rho_s, log rho_{s-1}, ...]``.

    Centred at ``u_s`` (``v = u - u_s``): ``C_j = -rho_s int_{u_t - u_s}^0 e^v L_j(u_s + v) dv``; ``u_t = -inf``
    (a step into clean data) is allowed.
    """
    nodes = [v - u[0] for v in u]
    lower = u_t - u[0]
    return [-rho_s * exp_poly_integral(poly, 1.0, lower) for poly in lagrange_monomials(nodes)]


class DEISMultistepScheduler(FlaggedMultistepScheduler):
    """DEIS-p (``solver_order`` p = 1..3, default 2) with log-rho extrapolation; registry name ``deis``."""

    name = "deis"
    paper = "Zhang & Chen 2023, Fast Sampling of Diffusion Models with Exponential Integrator, eq. 14 (rhoAB)"
    order = 2
    stochastic = False
    uses_mu = True  # with use_flow_sigmas and use_dynamic_shifting: flow_shift = e^mu, as diffusers' DEIS
    estimate = "eps"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "deis",
        solver_type: str = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        final_sigmas_type: str = "zero",
        rho: float = 7.0,
        rescale_betas_zero_snr: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if isinstance(solver_order, bool) or solver_order not in ORDERS:
            raise ValueError(f"solver_order must be one of {ORDERS}, got {solver_order!r}")
        if algorithm_type != "deis":
            raise ValueError(f"algorithm_type must be 'deis' (the data-free log-rho DEIS), got {algorithm_type!r}")
        if solver_type != "logrho":
            raise ValueError(f"solver_type must be 'logrho', got {solver_type!r}")
        self.check_common_config()
        self.check_grid_flags()

    # ---- orders and rows ----------------------------------------------------------------------------

    def step_orders(self, grid: Grid, start: int) -> list[int]:
        """Warm-up from ``start``; first order on the last call and at most second on the one before when
        ``lower_order_final`` and fewer than 15 calls (the reference's rule); finite log-SNR at every node and
        at the step's end (first order into clean data)."""
        c = self.config
        n = len(grid)
        lam = grid.lam.tolist()
        short = c.lower_order_final and n < 15
        orders = []
        for k in range(n):
            o = min(c.solver_order, k - start + 1) if k >= start else 1
            if short and k == n - 1:
                o = 1
            elif short and k == n - 2:
                o = min(o, 2)
            orders.append(self.finite_order(lam, k, k + 1, o))
        return orders

    def step_rules(self, grid: Grid, start: int) -> list[StepRule]:
        return [self.step_rule(grid, k, o) for k, o in enumerate(self.step_orders(grid, start))]

    def step_rule(self, grid: Grid, k: int, order: int) -> StepRule:
        """Call k's update: ``x_{k+1} = (alpha_t / alpha_s) x_k + alpha_t sum_j C_j eps_{k-j}``."""
        alpha, sigma = grid.alpha.tolist(), grid.sigma.tolist()
        a_s, s_s, a_t, s_t = alpha[k], sigma[k], alpha[k + 1], sigma[k + 1]
        if a_s == 0.0:  # out of pure noise (rho = inf): the DDIM step, x0_hat read from the output
            return StepRule(sample=0.0, weights=(s_t,), extra={"x0": a_t})
        u = [math.log(sigma[k - j] / alpha[k - j]) for j in range(order)]
        u_t = math.log(s_t / a_t) if s_t > 0 else -math.inf
        weights = logrho_weights(u, u_t, s_s / a_s)
        return StepRule(sample=a_t / a_s, weights=tuple(a_t * w for w in weights))

    # ---- thresholding: noise estimates rebuilt from the clamped x0 ---------------------------------

    def multistep_calls(self, levels: lv.Levels, start: int) -> list[Call]:
        if not self.config.thresholding:
            return super().multistep_calls(levels, start)
        # eps_j = (x_j - alpha_j x0_j) / sigma_j with the clamped x0_j: keep every call's sample and x0
        grid = self.grid(levels)
        rules = self.step_rules(grid, start)
        alpha, sigma = grid.alpha.tolist(), grid.sigma.tolist()
        needed = {k - j for k, rule in enumerate(rules) for j in range(1, len(rule.weights)) if rule.weights[j]}
        calls = []
        for k, rule in enumerate(rules):
            sample, x0 = rule.sample + rule.weights[0] / sigma[k], -rule.weights[0] * alpha[k] / sigma[k]
            x0 += rule.extra.get("x0", 0.0)
            history: dict[str, float] = {}
            for j, w in enumerate(rule.weights[1:], start=1):
                if w:
                    history[f"x{k - j}"] = w / sigma[k - j]
                    history[f"m{k - j}"] = -w * alpha[k - j] / sigma[k - j]
            keep = {f"x{k}": SAMPLE, f"m{k}": ESTIMATE} if k in needed else {}
            update = Update(sample=sample, x0=x0, history=history)
            calls.append(levels.call(k, update, keep=keep, estimate="x0"))
        return calls
