"""Kernels' Python face: the fused sampler update and attention, with their references."""

from samplers.ops.reference import COEFF, COEFF_NAMES, NUM_COEFFS, batch_seeds, philox_normal
from samplers.ops.update import sampler_update

__all__ = ["COEFF", "COEFF_NAMES", "NUM_COEFFS", "batch_seeds", "philox_normal", "sampler_update"]
from samplers.ops.rng import seed_from_generator  # noqa: E402

__all__ += ["seed_from_generator"]
