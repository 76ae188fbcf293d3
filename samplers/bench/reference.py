"""A high-accuracy solution of the probability-flow ODE for any x0-denoiser, with its own error estimate.

With no closed form (a trained network), a sampler's ODE error is measured against this solve from
the same initial noise. The run reports the reference's estimated error next to the table, so the
reader sees that the reference is far tighter than the best row.

The ODE. For data ``x = alpha x0 + sigma eps`` the probability-flow ODE is the same curve in every
schedule's coordinates; in VE coordinates ``y = x / alpha``, ``s = sigma / alpha`` it reads
``dy/ds = (y - D(y; s)) / s`` (Karras et al. 2022, eq. 4 with D the posterior mean). Here it is
integrated in the variance-preserving coordinates ``x = cos(phi) y`` with ``s = tan(phi)``, against
``w = log(tan(phi / 2))``:

    dx/dw = cos(phi) x - D(x; alpha = cos(phi), sigma = sin(phi)),     phi = 2 atan(e^w).

The right side is bounded everywhere: ``w = 0`` is pure noise (``alpha = 0``, where flow matching and
cosine schedules start, ``s = inf``), and for small ``s`` the variable is ``log(s / 2)``, the natural
one near the data. The solve runs from the sampler's own first level down to ``s_end`` (default
1e-5), and one last step ``x0 = D(x; s_end)`` (an Euler step of the VE ODE to ``s = 0``) lands at
the data.

The solver: classical fourth-order Runge-Kutta in float64 on a uniform grid in ``w``, run at ``N``
and ``2N`` steps. The difference estimates the discretization error (Richardson: the ``2N``
solution's error is about ``|x_2N - x_N| / (2^4 - 1)``). The stop at ``s_end`` adds a truncation
error, ``C s_end^2`` for a denoiser smooth in ``s`` near 0 and ``C s_end`` for one smooth only in
``log s``; the grid passes through ``10 s_end``, the same last step from there differs by at least
``9 C s_end^p``, so ``|x0(10 s_end) - x0(s_end)| / 9`` bounds it in either case. The reported error
is the sum of both estimates; ``N`` doubles until it is below ``tol``. Errors are RMS over
samples of the Euclidean norm, the benchmark's ``ode_error`` norm.
No dependency beyond torch; deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

F64 = torch.float64

Denoiser = Callable[[torch.Tensor, float, float], torch.Tensor]
ORDER = 4  # classical Runge-Kutta


@dataclass
class ReferenceSolution:
    """Output of :func:`solve_reference`.

    Attributes:
        x0: [B, ...] float64 endpoint at ``sigma = 0`` (the ``2N``-step solve).
        error: estimated RMS error of ``x0`` (``sqrt(mean_i |x0_i - exact_i|^2)``): discretization
            (Richardson) plus truncation at ``s_end``.
        per_sample_error: [B] estimated error of each sample (Euclidean norm).
        difference: RMS of ``|x_2N - x_N|`` itself (the raw, un-extrapolated difference).
        truncation: the estimated RMS error of stopping at ``s_end`` (part of ``error``).
        steps: Runge-Kutta steps of the returned solve (``2N``).
        evaluations: denoiser calls in all (every solve tried, and the final denoising steps).
        converged: whether ``error <= tol`` was reached within ``max_steps``.
    """

    x0: torch.Tensor
    error: float
    per_sample_error: torch.Tensor
    difference: float
    steps: int
    evaluations: int
    converged: bool
    tol: float
    s_end: float
    truncation: float = 0.0
    start: tuple[float, float] = (0.0, 0.0)  # (w0, w1): the interval solved, for resuming

    def describe(self) -> dict[str, float | int | bool | str]:
        return {
            "method": f"RK4 in w = log tan(phi/2), float64, {self.steps} steps, Richardson error estimate",
            "estimated_error": self.error,
            "raw_difference": self.difference,
            "truncation_error": self.truncation,
            "steps": self.steps,
            "evaluations": self.evaluations,
            "converged": self.converged,
            "tol": self.tol,
            "s_end": self.s_end,
        }


def _angle(alpha: float, sigma: float) -> float:
    if not (math.isfinite(alpha) and math.isfinite(sigma)) or alpha < 0 or sigma < 0 or alpha + sigma == 0:
        raise ValueError(f"the start level needs finite alpha >= 0, sigma >= 0, not both 0; got ({alpha}, {sigma})")
    return math.atan2(sigma, alpha)


def _rk4(denoiser: Denoiser, x: torch.Tensor, w0: float, w1: float, n: int) -> torch.Tensor:
    """``n`` classical RK4 steps of ``dx/dw = cos(phi) x - D(x; cos phi, sin phi)`` from ``w0`` to ``w1``."""
    h = (w1 - w0) / n

    def f(x_: torch.Tensor, w: float) -> torch.Tensor:
        phi = 2.0 * math.atan(math.exp(w))
        a, s = math.cos(phi), math.sin(phi)
        return a * x_ - denoiser(x_, a, s).to(F64)

    for i in range(n):
        w = w0 + i * h
        k1 = f(x, w)
        k2 = f(x + (0.5 * h) * k1, w + 0.5 * h)
        k3 = f(x + (0.5 * h) * k2, w + 0.5 * h)
        k4 = f(x + h * k3, w + h)
        x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x


def _rms(per_sample: torch.Tensor) -> float:
    return float(per_sample.pow(2).mean().sqrt())


def solve_reference(
    denoiser: Denoiser,
    x_start: torch.Tensor,
    alpha: float,
    sigma: float,
    *,
    tol: float = 1e-7,
    s_end: float = 1e-5,
    steps_per_unit: int = 8,
    max_steps: int = 4096,
    resume: ReferenceSolution | None = None,
) -> ReferenceSolution:
    """Solve the PF-ODE of ``denoiser`` from ``x_start`` at level (``alpha``, ``sigma``) to ``sigma = 0``.

    Args:
        denoiser: ``denoiser(x, alpha, sigma) -> x0_hat`` for a model-space ``x = alpha x0 + sigma eps``
            [B, ...] float64, ``alpha``/``sigma`` Python floats with ``alpha^2 + sigma^2 = 1`` (it is called
            on that normalization only; a model trained on another schedule rescales ``x`` to it first).
        x_start: [B, ...] model-space samples at (alpha, sigma), any float dtype (solved in float64).
        alpha, sigma: the start level (``alpha = 0``: pure noise, allowed).
        tol: target for the estimated RMS error of the endpoint.
        s_end: the VE level where the integration stops before the final denoising step.
        steps_per_unit: RK4 steps per unit of ``w`` in the first solve (doubled until ``tol`` is met).
        max_steps: no solve takes more steps than this (then ``converged`` is False and the error says so).
        resume: an earlier solution of this same problem (same denoiser, start and ``s_end``) at a looser
            ``tol``: the doubling goes on from its last solve instead of starting over.
    Returns:
        :class:`ReferenceSolution`.
    """
    _check_solve_arguments(x_start, tol, s_end)
    phi0 = _angle(float(alpha), float(sigma))
    norm = math.hypot(float(alpha), float(sigma))
    x = x_start.to(F64) / norm  # the same point in VP coordinates (alpha^2 + sigma^2 = 1)
    path = _SolvePath(denoiser, x, phi0, s_end)
    if phi0 <= path.phi_mid:  # already near the data: one denoising step, its error unknown but O(s^2)
        x0 = path.denoise_at(x, phi0)
        zero = torch.zeros(x.shape[0], dtype=F64)
        return ReferenceSolution(x0, 0.0, zero, 0.0, 0, 1, True, tol, s_end)
    if resume is not None:
        if resume.start != (path.w0, path.w1) or resume.x0.shape != x.shape or resume.s_end != s_end:
            raise ValueError("resume: that solution is of another start, shape or s_end")
        if resume.error <= tol or resume.steps == 0:
            return resume
        coarse, n, evaluations = resume.x0, resume.steps, resume.evaluations
    else:
        n = max(16, int(math.ceil(abs(path.w0 - path.w1) * steps_per_unit)))
        coarse = path.run(n)[0]
        evaluations = 4 * n + 2
    return _double_until_converged(path, coarse, n, evaluations, tol, s_end, max_steps)


def _check_solve_arguments(x_start: torch.Tensor, tol: float, s_end: float) -> None:
    if not isinstance(x_start, torch.Tensor) or not x_start.is_floating_point() or x_start.dim() < 1:
        raise TypeError("x_start must be a floating torch.Tensor [B, ...]")
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive number, got {tol}")
    if not 0 < s_end < 0.01:
        raise ValueError(f"s_end must be in (0, 0.01), got {s_end}")


class _SolvePath:
    """The solve's interval in ``w = log tan(phi / 2)``: from the start ``w0`` through ``wm`` (VE level
    ``10 s_end``) to ``w1`` (``s_end``), and the RK4 runs over it."""

    def __init__(self, denoiser: Denoiser, x: torch.Tensor, phi0: float, s_end: float) -> None:
        self.denoiser, self.x = denoiser, x
        self.phi_end, self.phi_mid = math.atan(s_end), math.atan(10 * s_end)
        # w0 is only used above phi_mid (log tan of 0 is -inf): computed lazily there
        self.phi0 = phi0

    @property
    def w0(self) -> float:
        return math.log(math.tan(0.5 * self.phi0))

    @property
    def wm(self) -> float:
        return math.log(math.tan(0.5 * self.phi_mid))

    @property
    def w1(self) -> float:
        return math.log(math.tan(0.5 * self.phi_end))

    def denoise_at(self, x: torch.Tensor, phi: float) -> torch.Tensor:
        return self.denoiser(x, math.cos(phi), math.sin(phi)).to(F64)

    def run(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` steps from w0 to w1 through wm: (x0 from s_end, x0 from 10 s_end)."""
        w0, wm, w1 = self.w0, self.wm, self.w1
        n_tail = max(1, round(n * (wm - w1) / (w0 - w1)))
        x_mid = _rk4(self.denoiser, self.x, w0, wm, n - n_tail)
        x_end = _rk4(self.denoiser, x_mid, wm, w1, n_tail)
        return self.denoise_at(x_end, self.phi_end), self.denoise_at(x_mid, self.phi_mid)


def _double_until_converged(
    path: _SolvePath, coarse: torch.Tensor, n: int, evaluations: int, tol: float, s_end: float, max_steps: int
) -> ReferenceSolution:
    """Double the steps from the ``n``-step endpoint ``coarse`` until the Richardson estimate meets ``tol``
    (or ``max_steps`` is reached): the error is the step-doubling difference plus the truncation at ``s_end``."""
    while True:
        fine, early = path.run(2 * n)
        evaluations += 8 * n + 2
        diff = (fine - coarse).flatten(1).norm(dim=1)
        trunc = (early - fine).flatten(1).norm(dim=1) / 9.0
        per_sample = diff / (2**ORDER - 1) + trunc
        error = _rms(per_sample)
        if error <= tol or 4 * n > max_steps:
            return ReferenceSolution(
                fine,
                error,
                per_sample,
                _rms(diff),
                2 * n,
                evaluations,
                error <= tol,
                tol,
                s_end,
                _rms(trunc),
                (path.w0, path.w1),
            )
        coarse, n = fine, 2 * n


def reference_solution(
    denoiser: Denoiser, x_start: torch.Tensor, alpha: float, sigma: float, tol: float = 1e-7, **kwargs: Any
) -> tuple[torch.Tensor, float]:
    """``(x0_ref [B, ...] float64, estimated RMS error)``: :func:`solve_reference` in short (``kwargs``: its
    other keywords)."""
    sol = solve_reference(denoiser, x_start, alpha, sigma, tol=tol, **kwargs)
    return sol.x0, sol.error
