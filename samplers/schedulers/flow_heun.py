"""Heun's method on the rectified-flow ODE (Liu et al. 2022, "Flow Straight and Fast"; Heun's second-order
step as in Karras et al. 2022, Algorithm 1; diffusers' ``FlowMatchHeunDiscreteScheduler``).

In flow coordinates ``x = (1 - tau) x0 + tau eps`` the ODE is ``dx / dtau = v`` with the velocity
``v = eps - x0 = (x - x0_hat) / tau``. Per step from ``tau_i`` to ``tau_{i+1}`` (``h = tau_{i+1} - tau_i``)::

    x_pred  = x_i + h v(x_i, tau_i)                                          (call 1: Euler)
    x_{i+1} = x_i + h (v(x_i, tau_i) + v(x_pred, tau_{i+1})) / 2 = (x_i + x_pred) / 2 + h v(x_pred) / 2   (call 2)

and the step into ``tau = 0`` is one Euler call (``x = x0_hat``). Grids are those of
:class:`~samplers.schedulers.flow_euler.FlowMatchEulerDiscreteScheduler` (SD3's shift, diffusers' double
shift of ``set_timesteps(n)``, dynamic ``mu``). On another schedule the sample lives in the same flow
coordinates, ``x_flow = x_model / (alpha + sigma)`` with ``tau = sigma / (alpha + sigma)``, so the
sampler is Heun in flow time on any model.
"""

from __future__ import annotations

import torch

from samplers import levels as lv
from samplers.plan import SAMPLE, Call, Update
from samplers.schedulers.flow_euler import FlowMatchEulerDiscreteScheduler


class FlowMatchHeunDiscreteScheduler(FlowMatchEulerDiscreteScheduler):
    name = "flow_heun"
    kind = "ode-single-step"
    paper = "Liu et al. 2022, Flow Straight and Fast; Heun's method (Karras et al. 2022, Alg. 1)"
    order = 2
    nfe_per_step = 2
    stochastic = False
    stochastic_when = ""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        prediction_type: str = "flow",
        schedule: str = "flow",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        scale = levels.alpha + levels.sigma  # model space -> flow coordinates
        tau = (levels.sigma / scale).tolist() + [0.0]
        calls = []
        for i in range(len(levels)):
            h = tau[i + 1] - tau[i]
            if tau[i + 1] == 0.0:  # Euler into tau = 0: x = x0_hat
                calls.append(self._flow_call(levels, i, Update(x0=1.0)))
                continue
            first = Update(sample=1 + h / tau[i], x0=-h / tau[i])
            calls.append(self._flow_call(levels, i, first, keep={"x_i": SAMPLE}))
            second = Update(sample=0.5 + h / (2 * tau[i + 1]), x0=-h / (2 * tau[i + 1]), history={"x_i": 0.5})
            calls.append(self._flow_call(levels, i + 1, second))
        return calls

    def _flow_call(self, levels: lv.Levels, i: int, update: Update, **options) -> Call:
        """A call at level ``i`` whose sample is in flow coordinates (the model sees ``(alpha + sigma) x``)."""
        alpha, sigma = float(levels.alpha[i]), float(levels.sigma[i])
        return Call(float(levels.t[i]), alpha, sigma, update, input_scale=alpha + sigma, **options)

    def initial_sigma(self, levels: lv.Levels) -> float:
        alpha, sigma = float(levels.alpha[0]), float(levels.sigma[0])
        return (alpha * alpha + sigma * sigma) ** 0.5 / (alpha + sigma)

    def working_alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, sigma = super().working_alpha_sigma(t)
        return alpha / (alpha + sigma), sigma / (alpha + sigma)


__all__ = ["FlowMatchHeunDiscreteScheduler"]
