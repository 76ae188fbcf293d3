"""SEEDS-2 and SEEDS-3: stochastic explicit exponential derivative-free solvers (Gonzalez et al. 2023).

Gonzalez, Fernandez Pinto, Tran, Gherbi, Hajri & Masmoudi 2023, "SEEDS: Exponential SDE Solvers for Fast
High-Quality Sampling from Diffusion Models", NeurIPS 2023, arXiv:2305.14267. No author code was
available; the coefficients below are derived from the exact solution of the reverse SDE (equation
labels (S1)-(S5) are those of our research notes).

In sigma space (``lambda = -log sigma``, ``D`` the denoiser), the reverse SDE with full noise solves over
``a -> b`` (``H = lambda_b - lambda_a``) as

    x_b = A(a->b) x_a + int_0^H 2 e^{-2(H - s)} D(lambda_a + s) ds + N(a->b),   A(a->b) = e^{-2H}       (S1)
    N(a->b) = sigma_b sqrt(1 - e^{-2H}) z                                                              (S2)

where the noises of nested intervals are increments of one Brownian motion (S3). A SEEDS stage at
``lambda_t + r h`` integrates (S1) from the step's start with ``D`` constant (the first stage) or linear in
lambda through ``D_t`` and the previous stage's estimate:

    x_s = A(t->s) x_t + W0(r h) D_t + (W1(r h) / (r_prev h)) (D_prev - D_t) + N(t->s)                    (S4, S5)

with ``W0(H) = 1 - e^{-2H}`` and ``W1(H) = H - (1 - e^{-2H}) / 2`` (:func:`exponential_weights` at ``2H``).
SEEDS-2 has one stage at ``r = 1/2``; SEEDS-3 stages at ``1/3`` and ``2/3``, the final point using the
``2/3`` stage (the DPM-Solver-3 pattern). The correction weight ``W1 / (r_prev h)`` is the exact integral of
the linear interpolant of D (the phi_2-type coefficient); the paper's PDF could not be checked for which of
the equivalent-order forms it prints.

The correlated noise needs no recovery: since ``A(t->n) = A(s->n) A(t->s)``, substituting (S3) shows that
``x_t`` and the earlier stages' normals enter a later stage only through the latest stage point. So each
call starts from the previous stage's sample and adds fresh noise over its own sub-interval only::

    x_next = A(s->next) x_s + sum_m (c_next[m] - A(s->next) c_s[m]) D_m + sigma_next sqrt(1 - e^{-2 H_s}) z

(``c[m]``: the weights of the estimates in the "from x_t" form above), which reproduces the correlated
increments exactly, with consecutive disjoint Brownian intervals (``noise="brownian"``).

Orders: with the noise switched off (``s_noise = 0``) the schemes solve the SDE's drift ODE at orders 2
and 3 (tested on a Gaussian mixture: on Gaussian data the DDPM-type mean map is already exact); with noise
they are weakly first order and keep the data's marginals as steps grow. SEEDS-1 (one call, ``D``
constant) is exactly DDPM ancestral sampling, i.e. Euler ancestral / DDIM with eta = 1: use
``euler_ancestral`` (no separate name). The step into ``sigma = 0`` returns ``D``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from samplers.levels import Levels
from samplers.plan import ESTIMATE, Call, Update
from samplers.schedulers.exponential import exponential_weights
from samplers.schedulers.sigma_space import SigmaSpaceScheduler

PAPER = (
    "Gonzalez et al. 2023, SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion Models, "
    "NeurIPS 2023, arXiv:2305.14267"
)


def sde_weights(h: float) -> tuple[float, float]:
    """``(W0(h), W1(h))``: the reverse-SDE kernel's weights of a constant and of ``s`` over a step ``h`` (S4)."""
    w0, w1 = exponential_weights(2 * h)
    return w0, w1 / 2


class SEEDSScheduler(SigmaSpaceScheduler):
    """SEEDS with the stage fractions ``stage_fractions`` (the base of ``seeds_2`` and ``seeds_3``)."""

    kind = "sde"
    paper = PAPER
    stochastic = True
    stochastic_when = "s_noise > 0"
    stage_fractions: ClassVar[tuple[float, ...]] = ()  # r of each intermediate stage, ascending in (0, 1)

    def fractions(self) -> tuple[float, ...]:
        return self.stage_fractions

    def plan_calls(self, levels: Levels) -> list[Call]:
        sigma = levels.level.tolist() + [0.0]
        calls: list[Call] = []
        for i in range(len(levels)):
            if sigma[i + 1] == 0.0:  # into clean data: x = D
                calls.append(self.call_at(levels, i, Update(x0=1.0)))
            else:
                calls.extend(self._step_calls(levels, i, sigma[i], sigma[i + 1]))
        return calls

    def _step_calls(self, levels: Levels, i: int, s: float, s_next: float) -> list[Call]:
        """The calls of one step ``s -> s_next``: one per stage, each from the previous stage's sample."""
        h = math.log(s / s_next)
        fractions = (0.0, *self.fractions(), 1.0)
        s_noise = self.config.get("s_noise", 1.0)
        calls = []
        carried: dict[int, float] = {}  # the current point's weights on D_m ("from x_t" form)
        for j in range(len(fractions) - 1):
            r, r_next = fractions[j], fractions[j + 1]
            level, target = s * math.exp(-r * h), s * math.exp(-r_next * h)
            w0, w1 = sde_weights(r_next * h)
            target_weights = {0: w0}  # (S4): D constant, corrected by the previous stage's slope
            if j > 0:
                slope = w1 / (r * h)
                target_weights = {0: w0 - slope, j: slope}
            kappa = (target / level) ** 2  # A(level -> target) = e^{-2 (r_next - r) h}
            weights = {m: target_weights.get(m, 0.0) - kappa * carried.get(m, 0.0) for m in range(j + 1)}
            noise = s_noise * target * math.sqrt(-math.expm1(-2 * (r_next - r) * h))
            history = {f"d{m}": w for m, w in weights.items() if m < j and w != 0.0}
            update = Update(sample=kappa, x0=weights[j], history=history, noise=noise)
            options = {"keep": {f"d{j}": ESTIMATE}, "brownian": (level, target) if noise else None}
            if j == 0:
                calls.append(self.call_at(levels, i, update, **options))
            else:
                calls.append(self.call_at_level(self.time_at_level(level), level, update, **options))
            carried = target_weights
        return calls


class SEEDS2Scheduler(SEEDSScheduler):
    """SEEDS-2: two calls per step, the stage at ``lambda_t + r h`` (``r = 1/2`` by default)."""

    name = "seeds_2"
    order = 2  # of the noise-free drift solver (with noise: weakly first order)
    nfe_per_step = 2

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
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
        rescale_betas_zero_snr: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
        r: float = 0.5,
        s_noise: float = 1.0,
    ) -> None:
        if not 0.0 < r < 1.0:
            raise ValueError(f"r (the stage's fraction of the step in log-SNR) must be in (0, 1), got {r}")
        _check_common(s_noise, interpolation_type)

    def fractions(self) -> tuple[float, ...]:
        return (float(self.config.r),)


class SEEDS3Scheduler(SEEDSScheduler):
    """SEEDS-3: three calls per step, stages at ``1/3`` and ``2/3`` of the step in log-SNR."""

    name = "seeds_3"
    order = 3  # of the noise-free drift solver (with noise: weakly first order)
    nfe_per_step = 3
    stage_fractions = (1 / 3, 2 / 3)

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
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
        rescale_betas_zero_snr: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
        s_noise: float = 1.0,
    ) -> None:
        _check_common(s_noise, interpolation_type)


def _check_common(s_noise: float, interpolation_type: str) -> None:
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"s_noise must be a finite number >= 0, got {s_noise}")
    if interpolation_type not in ("linear", "log_linear"):
        raise ValueError(f"interpolation_type must be 'linear' or 'log_linear', got {interpolation_type!r}")
