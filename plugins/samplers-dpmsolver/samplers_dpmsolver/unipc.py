"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"): the UniP-p predictor with the UniC corrector, B(h) = e^h - 1 ("bh2") or h ("bh1"),
data prediction, orders 1-2.

Per call ``k`` the model is evaluated at the predicted ``x_k`` (giving ``m_k``), then

* UniC corrects ``x_k`` with ``m_k`` at no extra model call: ``x_k^c = x_k + alpha_k B(h) (P_{k-1} - C_k)``,
  where ``P_{k-1}`` is the higher-order part the predictor added on the way to ``x_k`` and ``C_k`` the
  corrector's (both linear in ``m_k, m_{k-1}, m_{k-2}``; weights solve the order conditions
  ``R rho = g / B(h)`` with ``R`` the Vandermonde matrix of step ratios);
* UniP steps from ``x_k^c``:
  ``x_{k+1} = (sigma_{k+1}/sigma_k) x_k^c - alpha_{k+1} (e^{-h} - 1) m_k - alpha_{k+1} B(h) P_k``.

Both are linear in ``(x_k, m_k, m_{k-1}, m_{k-2})``, so the composition is one fused-update row per
call with two x0 history tensors; the corrected sample never has to be stored. UniPC-2 (the
default) is third order: second-order predictor plus one order from the corrector.
Warm-up and the final step follow diffusers' ``UniPCMultistepScheduler``, so the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from samplers.protocol import init_args
from samplers_dpmsolver._multistep import Grid, MultistepScheduler

F64 = torch.float64
SOLVER_TYPES = ("bh1", "bh2")


def _order_weights(hh: torch.Tensor, order: int, solver_type: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(g [order], h_phi_1, B)`` for the order conditions at ``hh = -h``.

    ``h_phi_1 = e^{hh} - 1``; ``g_i = i! phi_{i+1}(hh) hh / B`` built by the phi-function recurrence
    ``phi_{i+1}(x) = (phi_i(x) - 1/i!) / x`` (Zhao et al. 2023, Theorem 3.1 and App. B).
    """
    h_phi_1 = torch.special.expm1(hh)
    b_h = h_phi_1 if solver_type == "bh2" else hh
    term = h_phi_1 / hh - 1  # hh * phi_2(hh)
    factorial = 1.0
    g = []
    for i in range(1, order + 1):
        g.append(term * factorial / b_h)
        factorial *= i + 1
        term = term / hh - 1 / factorial
    return torch.stack(g) if g else torch.zeros(0, dtype=F64), h_phi_1, b_h


class UniPCMultistepScheduler(MultistepScheduler):
    """UniPC-p with B(h) variants; registry name ``unipc``."""

    name = "unipc"
    order = 3
    stochastic = False

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
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: Sequence[int] = (),
        use_karras_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        final_sigmas_type: str = "zero",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if solver_order not in (1, 2):
            # order 3 would need m_{k-3} as well: three history tensors, the fused update has two
            raise ValueError(f"solver_order must be 1 or 2 for UniPC here, got {solver_order!r}")
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
        if not all(isinstance(i, int) for i in disable_corrector):
            raise ValueError(f"disable_corrector must be a list of step indices (ints), got {disable_corrector!r}")
        super().__init__(**init_args(locals()))
        self._check_common_config()
        self.order = solver_order + 1

    def _predictor_orders(self, grid: Grid, start: int) -> list[int]:
        n = len(grid.t)
        lam = grid.lam
        orders = []
        for k in range(n):
            o = min(self.config.solver_order, n - k) if self.config.lower_order_final else self.config.solver_order
            o = min(o, k - start + 1) if k >= start else 1
            while o > 1 and not bool(torch.isfinite(lam[k - o + 1 : k + 2]).all()):
                o -= 1
            orders.append(o)
        return orders

    def _solver_columns(self, grid: Grid, start: int) -> dict[str, torch.Tensor]:
        n = len(grid.t)
        lam, alpha, sigma = grid.lam, grid.alpha, grid.sigma
        kind = self.config.solver_type
        skip = set(self.config.disable_corrector)
        orders = self._predictor_orders(grid, start)
        cols = {name: torch.zeros(n, dtype=F64) for name in ("a", "b", "h0", "h1", "c")}
        pred_res = [torch.zeros(2, dtype=F64) for _ in range(n)]  # P_k on (m_k, m_{k-1})
        for k in range(n):
            # ---- UniC: x_k^c = x_k + K . (m_k, m_{k-1}, m_{k-2}) ----
            correction = torch.zeros(3, dtype=F64)
            if k > start and (k - 1) not in skip:
                c_order = orders[k - 1]
                while c_order > 1 and not bool(torch.isfinite(lam[k - c_order : k + 1]).all()):
                    c_order -= 1
                h = lam[k] - lam[k - 1]
                g, _, b_h = _order_weights(-h, c_order, kind)
                if c_order == 1:
                    corr = torch.tensor([0.5, -0.5, 0.0], dtype=F64)
                else:
                    r = (lam[k - 2] - lam[k - 1]) / h
                    rho = torch.linalg.solve(
                        torch.stack([torch.ones(2, dtype=F64), torch.stack([r, torch.ones((), dtype=F64)])]), g
                    )
                    corr = rho[0] * torch.tensor([0.0, -1.0, 1.0], dtype=F64) / r + rho[1] * torch.tensor(
                        [1.0, -1.0, 0.0], dtype=F64
                    )
                previous = torch.cat([torch.zeros(1, dtype=F64), pred_res[k - 1]])
                correction = alpha[k] * b_h * (previous - corr)
            # ---- UniP from x_k^c ----
            h = lam[k + 1] - lam[k]
            _, h_phi_1, b_h = _order_weights(-h, 0, kind)
            if orders[k] == 2:
                r = (lam[k - 1] - lam[k]) / h
                pred_res[k] = 0.5 * torch.tensor([-1.0, 1.0], dtype=F64) / r
            ratio = sigma[k + 1] / sigma[k]
            step = torch.zeros(3, dtype=F64)
            step[0] = -alpha[k + 1] * h_phi_1
            if orders[k] == 2:
                step[:2] -= alpha[k + 1] * b_h * pred_res[k]
            weights = step + ratio * correction
            cols["a"][k] = ratio
            cols["b"][k], cols["h0"][k], cols["h1"][k] = weights
        return cols
