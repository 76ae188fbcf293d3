"""DPM++ SDE: two-stage DPM-Solver++ with ancestral noise at each stage (k-diffusion's ``sample_dpmpp_sde``,
diffusers' DPMSolverSDEScheduler).

Lu et al. 2022, "DPM-Solver++", Alg. 1 (DPM-Solver++(2S): a stage at ``t + r h`` in ``t = -log sigma``,
``D_d = (1 - 1/(2r)) D_1 + 1/(2r) D_2``), where each first-order data-prediction jump goes down to the
ancestral ``sigma_down`` and adds ``sigma_up`` of fresh noise (Karras et al. 2022's ancestral step,
``get_ancestral_step``). In sigma space (``y = x / alpha``), for a step from ``s`` to ``s'`` with
``h = log(s / s')`` and the stage level ``s_m = s e^{-r h}``::

    call 1 at (y, s):     u  = (d1/s) y + (1 - d1/s) D_1 + u1 z1,   (d1, u1) = ancestral(s, s_m, eta)
    call 2 at (u, s_m):   y' = (d2/s) y + (1 - d2/s) D_d + u2 z2,   (d2, u2) = ancestral(s, s', eta)

and a single Euler call (``y' = D``) into ``s' = 0``. Both stages jump from the step's start ``y``.

**Correlated noise.** ``z1`` and ``z2`` are normalised increments of one Brownian path over ``[s_m, s]`` and
``[s', s]``: the second interval contains the first. With ``noise="brownian"`` the calls declare those
intervals and the tree gives the correlation. With per-call Philox noise the second call draws an
independent ``z'`` and rebuilds ``z1 = (u - a1 y - b1 D_1) / c1`` from its own input and the kept ``y``,
``D_1``: ``z2 = sqrt(L1 / L) z1 + sqrt(L2 / L) z'``, with ``L1, L2, L`` the Brownian-time lengths of
``[s_m, s]``, ``[s', s_m]`` and ``[s', s]`` (our tree's time ``s / (1 + s)``, so both modes sample the same
path law; k-diffusion's tree runs in ``s`` itself). Explicit noise (``noise=`` in ``step``) stands in for what the
mode draws: with ``noise="brownian"`` each call's own increment (what k-diffusion's ``noise_sampler`` and
diffusers' tree return: the k-diffusion wrapper and ``from_diffusers`` use this mode), with Philox the
independent per-call draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from samplers import levels as lv
from samplers import schedules
from samplers.plan import ESTIMATE, SAMPLE, Call, Update, brownian_time
from samplers.schedulers.dpm_fast import ancestral_down_up
from samplers.schedulers.sigma_space import SigmaSpaceScheduler

F64 = torch.float64


class DPMSolverSDEScheduler(SigmaSpaceScheduler):
    name = "dpmpp_sde"
    kind = "sde"
    paper = "Lu et al. 2022, DPM-Solver++, Alg. 1 (2S) with ancestral noise per stage (k-diffusion sample_dpmpp_sde)"
    order = 2
    nfe_per_step = 2
    stochastic = True
    stochastic_when = "eta > 0"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        noise_sampler_seed: int | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        interpolation_type: str = "linear",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        eta: float = 1.0,
        s_noise: float = 1.0,
        r: float = 0.5,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        """``noise_sampler_seed``: the seed of diffusers' Brownian tree, read only by the diffusers drop-in's
        ``noise="diffusers"`` mode (our own noise comes from the generator or ``seeds``)."""
        if not (eta >= 0 and math.isfinite(eta)) or not (s_noise >= 0 and math.isfinite(s_noise)):
            raise ValueError(f"eta and s_noise must be finite and >= 0, got eta={eta!r}, s_noise={s_noise!r}")
        if not 0 < r <= 1:
            raise ValueError(f"r (the stage's fraction of the step in log sigma) must be in (0, 1], got {r!r}")
        if interpolation_type not in ("linear", "log_linear"):
            raise ValueError(f"interpolation_type must be 'linear' or 'log_linear', got {interpolation_type!r}")
        if sum(bool(f) for f in (use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)) > 1:
            raise ValueError("use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas are exclusive")

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        """Two calls per step (one into sigma = 0); in Philox mode the second rebuilds ``z1`` (module docstring)."""
        c = self.config
        s = levels.level.tolist()
        n = len(s)
        reform = c.get("noise") != "brownian"
        out: list[Call] = []
        for i in range(n):
            if i == n - 1:  # Euler into sigma = 0: y' = D
                out.append(self.call_at(levels, i, Update(x0=1.0)))
                continue
            s_i, s_next = s[i], s[i + 1]
            s_m = s_i * math.exp(-c.r * math.log(s_i / s_next))
            d1, u1 = ancestral_down_up(s_i, s_m, c.eta)
            d2, u2 = ancestral_down_up(s_i, s_next, c.eta)
            a1, b1, c1 = d1 / s_i, 1 - d1 / s_i, u1 * c.s_noise
            first = Update(sample=a1, x0=b1, noise=c1)
            keep = {f"y{i}": SAMPLE, f"d{i}": ESTIMATE}
            out.append(self.call_at(levels, i, first, keep=keep, brownian=(s_i, s_m) if c1 else None))
            fac = 1 / (2 * c.r)
            c2 = u2 * c.s_noise
            weights = {f"y{i}": d2 / s_i, f"d{i}": (1 - d2 / s_i) * (1 - fac)}  # D_1's part of D_d: 0 for r = 1/2
            plain = Update(x0=(1 - d2 / s_i) * fac, history={k: v for k, v in weights.items() if v != 0.0}, noise=c2)
            second = plain
            if reform and c1 > 0 and c2 > 0:
                second = self._rebuild_first_noise(plain, (a1, b1, c1), (s_i, s_m, s_next), i)
            t_m = float(self.schedule.time_at_level(torch.tensor(s_m, dtype=F64)))
            out.append(self.call_at_level(t_m, s_m, second, brownian=(s_i, s_next) if c2 else None))
        return out

    @staticmethod
    def _rebuild_first_noise(plain: Update, first: tuple[float, float, float], ends, i: int) -> Update:
        """Philox mode: ``z2 = sqrt(L1/L) z1 + sqrt(L2/L) z'``, ``z1 = (u - a1 y - b1 D_1) / c1`` (see the module)."""
        a1, b1, c1 = first
        b = [brownian_time(v) for v in ends]  # s_i > s_m > s_next
        span, span_1 = b[0] - b[2], b[0] - b[1]
        k = plain.noise * math.sqrt(span_1 / span) / c1  # weight of z1, rebuilt from the call's own input u
        y, d = f"y{i}", f"d{i}"
        history = {y: plain.history.get(y, 0.0) - k * a1, d: plain.history.get(d, 0.0) - k * b1}
        return Update(sample=k, x0=plain.x0, history=history, noise=plain.noise * math.sqrt(1 - span_1 / span))

    def run_sigmas(self, levels: lv.Levels) -> torch.Tensor:
        """diffusers' ``sigmas``: ``[s_0, s_1, s_1, .., s_{n-1}, s_{n-1}, 0]`` (each level but the first twice)."""
        s = levels.level
        return torch.cat([s[:1], s[1:].repeat_interleave(2), torch.zeros(1, dtype=F64)]).to(torch.float32)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """Forward noising to the level the plan's call at each timestep works at (a stage's level is not the
        table's interpolation at its model time, which diffusers maps with log-sigma interpolation); other
        timesteps as in sigma space generally."""
        plan = self.plan
        t = torch.as_tensor(timesteps).detach().cpu().to(F64).reshape(-1)
        if plan is None or t.numel() == 0:
            return super().add_noise(original_samples, noise, timesteps)
        gap = (t[:, None] - plan.timesteps[None, :]).abs()
        best, index = gap.min(dim=1)
        if not bool((best <= 1e-6 * plan.timesteps.abs().clamp(min=1.0)[index]).all()):
            return super().add_noise(original_samples, noise, timesteps)
        level = plan.call_levels[index]
        if level.numel() == 1:
            level = level.expand(original_samples.shape[0])
        view = (-1,) + (1,) * (original_samples.dim() - 1)
        sigma = level.to(original_samples.device, original_samples.dtype).view(view)
        return schedules.q_sample(original_samples, noise, 1.0, sigma)
