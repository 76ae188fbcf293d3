"""SA-Solver: the stochastic Adams predictor-corrector of Xue et al. 2023.

Xue, Yi, Chen, Wei, Xu, Chen, Zhang & Luo 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of
Diffusion Models" (NeurIPS). The variance-controlled reverse SDE with noise scale ``tau(t)`` (eq. 7;
``tau = 0`` is the probability-flow ODE, ``tau = 1`` the reverse SDE) is integrated with its linear part
exact and the data estimate ``m`` interpolated in ``lambda = log(alpha / sigma)``. With ``c = 1 + tau^2``
and ``h = lambda_t - lambda_s``, the data-prediction step is (Prop. 4.1 / 4.2)::

    x_t = e^{-tau^2 h} (sigma_t / sigma_s) x_s + c alpha_t sum_i [int_{-h}^0 e^{c v} L_i(lambda_t + v) dv] m_i
          + sigma_t sqrt(1 - e^{-2 tau^2 h}) z

* SA-Predictor (stochastic Adams-Bashforth, order p): ``L_i`` the Lagrange basis through the last p
  nodes ``lambda_k, lambda_{k-1}, ...``;
* SA-Corrector (stochastic Adams-Moulton, order q): the same step over the interval just taken, from
  the corrected sample, with the model output at the predicted sample as the newest node and **the
  same noise** ``z`` as the predictor; no extra model call.
* The noise-prediction form (``algorithm_type="noise_prediction"``) interpolates eps instead::

      x_t = (alpha_t / alpha_s) x_s - c sigma_t sum_i [int_{-h}^0 e^{-v} L_i dv] eps_i + tau sigma_t sqrt(e^{2h} - 1) z

At order 2 the data-prediction form adds the reference's correction term (an ``O(h^3)`` change that keeps
the order; UniPC's ``B(h)`` adjustment, quoted from the official code). The integrals are closed forms
in float64 (:func:`exp_poly_integral`), centred at ``lambda_t`` so nothing overflows on zero-SNR grids.

**One fused row per call, noise used once.** The corrector at call k and the predictor of call k - 1 share
their sample term, ``tau`` and the noise tensor, so ``x^c_k = x_k + G^C_k - G^P_{k-1}`` with ``G`` their
estimate-linear parts: the predictor's noise cancels out of the correction, each call draws one
independent normal (Brownian interval: its own step), and the corrected sample is never stored.

``tau``: ``tau`` on the calls whose model time lies in ``tau_interval`` (inclusive), 0 elsewhere. The
default (``tau_interval=None``) is diffusers' ``tau_func``, 1 for timesteps 200..800, where the model is fed
diffusers' timesteps (a discrete table, or ``use_flow_sigmas``), and the whole run on other schedules.

Orders, warm-up and grids follow diffusers' SASolverScheduler (whose default grid ends at the first
training timestep: ``final_sigmas_type="sigma_min"``, set by ``from_diffusers``; ours ends at clean data
by default). With ``tau = 0`` the ODE is solved at order ``min(corrector_order, 3)`` (the first
corrector is of order at most 2, as in the reference), so ``order = 2`` for the default orders.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from samplers.schedulers.flagged_multistep import FlaggedMultistepScheduler, exp_poly_integral, lagrange_monomials
from samplers.schedulers.multistep import Grid, StepRule
from samplers.schedules import DiscreteVPSchedule

ORDERS = (1, 2, 3, 4)
ALGORITHMS = ("data_prediction", "noise_prediction")
DIFFUSERS_TAU_INTERVAL = (200.0, 800.0)  # diffusers' default tau_func: 1 for 200 <= t <= 800


class SASolverScheduler(FlaggedMultistepScheduler):
    """SA-Solver with predictor order ``predictor_order`` and corrector order ``corrector_order`` (1..4)."""

    name = "sa_solver"
    kind = "sde"
    paper = "Xue et al. 2023, SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models, Prop. 4.1-4.2"
    order = 2  # the SDE is integrated at strong order ~1; the ODE (tau = 0) at the predictor-corrector order
    stochastic = True
    stochastic_when = "tau > 0 on some call (tau_interval)"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        predictor_order: int = 2,
        corrector_order: int = 2,
        prediction_type: str = "epsilon",
        tau: float = 1.0,
        tau_interval: Sequence[float] | None = None,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "data_prediction",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        lambda_min_clipped: float = -math.inf,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rho: float = 7.0,
        rescale_betas_zero_snr: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        for label, value in (("predictor_order", predictor_order), ("corrector_order", corrector_order)):
            if isinstance(value, bool) or value not in ORDERS:
                raise ValueError(f"{label} must be one of {ORDERS}, got {value!r}")
        if algorithm_type not in ALGORITHMS:
            raise ValueError(f"algorithm_type must be one of {ALGORITHMS}, got {algorithm_type!r}")
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
            raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
        if tau_interval is not None and (
            len(tau_interval) != 2 or not all(isinstance(v, (int, float)) for v in tau_interval)
        ):
            raise ValueError(f"tau_interval must be [low, high] model times or None, got {tau_interval!r}")
        if thresholding and algorithm_type != "data_prediction":
            raise ValueError("thresholding clamps the data prediction: it needs algorithm_type='data_prediction'")
        self.check_common_config()
        self.check_grid_flags()
        self.estimate = "x0" if algorithm_type == "data_prediction" else "eps"

    # ---- tau and orders -----------------------------------------------------------------------------

    def taus(self, grid: Grid) -> list[float]:
        """``tau`` of each call's step (its model time in ``tau_interval``), as diffusers' ``tau_func(t)``."""
        interval = self.config.tau_interval
        if interval is None:
            if not (isinstance(self.schedule, DiscreteVPSchedule) or self.flow_flagged):
                return [float(self.config.tau)] * len(grid)  # no training timesteps to count in
            interval = DIFFUSERS_TAU_INTERVAL
        low, high = (float(v) for v in interval)
        return [float(self.config.tau) if low <= float(t) <= high else 0.0 for t in grid.t]

    def step_orders(self, grid: Grid, start: int) -> tuple[list[int], list[int]]:
        """``(predictor orders, corrector orders)`` per call; the corrector at call k uses entry k - 1."""
        c = self.config
        n = len(grid)
        lam = grid.lam.tolist()
        predictor, corrector = [], []
        for k in range(n):
            p = min(c.predictor_order, n - k) if c.lower_order_final else c.predictor_order
            q = min(c.corrector_order, n - k + 1) if c.lower_order_final else c.corrector_order
            done = k - start if k >= start else 0
            p, q = min(p, done + 1), min(q, done + 2)
            predictor.append(self.finite_order(lam, k, k + 1, p))
            corrector.append(self.finite_order(lam, k + 1, k + 1, q))  # nodes k+2-q .. k+1 (the next call's)
        return predictor, corrector

    # ---- rows ---------------------------------------------------------------------------------------

    def step_rules(self, grid: Grid, start: int) -> list[StepRule]:
        predictor_orders, corrector_orders = self.step_orders(grid, start)
        taus = self.taus(grid)
        levels = (grid.sigma / grid.alpha).tolist()
        rules = []
        previous: dict[int, float] = {}  # G^P_{k-1}: the estimate part of the last predictor
        for k in range(len(grid)):
            if self.estimate == "eps" and float(grid.alpha[k]) == 0.0:
                rules.append(self._from_pure_noise(grid, k, taus[k]))
                previous = {}
                continue
            carry, predictor, noise = self._step(grid, k, k + 1, predictor_orders[k], taus[k], corrector=False)
            weights: dict[int, float] = defaultdict(float)
            # no corrector on an interval out of alpha = 0 in the noise-prediction form (that step is DDIM's)
            if k > start and not (self.estimate == "eps" and float(grid.alpha[k - 1]) == 0.0):
                _, corrector, _ = self._step(grid, k - 1, k, corrector_orders[k - 1], taus[k - 1], corrector=True)
                for j, w in corrector.items():  # x^c_k = x_k + G^C_k - G^P_{k-1}
                    weights[j] += carry * w
                for j, w in previous.items():
                    weights[j] -= carry * w
            for j, w in predictor.items():
                weights[j] += w
            previous = predictor
            low = min(weights)
            interval = (levels[k], levels[k + 1]) if noise else None
            rules.append(
                StepRule(
                    sample=carry,
                    weights=tuple(weights.get(k - j, 0.0) for j in range(k + 1 - low)),
                    noise=noise,
                    brownian=interval,
                )
            )
        return rules

    def _step(
        self, grid: Grid, s: int, t: int, order: int, tau: float, corrector: bool
    ) -> tuple[float, dict[int, float], float]:
        """``(x-coefficient, estimate weights by call index, noise coefficient)`` of the step from node s to t.

        Interpolation nodes: ``t, t-1, ...`` for the corrector (``t`` is the new call), ``s, s-1, ...`` for
        the predictor; ``order`` of them.
        """
        lam = grid.lam.tolist()
        a_s, s_s = float(grid.alpha[s]), float(grid.sigma[s])
        a_t, s_t = float(grid.alpha[t]), float(grid.sigma[t])
        h = lam[t] - lam[s]
        newest = t if corrector else s
        nodes = [newest - i for i in range(order)]
        if h == 0.0:  # the repeated final level: the identity
            return 1.0, {}, 0.0
        c = 1.0 + tau * tau
        if self.estimate == "x0":
            damping = tau * tau * h if tau else 0.0  # tau = 0 on an infinite interval: no damping (not 0 * inf)
            carry = math.exp(-damping) * s_t / s_s
            noise = s_t * math.sqrt(-math.expm1(-2 * damping))
            rate, scale = c, c * a_t
        else:
            carry = a_t / a_s
            sig_eh = a_t * s_s / a_s  # sigma_t e^h, finite as sigma_t -> 0
            noise = tau * math.sqrt(max(sig_eh * sig_eh - s_t * s_t, 0.0))
            rate, scale = -1.0, -c * s_t
        if self.estimate == "eps" and s_t == 0.0:  # into clean data: x0_hat (the DDIM limit; tau has no limit)
            return carry, {s: -sig_eh}, 0.0
        if order == 1:
            polys = [[1.0]]
        else:
            polys = lagrange_monomials([lam[j] - lam[t] for j in nodes])
        lower = -h if math.isfinite(h) else -math.inf
        weights = {j: scale * exp_poly_integral(p, rate, lower) for j, p in zip(nodes, polys, strict=True)}
        if self.estimate == "x0" and order == 2:
            # the reference's O(h^3) term (UniPC-style), on the newest node and against the other
            decay = math.exp(-c * h)
            if corrector:
                extra = c * a_t * (h / 2 - (h * c - 1 + decay) / (c * c * h))
            else:
                extra = c * a_t * (h * h / 2 - (h * c - 1 + decay) / (c * c)) / (lam[s] - lam[s - 1])
            weights[nodes[0]] += extra
            weights[nodes[1]] -= extra
        return carry, weights, noise

    def _from_pure_noise(self, grid: Grid, k: int, tau: float) -> StepRule:
        """Noise prediction out of alpha = 0: only the ODE step (DDIM, x0_hat from the output) has a limit."""
        if tau:
            raise ValueError(
                "algorithm_type='noise_prediction' with tau > 0 has no step out of alpha = 0 (its noise term "
                "grows like e^h); use algorithm_type='data_prediction', or tau = 0 there (tau_interval)"
            )
        return StepRule(sample=0.0, weights=(float(grid.sigma[k + 1]),), extra={"x0": float(grid.alpha[k + 1])})
