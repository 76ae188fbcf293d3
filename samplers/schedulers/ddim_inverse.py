"""DDIM inversion: the deterministic DDIM update run from data to noise (for editing and reconstruction).

Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", sec. 4.3 and eq. 13: the eta = 0 update
is an Euler step of an ODE, so it can be run in either direction. From a sample ``x`` at level ``s``
(less noisy) to level ``t``::

    x_t = alpha_t x0_hat + sigma_t eps_hat,        (x0_hat, eps_hat) read from the model output at level s

which encodes a clean image into the noise that DDIM sampling maps back to it (Dhariwal & Nichol 2021,
App. F; the starting point of null-text inversion, Mokady et al. 2023). This is the documented way to go
from data to noise in ``samplers``: invert with ``ddim_inverse``, sample back with ``ddim`` over the same
levels (``samplers.sampling`` / any loop), and the reconstruction error is the two first-order
discretisations' difference, ``O(1/N)``.

Conventions follow diffusers' ``DDIMInverseScheduler``, so ``from_diffusers`` reproduces it call by call:

* the calls visit the grid's levels from the least noisy up (``timesteps`` ascend); custom ``timesteps`` /
  ``sigmas`` are given as everywhere else (descending) and visited in reverse;
* each call's model time is its *destination* ``t``, while the output is read at the sample's own level
  ``s`` (the previous level; on a discrete table with the default spacing, ``t - T // N``, as diffusers):
  pipelines feed the model ``t``, the usual inversion approximation;
* the first call starts from clean data (``set_alpha_to_one=True``: ``alpha = 1``, ``sigma = 0``; there the
  noise is read off the output: epsilon, v and flow predictions only) or from the first training timestep;
* ``clip_sample`` clamps ``x0_hat``; ``eps_hat`` comes from the unclamped output, as in diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from samplers import levels as lv
from samplers.plan import Call, Plan, Update
from samplers.protocol import Scheduler
from samplers.schedules import DiscreteVPSchedule

F64 = torch.float64
# eps_hat = p x + q out at clean data (alpha = 1, sigma = 0), where eps cannot be divided out of x0_hat:
# the limits of (x - alpha x0_hat) / sigma for the prediction types whose output carries the noise.
_EPS_AT_CLEAN = {"epsilon": (0.0, 1.0), "v_prediction": (0.0, 1.0), "flow": (1.0, 1.0)}


class DDIMInverseScheduler(Scheduler):
    name = "ddim_inverse"
    kind = "ode-single-step"
    paper = "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models, sec. 4.3, eq. 13 (run from data to noise)"
    order = 1
    stochastic = False
    default_spacing = "leading"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        pass  # the base checks every option (types, choices, clip_sample_range > 0)

    def start_alpha_sigma(self) -> tuple[float, float]:
        """Where the inversion starts: clean data, or (``set_alpha_to_one=False``) the first training timestep."""
        if isinstance(self.schedule, DiscreteVPSchedule) and not self.config.set_alpha_to_one:
            abar0 = float(self.schedule.alphas_cumprod[0])
            return math.sqrt(abar0), math.sqrt(1 - abar0)
        return 1.0, 0.0

    def sources(self, levels: lv.Levels) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, sigma)`` [N] of the level each call starts from, in call order (ascending noise)."""
        start = self.start_alpha_sigma()
        up = torch.flip(levels.t, [0])
        schedule = self.schedule
        if isinstance(schedule, DiscreteVPSchedule) and levels.source == "spacing":
            stride = schedule.num_train_timesteps // len(levels)  # diffusers' t - T // N, whatever the spacing
            src = torch.clamp(up - stride, max=schedule.num_train_timesteps - 1)
            return lv.chain_alpha_sigma(schedule, src, start)
        alpha = torch.cat([torch.tensor([start[0]], dtype=F64), torch.flip(levels.alpha, [0])[:-1]])
        sigma = torch.cat([torch.tensor([start[1]], dtype=F64), torch.flip(levels.sigma, [0])[:-1]])
        return alpha, sigma

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        c = self.config
        alpha_s, sigma_s = self.sources(levels)
        clip = c.clip_sample_range if c.clip_sample else None
        calls = []
        n = len(levels)
        for i in range(n):
            j = n - 1 - i  # the destination level: the grid visited from its least noisy end
            a_t, s_t = float(levels.alpha[j]), float(levels.sigma[j])
            a_s, s_s = float(alpha_s[i]), float(sigma_s[i])
            if s_s > 0:
                update = Update(x0=a_t, eps=s_t, eps_from_raw=True)  # eq. 13 with eps from the unclamped output
            else:
                update = self._from_clean(a_t, s_t)
            calls.append(Call(t=float(levels.t[j]), alpha=a_s, sigma=s_s, update=update, clip=clip))
        return calls

    def _from_clean(self, a_t: float, s_t: float) -> Update:
        """The first step out of clean data: x0_hat is the sample itself, eps_hat read off the output."""
        if self.prediction_type not in _EPS_AT_CLEAN:
            raise ValueError(
                f"prediction_type={self.prediction_type!r} gives no noise estimate at clean data (sigma = 0), where "
                f"set_alpha_to_one=True starts the inversion; use one of {tuple(_EPS_AT_CLEAN)}, or "
                "set_alpha_to_one=False (start at the first training timestep)"
            )
        p, q = _EPS_AT_CLEAN[self.prediction_type]
        return Update(x0=a_t, sample=s_t * p, out=s_t * q)

    def make_plan(self, levels: lv.Levels, mu: float | None = None) -> Plan:
        plan = super().make_plan(levels, mu)
        # where the run ends (the noisiest level), for checks that compare with the exact ODE map
        plan.extras["end_alpha_sigma"] = (float(levels.alpha[0]), float(levels.sigma[0]))
        return plan

    def initial_sigma(self, levels: lv.Levels) -> float:
        return 1.0  # the run starts from data

    def run_sigmas(self, levels: lv.Levels) -> torch.Tensor:
        """The sigma-space levels the sample passes, in call order: each call's start, then the run's end."""
        alpha_s, sigma_s = self.sources(levels)
        end = levels.level[:1]
        return torch.cat([lv.capped_levels(sigma_s / alpha_s), end]).to(torch.float32)
