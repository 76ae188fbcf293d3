"""Oracle problems: data distributions whose exact denoiser ``E[x0 | x_t]`` is closed form.

With ``x_t = alpha x0 + sigma eps`` (``eps ~ N(0, I)``) and Gaussian (mixture) data, Bayes' rule
gives the posterior mean in closed form, so any sampler can be scored with no trained network:
the oracle *is* the perfect model, and every error a benchmark measures is the sampler's own.

* :class:`GaussianProblem`: ``N(mu, Sigma)`` in any dimension. Besides the denoiser it has the
  exact probability-flow ODE solution: in VE coordinates ``y = x / alpha`` with ``s = sigma / alpha``
  the ODE ``dy/ds = (y - D(y, s)) / s`` is linear and solves to
  ``y(s) = mu + (Sigma + s^2 I)^{1/2} (Sigma + s_T^2 I)^{-1/2} (y_T - mu)`` (eigenbasis of Sigma).
* :class:`GaussianMixtureProblem`: ``sum_k w_k N(mu_k, Sigma_k)`` with named 2-D layouts
  (``8gaussians``, ``grid``, ``ring``), n-D layouts (``axes``) and random ones; the swiss roll
  is a mixture of many small Gaussians along the classic curve. Its ODE reference is a float64
  RK4 integration in ``log s`` (:meth:`Problem.ode_solution`).

* :class:`ModelProblem` (``MODEL_PROBLEMS``: ``dit``) is the exception, a speed-only problem: a
  real network with seeded random weights (:mod:`samplers.models`) and no exact answer, so
  ``samplers bench`` times it end to end and reports no accuracy.

All math is float64; results are cast back to the input dtype. Every per-sample quantity is
computed row by row (no cross-sample reduction, no shape-dependent GEMM), so a batch split
across processes gives bit-identical rows. Samples are drawn from counter-based Philox keyed by
per-sample seeds (:func:`samplers.ops.reference.batch_seeds`), so they do not depend on the split.
"""

from __future__ import annotations

import difflib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from samplers.ops.reference import _MASK32, batch_seeds, philox4x32, philox_normal

if TYPE_CHECKING:  # annotations only (postponed by the __future__ import): no runtime dependency
    from typing import TypeGuard

    from typing_extensions import TypeIs

    from samplers.bench.reference import ReferenceSolution

F64 = torch.float64
Scalar = float | torch.Tensor

# Philox noise streams used by the benchmark. A scheduler's in-step noise uses its call index
# (0, 1, 2, ...) as the stream, so these sit far above any step count.
INIT_STREAM = 1 << 40  # the sampler's initial noise
DATA_STREAM = (1 << 40) + 1  # the true samples metrics compare against
REFERENCE_STREAM = (1 << 40) + 2  # a second, independent true set: the sampling noise floor


def philox_uniform(seeds: torch.Tensor, stream: int, numel_per_sample: int) -> torch.Tensor:
    """Uniforms in [0, 1) with 53 random bits, keyed by (seed, stream, element): [B, numel] float64.

    Uses Philox block ``(i // 2, 1, stream_lo, stream_hi)`` (word ``c1 = 1`` keeps it apart from
    :func:`philox_normal`, which uses ``c1 = 0``); each block's two word pairs give two uniforms.
    """
    if seeds.dtype != torch.int64 or seeds.dim() != 1:
        raise ValueError(f"seeds must be a 1-D int64 tensor, got dtype={seeds.dtype} shape={tuple(seeds.shape)}")
    groups = (numel_per_sample + 1) // 2
    seed = seeds.view(-1, 1)
    key = [seed & _MASK32, (seed >> 32) & _MASK32]
    g = torch.arange(groups, device=seeds.device, dtype=torch.int64).view(1, -1)
    zero = torch.zeros_like(g)
    stream = int(stream) & 0xFFFFFFFFFFFFFFFF
    r0, r1, r2, r3 = philox4x32([g, zero + 1, zero + (stream & _MASK32), zero + (stream >> 32)], key)
    # 27 + 26 bits -> an exact float64 in [0, 1).
    u0 = ((r0 >> 5) * 67108864 + (r1 >> 6)).to(F64) * 2.0**-53
    u1 = ((r2 >> 5) * 67108864 + (r3 >> 6)).to(F64) * 2.0**-53
    return torch.stack([u0, u1], dim=-1).reshape(seeds.shape[0], groups * 2)[:, :numel_per_sample]


def _as_column(value: Scalar, batch: int, device: torch.device) -> torch.Tensor | float:
    """alpha / sigma broadcastable against [B, ...]: a Python float, a 0-d float64 tensor, or [B, 1].

    Python numbers stay Python floats (no host-to-device copy per model call).
    """
    if isinstance(value, (int, float)):
        return float(value)
    t = torch.as_tensor(value, dtype=F64, device=device)
    if t.dim() == 0:
        return t
    t = t.reshape(-1)
    if t.numel() == 1:
        return t.reshape(())
    if t.numel() != batch:
        raise ValueError(f"alpha/sigma must be a scalar or have one value per sample ({batch}), got {t.numel()}")
    return t.view(batch, 1)


def _per_sample(v: Scalar) -> TypeIs[torch.Tensor]:
    """True when ``v`` holds one value per sample (a tensor with a batch dimension), not one for all."""
    return isinstance(v, torch.Tensor) and v.dim() > 0


def _check_x(x: torch.Tensor, dim: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating torch.Tensor [B, {dim}], got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"x must have shape [B, {dim}], got {tuple(x.shape)}")


def _matvec(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``v @ m`` row by row as broadcast multiply + sum: [..., d] x [d, e] -> [..., e].

    Deliberately not a GEMM: BLAS picks blockings by batch size, which could change the last bit
    of a row when the batch is split across ranks.
    """
    return (v.unsqueeze(-1) * m).sum(dim=-2)


def _psd_sqrt_eig(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lam, vec = torch.linalg.eigh(cov.to(F64))
    return lam.clamp(min=0.0), vec


class Problem(ABC):
    """A data distribution with an exact denoiser. Shapes: samples are ``[B, dim]`` float64."""

    name: str = ""
    dim: int = 0

    # ---- what every problem provides -----------------------------------------------------

    @abstractmethod
    def sample(
        self, n: int, seeds: torch.Tensor | None = None, stream: int = DATA_STREAM, seed: int = 0
    ) -> torch.Tensor:
        """Exact samples ``[n, dim]`` float64; per-sample ``seeds`` [n] int64 (default ``batch_seeds(seed, n)``)."""

    @abstractmethod
    def _denoise64(self, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
        """``E[x0 | x_t = x]`` for float64 ``x`` [B, dim]; alpha/sigma Python floats, 0-d or [B, 1] float64."""

    @abstractmethod
    def mean(self) -> torch.Tensor:
        """Exact mean [dim] float64."""

    @abstractmethod
    def covariance(self) -> torch.Tensor:
        """Exact covariance [dim, dim] float64."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description (name, dim, parameters) for benchmark records."""
        return {"name": self.name, "dim": self.dim}

    def mixture_components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(weights [K], means [K, dim], covs [K, dim, dim])`` float64 when the data are a Gaussian
        mixture (metrics then compare against the exact distribution), else None."""
        return None

    # ---- shared machinery -------------------------------------------------------------------

    def denoise(self, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
        """The posterior mean ``E[x0 | alpha x0 + sigma eps = x]``.

        Args:
            x: [B, dim] noisy samples (any floating dtype; math in float64).
            alpha, sigma: floats, 0-d tensors, or one value per sample ([B] or [B, 1]).
        Returns:
            [B, dim] in ``x``'s dtype and device.
        """
        _check_x(x, self.dim)
        batch = x.shape[0]
        a = _as_column(alpha, batch, x.device)
        s = _as_column(sigma, batch, x.device)
        return self._denoise64(x.to(F64), a, s).to(x.dtype)

    def _on(self, device: torch.device, *names: str) -> tuple[torch.Tensor, ...]:
        """Parameter tensors on ``device``, copied once per device (no host-to-device copy per model call)."""
        cache = self.__dict__.setdefault("_device_cache", {})
        key = (str(device),) + names
        if key not in cache:
            cache[key] = tuple(getattr(self, n).to(device) for n in names)
        return cache[key]

    def _seeds(self, n: int, seeds: torch.Tensor | None, seed: int) -> torch.Tensor:
        if seeds is None:
            if n < 0:
                raise ValueError(f"n must be >= 0, got {n}")
            return batch_seeds(seed, n)
        if seeds.dtype != torch.int64 or seeds.shape != (n,):
            raise ValueError(f"seeds must be int64 of shape [{n}], got {seeds.dtype} {tuple(seeds.shape)}")
        return seeds

    def scale(self) -> float:
        """Typical data scale: sqrt of the largest covariance eigenvalue plus the mean's norm."""
        lam = torch.linalg.eigvalsh(self.covariance())
        return float(lam.max().clamp(min=0).sqrt() + self.mean().norm())

    def ode_solution(
        self,
        x_t: torch.Tensor,
        alpha_t: float,
        sigma_t: float,
        *,
        steps_per_unit: int = 16,
        s_min: float | None = None,
    ) -> torch.Tensor:
        """Endpoint (at ``sigma = 0``) of the probability-flow ODE started from model-space ``x_t``.

        Generic version: float64 RK4 on ``dy/du = y - D(y, e^u)`` with ``u = log s`` (smooth in u;
        16 steps per unit of u: RMS error 0.4-2.4e-6 on the built-in mixtures),
        from ``s_T = sigma_t / alpha_t`` down to ``s_min`` (default ``1e-5 * scale``), where
        ``y(s_min) = y(0) + O(s_min^2)``. A start above ``s = 1e4 * scale`` (e.g. ``alpha_t = 0``)
        is first moved analytically to ``1e4 * scale`` with the moment-matched Gaussian, whose flow
        differs from the exact one there by ``O((scale / s)^2)``.

        Args:
            x_t: [B, dim] model-space sample at (alpha_t, sigma_t).
        Returns:
            [B, dim] float64 data-space endpoint.
        """
        _check_x(x_t, self.dim)
        x = x_t.to(F64)
        scale = max(self.scale(), 1e-12)
        s_big = 1e4 * scale
        if alpha_t <= 0 or sigma_t / alpha_t > s_big:
            y, s_start = (
                _gaussian_flow(x, alpha_t, sigma_t, self.mean().to(x.device), self.covariance().to(x.device), s_big),
                s_big,
            )
        else:
            y, s_start = x / alpha_t, sigma_t / alpha_t
        s_end = s_min if s_min is not None else 1e-5 * scale
        if s_start <= s_end:
            return y
        u0, u1 = math.log(s_start), math.log(s_end)
        n = max(8, int(math.ceil((u0 - u1) * steps_per_unit)))
        h = (u1 - u0) / n

        def f(y_: torch.Tensor, u: float) -> torch.Tensor:
            return y_ - self._denoise64(y_, 1.0, math.exp(u))

        u = u0
        for _ in range(n):
            k1 = f(y, u)
            k2 = f(y + 0.5 * h * k1, u + 0.5 * h)
            k3 = f(y + 0.5 * h * k2, u + 0.5 * h)
            k4 = f(y + h * k3, u + h)
            y = y + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
            u += h
        return y


def _gaussian_flow(
    x: torch.Tensor, alpha: float, sigma: float, mu: torch.Tensor, cov: torch.Tensor, s_to: float
) -> torch.Tensor:
    """PF-ODE of ``N(mu, cov)`` from model-space ``x`` at (alpha, sigma) to VE level ``s_to``, in VE coordinates.

    ``y(s) = mu + (cov + s^2)^{1/2} (alpha^2 cov + sigma^2)^{-1/2} (x - alpha mu)``, which equals the
    VE form with ``s_T = sigma / alpha`` and stays finite at ``alpha = 0``.
    """
    lam, vec = _psd_sqrt_eig(cov)
    gain = torch.sqrt(lam + s_to * s_to) / torch.sqrt(alpha * alpha * lam + sigma * sigma)
    return mu + _matvec(_matvec(x - alpha * mu, vec) * gain, vec.T)


# --------------------------------------------------------------------------------------------
# Gaussian
# --------------------------------------------------------------------------------------------


class GaussianProblem(Problem):
    """``N(mu, Sigma)`` in any dimension, with the exact denoiser and exact PF-ODE solution.

    Args:
        mean: [dim] mean.
        cov: [dim, dim] symmetric positive semi-definite covariance.
    """

    def __init__(self, mean: Any, cov: Any, name: str = "gaussian") -> None:
        mu = torch.as_tensor(mean, dtype=F64).reshape(-1)
        cov_t = torch.as_tensor(cov, dtype=F64)
        d = mu.numel()
        if d < 1:
            raise ValueError("mean must have at least one element")
        if cov_t.shape != (d, d):
            raise ValueError(f"cov must have shape [{d}, {d}] to match mean, got {tuple(cov_t.shape)}")
        if not torch.allclose(cov_t, cov_t.T, atol=1e-12, rtol=1e-10):
            raise ValueError("cov must be symmetric")
        cov_t = 0.5 * (cov_t + cov_t.T)
        lam, vec = torch.linalg.eigh(cov_t)
        if float(lam.min()) < -1e-10 * max(1.0, float(lam.abs().max())):
            raise ValueError(f"cov must be positive semi-definite, smallest eigenvalue {float(lam.min()):.3g}")
        self.name, self.dim = name, d
        self.mu, self.cov = mu, cov_t
        self.lam, self.vec = lam.clamp(min=0.0), vec

    def mean(self) -> torch.Tensor:
        return self.mu.clone()

    def covariance(self) -> torch.Tensor:
        return self.cov.clone()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "mean": self.mu.tolist(), "cov_eigenvalues": self.lam.tolist()}

    def mixture_components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.ones(1, dtype=F64), self.mu.view(1, -1).clone(), self.cov.view(1, self.dim, self.dim).clone()

    def sample(
        self, n: int, seeds: torch.Tensor | None = None, stream: int = DATA_STREAM, seed: int = 0
    ) -> torch.Tensor:
        seeds = self._seeds(n, seeds, seed)
        z = philox_normal(seeds, stream, self.dim).to(F64)
        mu, lam, vec = (t.to(seeds.device) for t in (self.mu, self.lam, self.vec))
        return mu + _matvec(z * lam.sqrt(), vec.T)

    def _denoise64(self, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
        # E[x0 | x] = mu + U diag(alpha lam / (alpha^2 lam + sigma^2)) U^T (x - alpha mu)
        mu, lam, vec = self._on(x.device, "mu", "lam", "vec")
        gain = alpha * lam / (alpha * alpha * lam + sigma * sigma)
        return mu + _matvec(_matvec(x - alpha * mu, vec) * gain, vec.T)

    def ode_solution(self, x_t: torch.Tensor, alpha_t: float, sigma_t: float, **_: Any) -> torch.Tensor:
        """Closed form: ``mu + Sigma^{1/2} (alpha^2 Sigma + sigma^2 I)^{-1/2} (x_t - alpha mu)`` (see module doc)."""
        _check_x(x_t, self.dim)
        return _gaussian_flow(x_t.to(F64), alpha_t, sigma_t, self.mu.to(x_t.device), self.cov.to(x_t.device), 0.0)

    def ode_map(self, alpha_t: float, sigma_t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The PF-ODE endpoint as an affine map ``x0 = A x_t + b``: returns ``(A [d, d], b [d])``."""
        gain = torch.sqrt(self.lam) / torch.sqrt(alpha_t * alpha_t * self.lam + sigma_t * sigma_t)
        a = self.vec @ torch.diag(gain) @ self.vec.T
        return a, self.mu - alpha_t * (a @ self.mu)


# --------------------------------------------------------------------------------------------
# Gaussian mixtures
# --------------------------------------------------------------------------------------------


class GaussianMixtureProblem(Problem):
    """``sum_k w_k N(mu_k, Sigma_k)``: exact denoiser by Bayes over components.

    ``E[x0 | x] = sum_k r_k(x) [mu_k + alpha Sigma_k (alpha^2 Sigma_k + sigma^2 I)^{-1} (x - alpha mu_k)]``
    with responsibilities ``r_k(x) ∝ w_k N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I)``.

    Args:
        means: [K, dim] component means.
        covs: [K, dim, dim] covariances, or [K] / scalar isotropic variances.
        weights: [K] non-negative weights (normalized here); default uniform.
    """

    def __init__(self, means: Any, covs: Any, weights: Any = None, name: str = "gmm", layout: str = "custom") -> None:
        mu = torch.as_tensor(means, dtype=F64)
        if mu.dim() != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
            raise ValueError(f"means must have shape [K, dim] with K, dim >= 1, got {tuple(mu.shape)}")
        k, d = mu.shape
        covs_t = torch.as_tensor(covs, dtype=F64)
        if covs_t.dim() <= 1:  # isotropic variances
            var = covs_t.expand(k) if covs_t.dim() == 0 else covs_t
            if var.shape != (k,) or bool((var < 0).any()):
                raise ValueError(f"isotropic variances must be a scalar or [K={k}] of values >= 0")
            self.rotated = False
            self.lam = var.view(k, 1).expand(k, d).clone()
            self.vec = torch.eye(d, dtype=F64).expand(k, d, d).clone()
        else:
            if covs_t.shape != (k, d, d):
                raise ValueError(f"covs must have shape [K={k}, {d}, {d}], got {tuple(covs_t.shape)}")
            covs_t = 0.5 * (covs_t + covs_t.transpose(1, 2))
            lam, vec = torch.linalg.eigh(covs_t)
            if float(lam.min()) < -1e-10:
                raise ValueError("every component covariance must be positive semi-definite")
            self.lam, self.vec = lam.clamp(min=0.0), vec
            self.rotated = not bool(torch.equal(covs_t, torch.diag_embed(torch.diagonal(covs_t, dim1=1, dim2=2))))
            if not self.rotated:  # diagonal: keep the axes, sorted eigenvalues would permute them
                self.lam = torch.diagonal(covs_t, dim1=1, dim2=2).clone()
                self.vec = torch.eye(d, dtype=F64).expand(k, d, d).clone()
        w = torch.ones(k, dtype=F64) if weights is None else torch.as_tensor(weights, dtype=F64).reshape(-1)
        if w.shape != (k,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be [K={k}] non-negative with a positive sum")
        self.weights = w / w.sum()
        self.log_weights = torch.log(self.weights)
        self.means = mu
        self.name, self.dim, self.layout = name, d, layout
        self.cum_weights = torch.cumsum(self.weights, 0)
        self.cum_weights[-1] = 1.0

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def component_covariances(self) -> torch.Tensor:
        """[K, dim, dim] float64."""
        return self.vec @ torch.diag_embed(self.lam) @ self.vec.transpose(1, 2)

    def mixture_components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.weights.clone(), self.means.clone(), self.component_covariances()

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        second = (
            self.weights[:, None, None]
            * (self.component_covariances() + self.means[:, :, None] * self.means[:, None, :])
        ).sum(0)
        return second - m[:, None] * m[None, :]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "layout": self.layout,
            "components": self.num_components,
            "component_std": [round(float(v), 6) for v in self.lam.mean(1).sqrt()[:4]],
        }

    def sample(
        self, n: int, seeds: torch.Tensor | None = None, stream: int = DATA_STREAM, seed: int = 0
    ) -> torch.Tensor:
        seeds = self._seeds(n, seeds, seed)
        dev = seeds.device
        u = philox_uniform(seeds, stream, 1)[:, 0].contiguous()
        comp = torch.searchsorted(self.cum_weights.to(dev), u, right=True).clamp(max=self.num_components - 1)
        z = philox_normal(seeds, stream, self.dim).to(F64)
        lam, vec, mu = self.lam.to(dev)[comp], self.vec.to(dev)[comp], self.means.to(dev)[comp]
        return mu + ((z * lam.sqrt()).unsqueeze(-2) * vec).sum(-1)  # vec[b] @ (sqrt(lam) z)

    def _denoise64(self, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
        dev = x.device
        mu, lam, log_w, vec_all = self._on(dev, "means", "lam", "log_weights", "vec")
        # [B, K, d] work arrays; chunk large batches (rows are independent, so chunking is exact).
        chunk = max(1, (1 << 24) // max(1, self.num_components * self.dim))
        if x.shape[0] > chunk:
            pieces = []
            for i in range(0, x.shape[0], chunk):
                a = alpha[i : i + chunk] if _per_sample(alpha) else alpha
                s = sigma[i : i + chunk] if _per_sample(sigma) else sigma
                pieces.append(self._denoise64(x[i : i + chunk], a, s))
            return torch.cat(pieces)
        a = alpha.unsqueeze(-1) if _per_sample(alpha) else alpha  # [B, 1, 1] or scalar
        s = sigma.unsqueeze(-1) if _per_sample(sigma) else sigma
        diff = x.unsqueeze(1) - a * mu  # [B, K, d]
        vec = vec_all if self.rotated else None
        y = (diff.unsqueeze(-1) * vec).sum(-2) if vec is not None else diff  # eigen coordinates
        var = a * a * lam + s * s  # [B or 1, K, d]
        log_p = log_w - 0.5 * (y * y / var + torch.log(var)).sum(-1)  # [B, K]
        # Softmax by hand with the exponent floored at -700: float64 exp of anything below about
        # -708 underflows through a slow path (~100x); e^-700 ~ 1e-304 changes no printed digit.
        shifted = (log_p - log_p.amax(dim=-1, keepdim=True)).clamp(min=-700.0)
        weights = torch.exp(shifted)
        resp = weights / weights.sum(dim=-1, keepdim=True)
        post = (a * lam / var) * y  # posterior mean offset in eigen coordinates
        if vec is not None:
            post = (post.unsqueeze(-2) * vec).sum(-1)  # back to data coordinates: vec @ post
        return ((mu + post) * resp.unsqueeze(-1)).sum(1)


def _ring(k: int, radius: float) -> torch.Tensor:
    angle = torch.arange(k, dtype=F64) * (2 * math.pi / k)
    return radius * torch.stack([torch.cos(angle), torch.sin(angle)], -1)


def _random_psd(gen: torch.Generator, k: int, d: int, std: float, anisotropy: float) -> torch.Tensor:
    """[K, d, d] random covariances: random rotation, eigenvalues std^2 * [1/anisotropy, anisotropy]."""
    q, _ = torch.linalg.qr(torch.randn(k, d, d, generator=gen, dtype=F64))
    log_a = math.log(anisotropy)
    ev = std * std * torch.exp((2 * torch.rand(k, d, generator=gen, dtype=F64) - 1) * log_a)
    return q @ torch.diag_embed(ev) @ q.transpose(1, 2)


GMM2D_LAYOUTS = ("8gaussians", "grid", "ring", "random")
GMM_ND_LAYOUTS = ("random", "axes")


def _unknown(kind: str, value: str, choices: Any) -> ValueError:
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"unknown {kind} {value!r}{hint} (expected one of: {', '.join(choices)})")


# --------------------------------------------------------------------------------------------
# Problem options: every one typed, with a documented valid range, checked before anything is built
# --------------------------------------------------------------------------------------------

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "none"}
SEED_MAX = 2**63 - 1
# The bytes a problem's own parameter arrays may take (a mixture stores K covariances of d x d):
# more than this cannot be a benchmark anyone meant to run on one machine.
PROBLEM_BYTES_LIMIT = 2 * 2**30


@dataclass(frozen=True)
class OptionSpec:
    """One problem option: its type, valid range or choices, and whether ``none`` (the layout's default) is allowed.

    ``low`` / ``high`` bound numbers (``low_open``: the lower bound itself is excluded); ``choices`` (a tuple,
    or a function returning one, for lists that live elsewhere) restricts strings.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    none_ok: bool = False
    help: str = ""

    def options(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices

    def range_text(self) -> str:
        def num(v: float) -> str:
            return "2**63 - 1" if v == SEED_MAX else f"{v:g}"

        assert self.low is not None and self.high is not None, "range_text is for numeric options (describe checks)"
        return f"{'(' if self.low_open else '['}{num(self.low)}, {num(self.high)}]"

    def describe(self, resolve: bool = True) -> str:
        """``"an integer in [1, 4096] or none"``: what the option accepts (``resolve=False``: no import for
        a choice list that lives elsewhere)."""
        if self.kind is str and callable(self.choices) and not resolve:
            text = f"a name ({self.help})"
        elif self.kind is str:
            opts = self.options()
            text = f"one of {', '.join(opts)}" if opts else "a string"
        elif self.kind is bool:
            text = "true or false"
        else:
            text = _TYPE_WORDS[self.kind]
            if self.low is not None:
                text += f" in {self.range_text()}"
        return text + (" or none" if self.none_ok else "")

    def check(self, problem: str, key: str, value: Any) -> Any:
        """``value`` converted (losslessly) to the option's type, or ``ValueError`` naming the option and the range."""
        where = f"problem {problem!r} option {key!r}"
        if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
            if self.none_ok:
                return None
            raise ValueError(f"{where} expects {self.describe()}, got none")
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            raise ValueError(f"{where} expects true or false, got {value!r}")
        if self.kind is str:
            if isinstance(value, bool) or not isinstance(value, str):
                value = str(value).lower() if isinstance(value, bool) else str(value)
            opts = self.options()
            if opts and value not in opts:
                raise _unknown(f"{problem} {key}", value, opts)
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"{where} expects {_TYPE_WORDS[self.kind]}{' or none' if self.none_ok else ''}, got {value!r}"
            )
        if self.kind is int:
            if not isinstance(value, int):
                raise ValueError(f"{where} expects an integer{' or none' if self.none_ok else ''}, got {value!r}")
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{where} must be a finite number, got {value}")
        low, high = self.low, self.high
        if low is not None and high is not None:
            below = value <= low if self.low_open else value < low
            if below or value > high:
                raise ValueError(
                    f"{where} must be in {self.range_text()}, got {value:g}"
                    if isinstance(value, float)
                    else f"{where} must be in {self.range_text()}, got {value}"
                )
        return value


def _seed_spec() -> OptionSpec:
    return OptionSpec(int, 0, SEED_MAX, help="seed of the random layout / covariances")


def _positive(help: str, none_ok: bool = False) -> OptionSpec:
    """A number in (0, 1000]."""
    return OptionSpec(float, 0.0, 1000.0, low_open=True, none_ok=none_ok, help=help)


OPTION_SPECS: dict[str, dict[str, OptionSpec]] = {
    "gaussian": {
        "dim": OptionSpec(int, 1, 1024, help="dimension"),
        "seed": _seed_spec(),
        "std": _positive("typical standard deviation"),
        "anisotropy": OptionSpec(float, 1.0, 1e6, help="ratio of the largest to the typical variance"),
        "shift": OptionSpec(float, 0.0, 1000.0, help="norm of the mean"),
    },
    "gmm2d": {
        "layout": OptionSpec(str, choices=("8gaussians", "grid", "ring", "random"), help="arrangement of the means"),
        "components": OptionSpec(int, 1, 4096, none_ok=True, help="number of components (none: the layout's)"),
        "std": _positive("component standard deviation (none: the layout's)", none_ok=True),
        "radius": _positive("size of the layout"),
        "seed": _seed_spec(),
    },
    "gmm_nd": {
        "dim": OptionSpec(int, 1, 1024, help="dimension"),
        "layout": OptionSpec(str, choices=("random", "axes"), help="arrangement of the means"),
        "components": OptionSpec(int, 1, 4096, none_ok=True, help="number of components, random layout"),
        "std": _positive("component standard deviation (none: the layout's)", none_ok=True),
        "radius": _positive("size of the layout"),
        "seed": _seed_spec(),
    },
    "swissroll": {
        "components": OptionSpec(int, 1, 4096, help="Gaussians along the curve"),
        "std": OptionSpec(float, 0.0, 10.0, low_open=True, help="their standard deviation"),
        "scale": _positive("overall size"),
        "turns": OptionSpec(float, 0.0, 100.0, low_open=True, help="length of the roll in turns"),
    },
    "dit": {
        "preset": OptionSpec(str, choices=lambda: _dit_presets(), help="a preset of samplers.models.dit.DIT_PRESETS"),
        "image_size": OptionSpec(int, 1, 512, none_ok=True, help="input height and width (none: the preset's)"),
        "seed": OptionSpec(int, 0, SEED_MAX, help="seed of the random weights"),
        "init": OptionSpec(str, choices=("random", "adaln_zero"), help="weight initialization"),
    },
}
OPTION_SPECS["gaussian_nd"] = OPTION_SPECS["gaussian"]

# Options a layout does not read: giving one is an error, not a silent no-op.
_UNUSED_BY_LAYOUT: dict[str, dict[str, tuple[str, ...]]] = {
    "gmm2d": {"8gaussians": ("seed",), "grid": ("seed",), "ring": ("seed",), "random": ()},
    "gmm_nd": {"axes": ("components", "seed"), "random": ()},
}


def _dit_presets() -> tuple[str, ...]:
    from samplers.models.dit import DIT_PRESETS

    names = tuple(DIT_PRESETS)
    return names + tuple(n.replace("-", "_") for n in names if "-" in n)


def option_specs(problem: str) -> dict[str, OptionSpec]:
    """The documented options of a built-in problem (``{}`` for plugin problems: their factory's types apply)."""
    return dict(OPTION_SPECS.get(problem, {}))


def _options_doc(problem: str) -> str:
    lines = [f"    ``{k}``: {v.describe(resolve=False)}; {v.help}." for k, v in OPTION_SPECS[problem].items()]
    return "\n\nOptions (``-p " + problem + ":key=value,...``) and their valid ranges:\n\n" + "\n".join(lines) + "\n"


def _checked(problem: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Validate a factory's arguments against :data:`OPTION_SPECS` on every call, and document them."""

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        import functools
        import inspect

        sig = inspect.signature(factory)

        @functools.wraps(factory)
        def checked(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            given = set(bound.arguments)
            bound.apply_defaults()
            specs = OPTION_SPECS[problem]
            values = {k: specs[k].check(problem, k, v) if k in specs else v for k, v in bound.arguments.items()}
            layout = values.get("layout")
            unused = _UNUSED_BY_LAYOUT.get(problem, {}).get(layout, ()) if isinstance(layout, str) else ()
            for key in sorted(given & set(unused)):
                if bound.arguments[key] is not None:
                    raise ValueError(f"problem {problem!r} option {key!r} has no effect with layout {layout!r}")
            return factory(**values)

        checked.__doc__ = (factory.__doc__ or "") + _options_doc(problem)
        return checked

    return wrap


def _check_problem_bytes(problem: str, nbytes: float, what: str) -> None:
    if nbytes > PROBLEM_BYTES_LIMIT:
        raise ValueError(
            f"problem {problem!r}: {what} would take about {nbytes / 2**30:.1f} GiB, over the limit of "
            f"{PROBLEM_BYTES_LIMIT / 2**30:.0f} GiB for a problem's parameters"
        )


@_checked("gmm2d")
def make_gmm2d(
    layout: str = "8gaussians",
    components: int | None = None,
    std: float | None = None,
    radius: float = 2.0,
    seed: int = 0,
) -> GaussianMixtureProblem:
    """2-D Gaussian mixtures.

    ``8gaussians``: ``components`` (default 8) equal components on a circle of ``radius``, std 0.1 (the classic toy).
    ``grid``: ``components`` (default 25, a square number) on a square grid spanning ``[-radius, radius]^2``, std 0.1.
    ``ring``: ``components`` (default 16) on a circle, std 0.05.
    ``random``: ``components`` (default 8) means in ``[-radius, radius]^2``, Dirichlet-like weights and
    random anisotropic covariances (``std`` about 0.25), from ``seed``.
    """
    if layout == "8gaussians":
        k = 8 if components is None else components
        s = 0.1 if std is None else std
        return GaussianMixtureProblem(_ring(k, radius), s**2, name="gmm2d", layout=f"8gaussians(k={k})")
    if layout == "grid":
        k = 25 if components is None else components
        side = int(round(math.sqrt(k)))
        if side * side != k:
            raise ValueError(f"grid layout needs a square number of components, got {k}")
        ticks = torch.linspace(-radius, radius, side, dtype=F64) if side > 1 else torch.zeros(1, dtype=F64)
        gx, gy = torch.meshgrid(ticks, ticks, indexing="ij")
        means = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
        s = 0.1 if std is None else std
        return GaussianMixtureProblem(means, s**2, name="gmm2d", layout=f"grid(k={k})")
    if layout == "ring":
        k = 16 if components is None else components
        s = 0.05 if std is None else std
        return GaussianMixtureProblem(_ring(k, radius), s**2, name="gmm2d", layout=f"ring(k={k})")
    if layout == "random":
        k = 8 if components is None else components
        return _random_mixture(2, k, 0.25 if std is None else std, radius, seed, "gmm2d")
    raise _unknown("gmm2d layout", layout, GMM2D_LAYOUTS)


@_checked("gmm_nd")
def make_gmm_nd(
    dim: int = 8,
    layout: str = "random",
    components: int | None = None,
    std: float | None = None,
    radius: float = 2.0,
    seed: int = 0,
) -> GaussianMixtureProblem:
    """n-D Gaussian mixtures: ``random`` (``components`` default 8, means uniform in the cube of
    half-width ``radius``, random weights and anisotropic covariances of typical ``std`` 0.25 from
    ``seed``) or ``axes`` (``2 dim`` components at ``±radius e_i``, isotropic ``std`` 0.2)."""
    if layout == "axes":
        _check_problem_bytes("gmm_nd", 2 * dim * dim * dim * 8 * 3, f"{2 * dim} components of dimension {dim}")
        eye = torch.eye(dim, dtype=F64) * radius
        s = 0.2 if std is None else std
        return GaussianMixtureProblem(torch.cat([eye, -eye]), s**2, name="gmm_nd", layout=f"axes(d={dim})")
    if layout == "random":
        return _random_mixture(
            dim, 8 if components is None else components, 0.25 if std is None else std, radius, seed, "gmm_nd"
        )
    raise _unknown("gmm_nd layout", layout, GMM_ND_LAYOUTS)


def _random_mixture(dim: int, k: int, std: float, radius: float, seed: int, name: str) -> GaussianMixtureProblem:
    # K rotated covariances [K, d, d] and their eigendecompositions (about 4 such arrays alive at once)
    _check_problem_bytes(name, 4.0 * k * dim * dim * 8, f"{k} components of dimension {dim}")
    gen = torch.Generator().manual_seed(int(seed))
    means = (2 * torch.rand(k, dim, generator=gen, dtype=F64) - 1) * radius
    weights = 0.5 + torch.rand(k, generator=gen, dtype=F64)
    covs = _random_psd(gen, k, dim, std, 2.0)
    return GaussianMixtureProblem(means, covs, weights, name=name, layout=f"random(k={k}, d={dim}, seed={seed})")


@_checked("swissroll")
def make_swissroll(
    components: int = 128, std: float = 0.06, scale: float = 0.2, turns: float = 1.5
) -> GaussianMixtureProblem:
    """A 2-D swiss roll: ``components`` small isotropic Gaussians (``std``) evenly in arc length along
    ``t (cos t, sin t) * scale`` for ``t`` in ``[1.5 pi, 1.5 pi (1 + 2 turns / 1.5)]`` (the DDPM-tutorial picture,
    about ``[-2.7, 2.7]^2`` at the defaults)."""
    t_lo, t_hi = 1.5 * math.pi, 1.5 * math.pi + 2 * math.pi * turns
    fine = torch.linspace(t_lo, t_hi, 4096, dtype=F64)
    pts = torch.stack([fine * torch.cos(fine), fine * torch.sin(fine)], -1) * scale
    arc = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum((pts[1:] - pts[:-1]).norm(dim=1), 0)])
    targets = torch.linspace(0, float(arc[-1]), components, dtype=F64)
    idx = torch.searchsorted(arc, targets).clamp(max=len(arc) - 1)
    return GaussianMixtureProblem(pts[idx], std * std, name="swissroll", layout=f"swissroll(k={components})")


@_checked("gaussian")
def make_gaussian(
    dim: int = 2, seed: int = 0, std: float = 1.0, anisotropy: float = 4.0, shift: float = 0.5
) -> GaussianProblem:
    """A Gaussian in ``dim`` dimensions with a random rotation, eigenvalues spread by ``anisotropy``
    around ``std^2`` and a random mean of norm ``shift`` (from ``seed``)."""
    gen = torch.Generator().manual_seed(int(seed))
    cov = _random_psd(gen, 1, dim, std, anisotropy)[0]
    direction = torch.randn(dim, generator=gen, dtype=F64)
    mean = shift * direction / direction.norm()
    return GaussianProblem(mean, cov, name="gaussian" if dim == 2 else "gaussian_nd")


@_checked("gaussian_nd")
def make_gaussian_nd(
    dim: int = 16, seed: int = 0, std: float = 1.0, anisotropy: float = 4.0, shift: float = 0.5
) -> GaussianProblem:
    """:func:`make_gaussian` in ``dim`` dimensions (default 16), with its ``seed``, ``std``,
    ``anisotropy`` and ``shift``."""
    return make_gaussian(dim=dim, seed=seed, std=std, anisotropy=anisotropy, shift=shift)


# --------------------------------------------------------------------------------------------
# Speed-only problems: a real network, no exact answer
# --------------------------------------------------------------------------------------------


class ModelProblem:
    """A speed-only benchmark problem: a network with seeded random weights and no oracle.

    Nothing is known about the right answer, so a benchmark on it measures time (wall, samples/s,
    per-step overhead, peak memory) and no accuracy. Samples are ``[B, *sample_shape]``; the runner
    keeps them flat as ``[B, dim]`` and :class:`NetworkModel` reshapes (views of contiguous samples).

    Args:
        name: problem name (``"dit"``).
        sample_shape: per-sample shape, e.g. ``(4, 16, 16)``.
        build: ``build(device, dtype) -> model``, the network called as ``model(x, t)``.
        info: JSON-able description for records (preset, parameter count, ...).
    """

    speed_only = True

    def __init__(
        self,
        name: str,
        sample_shape: tuple[int, ...],
        build: Callable[[torch.device, torch.dtype], Any],
        info: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.dim = math.prod(self.sample_shape)
        self._build = build
        self.info = dict(info or {})

    def make_model(self, device: torch.device, dtype: torch.dtype) -> NetworkModel:
        """The network on ``device`` in ``dtype``, wrapped to take and return flat ``[B, dim]`` samples."""
        net = self._build(device, dtype)
        if hasattr(net, "parameters"):
            self.info["params"] = sum(p.numel() for p in net.parameters())
        return NetworkModel(net, self.sample_shape)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "sample_shape": list(self.sample_shape),
            "speed_only": True,
            **self.info,
        }


def is_speed_only(problem: object) -> TypeIs[SpeedOnlyProblem]:
    """True for problems with no exact denoiser (a network benchmark: timings only)."""
    return bool(getattr(problem, "speed_only", False))


class NetworkModel:
    """``model(x_in [B, dim], t) -> [B, dim]`` around a network on ``[B, *sample_shape]``.

    Runs under ``torch.inference_mode`` (no autograd bookkeeping in a timing), counts calls (the NFE).
    """

    def __init__(self, net: Any, sample_shape: tuple[int, ...]) -> None:
        self.net = net
        self.sample_shape = tuple(sample_shape)
        self.calls = 0

    def __call__(self, x_in: torch.Tensor, t: Any, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        with torch.inference_mode():
            out = self.net(x_in.reshape(x_in.shape[0], *self.sample_shape), t, **kwargs)
        return out.reshape(x_in.shape[0], -1)


@_checked("dit")
def make_dit(
    preset: str = "dit-tiny", image_size: int | None = None, seed: int = 0, init: str = "random"
) -> ModelProblem:
    """Speed-only problem: the reference DiT (:mod:`samplers.models.dit`) with random weights from ``seed``.

    ``preset``: ``dit-tiny`` (default, CPU-sized: 4 x 16 x 16 inputs, 0.7 M parameters) or the
    paper's ``dit-s`` / ``dit-b`` / ``dit-l`` / ``dit-xl`` (4 x 32 x 32 latents, 256 tokens);
    ``image_size`` overrides the input height and width; ``init`` is ``random`` or ``adaln_zero``.
    The model runs unconditionally (the null class).
    """
    from dataclasses import replace

    from samplers.models.dit import DIT_PRESETS, Init, build_dit

    key = str(preset).lower().replace("_", "-")
    if key not in DIT_PRESETS:
        raise _unknown("DiT preset", preset, DIT_PRESETS)
    if init not in ("random", "adaln_zero"):
        raise _unknown("DiT init", init, ("random", "adaln_zero"))
    # Config errors (an image size the patch size does not divide) surface here, before any run.
    cfg = replace(DIT_PRESETS[key], **({} if image_size is None else {"input_size": int(image_size)}))

    init_kind: Init = "adaln_zero" if init == "adaln_zero" else "random"  # one of the two (checked above)

    def build(device: torch.device, dtype: torch.dtype) -> Any:
        return build_dit(cfg, seed=seed, init=init_kind, device=device, dtype=dtype)

    info = {"model": key, "seed": seed, "init": init, "config": cfg.to_dict()}
    return ModelProblem("dit", (cfg.in_channels, cfg.input_size, cfg.input_size), build, info)


# --------------------------------------------------------------------------------------------
# Real data: a trained network and a real data set
# --------------------------------------------------------------------------------------------


class DigitsProblem(Problem):
    """``digits``: a denoiser trained on scikit-learn's real 8x8 handwritten digits, sampled in pixel space.

    There is no exact answer here: the "model" is the shipped network (:mod:`samplers.bench.digits`,
    an x0-predictor valid on every schedule), evaluated in float64. What a benchmark compares with:

    * the training split (1,438 digits): ``reference_data()``, the distribution the model learned;
      SW / MMD in pixel space and the Frechet distance in the classifier's feature space
      (``features``) are measured against it;
    * the held-out split (359 digits): ``heldout_data()``, the noise floor: real digits the model never
      saw, scored against the training split like a sampler's output;
    * the probability-flow ODE solved to high accuracy from the sampler's own initial noise
      (:func:`samplers.bench.reference.solve_reference`), with its own error estimate
      (``ode_reference``).

    ``sample()`` draws rows of the training split (with replacement, by per-sample seeds): the
    empirical data distribution, not the model's.
    """

    has_data = True

    def __init__(self, weights: str | None = None, reference_tol: float = 1e-4) -> None:
        from samplers.bench import digits as D

        self.denoiser, self.classifier, self.meta = D.load_models(weights, dtype=F64)
        split = D.split_data()
        self.train, self.heldout = split["train"], split["heldout"]
        self.train_labels, self.heldout_labels = split["train_labels"], split["heldout_labels"]
        self.name, self.dim = "digits", D.PIXELS
        self.image_shape = (8, 8)
        self.reference_tol = float(reference_tol)
        self._mean = self.train.mean(0)
        c = self.train - self._mean
        self._cov = (c.T @ c) / (self.train.shape[0] - 1)

    def describe(self) -> dict[str, Any]:
        m = self.meta
        return {
            "name": self.name,
            "dim": self.dim,
            "image_shape": list(self.image_shape),
            "layout": "sklearn digits 8x8, trained denoiser",
            "train_samples": int(self.train.shape[0]),
            "heldout_samples": int(self.heldout.shape[0]),
            "data_sha256": m.get("data_sha256"),
            "split_rule": m.get("split_rule"),
            "parameterization": m.get("parameterization"),
            "denoiser_final_loss": m.get("denoiser_final_loss"),
            "classifier_heldout_accuracy": m.get("classifier_heldout_accuracy"),
            "training_command": m.get("training_command"),
        }

    def mean(self) -> torch.Tensor:
        return self._mean.clone()

    def covariance(self) -> torch.Tensor:
        return self._cov.clone()

    def reference_data(self) -> torch.Tensor:
        """The training split [1438, 64] float64 in model space ([-1, 1])."""
        return self.train

    def heldout_data(self) -> torch.Tensor:
        """The held-out split [359, 64] float64 in model space."""
        return self.heldout

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier features [n, 64] float64 of samples [n, 64] (model space)."""
        return self.classifier.features(x.to(F64).cpu())

    def sample(
        self, n: int, seeds: torch.Tensor | None = None, stream: int = DATA_STREAM, seed: int = 0
    ) -> torch.Tensor:
        seeds = self._seeds(n, seeds, seed)
        u = philox_uniform(seeds, stream, 1)[:, 0]
        idx = (u * self.train.shape[0]).long().clamp(max=self.train.shape[0] - 1)
        return self.train.to(seeds.device)[idx]

    def _denoise64(self, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
        net = self._on_device(x.device)
        with torch.inference_mode():
            return net(x, alpha, sigma)

    def _on_device(self, device: torch.device) -> Any:
        cache = self.__dict__.setdefault("_net_cache", {})
        if str(device) not in cache:
            import copy

            cache[str(device)] = self.denoiser if device.type == "cpu" else copy.deepcopy(self.denoiser).to(device)
        return cache[str(device)]

    def scale(self) -> float:
        return 1.0  # pixels in [-1, 1]

    def ode_reference(
        self, x_t: torch.Tensor, alpha_t: float, sigma_t: float, tol: float | None = None, resume: Any = None
    ) -> Any:
        """:class:`~samplers.bench.reference.ReferenceSolution` of the network's PF-ODE from ``x_t`` (model space)
        to ``sigma = 0``, to ``tol`` (default ``reference_tol``); ``resume`` continues an earlier, looser solve."""
        from samplers.bench.reference import solve_reference

        _check_x(x_t, self.dim)
        tol = self.reference_tol if tol is None else tol
        return solve_reference(self._denoise64, x_t.to(F64), float(alpha_t), float(sigma_t), tol=tol, resume=resume)

    def ode_solution(self, x_t: torch.Tensor, alpha_t: float, sigma_t: float, **_: Any) -> torch.Tensor:
        """The endpoint of :meth:`ode_reference` [B, 64] float64."""
        return self.ode_reference(x_t, alpha_t, sigma_t).x0


def make_digits() -> DigitsProblem:
    """The ``digits`` problem: the shipped denoiser trained on scikit-learn's real 8x8 digits (no options).

    Needs scikit-learn for the data (``pip install 'samplers[bench]'``); see :class:`DigitsProblem`.
    """
    from samplers.bench.digits import DigitsDataError

    try:
        return DigitsProblem()
    except DigitsDataError as exc:
        raise ValueError(f"problem 'digits': {exc}") from None


def is_data_problem(problem: object) -> TypeGuard[DataProblem]:
    """True for problems scored against real data (a reference set, a held-out noise floor, a reference ODE solve)."""
    return bool(getattr(problem, "has_data", False))


# --------------------------------------------------------------------------------------------
# What the benchmark uses of a problem (built-in, plugin, or a --model network)
# --------------------------------------------------------------------------------------------


class OracleProblem(Protocol):
    """A problem with a denoiser: a built-in :class:`Problem`, a plugin's object, or a ``--model`` network
    (:class:`samplers.bench.network.NetworkProblem`). :class:`OracleModel` and the runner use these."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def denoise(self, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
        """``E[x0 | x]`` [B, dim] for noisy ``x`` [B, dim] at (alpha, sigma)."""
        ...

    def mean(self) -> torch.Tensor:
        """The data mean [dim] float64."""
        ...

    def covariance(self) -> torch.Tensor:
        """The data covariance [dim, dim] float64."""
        ...

    def ode_solution(self, x_t: torch.Tensor, alpha_t: float, sigma_t: float) -> torch.Tensor:
        """The PF-ODE endpoint [B, dim] float64 from model-space ``x_t`` [B, dim] at (alpha_t, sigma_t)."""
        ...


@runtime_checkable
class SampledProblem(Protocol):
    """A problem that draws exact data samples (the runner's truth and noise-floor sets)."""

    def sample(self, n: int, seeds: torch.Tensor | None = None, stream: int = DATA_STREAM) -> torch.Tensor:
        """``n`` samples [n, dim] float64 from per-sample ``seeds`` [n] on Philox ``stream``."""
        ...


@runtime_checkable
class MixtureProblem(Protocol):
    """A problem that may know its data as a Gaussian mixture (metrics then use the exact distribution)."""

    def mixture_components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(weights [K], means [K, dim], covs [K, dim, dim])`` float64, or None."""
        ...


@runtime_checkable
class FeatureProblem(Protocol):
    """A problem with a feature extractor (the Frechet distance in feature space)."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Features [n, f] float64 of samples [n, dim]."""
        ...


class DataProblem(OracleProblem, Protocol):
    """A trained network scored against real data (:func:`is_data_problem`): ``digits`` or ``--model --data``."""

    def reference_data(self) -> torch.Tensor:
        """The data set the samples are compared with [N, dim] float64."""
        ...

    def heldout_data(self) -> torch.Tensor:
        """Held-out data [M, dim] float64: the noise floor."""
        ...

    def ode_reference(
        self, x_t: torch.Tensor, alpha_t: float, sigma_t: float, tol: float | None = None, resume: Any = None
    ) -> ReferenceSolution:
        """A high-accuracy PF-ODE solve from ``x_t`` [B, dim] to ``sigma = 0`` with its error estimate."""
        ...


class SpeedOnlyProblem(Protocol):
    """A problem with no exact answer (:func:`is_speed_only`): a network timed end to end (:class:`ModelProblem`)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def make_model(self, device: torch.device, dtype: torch.dtype) -> NetworkModel:
        """The network on ``device`` in ``dtype``, taking and returning flat [B, dim] samples."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description for benchmark records."""
        ...


# Every problem a benchmark runs: one with a denoiser, or a speed-only network.
BenchProblem = OracleProblem | SpeedOnlyProblem


ProblemFactory = Callable[..., Problem]

PROBLEMS: dict[str, ProblemFactory] = {
    "gaussian": make_gaussian,
    "gaussian_nd": make_gaussian_nd,
    "gmm2d": make_gmm2d,
    "gmm_nd": make_gmm_nd,
    "swissroll": make_swissroll,
}

# Speed-only problems (a network, no exact denoiser): benchmarked for time, never scored.
MODEL_PROBLEMS: dict[str, Callable[..., ModelProblem]] = {
    "dit": make_dit,
}

# Trained networks on real data: scored against the data and a reference ODE solve.
DATA_PROBLEMS: dict[str, ProblemFactory] = {
    "digits": make_digits,
}
OPTION_SPECS["digits"] = {}

_BUILTIN_FACTORIES: dict[str, Callable[..., Any]] = {**PROBLEMS, **MODEL_PROBLEMS, **DATA_PROBLEMS}


def problem_factories() -> dict[str, ProblemFactory]:
    """Built-in problems (oracle, real-data and speed-only) plus those plugins add through
    ``samplers_register_problems``."""
    table: dict[str, Callable[..., Any]] = dict(_BUILTIN_FACTORIES)
    try:
        from samplers.registry import registry

        extra = registry().problems()
    except Exception:  # a broken plugin must not take the built-in problems down (registry records it)
        extra = {}
    for name, factory in extra.items():
        if name in table:
            raise ValueError(f"problem name {name!r} is built in and registered again by a plugin")
        table[name] = factory
    return table


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_problem_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"gmm2d:layout=ring,components=12"`` -> ``("gmm2d", {"layout": "ring", "components": 12})``."""
    name, _, rest = spec.strip().partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"problem option {item!r} in {spec!r} must look like key=value")
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return name.strip(), options


def _option_types(factory: Callable[..., Any], param: Any) -> tuple[type, ...] | None:
    """The simple types (bool, int, float, str, None) a factory parameter takes, from its annotation
    or else its default; ``None`` when unknown (no annotation and no usable default, or ``Any``)."""
    import inspect
    import types
    import typing

    try:
        hint = typing.get_type_hints(factory).get(param.name, inspect.Parameter.empty)
    except Exception:  # an annotation that does not evaluate: fall back to the default's type
        hint = inspect.Parameter.empty
    if hint is inspect.Parameter.empty:
        default = param.default
        if default is inspect.Parameter.empty or default is None:
            return None
        hint = type(default)
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not all(m in _TYPE_WORDS for m in members):
        return None
    if param.default is None and type(None) not in members:
        members = (*members, type(None))
    return tuple(members)


def _coerce_options(name: str, factory: Callable[..., Any], params: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Check (and where lossless, convert) each option against the factory's parameter types, so a
    wrong value names the option (``gaussian:dim=abc``) instead of failing inside the factory."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        param = params.get(key)
        allowed = _option_types(factory, param) if param is not None else None
        if allowed is None or not isinstance(value, (bool, int, float, str)):
            out[key] = value
            continue
        if isinstance(value, str) and value.lower() == "none" and type(None) in allowed:
            out[key] = None
        elif isinstance(value, bool):
            if bool in allowed:
                out[key] = value
            elif str in allowed:
                out[key] = str(value).lower()
            else:
                raise _bad_option(name, key, value, allowed)
        elif isinstance(value, int) and int in allowed:
            out[key] = value
        elif isinstance(value, (int, float)) and float in allowed:
            out[key] = float(value)
        elif str in allowed:
            out[key] = str(value)
        else:
            raise _bad_option(name, key, value, allowed)
    return out


def _bad_option(name: str, key: str, value: Any, allowed: tuple[type, ...]) -> ValueError:
    words = " or ".join(_TYPE_WORDS[t] for t in allowed)
    return ValueError(f"problem {name!r} option {key!r} expects {words}, got {value!r}")


def get_problem(spec: str, **options: Any) -> Problem:
    """A problem by name (``"gmm2d"``) or spec with options (``"gmm2d:layout=grid"``); unknown names
    and options raise ``ValueError`` naming close matches."""
    name, parsed = parse_problem_spec(spec)
    parsed.update(options)
    table = problem_factories()
    if name not in table:
        raise _unknown("problem", name, sorted(table))
    factory = table[name]
    import inspect

    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(factory).parameters
        known = True
    except (TypeError, ValueError):
        params, known = {}, False
    specs = option_specs(name) if factory is _BUILTIN_FACTORIES.get(name) else {}
    if known and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        bad = sorted(set(parsed) - set(params))
        if bad:
            if specs:
                takes = "; ".join(f"{k}: {v.describe()}" for k, v in specs.items())
            else:
                takes = ", ".join(sorted(params)) or "no options"
            raise ValueError(f"problem {name!r} has no option(s) {bad}; it takes {takes}")
    if specs:  # built-in: the factory checks every value against its documented range
        parsed = {k: specs[k].check(name, k, v) for k, v in parsed.items()}
    elif params:
        parsed = _coerce_options(name, factory, params, parsed)
    problem = factory(**parsed)
    # An oracle problem has an exact denoiser; a speed-only one (ModelProblem) builds a network.
    needed = ("dim", "make_model") if is_speed_only(problem) else ("dim", "sample", "denoise")
    for attr in needed:
        if not hasattr(problem, attr):
            raise TypeError(f"problem {name!r} factory returned {type(problem).__name__} without {attr!r}")
    return problem


# --------------------------------------------------------------------------------------------
# The oracle "model": an exact denoiser dressed as a network of any prediction type
# --------------------------------------------------------------------------------------------


class OracleModel:
    """A perfect model of ``prediction_type`` for ``problem`` under a noise ``schedule``.

    ``model(x_in, t)``: ``(alpha, sigma) = schedule.alpha_sigma(t)`` (``t`` a scalar or a per-sample
    [B] tensor), ``x0 = problem.denoise(x_in, alpha, sigma)``, and the output is what a network of
    that prediction type outputs for that clean estimate (``model_output_from_x0``). Math in
    float64, output in ``x_in``'s dtype. ``calls`` counts evaluations (the NFE).

    ``model.at(x_in, alpha, sigma)`` takes the noise level directly: a benchmark that knows the
    scheduler's own (alpha, sigma) for each call uses it, so no interpolation of fractional
    timesteps can make the oracle disagree with the sampler about the noise level.
    """

    def __init__(self, problem: OracleProblem, schedule: Any, prediction_type: str = "epsilon") -> None:
        from samplers.parameterization import canonical_prediction_type

        self.problem = problem
        self.schedule = schedule
        self.prediction_type = canonical_prediction_type(prediction_type)
        self.calls = 0

    def __call__(self, x_in: torch.Tensor, t: Any, **_: Any) -> torch.Tensor:
        t_tensor = torch.as_tensor(t, device=x_in.device)
        alpha, sigma = self.schedule.alpha_sigma(t_tensor)
        return self.at(x_in, alpha, sigma)

    def at(self, x_in: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
        """Model output for model-space input ``x_in`` [B, dim] at noise level (alpha, sigma)."""
        from samplers.parameterization import model_output_from_x0

        _check_x(x_in, self.problem.dim)
        self.calls += 1
        batch = x_in.shape[0]
        a = _as_column(alpha, batch, x_in.device)
        s = _as_column(sigma, batch, x_in.device)
        x64 = x_in.to(F64)
        if isinstance(self.problem, Problem):
            x0 = self.problem._denoise64(x64, a, s)
        else:  # a plugin problem that only has the public denoise
            x0 = self.problem.denoise(x64, a, s).to(F64)
        return model_output_from_x0(self.prediction_type, x0, x64, a, s).to(x_in.dtype)
