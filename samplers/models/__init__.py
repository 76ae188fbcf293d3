"""Reference networks with seeded random weights, for benchmarks and tests (no downloads).

    from samplers.models import build_dit
    model = build_dit("dit-tiny", seed=0)            # x [B, 4, 16, 16], t [B] -> [B, 4, 16, 16]
    x = samplers.sample(model, samplers.get("ddim"), torch.randn(2, 4, 16, 16), num_inference_steps=10)

:class:`DiT` is a small diffusion transformer (adaLN-Zero blocks) whose attention runs through
:func:`samplers.ops.attention`; :data:`DIT_PRESETS` holds a CPU-sized ``dit-tiny`` and the paper's
S / B / L / XL sizes for GPUs.
"""

from samplers.models.dit import (
    DIT_PRESETS,
    DiT,
    DiTBlock,
    DiTConfig,
    build_dit,
    sincos_pos_embed_2d,
    timestep_embedding,
)

__all__ = ["DIT_PRESETS", "DiT", "DiTBlock", "DiTConfig", "build_dit", "sincos_pos_embed_2d", "timestep_embedding"]
