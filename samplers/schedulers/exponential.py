"""Building blocks of the sigma-space exponential integrators (public; RES, SEEDS, ER-SDE and gradient
estimation use them, and so may plugins).

In sigma space (``x = x_model / alpha``, level ``sigma = sigma_model / alpha``, ``lambda = -log sigma``) the
probability-flow ODE in data prediction is semilinear, ``dx/dlambda = D(x, lambda) - x``, and the drift of
the reverse SDE is twice that. Over a step of length ``h`` in lambda the linear part is integrated exactly
and the denoiser ``D`` is replaced by a polynomial in lambda, whose terms are weighed by

    w0(h) = int_0^h e^{-(h - s)} ds   = 1 - e^{-h}         (= h phi_1(-h))
    w1(h) = int_0^h e^{-(h - s)} s ds = h - 1 + e^{-h}     (= h^2 phi_2(-h))

(Hochbruck & Ostermann 2010, "Exponential integrators", sec. 2; Lu et al. 2022, DPM-Solver++, eq. 9).
The reverse SDE's kernel ``e^{-2(h - s)}`` gives ``w0(2h)`` and ``w1(2h) / 2``.

:class:`SigmaSpaceMultistep` is the base of the sigma-space samplers that weigh estimates of earlier
calls: it restarts their warm-up at ``set_begin_index`` (img2img), as ``MultistepScheduler`` does in
model space.
"""

from __future__ import annotations

import math

from samplers import levels as lv
from samplers.plan import Call, Plan, build_plan
from samplers.schedulers.sigma_space import SigmaSpaceScheduler


def exponential_weights(h: float) -> tuple[float, float]:
    """``(w0, w1) = (1 - e^{-h}, h - 1 + e^{-h})`` for a step of ``h >= 0`` in lambda (``h = inf``: ``(1, inf)``).

    ``expm1`` keeps ``w0`` exact for small ``h``; ``w1 = h + expm1(-h)`` loses ``~2 eps / h`` relative
    accuracy to cancellation (4e-12 at ``h = 1e-4``), far below what a sampler's step can resolve.
    """
    if h < 0 or math.isnan(h):
        raise ValueError(f"a step in lambda must be >= 0, got {h}")
    if math.isinf(h):
        return 1.0, math.inf
    return -math.expm1(-h), h + math.expm1(-h)


class SigmaSpaceMultistep(SigmaSpaceScheduler):
    """Sigma-space samplers whose calls weigh earlier calls' estimates.

    A subclass writes :meth:`multistep_calls` ``(levels, start)``: the run's calls where ``start`` is the
    first call actually run, so no call at or before it uses history (the warm-up counts from there).
    """

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        return self.multistep_calls(levels, 0)

    def multistep_calls(self, levels: lv.Levels, start: int) -> list[Call]:
        raise NotImplementedError(f"{type(self).__name__} must implement multistep_calls(levels, start)")

    def make_plan(self, levels: lv.Levels, mu: float | None = None, start: int = 0) -> Plan:
        plan = build_plan(
            self.multistep_calls(levels, start),
            self.prediction_type,
            init_noise_sigma=self.initial_sigma(levels),
            brownian=self.config.get("noise") == "brownian",
            sigmas=self.run_sigmas(levels),
        )
        plan.extras["levels"] = levels
        return plan

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at call ``begin_index`` (img2img): the plan is rebuilt with its warm-up starting there."""
        plan = self._require_plan()
        if not isinstance(begin_index, int) or not 0 <= begin_index < len(plan.timesteps):
            raise ValueError(f"begin_index must be an int in [0, {len(plan.timesteps)}), got {begin_index!r}")
        self.plan = self.make_plan(plan.extras["levels"], start=begin_index)
        self._device_cache = {}  # rows were cached per device for the plan just replaced
        super().set_begin_index(begin_index)
