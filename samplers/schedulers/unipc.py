"""UniPC: the unified predictor-corrector of Zhao et al. 2023, orders 1-3, B(h) variants bh1 and bh2.

Zhao, Bai, Rao, Zhou & Lu 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models" (NeurIPS). With ``lambda = log(alpha / sigma)``, a step from node ``s`` to ``t``
(``h = lambda_t - lambda_s``) of the data-prediction form integrates the linear part exactly and
corrects the first-order (DDIM) step with divided differences ``D1_i = (m_{s_i} - m_s) / r_i`` of the
estimates at earlier nodes, ``r_i = (lambda_{s_i} - lambda_s) / h`` (Alg. 2 and 3, written with
``hh = -h``; the noise-prediction form uses ``hh = h`` and ``sigma`` for ``alpha``)::

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{hh} - 1) m_s - alpha_t B(h) sum_i rho_i D1_i

* UniP-p (the predictor, eq. 9): nodes ``s_1 .. s_{p-1}`` before ``s``; ``rho`` solves the order
  conditions ``R_{p-1} rho = g_{p-1}`` (Theorem 3.1: ``R`` the Vandermonde matrix of the ``r_i``,
  ``g_k = k! phi_{k+1}(hh) hh / B(h)``); p = 2 uses ``rho = 1/2`` as the reference implementation does.
* UniC-p (the corrector, eq. 8): the same step over the interval just taken, with the model output
  ``m_t`` at the predicted ``x_t`` as one more node (``r = 1``), ``R_p rho = g_p`` (``rho = 1/2`` at
  p = 1). It costs no model call: the output computed at the predicted sample is reused. UniPC-p is of
  order p + 1 (Theorem 3.3), so ``order = 3`` for the default ``solver_order=2``.
* ``B(h) = hh`` (``bh1``) or ``e^{hh} - 1`` (``bh2``, the default; App. C).

**One fused row per call.** The corrector at call k and the predictor of call k - 1 start from the same
corrected sample and span the same interval, so they share the sample term and the ``m_{k-1}`` DDIM
term, and ``x^c_k = x_k + C_k - P_{k-1}``, where ``C_k`` and ``P_{k-1}`` are their ``D1`` parts (both
linear in the estimates). The predictor of call k from ``x^c_k`` is therefore one row in ``(x_k, m_k,
m_{k-1}, ..., m_{k-p})``: the corrected sample is never stored, and UniPC-3 weighs three earlier
estimates (history slots).

Warm-up, ``lower_order_final``, ``disable_corrector`` and the grids follow diffusers'
``UniPCMultistepScheduler``, so the two agree call by call. Two places where the reference returns
NaN are finite here: ``bh1`` stepping into clean data (``final_sigmas_type="zero"``: the first-order
step's limit, ``x0_hat``, is taken) and ``lower_order_final=False`` at that step (the order drops to
one wherever a node's log-SNR is infinite). From a flow schedule's ``t = 1`` (``alpha = 0``) the
first corrector with ``bh2`` is the trapezoidal rule in ``alpha / sigma``; ``bh1`` and the
noise-prediction form skip the corrector on that infinite interval.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch

from samplers.schedulers.flagged_multistep import FlaggedMultistepScheduler
from samplers.schedulers.multistep import Grid, StepRule

F64 = torch.float64
SOLVER_TYPES = ("bh1", "bh2")
ORDERS = (1, 2, 3)


def order_conditions(hh: float, order: int, solver_type: str) -> tuple[list[float], float, float]:
    """``(g [order], e^{hh} - 1, B(h))`` for the UniPC order conditions at ``hh`` (Theorem 3.1).

    ``g_k = k! hh phi_{k+1}(hh) / B(h)``, built with the recurrence ``hh phi_{k+1}(hh) = hh phi_k(hh) / hh - 1 / k!``
    (``hh phi_1(hh) = e^{hh} - 1``).
    """
    phi1 = math.expm1(hh)
    b_h = hh if solver_type == "bh1" else phi1
    term = phi1 / hh - 1  # hh phi_2(hh)
    factorial = 1.0
    g = []
    for k in range(1, order + 1):
        g.append(term * factorial / b_h)
        factorial *= k + 1
        term = term / hh - 1 / factorial
    return g, phi1, b_h


def _solve(ratios: list[float], g: list[float]) -> list[float]:
    """``rho`` with ``sum_i rho_i r_i^(k-1) = g_k`` (the Vandermonde system of the order conditions), float64."""
    r = torch.tensor(ratios, dtype=F64)
    matrix = torch.stack([r**k for k in range(len(ratios))])
    return torch.linalg.solve(matrix, torch.tensor(g, dtype=F64)).tolist()


class UniPCMultistepScheduler(FlaggedMultistepScheduler):
    """UniPC-p (``solver_order`` p = 1..3, default 2: UniPC-2, third order); registry name ``unipc``."""

    name = "unipc"
    paper = "Zhao et al. 2023, UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models"
    order = 3  # UniPC-p is of order p + 1 (Theorem 3.3); p = 2 by default
    stochastic = False
    uses_mu = True  # with use_flow_sigmas and use_dynamic_shifting, as diffusers' UniPC
    flow_top_offset = 1e-6

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
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: Sequence[int] = (),
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
        rho: float = 7.0,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if isinstance(solver_order, bool) or solver_order not in ORDERS:
            raise ValueError(f"solver_order must be one of {ORDERS}, got {solver_order!r}")
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in disable_corrector):
            raise ValueError(f"disable_corrector must list call indices (ints >= 0), got {disable_corrector!r}")
        if thresholding and not predict_x0:
            raise ValueError("thresholding clamps the data prediction: it needs predict_x0=True")
        self.check_common_config()
        self.check_grid_flags()
        self.estimate = "x0" if predict_x0 else "eps"

    # ---- orders -------------------------------------------------------------------------------------

    def predictor_orders(self, grid: Grid, start: int) -> list[int]:
        """UniP's order at each call: warm-up from ``start``, ``lower_order_final``, finite log-SNR nodes."""
        c = self.config
        n = len(grid)
        lam = grid.lam.tolist()
        orders = []
        for k in range(n):
            p = min(c.solver_order, n - k) if c.lower_order_final else c.solver_order
            p = min(p, k - start + 1) if k >= start else 1
            orders.append(self.finite_order(lam, k, k + 1, p))
        return orders

    # ---- rows ---------------------------------------------------------------------------------------

    def step_rules(self, grid: Grid, start: int) -> list[StepRule]:
        orders = self.predictor_orders(grid, start)
        skip = set(self.config.disable_corrector)
        rules = []
        previous: dict[int, float] = {}  # P_{k-1}: the D1 part of the last predictor, by estimate index
        for k in range(len(grid)):
            carry, predictor, correction = self._predictor(grid, k, orders[k])
            previous_correction, previous = previous, correction
            if carry is None:  # noise prediction out of alpha = 0: the DDIM step, x0_hat read from the output
                sigma_t, alpha_t = float(grid.sigma[k + 1]), float(grid.alpha[k + 1])
                rules.append(StepRule(sample=0.0, weights=(sigma_t,), extra={"x0": alpha_t}))
                continue
            weights: dict[int, float] = defaultdict(float)
            if k > start and (k - 1) not in skip:
                corrector = self._corrector(grid, k, orders[k - 1])
                if corrector is not None:  # x^c_k = x_k + C_k - P_{k-1}
                    for j, w in corrector.items():
                        weights[j] += carry * w
                    for j, w in previous_correction.items():
                        weights[j] -= carry * w
            for j, w in predictor.items():
                weights[j] += w
            rules.append(
                StepRule(sample=carry, weights=tuple(weights.get(k - j, 0.0) for j in range(k + 1 - min(weights))))
            )
        return rules

    def _interval(self, grid: Grid, s: int, t: int) -> tuple[float, float, float]:
        """``(hh, x-coefficient, scale)`` of the exponential-integrator step from node ``s`` to ``t``."""
        lam = grid.lam
        h = float(lam[t] - lam[s])
        if self.estimate == "x0":
            return -h, float(grid.sigma[t] / grid.sigma[s]), float(grid.alpha[t])
        return h, float(grid.alpha[t] / grid.alpha[s]), float(grid.sigma[t])

    def _ddim_weight(self, grid: Grid, s: int, t: int, hh: float, scale: float) -> float:
        """The first-order weight ``-scale (e^{hh} - 1)`` on ``m_s`` (its finite limit into clean data)."""
        if self.estimate == "eps" and float(grid.sigma[t]) == 0.0:
            # sigma_t (e^h - 1) -> alpha_t sigma_s / alpha_s as sigma_t -> 0
            return -float(grid.alpha[t] * grid.sigma[s] / grid.alpha[s])
        return -scale * math.expm1(hh)

    def _predictor(self, grid: Grid, k: int, order: int) -> tuple[float | None, dict[int, float], dict[int, float]]:
        """UniP-``order`` from call k: ``(x-coefficient, all weights, the D1 part)``, weights by estimate index.

        The x-coefficient is None for the noise-prediction step out of alpha = 0 (no finite form).
        """
        hh, carry, scale = self._interval(grid, k, k + 1)
        if hh == 0.0:  # the repeated final level: the identity
            return 1.0, {k: 0.0}, {}
        if not math.isfinite(carry):
            return None, {}, {}
        weights = {k: self._ddim_weight(grid, k, k + 1, hh, scale)}
        correction: dict[int, float] = {}
        if order >= 2:
            lam = grid.lam.tolist()
            h = lam[k + 1] - lam[k]
            ratios = [(lam[k - i] - lam[k]) / h for i in range(1, order)]
            g, _, b_h = order_conditions(hh, order, self.config.solver_type)
            rho = [0.5] if order == 2 else _solve(ratios, g[:-1])
            for i, (r, w) in enumerate(zip(ratios, rho, strict=True), start=1):
                correction[k - i] = -scale * b_h * w / r
                correction[k] = correction.get(k, 0.0) + scale * b_h * w / r
        for j, w in correction.items():
            weights[j] = weights.get(j, 0.0) + w
        return carry, weights, correction

    def _corrector(self, grid: Grid, k: int, order: int) -> dict[int, float] | None:
        """UniC-``order`` over the step into call k: the D1 part ``C_k`` by estimate index (None: no corrector)."""
        hh, _, scale = self._interval(grid, k - 1, k)
        if not math.isfinite(hh) and (self.estimate == "eps" or self.config.solver_type == "bh1"):
            return None  # B(h) is infinite on an interval out of alpha = 0 (bh1), or the form has no limit (eps)
        lam = grid.lam.tolist()
        g, _, b_h = order_conditions(hh, order, self.config.solver_type)
        if order == 1:
            rho, ratios = [0.5], [1.0]
        else:
            h = lam[k] - lam[k - 1]
            ratios = [(lam[k - 1 - i] - lam[k - 1]) / h for i in range(1, order)] + [1.0]
            rho = _solve(ratios, g)
        weights: dict[int, float] = defaultdict(float)
        for i, (r, w) in enumerate(zip(ratios[:-1], rho[:-1], strict=True), start=1):  # D1 on earlier nodes
            weights[k - 1 - i] -= scale * b_h * w / r
            weights[k - 1] += scale * b_h * w / r
        weights[k] -= scale * b_h * rho[-1]  # the new node: D1_t = m_k - m_{k-1}
        weights[k - 1] += scale * b_h * rho[-1]
        return dict(weights)
