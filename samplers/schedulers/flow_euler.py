"""Euler on the rectified-flow ODE ``dx/dt = v`` (Liu et al. 2022; Esser et al. 2024 for the shift).

``x_{t'} = x_t + (t' - t) v_hat``, with ``v = eps - x0``; written through ``(x0_hat, eps_hat)`` this is
``schedules.ddim_transition`` at eta = 0 (the two coincide exactly, since both interpolate linearly in
t). Times are shifted by SD3's ``shift`` (eq. 23) or, with ``use_dynamic_shifting``, by the
resolution-dependent ``mu`` given to ``set_timesteps``.

With ``stochastic_sampling`` each step re-noises instead (diffusers' FlowMatchEulerDiscreteScheduler option):
``x_{t'} = alpha_{t'} x0_hat + sigma_{t'} z``, a fresh draw from ``q(x_{t'} | x0_hat)``; the last step returns
``x0_hat``. This is not a consistent sampler of the data: with the exact denoiser every step loses
``alpha_{t'}^2 Var[x0 | x_t]`` of variance whatever the step size, and as steps grow the samples' variance
tends to half the data's (measured 0.31, 0.44, 0.48, 0.49 of it at 10, 50, 200, 800 steps). It is kept for
parity with diffusers (models tuned for it), not as an SDE solver.

Grid convention (diffusers' FlowMatch family): ``sigmas=`` are flow times ``t`` in (0, 1] and
``timesteps`` are ``t * num_train_timesteps``. On another schedule (discrete VP, VE, EDM, ...) the
same flow times mean the same noise-to-signal ratio ``t / (1 - t)``, clipped to the levels that
schedule reaches, so the sampler is Euler in flow time on any model.
"""

from __future__ import annotations

import numpy as np
import torch

from samplers import grids, schedules
from samplers import levels as lv
from samplers.plan import Call, Update
from samplers.protocol import Scheduler
from samplers.schedules import NoiseSchedule, RectifiedFlowSchedule

F64 = torch.float64


class FlowMatchEulerDiscreteScheduler(Scheduler):
    name = "flow_euler"
    family = "any"  # flow times on any schedule (issue 11: exact-oracle tests on every family)
    kind = "ode-single-step"
    paper = "Liu et al. 2022, Flow Straight and Fast; Esser et al. 2024 (SD3) eq. 23 for the shift"
    order = 1
    stochastic = True  # only with stochastic_sampling
    stochastic_when = "stochastic_sampling"
    uses_mu = True  # pipelines (SD3, Flux) pass mu on every call; it applies with use_dynamic_shifting

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        shift_terminal: float | None = None,
        time_shift_type: str = "exponential",
        prediction_type: str = "flow",
        schedule: str = "flow",
        schedule_kwargs: dict | None = None,
        stochastic_sampling: bool = False,
    ) -> None:
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {time_shift_type!r}")
        if shift_terminal is not None and not 0 < shift_terminal < 1:
            raise ValueError(f"shift_terminal must be in (0, 1), got {shift_terminal!r}")

    def _make_schedule(self) -> NoiseSchedule:
        c = self.config
        if c.get("schedule") == "flow" and c.get("schedule_kwargs") is None:
            return RectifiedFlowSchedule(timestep_scale=float(c.num_train_timesteps))  # the model sees 1000 t
        return super()._make_schedule()

    def _shifted(self, t: torch.Tensor, mu: float | None) -> torch.Tensor:
        if self.config.use_dynamic_shifting:
            if mu is None:
                raise ValueError("use_dynamic_shifting=True needs set_timesteps(..., mu=...)")
            return grids.time_shift(t, mu, kind=self.config.get("time_shift_type", "exponential"))
        return schedules.flow_time_shift(t, self.config.shift)

    def default_levels(self, n: int, mu: float | None) -> lv.Levels:
        c = self.config
        if self.schedule.family == "flow":  # diffusers' FlowMatch grid (samplers.grids.flow reproduces it)
            if c.use_dynamic_shifting and mu is None:
                raise ValueError("use_dynamic_shifting=True needs set_timesteps(..., mu=...)")
            flow_t = grids.flow(
                n,
                shift=None if c.use_dynamic_shifting else c.shift,
                mu=mu if c.use_dynamic_shifting else None,
                shift_terminal=c.get("shift_terminal"),
                kind=c.get("time_shift_type", "exponential"),
                spacing="flow_match",
                num_train_timesteps=c.num_train_timesteps,
            )
            return self._flow_levels(flow_t)
        # Another schedule: evenly in flow time between the ends it reaches, then shifted.
        lo, hi = lv.reachable_level_range(self.schedule)
        lowest, highest = lo / (1 + lo), hi / (1 + hi)
        flow_t = self._shifted(torch.from_numpy(np.linspace(highest, lowest, n)), mu)
        terminal = c.get("shift_terminal")
        if terminal is not None:
            flow_t = grids.stretch_to_terminal(flow_t, terminal)
        return self._flow_levels(flow_t)

    def run_levels(self, n, timesteps, sigmas, mu) -> lv.Levels:
        if sigmas is None:
            return super().run_levels(n, timesteps, sigmas, mu)
        flow_t = sigmas[:-1] if len(sigmas) > 1 and float(sigmas[-1]) == 0.0 else sigmas
        if bool(((flow_t <= 0) | (flow_t > 1)).any()):
            raise ValueError(f"flow sigmas (flow times) must lie in (0, 1], got {sigmas.tolist()[:8]}")
        return self._tagged(self._flow_levels(flow_t.to(F64)), "sigmas")

    def _flow_levels(self, flow_t: torch.Tensor) -> lv.Levels:
        if isinstance(self.schedule, RectifiedFlowSchedule):
            return lv.levels_at_times(self.schedule, flow_t * self.schedule.timestep_scale)
        levels = lv.capped_levels(flow_t / (1 - flow_t))
        return lv.levels_at_levels(self.schedule, lv.levels_from_sigmas(self.schedule, levels))

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        _, alpha_s, sigma_s = lv.step_targets(levels, self.schedule)
        calls = []
        for i in range(len(levels)):
            a_t, s_t, a_s, s_s = (float(v[i]) for v in (levels.alpha, levels.sigma, alpha_s, sigma_s))
            if self.config.stochastic_sampling:  # re-noise x0_hat to the next level
                interval = (float(levels.level[i]), s_s / a_s) if s_s else None
                calls.append(levels.call(i, Update(x0=a_s, noise=s_s), brownian=interval))
                continue
            coef_x0, coef_eps, _ = schedules.ddim_transition(a_s, s_s, a_t, s_t, 0.0)
            calls.append(levels.call(i, Update(x0=coef_x0, eps=coef_eps)))
        return calls

    def run_sigmas(self, levels: lv.Levels) -> torch.Tensor:
        """diffusers' FlowMatch ``sigmas``: the flow times of the run and a final 0."""
        flow_t = levels.sigma / (levels.alpha + levels.sigma)
        return torch.cat([flow_t, torch.zeros(1, dtype=F64)]).to(torch.float32)

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """diffusers' name for forward noising in flow pipelines: ``(1 - t) x0 + t noise``."""
        return self.add_noise(sample, noise, torch.as_tensor(timestep))

    def working_alpha_sigma(self, t: torch.Tensor):
        host = t.detach().cpu().to(F64)
        self.schedule.check_times(host, "add_noise timesteps")
        alpha, sigma = self.schedule.alpha_sigma(host)
        return alpha.to(t.device), sigma.to(t.device)
