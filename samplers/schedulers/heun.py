"""Heun's second-order method with EDM's stochastic churn (Karras et al. 2022, Algorithm 2).

Per step i (sigma-space levels ``sigma_i``, ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` inside
``[S_tmin, S_tmax]``, ``sigma_hat_i = (1 + gamma_i) sigma_i``)::

    x_hat   = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z           (lines 5-6)
    d_1     = (x_hat - D(x_hat, sigma_hat)) / sigma_hat              (line 7)
    x_pred  = x_hat + (sigma_{i+1} - sigma_hat) d_1                   (line 8, one call)
    d_2     = (x_pred - D(x_pred, sigma_{i+1})) / sigma_{i+1}         (line 10)
    x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d_1 + d_2) / 2       (line 11, a second call)

The churn noise of step i+1 is added at the end of step i, so every call's model time is the
level the model actually sees (``timesteps`` lists ``sigma_hat_i`` then ``sigma_{i+1}``, as
diffusers' HeunDiscreteScheduler lists its doubled timesteps). The step into sigma = 0 is Euler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from samplers.protocol import Plan, coefficient_rows, init_args
from samplers.schedulers._grid import times_for_sigmas
from samplers.schedulers._sigma import SigmaSpaceScheduler


class HeunDiscreteScheduler(SigmaSpaceScheduler):
    name = "heun"
    family = "any"
    order = 2
    stochastic = False  # True when s_churn > 0
    stochastic_when = "s_churn > 0"
    nfe_per_step = 2
    supports_per_sample_timesteps = False

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if s_churn < 0 or s_noise < 0:
            raise ValueError(f"s_churn and s_noise must be >= 0, got s_churn={s_churn}, s_noise={s_noise}")
        super().__init__(**init_args(locals()))
        self.stochastic = s_churn > 0

    def _make_plan(self, num_inference_steps, timesteps, sigmas, mu) -> Plan:
        c = self.config
        t_grid, sigma = self._sigma_grid(num_inference_steps, timesteps, sigmas)
        n = len(sigma)
        in_band = (sigma >= c.s_tmin) & (sigma <= c.s_tmax)
        gamma = torch.where(
            in_band, torch.full_like(sigma, min(c.s_churn / n, math.sqrt(2) - 1)), torch.zeros_like(sigma)
        )
        sigma_hat = sigma * (1 + gamma)
        churn = c.s_noise * torch.sqrt(sigma_hat**2 - sigma**2)  # std added to reach sigma_hat (line 6)
        t_hat = torch.where(gamma > 0, times_for_sigmas(self, sigma_hat), t_grid)

        levels, times, rows, store, use = [], [], [], [], []
        for i in range(n):
            s_hat = float(sigma_hat[i])
            s_next = float(sigma[i + 1]) if i + 1 < n else 0.0
            next_churn = float(churn[i + 1]) if i + 1 < n else 0.0
            h = s_next - s_hat
            levels.append(s_hat)
            times.append(float(t_hat[i]))
            if s_next == 0.0:  # Euler into sigma = 0: x_next = x0_hat
                rows.append(dict(a=0.0, b=1.0))
                store.append(())
                use.append(())
                continue
            # first call: x_pred = x_hat + h (x_hat - x0_1) / s_hat  (line 8)
            rows.append(dict(a=1 + h / s_hat, b=-h / s_hat))
            store.append(("sample", "x0"))
            use.append(())
            # second call at s_next on x_pred, with history (x_hat, x0_1)  (line 11, then next churn)
            levels.append(s_next)
            times.append(float(t_grid[i + 1]))
            rows.append(
                dict(
                    a=h / (2 * s_next), b=-h / (2 * s_next), h0=1 + h / (2 * s_hat), h1=-h / (2 * s_hat), c=next_churn
                )
            )
            store.append(())
            use.append(("sample", "x0"))

        level_t = torch.tensor(levels, dtype=torch.float64)
        t_calls = torch.tensor(times, dtype=torch.float64)
        p, q, scale, model_alpha, model_sigma = self._model_space(t_calls, level_t)
        table = coefficient_rows(len(levels), p=p, q=q)
        for i, r in enumerate(rows):
            for name, value in r.items():
                table[i, _col(name)] = value
        self.sigmas = torch.cat([sigma, torch.zeros(1, dtype=sigma.dtype)]).to(torch.float32)
        first = float(sigma[0])
        init = math.sqrt(first**2 + float(churn[0]) ** 2)
        return Plan(
            timesteps=t_calls,
            rows=table,
            input_scale=scale,
            model_alpha=model_alpha,
            model_sigma=model_sigma,
            store=store,
            use=use,
            init_noise_sigma=self._init_sigma(init),
        )

    @property
    def state_in_first_order(self) -> bool:
        """True when the next call is the first of a step (diffusers exposes this for Heun)."""
        plan = self._require_plan()
        i = self._state.step_index
        return i >= len(plan.use) or not plan.use[i]


def _col(name: str) -> int:
    from samplers.ops.reference import COEFF

    return COEFF[name]
