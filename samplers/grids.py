"""Named noise-level grids: every schedule of noise levels a user can pick by name.

Conventions (shared by every function here):

* A **sigma grid** is a descending float64 tensor ``[n]`` of sigma-space noise levels
  ``sigma_ve = sigma / alpha`` (k-diffusion's sigma), *without* the final 0: the scheduler appends
  the end of its run (0, or ``sigma_min`` with ``final_sigmas_type="sigma_min"``).
* A **table grid** strides over a model's discrete training table ``table``: ascending float64
  sigma-space levels, one per training timestep (``DiscreteVPSchedule.sigmas``); its result is a
  sigma grid as above. Model time over the table is the fractional timestep, and sigma between two
  entries is interpolated linearly in log sigma (as ``DiscreteVPSchedule.sigma_at``).
* A **flow grid** lives in rectified-flow time ``t`` in ``(0, 1]`` (``alpha = 1 - t``, ``sigma = t``),
  also descending and without the final 0.

Every grid function takes ``n`` (the number of levels, an int >= 1) and keyword-only parameters
after it, and checks them with errors that name the argument. :data:`GRIDS` lists every named grid,
:func:`make` builds one by name, :func:`from_diffusers_flags` maps diffusers' scheduler flags onto
a name, and :func:`load` / :func:`save` read and write a user's own grid (a JSON schedule file).
See docs/grids.md for one paragraph per grid.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from samplers import errors, schedules

F64 = torch.float64
Space = Literal["sigma", "table", "flow"]
ShiftKind = Literal["exponential", "linear"]
FlowSpacing = Literal["flow_match", "dpm", "unipc"]
TableLike = torch.Tensor | np.ndarray | Sequence[float]

__all__ = [
    "AYS_TABLES",
    "GRIDS",
    "REQUIRED",
    "SCHEDULE_FILE_VERSION",
    "GridInfo",
    "ScheduleFile",
    "ays",
    "beta",
    "beta_ppf",
    "ddim_uniform",
    "exponential",
    "flow",
    "flow_shift",
    "from_diffusers_flags",
    "karras",
    "kl_optimal",
    "linear_quadratic",
    "load",
    "lu",
    "make",
    "normal",
    "polyexponential",
    "save",
    "sgm_uniform",
    "simple",
    "stretch_to_terminal",
    "time_shift",
    "vp",
]


# --------------------------------------------------------------------------------------------
# Argument checks: every error names the argument and what was expected
# --------------------------------------------------------------------------------------------


def _check_n(n: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    return int(n)


def _check_number(
    name: str, value: float, *, low: float = -math.inf, high: float = math.inf, closed: bool = False
) -> float:
    """``value`` as a finite float strictly inside (low, high), or inside [low, high] when ``closed``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor, np.ndarray)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    inside = (low <= v <= high) if closed else (low < v < high)
    if not (math.isfinite(v) and inside):
        brackets = "[]" if closed else "()"
        raise ValueError(f"{name} must be a finite number in {brackets[0]}{low}, {high}{brackets[1]}, got {value!r}")
    return v


def _check_range(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    lo = _check_number("sigma_min", sigma_min, low=0.0)
    hi = _check_number("sigma_max", sigma_max, low=0.0)
    if not lo < hi:
        raise ValueError(f"need sigma_min < sigma_max, got sigma_min={lo!r}, sigma_max={hi!r}")
    return lo, hi


def _check_table(table: TableLike) -> torch.Tensor:
    """The training table as an ascending float64 tensor [T >= 2] of finite positive levels."""
    t = torch.as_tensor(np.asarray(table, dtype=np.float64) if not isinstance(table, torch.Tensor) else table)
    t = t.detach().to("cpu", F64)
    if t.dim() != 1 or len(t) < 2:
        raise ValueError(f"table must be a 1-D array of at least 2 sigmas, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(
            "table must hold finite sigmas > 0 (cap a zero-terminal-SNR schedule's infinite top level first)"
        )
    if not bool((t[1:] > t[:-1]).all()):
        raise ValueError("table must be strictly ascending (sigma per training timestep, t = 0 least noisy)")
    return t


def _ramp(n: int) -> torch.Tensor:
    """``i / (n - 1)`` for ``i = 0 .. n-1`` in float64 (``[0]`` when n = 1)."""
    return torch.linspace(0.0, 1.0, n, dtype=F64)


# --------------------------------------------------------------------------------------------
# Sigma-space grids over a continuous range [sigma_min, sigma_max]
# --------------------------------------------------------------------------------------------


def karras(n: int, *, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's levels (Karras et al. 2022, "Elucidating the Design Space...", eq. 5) [n], descending.

    ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``: evenly
    spaced in ``sigma^(1/rho)``, from sigma_max to sigma_min inclusive; rho = 7 is the paper's choice.
    """
    n = _check_n(n)
    lo, hi = _check_range(sigma_min, sigma_max)
    rho = _check_number("rho", rho, low=0.0)
    return schedules.karras_sigmas(n, lo, hi, rho)


def exponential(n: int, *, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma from sigma_max to sigma_min inclusive [n] (k-diffusion's
    ``get_sigmas_exponential``; the limit rho -> inf of :func:`karras`)."""
    n = _check_n(n)
    lo, hi = _check_range(sigma_min, sigma_max)
    return torch.exp(torch.linspace(math.log(hi), math.log(lo), n, dtype=F64))


def polyexponential(n: int, *, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """A polynomial in log sigma [n] (k-diffusion's ``get_sigmas_polyexponential``).

    ``log sigma_i = log sigma_min + (1 - i/(n-1))^rho (log sigma_max - log sigma_min)``; rho = 1 is
    :func:`exponential`, rho > 1 packs more levels near sigma_min.
    """
    n = _check_n(n)
    lo, hi = _check_range(sigma_min, sigma_max)
    rho = _check_number("rho", rho, low=0.0)
    ramp = (1.0 - _ramp(n)) ** rho
    return torch.exp(math.log(lo) + ramp * (math.log(hi) - math.log(lo)))


def lu(n: int, *, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in half log-SNR ``lambda = log(alpha / sigma) = -log sigma_ve`` [n] (Lu et al. 2022,
    "DPM-Solver", sec. 3.3 "logSNR" step size schedule; diffusers' ``use_lu_lambdas``).

    In sigma space this is the same set of levels as :func:`exponential`; it is kept as its own name
    because DPM-Solver users ask for it by this one.
    """
    n = _check_n(n)
    lo, hi = _check_range(sigma_min, sigma_max)
    lam = torch.linspace(-math.log(hi), -math.log(lo), n, dtype=F64)
    return torch.exp(-lam)


def kl_optimal(n: int, *, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The KL-optimal schedule of "Align Your Steps" (Sabour et al. 2024, Theorem 3.1) [n].

    ``sigma(r) = tan((1 - r) arctan(sigma_max) + r arctan(sigma_min))`` at ``r = i/(n-1)``: evenly
    spaced in ``arctan(sigma)``, the schedule that minimises the KL divergence bound when the data
    distribution is an isotropic Gaussian.
    """
    n = _check_n(n)
    lo, hi = _check_range(sigma_min, sigma_max)
    r = _ramp(n)
    return torch.tan((1.0 - r) * math.atan(hi) + r * math.atan(lo))


def beta(n: int, *, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Beta-distributed levels (Lee et al. 2024, "Beta Sampling is All You Need", arXiv:2407.12173) [n].

    ``sigma_i = sigma_min + F^-1(1 - i/(n-1)) (sigma_max - sigma_min)`` with ``F`` the CDF of
    Beta(alpha, beta): alpha = beta < 1 spends more steps at both ends of the range (the paper's
    observation that the start and the end of sampling matter most). Same levels as diffusers'
    ``use_beta_sigmas``, which fixes alpha = beta = 0.6.
    """
    n = _check_n(n)
    lo, hi = _check_range(sigma_min, sigma_max)
    a = _check_number("alpha", alpha, low=0.0)
    b = _check_number("beta", beta, low=0.0)
    p = 1.0 - np.linspace(0.0, 1.0, n)
    x = torch.tensor([beta_ppf(float(q), a, b) for q in p], dtype=F64)
    return lo + x * (hi - lo)


def vp(n: int, *, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """The continuous VP-SDE's levels (Song et al. 2021, "Score-Based Generative Modeling through SDEs",
    App. B, linear beta(t)) at times evenly spaced from 1 to eps_s [n] (k-diffusion's ``get_sigmas_vp``).

    ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``, evaluated with expm1 so that small t
    keeps full precision.
    """
    n = _check_n(n)
    beta_d = _check_number("beta_d", beta_d, low=0.0)
    beta_min = _check_number("beta_min", beta_min, low=0.0, closed=True)
    eps_s = _check_number("eps_s", eps_s, low=0.0, high=1.0)
    t = torch.linspace(1.0, eps_s, n, dtype=F64)
    return torch.sqrt(torch.expm1(beta_d * t**2 / 2 + beta_min * t))


# --------------------------------------------------------------------------------------------
# Align Your Steps: the published tables
# --------------------------------------------------------------------------------------------

# Sabour, Fidler & Kreis 2024, "Align Your Steps: Optimizing Sampling Schedules in Diffusion Models"
# (arXiv:2404.14507), Appendix B.3, Table 3 "Optimized schedules", also on the project's how-to page
# https://research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html. Each row is the 10-step
# schedule sigma(t_10), ..., sigma(t_0): 11 levels, the last one being where the run ends.
AYS_TABLES: dict[str, tuple[float, ...]] = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
    "deepfloyd_if": (160.41, 8.081, 3.315, 1.885, 1.207, 0.785, 0.553, 0.293, 0.186, 0.030, 0.006),
}


def ays(n: int, *, model: str) -> torch.Tensor:
    """Align Your Steps' optimised levels for ``model`` (Sabour et al. 2024, Table 3) [n].

    The published tables are 10-step schedules of 11 levels ``sigma(t_10) .. sigma(t_0)``; a run of
    n steps calls the model at the first n of ``n + 1`` levels and ends at the last (0.029 for SD 1.5:
    the scheduler's ``sigma_min`` end, or 0). So n = 10 returns the table's first 10 entries exactly,
    and any other n interpolates log sigma linearly over evenly spaced positions of the table, as the
    AYS authors do, keeping both ends: level 0 is the table's first entry and position n its last.
    (A1111 instead interpolates the table to n call levels ending at 0.029; this keeps the paper's
    meaning of a step.)
    """
    n = _check_n(n)
    if model not in AYS_TABLES:
        raise errors.unknown("ays model", model, AYS_TABLES)
    table = AYS_TABLES[model]
    m = len(table) - 1
    out = []
    for i in range(n):
        # position i/n on the table's 0..m axis, exact in integers so the nodes reproduce the table bit for bit
        j, rem = divmod(i * m, n)
        w = rem / n
        out.append(table[j] if rem == 0 else table[j] ** (1 - w) * table[j + 1] ** w)
    return torch.tensor(out, dtype=F64)


# --------------------------------------------------------------------------------------------
# Strides over a model's discrete training table (the schedules UIs name)
# --------------------------------------------------------------------------------------------


def _table_sigma(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Sigma at fractional timesteps ``t`` by log-linear interpolation; exact at integer t."""
    low = t.floor().long().clamp(0, len(table) - 2)
    w = t - low.to(F64)
    return table[low] ** (1 - w) * table[low + 1] ** w


def _table_time(table: torch.Tensor, sigma: float, name: str) -> float:
    """Fractional timestep at which the table (log-linearly interpolated) has level ``sigma``."""
    if not float(table[0]) <= sigma <= float(table[-1]):
        raise ValueError(f"{name}={sigma!r} lies outside the table's range [{float(table[0])}, {float(table[-1])}]")
    log_table = table.log()
    high = int(torch.searchsorted(log_table, torch.tensor(math.log(sigma), dtype=F64)).clamp(1, len(table) - 1))
    low = high - 1
    w = (math.log(sigma) - float(log_table[low])) / float(log_table[high] - log_table[low])
    return low + min(max(w, 0.0), 1.0)


def simple(n: int, *, table: TableLike) -> torch.Tensor:
    """Evenly strided entries of the training table, from the top [n].

    ``sigma_i = table[T - 1 - floor(i T / n)]`` for ``i = 0 .. n-1``: the first level is the table's
    largest, and the stride is ``T / n`` entries (rounded down per level). Needs n <= T.
    """
    n = _check_n(n)
    tab = _check_table(table)
    size = len(tab)
    if n > size:
        raise ValueError(f"n={n} cannot exceed the table's {size} entries for the 'simple' grid")
    index = torch.tensor([size - 1 - (i * size) // n for i in range(n)])
    return tab[index]


def _time_span(tab: torch.Tensor, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    """Model times ``(t(sigma_max), t(sigma_min))``; the table's ends when a bound is not given."""
    lo = float(tab[0]) if sigma_min is None else _check_number("sigma_min", sigma_min, low=0.0)
    hi = float(tab[-1]) if sigma_max is None else _check_number("sigma_max", sigma_max, low=0.0)
    if not lo < hi:
        raise ValueError(f"need sigma_min < sigma_max, got sigma_min={lo!r}, sigma_max={hi!r}")
    return _table_time(tab, hi, "sigma_max"), _table_time(tab, lo, "sigma_min")


def normal(
    n: int, *, table: TableLike, sigma_min: float | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """n model times evenly spaced from ``t(sigma_max)`` to ``t(sigma_min)`` inclusive, mapped to sigma
    through the table [n].

    ``t(.)`` inverts the table's log-linear interpolation; the range defaults to the table's ends, so
    by default the times are ``linspace(T - 1, 0, n)`` (the "normal" schedule of UIs, and the DDPM
    sampler's ``linspace`` spacing without rounding).
    """
    n = _check_n(n)
    tab = _check_table(table)
    t_hi, t_lo = _time_span(tab, sigma_min, sigma_max)
    return _table_sigma(tab, torch.linspace(t_hi, t_lo, n, dtype=F64))


def sgm_uniform(
    n: int, *, table: TableLike, sigma_min: float | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """As :func:`normal` with ``n + 1`` evenly spaced times and the last (``t(sigma_min)``) dropped [n].

    The run's final step then goes from one stride above sigma_min to the scheduler's end, the uniform
    "trailing"-like spacing Stability AI's sgm code samples with.
    """
    n = _check_n(n)
    tab = _check_table(table)
    t_hi, t_lo = _time_span(tab, sigma_min, sigma_max)
    return _table_sigma(tab, torch.linspace(t_hi, t_lo, n + 1, dtype=F64)[:-1])


def ddim_uniform(n: int, *, table: TableLike, steps_offset: int = 1) -> torch.Tensor:
    """DDIM's uniform sub-sequence of training timesteps (Song et al. 2021, "DDIM", sec. 4.2 and App. D.2) [n].

    Timesteps ``k c + steps_offset`` for ``k = n-1 .. 0`` with the stride ``c = T // n`` (the
    ``leading`` spacing of :func:`samplers.schedules.spaced_timesteps`); their table entries are the
    levels. steps_offset = 1 is latent diffusion's (and Stable Diffusion's) DDIM convention.
    """
    n = _check_n(n)
    tab = _check_table(table)
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, numbers.Integral) or steps_offset < 0:
        raise ValueError(f"steps_offset must be an int >= 0, got {steps_offset!r}")
    size = len(tab)
    if n > size:
        raise ValueError(f"n={n} cannot exceed the table's {size} entries for the 'ddim_uniform' grid")
    steps = schedules.spaced_timesteps(size, n, "leading", int(steps_offset))
    if int(steps[0]) > size - 1:
        raise ValueError(
            f"steps_offset={steps_offset} puts the top timestep at {int(steps[0])}, past the table's last index "
            f"{size - 1} (n={n}, stride {size // n})"
        )
    return tab[steps]


# --------------------------------------------------------------------------------------------
# Rectified flow: grids in flow time t in (0, 1]
# --------------------------------------------------------------------------------------------


def _flow_times(t: torch.Tensor | Sequence[float] | float) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=F64)
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError("flow times t must lie in [0, 1]")
    return t


def flow_shift(t: torch.Tensor | Sequence[float] | float, shift: float) -> torch.Tensor:
    """SD3's resolution shift ``t' = s t / (1 + (s - 1) t)`` (Esser et al. 2024, "Scaling Rectified Flow
    Transformers", eq. 23); ``shift`` > 1 moves every level towards noise; keeps 0 and 1 fixed."""
    shift = _check_number("shift", shift, low=0.0)
    return schedules.flow_time_shift(_flow_times(t), shift)


def time_shift(
    t: torch.Tensor | Sequence[float] | float, mu: float, sigma: float = 1.0, kind: ShiftKind = "exponential"
) -> torch.Tensor:
    """Resolution-dependent time shift by ``mu`` (Flux; diffusers' ``use_dynamic_shifting``).

    ``exponential``: ``t' = e^mu / (e^mu + (1/t - 1)^sigma)`` (with sigma = 1 this is :func:`flow_shift`
    by ``e^mu``); ``linear`` (diffusers' ``time_shift_type="linear"``): ``t' = mu / (mu + (1/t - 1)^sigma)``,
    mu > 0. Keeps 0 and 1 fixed.
    """
    t = _flow_times(t)
    sigma = _check_number("sigma", sigma, low=0.0)
    if kind == "exponential":
        return schedules.flow_time_shift_exponential(t, _check_number("mu", mu), sigma)
    if kind == "linear":
        mu = _check_number("mu", mu, low=0.0)
        return mu / (mu + (1 / t - 1) ** sigma)
    raise errors.unknown("kind", kind, ("exponential", "linear"))


def stretch_to_terminal(t: torch.Tensor | Sequence[float], shift_terminal: float) -> torch.Tensor:
    """Stretch a descending flow grid so that its last level is ``shift_terminal`` (LTX-Video; diffusers'
    ``shift_terminal``): ``t' = 1 - (1 - t) (1 - shift_terminal) / (1 - t[-1])``. Levels keep their
    spacing in ``1 - t`` up to one common factor; t = 1 stays 1."""
    shift_terminal = _check_number("shift_terminal", shift_terminal, low=0.0, high=1.0)
    t = _flow_times(t)
    if t.dim() != 1 or len(t) == 0 or float(t[-1]) >= 1.0:
        raise ValueError("stretch_to_terminal needs a 1-D grid whose last level is below 1")
    scale = (1 - t[-1]) / (1 - shift_terminal)
    return 1 - (1 - t) / scale


def _flow_base(n: int, spacing: str, num_train_timesteps: int, lowest: float) -> torch.Tensor:
    """The unshifted flow grid of diffusers' schedulers (``lowest``: FlowMatchEuler's bottom level)."""
    inv_t = 1.0 / num_train_timesteps
    if spacing == "flow_match":  # n levels from 1 to its training grid's lowest level, both included
        return torch.linspace(1.0, lowest, n, dtype=F64)
    if spacing == "dpm":  # n + 1 levels from 1 - 1/T to 0, the 0 dropped (DPM-Solver, DEIS, SA-Solver)
        return torch.linspace(1.0 - inv_t, 0.0, n + 1, dtype=F64)[:-1]
    if spacing == "unipc":  # n + 1 levels from 1 to 1/T, the last dropped
        return torch.linspace(1.0, inv_t, n + 1, dtype=F64)[:-1]
    raise errors.unknown("spacing", spacing, ("flow_match", "dpm", "unipc"))


def flow(
    n: int,
    *,
    shift: float | None = 1.0,
    mu: float | None = None,
    shift_terminal: float | None = None,
    kind: ShiftKind = "exponential",
    spacing: FlowSpacing = "flow_match",
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """Rectified-flow times [n] as diffusers' flow schedulers lay them out, then shifted.

    1. Unshifted grid by ``spacing``: ``flow_match`` (FlowMatchEulerDiscreteScheduler): n levels from 1
       to the lowest level of its training grid, ``shift(1/T)`` with a static shift (so the bottom is
       shifted twice, as diffusers does) and ``1/T`` with ``mu``; ``dpm`` (``use_flow_sigmas`` of
       DPM-Solver, DEIS, SA-Solver): n + 1 levels from ``1 - 1/T`` to 0, the 0 dropped; ``unipc``
       (UniPC's ``use_flow_sigmas``): n + 1 levels from 1 to ``1/T``, the last dropped (UniPC then
       lowers a first level of 1 by 1e-6, which this grid does not).
    2. Shift: static :func:`flow_shift` by ``shift``, or, with ``mu``, :func:`time_shift` of ``kind``
       (Flux's resolution-dependent shift). ``shift=None`` says the shift is dynamic: mu is then required.
    3. With ``shift_terminal``, :func:`stretch_to_terminal`.
    """
    n = _check_n(n)
    num_train_timesteps = _check_n(num_train_timesteps, "num_train_timesteps")
    if mu is None:
        if shift is None:
            raise ValueError("mu is required: this flow grid shifts dynamically (shift=None, use_dynamic_shifting)")
        if kind != "exponential":
            raise ValueError(f"kind={kind!r} chooses the dynamic shift by mu: pass mu")
        static = _check_number("shift", shift, low=0.0)
        lowest = float(flow_shift(1.0 / num_train_timesteps, static))
        t = flow_shift(_flow_base(n, spacing, num_train_timesteps, lowest), static)
    else:
        if shift not in (None, 1.0):
            raise ValueError(f"give shift or mu, not both: got shift={shift!r}, mu={mu!r}")
        t = time_shift(_flow_base(n, spacing, num_train_timesteps, 1.0 / num_train_timesteps), mu, kind=kind)
    if shift_terminal is not None:
        t = stretch_to_terminal(t, shift_terminal)
    return t


def linear_quadratic(n: int, *, threshold_noise: float = 0.025, linear_steps: int | None = None) -> torch.Tensor:
    """Mochi's flow schedule (Genmo 2024, Mochi 1 ``linear_quadratic_schedule``) [n] in flow time.

    In "progress" ``tau = 1 - t``: the first L = ``linear_steps`` (default n // 2) levels go linearly from
    0 to just below ``threshold_noise`` (``tau_i = threshold_noise i / L``); from step L on, ``tau`` is the
    quadratic that continues the line with the same value and slope at i = L and reaches 1 at i = n
    (the run's end): ``tau_i = theta + theta (i - L) / L + A (i - L)^2`` with ``A = (L - theta n) / (L (n - L)^2)``.
    So most steps are spent in the high-noise range and the last ones sweep to clean data quickly.
    """
    n = _check_n(n)
    theta = _check_number("threshold_noise", threshold_noise, low=0.0, high=1.0)
    steps = max(n // 2, 1) if linear_steps is None else _check_n(linear_steps, "linear_steps")
    if steps > n:
        raise ValueError(f"linear_steps must be <= n={n}, got {linear_steps!r}")
    i = torch.arange(n, dtype=F64)
    tau = theta * i / steps
    if steps < n:
        curve = (steps - theta * n) / (steps * (n - steps) ** 2)
        tail = i[steps:] - steps
        tau[steps:] = theta + theta * tail / steps + curve * tail**2
    t = 1.0 - tau
    if not bool((t[1:] < t[:-1]).all()) or float(t[-1]) <= 0:
        raise ValueError(
            f"threshold_noise={threshold_noise!r} with linear_steps={steps} gives no descending grid in (0, 1] "
            f"for n={n}"
        )
    return t


# --------------------------------------------------------------------------------------------
# Beta(a, b) inverse CDF in float64 (scipy is not a core dependency)
# --------------------------------------------------------------------------------------------


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _betainc_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (DLMF 8.17.22), by modified Lentz."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    frac = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # even term d_{2m}
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),  # odd term d_{2m+1}
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            frac *= c * d
        if abs(c * d - 1.0) < 1e-16:
            return frac
    return frac


def _betainc(a: float, b: float, x: float) -> float:
    """``I_x(a, b)``, the Beta(a, b) CDF at x; the continued fraction converges fast for x < (a+1)/(a+b+2)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)) / a
    return front * _betainc_cf(a, b, x)


def beta_ppf(p: float, a: float, b: float) -> float:
    """Inverse CDF of Beta(a, b) at ``p`` in [0, 1], float64: Newton on ``I_x(a, b) = p``, safeguarded by
    bisection (the bracket shrinks every step; a Newton step leaving it is replaced by the midpoint)."""
    p = _check_number("p", p, low=0.0, high=1.0, closed=True)
    a = _check_number("a", a, low=0.0)
    b = _check_number("b", b, low=0.0)
    if p in (0.0, 1.0):
        return p
    log_b = _log_beta(a, b)
    lo, hi = 0.0, 1.0  # the bracket: I_lo < p < I_hi
    # start from the tail expansions I_x ~ x^a / (a B) near 0 and 1 - I_x ~ (1 - x)^b / (b B) near 1
    if p <= 0.5:
        x = math.exp((math.log(p) + math.log(a) + log_b) / a)
    else:
        x = 1.0 - math.exp((math.log1p(-p) + math.log(b) + log_b) / b)
    x = x if 0.0 < x < 1.0 else 0.5
    for _ in range(200):
        f = _betainc(a, b, x) - p
        if f == 0.0:
            return x
        lo, hi = (x, hi) if f < 0 else (lo, x)
        nxt = 0.5 * (lo + hi)
        if 0.0 < x < 1.0:
            log_density = (a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - log_b
            newton = x - f / math.exp(min(log_density, 700.0))
            nxt = newton if lo < newton < hi else nxt
        if abs(nxt - x) <= 1e-15 * nxt:
            return nxt
        x = nxt
    return x


# --------------------------------------------------------------------------------------------
# The table of names, and make() by name
# --------------------------------------------------------------------------------------------


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Marks a parameter in :attr:`GridInfo.params` that has no default."""

_CONTEXT = ("sigma_min", "sigma_max", "table")


@dataclass(frozen=True)
class GridInfo:
    """One named grid: what it is, where it comes from, the space it lives in and its parameters.

    ``space``: ``"sigma"`` (sigma-space levels), ``"table"`` (sigma-space levels strided over the
    model's training table, which :func:`make` must be given) or ``"flow"`` (flow time in (0, 1]).
    ``params``: the grid's own parameters and their defaults (:data:`REQUIRED` where none).
    ``inputs``: which of ``sigma_min``, ``sigma_max``, ``table`` it takes, and ``required_inputs``
    which of them it cannot do without.
    """

    name: str
    description: str
    source: str
    space: Space
    params: Mapping[str, Any]
    inputs: tuple[str, ...]
    required_inputs: tuple[str, ...]
    fn: Callable[..., torch.Tensor] = field(repr=False, compare=False)


def _info(name: str, fn: Callable[..., torch.Tensor], space: Space, description: str, source: str) -> GridInfo:
    """A :class:`GridInfo` whose parameters are read off ``fn``'s keyword-only signature."""
    sig = inspect.signature(fn).parameters.values()
    kw = [p for p in sig if p.kind is inspect.Parameter.KEYWORD_ONLY]
    params = {p.name: (REQUIRED if p.default is p.empty else p.default) for p in kw if p.name not in _CONTEXT}
    inputs = tuple(p.name for p in kw if p.name in _CONTEXT)
    required = tuple(p.name for p in kw if p.name in _CONTEXT and p.default is p.empty)
    return GridInfo(name, description, source, space, params, inputs, required, fn)


# One row per grid: name, function, space, one-line description, source.
_ROWS: tuple[tuple[str, Callable[..., torch.Tensor], Space, str, str], ...] = (
    ("karras", karras, "sigma", "even in sigma^(1/rho) (EDM)", "Karras et al. 2022, eq. 5"),
    ("exponential", exponential, "sigma", "even in log sigma", "k-diffusion get_sigmas_exponential"),
    ("polyexponential", polyexponential, "sigma", "log sigma a power rho of a ramp", "k-diffusion"),
    ("lu", lu, "sigma", "even in log-SNR lambda", "Lu et al. 2022 (DPM-Solver), sec. 3.3"),
    ("beta", beta, "sigma", "Beta(alpha, beta) quantiles of the range", "Lee et al. 2024, arXiv:2407.12173"),
    ("kl_optimal", kl_optimal, "sigma", "even in arctan(sigma)", "Sabour et al. 2024 (AYS), Thm 3.1"),
    ("vp", vp, "sigma", "continuous VP-SDE, even in t", "Song et al. 2021 (score SDE); k-diffusion"),
    ("ays", ays, "sigma", "published Align Your Steps levels", "Sabour et al. 2024 (AYS), Table 3"),
    ("simple", simple, "table", "table entries evenly strided from the top", "UIs' 'simple' (ComfyUI, A1111)"),
    ("normal", normal, "table", "even in model time, sigma via the table", "UIs' 'normal' (ComfyUI, A1111)"),
    ("sgm_uniform", sgm_uniform, "table", "normal with n+1 times, the last dropped", "Stability AI sgm; UIs"),
    ("ddim_uniform", ddim_uniform, "table", "DDIM's stride T // n over the table", "Song et al. 2021 (DDIM), 4.2"),
    ("linear_quadratic", linear_quadratic, "flow", "linear to a threshold, then quadratic", "Genmo 2024, Mochi 1"),
    ("flow", flow, "flow", "flow times, static or resolution shift", "Esser et al. 2024, eq. 23; Flux"),
)
GRIDS: dict[str, GridInfo] = {row[0]: _info(*row) for row in _ROWS}
"""Every named grid, by name."""


def make(
    name: str,
    n: int,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    table: TableLike | None = None,
    **params: Any,
) -> torch.Tensor:
    """The grid ``name`` with n levels [n], descending, float64, without the final 0.

    ``sigma_min`` / ``sigma_max``: the range for the range grids (default: the ends of ``table``);
    ``table``: the model's ascending training table for the table grids (ignored by grids that need
    neither); ``params``: the grid's own parameters (``GRIDS[name].params``). ``"file:PATH"`` reads a
    schedule file (:func:`load`) whose grid must have n levels.
    """
    if isinstance(name, str) and name.startswith("file:"):
        if params or sigma_min is not None or sigma_max is not None:
            raise ValueError("a schedule file takes no parameters, sigma_min or sigma_max")
        levels = load(name[len("file:") :]).grid
        if len(levels) != _check_n(n):
            raise ValueError(f"schedule file {name[5:]!r} has {len(levels)} levels, asked for n={n}")
        return levels
    if name not in GRIDS:
        raise errors.unknown("grid", name, GRIDS)
    info = GRIDS[name]
    for key in params:
        if key not in info.params:
            raise errors.unknown(f"parameter of grid {name!r}", key, info.params)
    kwargs: dict[str, Any] = dict(params)
    if "table" in info.inputs:
        if table is None:
            raise ValueError(f"grid {name!r} strides over the model's training table: pass table=")
        kwargs["table"] = table
    if "sigma_min" in info.inputs:
        if "sigma_min" in info.required_inputs and (sigma_min is None or sigma_max is None):
            if table is None:
                raise ValueError(f"grid {name!r} needs sigma_min and sigma_max (or table=, whose ends it then uses)")
            ends = _check_table(table)
            sigma_min = float(ends[0]) if sigma_min is None else sigma_min
            sigma_max = float(ends[-1]) if sigma_max is None else sigma_max
        kwargs.update({k: v for k, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)) if v is not None})
    elif sigma_min is not None or sigma_max is not None:
        raise ValueError(f"grid {name!r} takes no sigma_min/sigma_max: its range is fixed by its definition")
    return info.fn(n, **kwargs)


# --------------------------------------------------------------------------------------------
# diffusers' flags -> (name, params)
# --------------------------------------------------------------------------------------------

_DIFFUSERS_SIGMA_FLAGS = {
    "use_karras_sigmas": "karras",
    "use_exponential_sigmas": "exponential",
    "use_beta_sigmas": "beta",
    "use_lu_lambdas": "lu",
    "use_flow_sigmas": "flow",
}


def from_diffusers_flags(config: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """``(grid name, params)`` for a diffusers scheduler config; ``(None, {})`` when it selects no grid.

    * ``use_karras_sigmas`` / ``use_exponential_sigmas`` / ``use_beta_sigmas`` / ``use_lu_lambdas``: the grid
      of that name, with the config's ``sigma_min`` / ``sigma_max`` when set (else the caller supplies the
      range; diffusers' is the ends of the training table, or of the ``timestep_spacing`` grid in Euler).
    * ``use_flow_sigmas`` + ``flow_shift``: :func:`flow` with ``shift=flow_shift`` and ``spacing="dpm"``, or
      ``"unipc"`` for UniPC (``_class_name`` starting with "UniPC", or a config with UniPC's
      ``disable_corrector`` when the class name is absent).
    * A FlowMatch config (one with ``shift``): :func:`flow` with ``spacing="flow_match"``, its ``shift`` and
      ``shift_terminal``.
    * ``use_dynamic_shifting`` (FlowMatch, UniPC, DPM-Solver): ``shift=None`` and ``kind=time_shift_type``;
      the caller must then pass ``mu``, as to diffusers' ``set_timesteps(mu=...)``.

    Two grid flags at once are refused (diffusers refuses most pairs and silently prefers one in the
    rest), and so is FlowMatch's ``invert_sigmas``, which is no grid of its own.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping (a diffusers scheduler config), got {type(config).__name__}")
    chosen = [flag for flag in _DIFFUSERS_SIGMA_FLAGS if config.get(flag)]
    flow_match = "shift" in config
    if config.get("invert_sigmas"):
        raise ValueError("invert_sigmas=True (Mochi's inverted flow sigmas) has no grid here: map it by hand")
    if len(chosen) > 1 or (flow_match and chosen):
        flags = chosen + (["FlowMatch shift"] if flow_match else [])
        raise ValueError(f"contradictory grid flags {flags}: diffusers uses one noise-level spacing at a time")
    T = int(config.get("num_train_timesteps", 1000))
    if flow_match or chosen == ["use_flow_sigmas"]:
        return "flow", _flow_params(config, flow_match, T)
    if not chosen:
        return None, {}
    params = {k: float(config[k]) for k in ("sigma_min", "sigma_max") if config.get(k) is not None}
    return _DIFFUSERS_SIGMA_FLAGS[chosen[0]], params


def _flow_params(config: Mapping[str, Any], flow_match: bool, num_train_timesteps: int) -> dict[str, Any]:
    unipc = str(config.get("_class_name", "")).startswith("UniPC") or "disable_corrector" in config
    spacing = "flow_match" if flow_match else ("unipc" if unipc else "dpm")
    params: dict[str, Any] = {"spacing": spacing, "num_train_timesteps": num_train_timesteps}
    # DPM-Solver's mu sets flow_shift = e^mu: the exponential time shift by mu, so one mapping serves all
    if config.get("use_dynamic_shifting"):
        params.update(shift=None, kind=config.get("time_shift_type", "exponential"))
    else:
        params["shift"] = float(config["shift"] if flow_match else config.get("flow_shift", 1.0))
    if config.get("shift_terminal"):
        params["shift_terminal"] = float(config["shift_terminal"])
    return params


# --------------------------------------------------------------------------------------------
# A user's own grid: the JSON schedule file
# --------------------------------------------------------------------------------------------

SCHEDULE_FILE_VERSION = 1


def _optional_number(name: str, value: Any) -> float | None:
    return None if value is None else _check_number(name, value)


@dataclass(frozen=True)
class ScheduleFile:
    """A tuned grid and where it came from, as stored in a JSON schedule file (:func:`load`, :func:`save`).

    ``sigmas``: the grid's levels, strictly descending, finite and > 0, without the final 0, in
    ``space`` (``"sigma"``: sigma-space levels; ``"flow"``: flow times in (0, 1]). ``timesteps``: the
    model times of the same levels, when the tuner fixed them. ``sampler`` / ``nfe``: the sampler and
    model-evaluation budget the grid was tuned for; ``problem`` / ``model``: what it was tuned on;
    ``objective_before`` / ``objective_after``: the tuning objective on the starting and the tuned grid;
    ``meta``: anything else, JSON-serialisable.
    """

    sampler: str
    nfe: int
    sigmas: tuple[float, ...]
    timesteps: tuple[float, ...] | None = None
    space: Literal["sigma", "flow"] = "sigma"
    problem: str | None = None
    model: str | None = None
    objective_before: float | None = None
    objective_after: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    version: int = SCHEDULE_FILE_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or self.version != SCHEDULE_FILE_VERSION:
            raise ValueError(f"version must be {SCHEDULE_FILE_VERSION}, got {self.version!r}")
        if not isinstance(self.sampler, str) or not self.sampler:
            raise ValueError(f"sampler must be a non-empty string, got {self.sampler!r}")
        _check_n(self.nfe, "nfe")
        if self.space not in ("sigma", "flow"):
            raise errors.unknown("space", self.space, ("sigma", "flow"))
        object.__setattr__(self, "sigmas", _check_levels(self.sigmas, self.space))
        if self.timesteps is not None:
            steps = tuple(_check_number("timesteps", v) for v in _as_list("timesteps", self.timesteps))
            if len(steps) != len(self.sigmas):
                raise ValueError(f"timesteps has {len(steps)} entries, sigmas {len(self.sigmas)}: they must match")
            object.__setattr__(self, "timesteps", steps)
        for key in ("problem", "model"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise ValueError(f"{key} must be a string or None, got {getattr(self, key)!r}")
        for key in ("objective_before", "objective_after"):
            object.__setattr__(self, key, _optional_number(key, getattr(self, key)))
        if not isinstance(self.meta, Mapping):
            raise ValueError(f"meta must be a mapping, got {type(self.meta).__name__}")
        try:
            json.dumps(dict(self.meta), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"meta must be JSON-serialisable: {err}") from None

    @property
    def grid(self) -> torch.Tensor:
        """The levels as a float64 tensor [n]."""
        return torch.tensor(self.sigmas, dtype=F64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sampler": self.sampler,
            "nfe": self.nfe,
            "space": self.space,
            "sigmas": list(self.sigmas),
            "timesteps": None if self.timesteps is None else list(self.timesteps),
            "problem": self.problem,
            "model": self.model,
            "objective_before": self.objective_before,
            "objective_after": self.objective_after,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScheduleFile:
        if not isinstance(data, Mapping):
            raise ValueError(f"a schedule file holds a JSON object, got {type(data).__name__}")
        fields = set(inspect.signature(cls).parameters)
        extra = sorted(set(data) - fields)
        if extra:
            raise ValueError(f"unknown schedule file field(s) {extra}: expected some of {sorted(fields)}")
        if "version" not in data:
            raise ValueError("a schedule file must state its version")
        missing = [k for k in ("sampler", "nfe", "sigmas") if k not in data]
        if missing:
            raise ValueError(f"schedule file lacks required field(s) {missing}")
        return cls(**data)


def _as_list(name: str, values: Any) -> list[Any]:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, (Sequence, np.ndarray, torch.Tensor)):
        raise ValueError(f"{name} must be a list of numbers, got {type(values).__name__}")
    return list(values.tolist() if isinstance(values, (np.ndarray, torch.Tensor)) else values)


def _check_levels(values: Any, space: str) -> tuple[float, ...]:
    levels = [_check_number("sigmas", v) for v in _as_list("sigmas", values)]
    if not levels:
        raise ValueError("sigmas must hold at least one level")
    if levels[-1] == 0.0 and len(levels) > 1:
        raise ValueError("sigmas must not end in 0: store the levels the model is called at (the scheduler appends 0)")
    if any(v <= 0 for v in levels) or (space == "flow" and any(v > 1 for v in levels)):
        bound = "(0, 1] (flow times)" if space == "flow" else "> 0"
        raise ValueError(f"sigmas must lie in {bound}, got {levels}")
    if any(levels[i + 1] >= levels[i] for i in range(len(levels) - 1)):
        raise ValueError(f"sigmas must be strictly descending, got {levels}")
    return tuple(levels)


def load(path: str | Path, *, sampler: str | None = None, steps: int | None = None) -> ScheduleFile:
    """Read and validate a JSON schedule file.

    With ``sampler`` / ``steps``, also check that the file was tuned for that sampler and has that many
    levels (a tuned grid is optimal for one sampler's error at one budget): a mismatch is refused, with
    the reason.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"schedule file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"schedule file {str(path)!r} is not valid JSON: {err}") from None
    schedule = ScheduleFile.from_dict(data)
    if sampler is not None and schedule.sampler != sampler:
        raise ValueError(
            f"schedule file {str(path)!r} was tuned for sampler {schedule.sampler!r}, not {sampler!r}: a tuned grid "
            f"fits the sampler it was tuned for; tune one for {sampler!r} (samplers tune -s {sampler} -n NFE)"
        )
    if steps is not None and len(schedule.sigmas) != steps:
        raise ValueError(
            f"schedule file {str(path)!r} holds {len(schedule.sigmas)} levels (tuned for {schedule.nfe} NFE of "
            f"{schedule.sampler!r}), but this run needs {steps}: run the budget it was tuned for, or tune one for "
            f"this budget (samplers tune; samplers.tune.interpolate_levels resamples a grid)"
        )
    return schedule


def save(schedule: ScheduleFile, path: str | Path) -> Path:
    """Write ``schedule`` (validated when it was built) as JSON to ``path``; returns the path."""
    if not isinstance(schedule, ScheduleFile):
        raise ValueError(f"schedule must be a ScheduleFile, got {type(schedule).__name__}")
    path = Path(path)
    path.write_text(json.dumps(schedule.to_dict(), indent=2, allow_nan=False) + "\n")
    return path
