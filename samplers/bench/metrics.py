"""Accuracy metrics for samplers against an exactly known target (all float64).

* :func:`sliced_wasserstein` — SW_p between two sample sets over 1-D projections.
* :func:`mmd_rbf` — unbiased MMD^2 with a Gaussian (RBF) kernel.
* :func:`frechet_distance` — ``|m1 - m2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` (the FID formula).
* :func:`kl_gaussian` — closed-form KL between Gaussians (moment fits or exact push-forwards).
* :func:`ode_error` — RMS distance to the exact probability-flow ODE endpoint.
* :func:`convergence_order` — empirical order: least-squares slope of log error vs log NFE.

:data:`METRICS` names what ``samplers bench --metric`` accepts; each entry computes its value
from a :class:`MetricInputs` (the run's samples plus everything exact about the problem).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

F64 = torch.float64


def _as2d(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [n, d], got {type(x).__name__}")
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape [n, d] with n >= 1, got {tuple(x.shape)}")
    return x.to(F64)


def _same_dim(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sample sets have different dimensions: {x.shape[1]} and {y.shape[1]}")


# --------------------------------------------------------------------------------------------
# Sliced Wasserstein
# --------------------------------------------------------------------------------------------


def projection_directions(dim: int, num_projections: int | None = None, seed: int = 0) -> torch.Tensor:
    """Unit directions [P, dim]: evenly spaced angles on the half circle in 2-D (default 64: a
    quadrature of a smooth function of the angle, no Monte-Carlo noise), ``[1]`` in 1-D, else
    normalized Gaussians from ``seed`` (default P = 128)."""
    if dim == 1:
        return torch.ones(1, 1, dtype=F64)
    if dim == 2:
        p = num_projections or 64
        angle = torch.arange(p, dtype=F64) * (math.pi / p)
        return torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    p = num_projections or 128
    g = torch.randn(p, dim, generator=torch.Generator().manual_seed(int(seed)), dtype=F64)
    return g / g.norm(dim=1, keepdim=True)


def _quantiles_at(sorted_vals: torch.Tensor, m: int) -> torch.Tensor:
    """Empirical quantiles [m, P] at levels (i + 1/2)/m of column-sorted values [n, P]."""
    n = sorted_vals.shape[0]
    if n == m:
        return sorted_vals
    idx = ((torch.arange(m, dtype=F64) + 0.5) * (n / m)).floor().long().clamp(max=n - 1)
    return sorted_vals[idx.to(sorted_vals.device)]


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, num_projections: int | None = None, p: int = 2, seed: int = 0
) -> float:
    """Sliced Wasserstein-p distance ``(E_theta W_p^p(theta.x, theta.y))^(1/p)``.

    Args:
        x: [n, d] samples; y: [m, d] samples (sizes may differ: quantiles are matched).
        num_projections: directions (2-D: evenly spaced angles; n-D: random from ``seed``).
    Known value: for ``y = x + v`` every projection shifts by ``theta.v``, so SW_2 = |v| / sqrt(d).
    """
    x, y = _as2d("x", x), _as2d("y", y)
    _same_dim(x, y)
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    theta = projection_directions(x.shape[1], num_projections, seed).to(x.device)
    # [P, n] layout: sorting along the contiguous dimension is ~10x faster than along dim 0
    px = torch.sort(theta @ x.T, dim=1).values.T
    py = torch.sort(theta @ y.to(x.device).T, dim=1).values.T
    m = max(px.shape[0], py.shape[0])
    diff = (_quantiles_at(px, m) - _quantiles_at(py, m)).abs()
    return float((diff**p).mean() ** (1.0 / p))


# --------------------------------------------------------------------------------------------
# MMD
# --------------------------------------------------------------------------------------------


def _rbf(a: torch.Tensor, b: torch.Tensor, gamma: float) -> torch.Tensor:
    """``exp(-gamma |a_i - b_j|^2)`` [n, m]; exponent floored at -700 (float64 exp's slow underflow path)."""
    d2 = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    return torch.exp((-gamma * d2).clamp(min=-700.0))


def median_bandwidth(y: torch.Tensor, max_samples: int = 2000) -> float:
    """Median pairwise distance of (the first ``max_samples`` of) ``y``: the usual RBF bandwidth."""
    y = _as2d("y", y)[:max_samples]
    if y.shape[0] < 2:
        return 1.0
    d = torch.cdist(y, y)
    iu = torch.triu_indices(y.shape[0], y.shape[0], 1)
    med = float(d[iu[0], iu[1]].median())
    return med if med > 0 else 1.0


def rbf_self_mean(y: torch.Tensor, bandwidth: float, max_samples: int | None = 2000) -> float:
    """``mean_{i != j} k(y_i, y_j)`` over (the first ``max_samples`` of) ``y``: the y-y term of :func:`mmd_rbf`,
    computed once when one reference set is compared with many sample sets."""
    y = _as2d("y", y)[:max_samples] if max_samples is not None else _as2d("y", y)
    k = _rbf(y, y, 1.0 / (2 * bandwidth * bandwidth))
    n = y.shape[0]
    return float((k.sum() - k.diagonal().sum()) / (n * (n - 1)))


def mmd_rbf(
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidth: float | None = None,
    max_samples: int | None = 2000,
    yy: float | None = None,
) -> float:
    """Unbiased MMD^2 with ``k(a, b) = exp(-|a - b|^2 / (2 h^2))`` (Gretton et al. 2012, eq. 3).

    Args:
        x: [n, d], y: [m, d] samples (n, m >= 2); the first ``max_samples`` of each are used (keeps
            it O(max_samples^2); None uses all).
        bandwidth: ``h``; default the median heuristic on ``y``.
        yy: :func:`rbf_self_mean` of the same ``y``, bandwidth and ``max_samples``, if already known.
    Returns:
        MMD^2 estimate (unbiased, so it can be slightly negative when the distributions agree).
    """
    x, y = _as2d("x", x), _as2d("y", y)
    _same_dim(x, y)
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples].to(x.device)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("mmd_rbf needs at least 2 samples in each set")
    h = bandwidth if bandwidth is not None else median_bandwidth(y)
    if not h > 0:
        raise ValueError(f"bandwidth must be > 0, got {h}")
    gamma = 1.0 / (2 * h * h)

    def mean_offdiag(a: torch.Tensor) -> float:
        k = _rbf(a, a, gamma)
        n = a.shape[0]
        return float((k.sum() - k.diagonal().sum()) / (n * (n - 1)))

    kxy = _rbf(x, y, gamma)
    return mean_offdiag(x) + (mean_offdiag(y) if yy is None else yy) - 2 * float(kxy.mean())


def mmd_rbf_gaussians(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor, bandwidth: float
) -> float:
    """Exact MMD^2 between ``N(mu1, cov1)`` and ``N(mu2, cov2)`` for the RBF kernel of :func:`mmd_rbf`.

    ``E k(a, b) = det(I + (Sa + Sb) / h^2)^(-1/2) exp(-dm^T (h^2 I + Sa + Sb)^(-1) dm / 2)`` for
    independent ``a ~ N(ma, Sa)``, ``b ~ N(mb, Sb)``.
    """
    h2 = bandwidth * bandwidth

    def ek(ma: torch.Tensor, sa: torch.Tensor, mb: torch.Tensor, sb: torch.Tensor) -> float:
        d = ma.numel()
        s = sa.to(F64) + sb.to(F64)
        eye = torch.eye(d, dtype=F64)
        dm = (ma - mb).to(F64)
        quad = dm @ torch.linalg.solve(h2 * eye + s, dm)
        return float(torch.linalg.det(eye + s / h2) ** -0.5 * torch.exp(-0.5 * quad))

    return ek(mu1, cov1, mu1, cov1) + ek(mu2, cov2, mu2, cov2) - 2 * ek(mu1, cov1, mu2, cov2)


# --------------------------------------------------------------------------------------------
# Against the exact distribution (Gaussian mixtures): half the sampling noise of sample-vs-sample
# --------------------------------------------------------------------------------------------


def mixture_quantiles(
    weights: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, levels: torch.Tensor, grid: int = 8192
) -> torch.Tensor:
    """Quantiles of 1-D Gaussian mixtures, one mixture per column: [L, P].

    Args:
        weights: [K] mixture weights (sum 1), shared by every column.
        means, stds: [P, K] component means and standard deviations per column.
        levels: [L] probabilities in (0, 1).
    The CDF is tabulated exactly on ``grid`` points spanning every component to 9 std and inverted
    by linear interpolation (error O(spacing^2 * density'), far below any sampling noise).
    """
    w = weights.to(F64)
    means, stds = means.to(F64), stds.to(F64).clamp(min=1e-300)
    lo = (means - 9 * stds).min(dim=1).values
    hi = (means + 9 * stds).max(dim=1).values
    ramp = torch.linspace(0.0, 1.0, grid, dtype=F64)
    t = lo[:, None] + (hi - lo)[:, None] * ramp[None, :]  # [P, G]
    cdf = torch.zeros_like(t)
    step = max(1, (1 << 23) // max(1, t.numel()))
    for k0 in range(0, w.numel(), step):  # chunk components: P * G * K can be large
        sl = slice(k0, k0 + step)
        # clamp: ndtr far in the tail underflows through a slow path; Phi(-35) ~ 1e-268 is 0 here
        z = ((t[:, :, None] - means[:, None, sl]) / stds[:, None, sl]).clamp(-35.0, 35.0)
        cdf += (torch.special.ndtr(z) * w[sl]).sum(-1)
    cdf = torch.cummax(cdf, dim=1).values  # exact monotonicity despite rounding
    lv = levels.to(F64).view(1, -1).expand(t.shape[0], -1).contiguous()
    idx = torch.searchsorted(cdf, lv).clamp(1, grid - 1)
    c0, c1 = cdf.gather(1, idx - 1), cdf.gather(1, idx)
    t0, t1 = t.gather(1, idx - 1), t.gather(1, idx)
    frac = torch.where(c1 > c0, (lv - c0) / (c1 - c0), torch.full_like(c0, 0.5)).clamp(0, 1)
    return (t0 + frac * (t1 - t0)).T


def _expected_rbf(ma: torch.Tensor, sa: torch.Tensor, mb: torch.Tensor, sb: torch.Tensor, h2: float) -> torch.Tensor:
    """``E k(a, b)`` for independent ``a ~ N(ma, sa)``, ``b ~ N(mb, sb)`` (broadcast over leading dims).

    ``det(I + (Sa + Sb) / h^2)^(-1/2) exp(-dm^T (h^2 I + Sa + Sb)^(-1) dm / 2)``.
    """
    d = ma.shape[-1]
    s = sa + sb + h2 * torch.eye(d, dtype=F64)
    chol = torch.linalg.cholesky(s)
    dm = (ma - mb).unsqueeze(-1)
    sol = torch.cholesky_solve(dm, chol)
    quad = (dm * sol).sum((-2, -1))
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1) - d * math.log(h2)
    return torch.exp(-0.5 * logdet - 0.5 * quad)


class ExactTarget:
    """Closed-form facts about a Gaussian-mixture target, computed once per benchmark.

    * sliced Wasserstein of a sample set to the exact distribution: sorted projections matched to
      the exact projected quantiles at levels ``(i + 1/2) / n``;
    * unbiased MMD^2 to the exact distribution: ``mean_{i!=j} k(x_i, x_j) - 2 mean_i E_y k(x_i, y) + E k(y, y')``
      with the last two terms in closed form.

    Args:
        weights: [K]; means: [K, d]; covs: [K, d, d] (a Gaussian is K = 1).
        bandwidth: RBF bandwidth ``h`` (shared by every row of a benchmark).
    """

    def __init__(
        self,
        weights: torch.Tensor,
        means: torch.Tensor,
        covs: torch.Tensor,
        bandwidth: float,
        num_projections: int | None = None,
        seed: int = 0,
    ) -> None:
        self.weights = weights.to(F64) / weights.sum()
        self.means, self.covs = means.to(F64), covs.to(F64)
        self.dim = self.means.shape[1]
        self.theta = projection_directions(self.dim, num_projections, seed)
        self.proj_means = self.theta @ self.means.T  # [P, K]
        self.proj_stds = torch.einsum("pi,kij,pj->pk", self.theta, self.covs, self.theta).clamp(min=0).sqrt()
        self.bandwidth = float(bandwidth)
        h2 = self.bandwidth**2
        k = self.weights.numel()
        pair = _expected_rbf(self.means[:, None], self.covs[:, None], self.means[None, :], self.covs[None, :], h2)
        self.kyy = float((self.weights[:, None] * self.weights[None, :] * pair).sum()) if k else 0.0
        # x-independent parts of E_y k(x, y) = sum_k w_k c_k exp(-(x - m_k)^T P_k (x - m_k) / 2)
        s = self.covs + h2 * torch.eye(self.dim, dtype=F64)
        self._prec = torch.linalg.inv(s)
        self._log_c = math.log(h2) * self.dim / 2 - 0.5 * torch.linalg.slogdet(s)[1] + torch.log(self.weights)
        self._quantiles: dict[int, torch.Tensor] = {}
        self._sorted: tuple[torch.Tensor, torch.Tensor] | None = None

    def quantiles(self, n: int) -> torch.Tensor:
        """Exact projected quantiles [P, n] (one row per direction) at levels (i + 1/2)/n (cached per n)."""
        if n not in self._quantiles:
            levels = (torch.arange(n, dtype=F64) + 0.5) / n
            self._quantiles[n] = mixture_quantiles(
                self.weights, self.proj_means, self.proj_stds, levels
            ).T.contiguous()
        return self._quantiles[n]

    def sliced_wasserstein(self, x: torch.Tensor, p: int = 2) -> float:
        """SW_p between the empirical distribution of ``x`` [n, d] and the exact target."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [n, {self.dim}], got {tuple(x.shape)}")
        # SW1 and SW2 of one sample set share the sorted projections: keep the last one
        if self._sorted is None or self._sorted[0] is not x:
            proj = torch.sort(self.theta @ _as2d("x", x).cpu().T, dim=1).values  # [P, n], sorted along contiguous rows
            self._sorted = (x, proj)
        proj = self._sorted[1]
        diff = (proj - self.quantiles(x.shape[0])).abs()
        return float((diff**p).mean() ** (1.0 / p))

    def expected_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """``E_{y ~ target} k(x_i, y)`` for every row of ``x`` [n, d] -> [n]."""
        out = torch.zeros(x.shape[0], dtype=F64)
        for i in range(0, x.shape[0], 4096):
            diff = x[i : i + 4096, None, :] - self.means[None]  # [b, K, d]
            quad = torch.einsum("bki,kij,bkj->bk", diff, self._prec, diff)
            out[i : i + 4096] = torch.exp((self._log_c - 0.5 * quad).clamp(min=-700.0)).sum(-1)
        return out

    def mmd(self, x: torch.Tensor, max_samples: int | None = 2000) -> float:
        """Unbiased MMD^2 between (the first ``max_samples`` rows of) ``x`` [n, d] and the exact target."""
        x = _as2d("x", x).cpu()
        xs = x[:max_samples] if max_samples is not None else x
        if xs.shape[0] < 2:
            raise ValueError("mmd needs at least 2 samples")
        gamma = 1.0 / (2 * self.bandwidth**2)
        kxx = _rbf(xs, xs, gamma)
        m = xs.shape[0]
        xx = float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)))
        # the cross term on the same subset: under the null its first-order fluctuation cancels the
        # x-x term's (a degenerate U-statistic, variance O(1/m^2)); on all of x it would not
        return xx - 2 * float(self.expected_kernel(xs).mean()) + self.kyy


# --------------------------------------------------------------------------------------------
# Gaussian fits: Frechet distance and KL
# --------------------------------------------------------------------------------------------


def gaussian_fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean [d] and unbiased covariance [d, d] (float64) of [n, d] samples."""
    x = _as2d("x", x)
    if x.shape[0] < 2:
        raise ValueError("a covariance needs at least 2 samples")
    mean = x.mean(0)
    c = x - mean
    return mean, (c.T @ c) / (x.shape[0] - 1)


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    lam, vec = torch.linalg.eigh(0.5 * (cov + cov.T))
    return (vec * lam.clamp(min=0).sqrt()) @ vec.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Squared 2-Wasserstein (Frechet) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``.

    ``|mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)`` (Dowson & Landau 1982),
    with symmetric eigendecompositions (no complex sqrtm).
    """
    mu1, mu2 = torch.as_tensor(mu1, dtype=F64).reshape(-1), torch.as_tensor(mu2, dtype=F64).reshape(-1)
    c1, c2 = torch.as_tensor(cov1, dtype=F64), torch.as_tensor(cov2, dtype=F64)
    d = mu1.numel()
    if mu2.numel() != d or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(
            f"shapes disagree: mu1 {tuple(mu1.shape)}, cov1 {tuple(c1.shape)}, "
            f"mu2 {tuple(mu2.shape)}, cov2 {tuple(c2.shape)}"
        )
    r = _psd_sqrt(c1)
    inner = torch.linalg.eigvalsh(0.5 * ((r @ c2 @ r) + (r @ c2 @ r).T)).clamp(min=0).sqrt().sum()
    value = float(((mu1 - mu2) ** 2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * inner)
    return max(value, 0.0)


def frechet_samples(x: torch.Tensor, y: torch.Tensor) -> float:
    """:func:`frechet_distance` between the Gaussian fits of two sample sets [n, d], [m, d]."""
    return frechet_distance(*gaussian_fit(x), *gaussian_fit(y))


def kl_gaussian(mu0: torch.Tensor, cov0: torch.Tensor, mu1: torch.Tensor, cov1: torch.Tensor) -> float:
    """``KL(N(mu0, cov0) || N(mu1, cov1))`` in nats, closed form:
    ``(tr(cov1^-1 cov0) + dm^T cov1^-1 dm - d + log det cov1 - log det cov0) / 2``.
    Returns ``inf`` when cov0 is singular; cov1 must be positive definite."""
    mu0, mu1 = torch.as_tensor(mu0, dtype=F64).reshape(-1), torch.as_tensor(mu1, dtype=F64).reshape(-1)
    c0, c1 = torch.as_tensor(cov0, dtype=F64), torch.as_tensor(cov1, dtype=F64)
    d = mu0.numel()
    if mu1.numel() != d or c0.shape != (d, d) or c1.shape != (d, d):
        raise ValueError("kl_gaussian: mean and covariance shapes disagree")
    chol1, info = torch.linalg.cholesky_ex(c1)
    if int(info) != 0:
        raise ValueError("kl_gaussian: cov1 (the reference) must be positive definite")
    sign0, logdet0 = torch.linalg.slogdet(c0)
    if float(sign0) <= 0:
        return math.inf
    logdet1 = 2 * torch.log(torch.diagonal(chol1)).sum()
    dm = (mu1 - mu0).reshape(d, 1)
    trace = torch.cholesky_solve(c0, chol1).diagonal().sum()
    quad = (dm.T @ torch.cholesky_solve(dm, chol1)).squeeze()
    return max(float(0.5 * (trace + quad - d + logdet1 - logdet0)), 0.0)


# --------------------------------------------------------------------------------------------
# ODE error and empirical order
# --------------------------------------------------------------------------------------------


def ode_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """RMS Euclidean distance ``sqrt(mean_i |x_i - ref_i|^2)`` between paired samples [n, d]."""
    x, reference = _as2d("x", x), _as2d("reference", reference)
    if x.shape != reference.shape:
        raise ValueError(f"x {tuple(x.shape)} and reference {tuple(reference.shape)} must have one shape")
    return float(((x - reference.to(x.device)) ** 2).sum(1).mean().sqrt())


@dataclass(frozen=True)
class OrderFit:
    """``error ~ C * NFE^(-order)`` fitted by least squares in log-log space."""

    order: float
    log_constant: float
    r2: float
    points: int

    def to_dict(self) -> dict[str, float]:
        return {"order": self.order, "log_constant": self.log_constant, "r2": self.r2, "points": self.points}


def convergence_order(nfe: Sequence[float], errors: Sequence[float]) -> OrderFit | None:
    """Empirical convergence order: minus the slope of ``log(error)`` against ``log(nfe)``.

    Points with non-finite or non-positive error are dropped; None when fewer than two distinct NFE remain.
    """
    pairs = [
        (float(n), float(e))
        for n, e in zip(nfe, errors, strict=True)
        if n > 0 and e > 0 and math.isfinite(e) and math.isfinite(n)
    ]
    if len({n for n, _ in pairs}) < 2:
        return None
    lx = torch.tensor([math.log(n) for n, _ in pairs], dtype=F64)
    ly = torch.tensor([math.log(e) for _, e in pairs], dtype=F64)
    mx, my = lx.mean(), ly.mean()
    slope = float(((lx - mx) * (ly - my)).sum() / ((lx - mx) ** 2).sum())
    intercept = float(my - slope * mx)
    resid = ly - (intercept + slope * lx)
    ss_tot = float(((ly - my) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return OrderFit(order=-slope, log_constant=intercept, r2=r2, points=len(pairs))


# --------------------------------------------------------------------------------------------
# The metric table the benchmark uses
# --------------------------------------------------------------------------------------------


@dataclass
class MetricInputs:
    """What a metric may read. Shapes: [n, d] float64 unless noted.

    Attributes:
        samples: the sampler's output.
        truth: independent exact samples from the problem (same n); None for a ``--model`` network without
            ``--data``, whose only metric is ``ode_error``.
        mean, cov: exact moments of the problem ([d], [d, d]); None where ``truth`` is.
        bandwidth: RBF bandwidth shared by every row of a benchmark (median heuristic on truth).
        ode_reference: exact PF-ODE endpoints for the first ``len(ode_reference)`` samples, or None.
        exact_output: ``(mean, cov)`` of the sampler's exact output distribution, or None
            (Gaussian problem with a deterministic sampler: the whole pipeline is affine).
        deterministic: whether the sampler is deterministic (ODE metrics are undefined otherwise).
        target: closed forms of the exact distribution (Gaussian mixtures); when present, SW and
            MMD compare against the distribution itself instead of the ``truth`` samples.
        features: ``features(x [n, d]) -> [n, F]`` float64, a feature extractor (real-data problems:
            a classifier's hidden layer), or None.
        feature_reference: ``(mean [F], cov [F, F])`` of the reference data's features, or None.
        truth_kernel: :func:`rbf_self_mean` of ``truth`` at ``bandwidth`` (MMD against a fixed data set), or None.
    """

    samples: torch.Tensor
    truth: torch.Tensor | None
    mean: torch.Tensor | None
    cov: torch.Tensor | None
    bandwidth: float
    ode_reference: torch.Tensor | None = None
    exact_output: tuple[torch.Tensor, torch.Tensor] | None = None
    deterministic: bool = True
    target: ExactTarget | None = None
    features: Callable[[torch.Tensor], torch.Tensor] | None = None
    feature_reference: tuple[torch.Tensor, torch.Tensor] | None = None
    truth_kernel: float | None = None


@dataclass(frozen=True)
class MetricSpec:
    name: str
    label: str
    description: str
    compute: Callable[[MetricInputs], float]
    order_metric: bool = False  # meaningful for an empirical convergence order

    def __call__(self, inputs: MetricInputs) -> float:
        return self.compute(inputs)


def _known(value: torch.Tensor | None, what: str) -> torch.Tensor:
    """``value``, or a clear error where the problem has none (a ``--model`` run without ``--data``)."""
    if value is None:
        raise ValueError(
            f"this metric needs the problem's {what}; a --model run without --data measures ode_error only"
        )
    return value


def _sw(p: int) -> Callable[[MetricInputs], float]:
    def compute(m: MetricInputs) -> float:
        if m.target is not None:
            return m.target.sliced_wasserstein(m.samples, p)
        return sliced_wasserstein(m.samples, _known(m.truth, "data samples"), p=p)

    return compute


def _mmd(m: MetricInputs) -> float:
    if m.target is not None:
        return m.target.mmd(m.samples)
    return mmd_rbf(m.samples, _known(m.truth, "data samples"), m.bandwidth, yy=m.truth_kernel)


def _kl_fit(m: MetricInputs) -> float:
    mean, cov = gaussian_fit(m.samples)
    return kl_gaussian(mean, cov, _known(m.mean, "mean"), _known(m.cov, "covariance"))


def _kl_exact(m: MetricInputs) -> float:
    if m.exact_output is None:
        return math.nan
    return kl_gaussian(m.exact_output[0], m.exact_output[1], _known(m.mean, "mean"), _known(m.cov, "covariance"))


def _ode(m: MetricInputs) -> float:
    if m.ode_reference is None or not m.deterministic:
        return math.nan
    return ode_error(m.samples[: m.ode_reference.shape[0]], m.ode_reference)


def _fd_features(m: MetricInputs) -> float:
    if m.features is None or m.feature_reference is None:
        return math.nan
    if not bool(torch.isfinite(m.samples).all()):
        return math.inf  # a diverged sampler: no Gaussian fit to take
    return frechet_distance(*gaussian_fit(m.features(m.samples)), *m.feature_reference)


METRICS: dict[str, MetricSpec] = {
    "sw": MetricSpec("sw", "SW2", "sliced Wasserstein-2 to the exact distribution (else to true samples)", _sw(2)),
    "sw1": MetricSpec("sw1", "SW1", "sliced Wasserstein-1 to the exact distribution (else to true samples)", _sw(1)),
    "mmd": MetricSpec("mmd", "MMD2", "unbiased RBF MMD^2 to the exact distribution (else to true samples)", _mmd),
    "frechet": MetricSpec(
        "frechet",
        "Frechet",
        "Frechet distance of the sample fit to the exact moments",
        lambda m: frechet_distance(*gaussian_fit(m.samples), _known(m.mean, "mean"), _known(m.cov, "covariance")),
    ),
    "kl": MetricSpec("kl", "KL", "KL(Gaussian fit of samples || Gaussian with the exact moments), nats", _kl_fit),
    "kl_exact": MetricSpec(
        "kl_exact",
        "KL exact",
        "KL(exact output distribution || truth): Gaussian problem, deterministic samplers",
        _kl_exact,
        True,
    ),
    "ode_error": MetricSpec(
        "ode_error", "ODE err", "RMS distance to the exact PF-ODE endpoint (deterministic samplers)", _ode, True
    ),
    "fd_features": MetricSpec(
        "fd_features",
        "FD feat",
        "Frechet distance in a classifier's feature space to the reference data (an FID analogue; real data)",
        _fd_features,
    ),
}
# Metrics that need something only some problems have (checked before a run starts).
FEATURE_METRICS = ("fd_features",)


def resolve_metrics(names: Sequence[str]) -> list[MetricSpec]:
    """Metric specs by name; unknown names raise ``ValueError`` suggesting close ones."""
    out = []
    for name in names:
        key = name.strip().lower().replace("-", "_")
        aliases = {
            "sliced_wasserstein": "sw",
            "swd": "sw",
            "fd": "frechet",
            "fid": "frechet",
            "ode": "ode_error",
            "fd_feat": "fd_features",
        }
        key = aliases.get(key, key)
        if key not in METRICS:
            close = difflib.get_close_matches(name, list(METRICS) + list(aliases), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"unknown metric {name!r}{hint} (expected one of: {', '.join(METRICS)})")
        if METRICS[key] not in out:
            out.append(METRICS[key])
    return out
