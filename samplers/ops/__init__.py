"""The compiled ops' Python face: the sampler update and attention, with their references.

``attention`` is the submodule :mod:`samplers.ops.attention` made callable: ``attention(q, k, v)``
runs :func:`samplers.ops.attention.attention` (``[B, H, Lq, D]`` queries, ``[B, H, Lk, D]`` keys
and values), while ``from samplers.ops import attention as A; A.fused_attention(...)`` keeps
working for the module's other functions. (Binding the function to the package attribute instead
would shadow the submodule for every ``from samplers.ops import attention``.)
"""

import types as _types

from samplers.ops import attention as _attention_module
from samplers.ops.attention import attention_dispatch_report, attention_reference, reset_dispatch_cache
from samplers.ops.reference import COEFF, COEFF_NAMES, NUM_COEFFS, batch_seeds, brownian_normal, philox_normal
from samplers.ops.rng import seed_from_generator
from samplers.ops.update import sampler_update


class _CallableModule(_types.ModuleType):
    """The attention module, callable as its ``attention`` function (looked up at call time, so
    patching ``samplers.ops.attention.attention`` patches this call too)."""

    def __call__(self, *args, **kwargs):
        return self.attention(*args, **kwargs)


_attention_module.__class__ = _CallableModule
attention = _attention_module

__all__ = [
    "COEFF",
    "COEFF_NAMES",
    "NUM_COEFFS",
    "attention",
    "attention_dispatch_report",
    "attention_reference",
    "batch_seeds",
    "brownian_normal",
    "philox_normal",
    "reset_dispatch_cache",
    "sampler_update",
    "seed_from_generator",
]
