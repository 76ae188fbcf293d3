"""Prediction types: what a network outputs, and how to read ``(x0_hat, eps_hat)`` from it.

Every schedule writes the noisy sample as ``x_t = alpha_t * x_0 + sigma_t * eps`` (schedules.py).
A network trained with prediction type ``k`` outputs ``target_k(x_0, eps)``:

=================  ===============================  ===========================================
type               target                            inverse (x0 from output ``o``)
=================  ===============================  ===========================================
``epsilon``        ``eps``                           ``(x - sigma o) / alpha``          (DDPM eq. 11)
``sample``         ``x_0``                           ``o``
``v_prediction``   ``alpha eps - sigma x_0``         ``(alpha x - sigma o) / (alpha^2 + sigma^2)``
                                                     (Salimans & Ho 2022, sec. 4; any schedule)
``flow``           ``eps - x_0``                     ``(x - sigma o) / (alpha + sigma)``
                                                     (rectified flow velocity dx/dt for alpha=1-t, sigma=t)
``score``          ``-eps / sigma``                  ``(x + sigma^2 o) / alpha``       (Tweedie)
=================  ===============================  ===========================================

Every inverse is affine in ``(x, o)``: ``x0 = p x + q o``, which is what the fused update
kernel consumes. All functions broadcast: ``alpha``/``sigma`` may be Python floats, 0-d
tensors or tensors shaped ``[B, 1, ..., 1]``; coefficient math runs in the dtype given
(float64 on the host for step tables).
"""

from __future__ import annotations

import torch

from samplers.errors import did_you_mean

Scalar = float | torch.Tensor

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample", "v_prediction", "flow", "score")
_ALIASES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction", "velocity": "flow", "flow_prediction": "flow"}


def canonical_prediction_type(prediction_type: str) -> str:
    """Return the canonical name; raise ``ValueError`` naming close matches for an unknown one."""
    name = _ALIASES.get(prediction_type, prediction_type)
    if name not in PREDICTION_TYPES:
        hint = did_you_mean(prediction_type, PREDICTION_TYPES + tuple(_ALIASES))
        raise ValueError(f"unknown prediction_type {prediction_type!r}: expected one of {PREDICTION_TYPES}{hint}")
    return name


def x0_coefficients(prediction_type: str, alpha: Scalar, sigma: Scalar) -> tuple[Scalar, Scalar]:
    """``(p, q)`` with ``x0_hat = p * x_t + q * model_output`` (table above)."""
    kind = canonical_prediction_type(prediction_type)
    if kind == "epsilon":
        return 1.0 / alpha, -sigma / alpha
    if kind == "sample":
        return 0.0 * alpha, 1.0 + 0.0 * alpha
    if kind == "v_prediction":
        norm = alpha * alpha + sigma * sigma
        return alpha / norm, -sigma / norm
    if kind == "flow":
        return 1.0 / (alpha + sigma), -sigma / (alpha + sigma)
    # score
    return 1.0 / alpha, sigma * sigma / alpha


def eps_from_x0(x0: torch.Tensor, sample: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
    """``eps_hat = (x_t - alpha x0_hat) / sigma``: the noise implied by a clean-sample estimate."""
    return (sample - alpha * x0) / sigma


def to_x0_eps(
    prediction_type: str, model_output: torch.Tensor, sample: torch.Tensor, alpha: Scalar, sigma: Scalar
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model output -> ``(x0_hat, eps_hat)``. Shapes: all ``[B, ...]`` (alpha/sigma broadcast)."""
    p, q = x0_coefficients(prediction_type, alpha, sigma)
    x0 = p * sample + q * model_output
    if canonical_prediction_type(prediction_type) == "epsilon":
        return x0, model_output  # exact, no round trip through x0
    return x0, eps_from_x0(x0, sample, alpha, sigma)


def training_target(
    prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, alpha: Scalar, sigma: Scalar
) -> torch.Tensor:
    """What a model of ``prediction_type`` should output for ``x_t = alpha x0 + sigma noise``."""
    kind = canonical_prediction_type(prediction_type)
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return alpha * noise - sigma * x0
    if kind == "flow":
        return noise - x0
    return -noise / sigma


def model_output_from_x0(
    prediction_type: str, x0: torch.Tensor, sample: torch.Tensor, alpha: Scalar, sigma: Scalar
) -> torch.Tensor:
    """The output a perfect model of ``prediction_type`` gives when its clean estimate is ``x0``.

    Used to wrap exact denoisers (``E[x0 | x_t]``) as models of any prediction type.
    """
    return training_target(prediction_type, x0, eps_from_x0(x0, sample, alpha, sigma), alpha, sigma)
