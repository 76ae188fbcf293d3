"""A diffusers attention processor whose core attention is :func:`samplers.ops.attention`.

    from samplers.integrations.attention_processor import SamplersAttnProcessor, apply_samplers_attention

    unet.set_attn_processor(SamplersAttnProcessor())        # every attention layer
    report = apply_samplers_attention(pipe.transformer)     # only the layers it can serve; says which not

The processor does what diffusers' own ``Attention`` layer expects of a processor: optional spatial
norm and group norm of the input, 4-D ``[B, C, H, W]`` inputs flattened to tokens, the q / k / v
projections (or the fused ``to_qkv`` / ``to_kv`` after ``attn.fuse_projections()``), cross-attention
context normalization (``norm_cross``), per-head q / k normalization, the output projection and
dropout, the residual connection and ``rescale_output_factor``. Only the softmax attention itself
changes hands: it runs through the samplers dispatcher (on CUDA the fused kernel or the fastest
SDPA backend, measured per shape; on the CPU, SDPA), with the layer's own ``attn.scale``.

Masks: ``attention_mask`` as diffusers passes it (additive, e.g. the UNet's ``encoder_attention_mask``
turned into ``[B, 1, Lk]`` biases, or boolean with True = attend) of shape ``[B, Lk]``, ``[B, Lq|1, Lk]``,
``[B * heads, Lq|1, Lk]`` or ``[B, heads|1, Lq|1, Lk]`` is handed to the op as a broadcastable
``[B, heads|1, Lq|1, Lk]`` view (no copy per head, unlike ``prepare_attention_mask``); a mask whose
last dimension is not the key length is an error.

Not served (the processor raises ``NotImplementedError`` saying so; :func:`apply_samplers_attention`
leaves such layers on their own processor and lists them): layers with added key/value projections
(joint attention as in SD3 / Flux, added-KV attention), grouped-query layers (fewer key/value heads
than query heads), and layers whose current processor carries weights (an ``nn.Module``: IP-Adapter,
LoRA, custom diffusion), which replacing would silently drop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from samplers.ops import attention as attention_ops

logger = logging.getLogger("samplers.attention")

__all__ = ["SamplersAttnProcessor", "AttentionPatchReport", "apply_samplers_attention", "unsupported_reason"]


def unsupported_reason(attn: Any) -> str | None:
    """Why :class:`SamplersAttnProcessor` cannot serve the diffusers ``Attention`` layer ``attn`` (None: it can)."""
    for name in ("add_q_proj", "add_k_proj", "add_v_proj"):
        if getattr(attn, name, None) is not None:
            return f"it has added key/value projections ({name}: joint or added-KV attention)"
    if (
        getattr(attn, "to_q", None) is None
        or getattr(attn, "to_k", None) is None
        or getattr(attn, "to_v", None) is None
    ):
        return "it has no to_q / to_k / to_v projections"
    if attn.to_k.out_features != attn.to_q.out_features:
        return "it has fewer key/value heads than query heads (grouped-query attention)"
    return None


class SamplersAttnProcessor:
    """Processor for diffusers' ``Attention`` layers; the core attention is :func:`samplers.ops.attention`.

    Args:
        backend: the dispatcher's backend (``"auto"``: measured per shape on CUDA; ``"fused"``,
            ``"sdpa"``, ... to force one; see :mod:`samplers.ops.attention`).

    Called by the layer as ``processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb)``:

    * ``hidden_states``: ``[B, Lq, C]`` tokens or ``[B, C, H, W]`` feature maps (``Lq = H W``);
    * ``encoder_hidden_states``: ``[B, Lk, C_ctx]`` context for cross attention, None for self attention;
    * ``attention_mask``: see the module docstring;
    * ``temb``: the spatial-norm conditioning, for layers built with ``spatial_norm_dim``.

    Returns the layer's output in the shape of ``hidden_states``.
    """

    def __init__(self, backend: str = "auto") -> None:
        if not attention_ops.is_backend(backend):
            raise ValueError(f"backend must be one of {', '.join(attention_ops.BACKENDS)}; got {backend!r}")
        self.backend: attention_ops.Backend = backend

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r})"

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        why_not = unsupported_reason(attn)
        if why_not is not None:
            raise NotImplementedError(
                f"SamplersAttnProcessor cannot serve this {type(attn).__name__} layer: {why_not}. Keep the layer's "
                "own processor (apply_samplers_attention(model) installs ours only where it applies)."
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = None
        if hidden_states.dim() == 4:  # [B, C, H, W] -> [B, H W, C]
            image_shape = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        batch, len_q, _ = hidden_states.shape
        if attn.group_norm is not None:  # normalizes channels: GroupNorm wants them in dim 1
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        self_attention = encoder_hidden_states is None
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if not self_attention and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = self._project(attn, hidden_states, context, self_attention)

        heads = attn.heads
        head_dim = query.shape[-1] // heads
        # [B, L, heads * D] -> [B, heads, L, D] views (last dim contiguous, as the fused kernel reads them)
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        mask = None
        if attention_mask is not None:
            mask = _broadcastable_mask(attention_mask, batch, heads, key.shape[2], query.dtype)
        # Looked up at call time, so patching samplers.ops.attention.attention reaches this call.
        out = attention_ops.attention(query, key, value, attn_mask=mask, scale=float(attn.scale), backend=self.backend)

        out = out.transpose(1, 2).reshape(batch, len_q, heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)  # output projection
        out = attn.to_out[1](out)  # dropout
        if image_shape is not None:
            out = out.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    @staticmethod
    def _project(attn: Any, hidden_states: torch.Tensor, context: torch.Tensor, self_attention: bool):
        """(q, k, v), each ``[B, L, heads * D]``, through the fused projections when the layer has them."""
        if getattr(attn, "fused_projections", False):
            if self_attention and getattr(attn, "to_qkv", None) is not None:
                return attn.to_qkv(hidden_states).chunk(3, dim=-1)
            if not self_attention and getattr(attn, "to_kv", None) is not None:
                key, value = attn.to_kv(context).chunk(2, dim=-1)
                return attn.to_q(hidden_states), key, value
        return attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)


def _broadcastable_mask(mask: torch.Tensor, batch: int, heads: int, len_k: int, dtype: torch.dtype) -> torch.Tensor:
    """``mask`` as a ``[B, heads|1, Lq|1, Lk]`` view for :func:`samplers.ops.attention` (see the module doc)."""
    if mask.shape[-1] != len_k:
        raise ValueError(f"attention_mask covers {mask.shape[-1]} keys but the layer attends over {len_k}")
    if mask.dim() == 2:  # [B, Lk]
        mask = mask[:, None, None, :]
    elif mask.dim() == 3:
        if mask.shape[0] == batch * heads and heads > 1:  # [B * heads, Lq|1, Lk]
            mask = mask.view(batch, heads, mask.shape[1], len_k)
        else:  # [B|1, Lq|1, Lk]: one mask for every head
            mask = mask.unsqueeze(1)
    elif mask.dim() != 4:
        raise ValueError(f"attention_mask must have 2, 3 or 4 dims, got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool and mask.dtype != dtype and mask.is_floating_point():
        mask = mask.to(dtype)  # additive biases come in the model's dtype; the op wants q's
    return mask


@dataclass
class AttentionPatchReport:
    """What :func:`apply_samplers_attention` did: layer names served, and those kept with the reason."""

    replaced: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"samplers attention on {len(self.replaced)} layer(s); kept {len(self.kept)} on their own processor"]
        lines += [f"  kept {name}: {why}" for name, why in self.kept.items()]
        return "\n".join(lines)


def apply_samplers_attention(model: torch.nn.Module, backend: str = "auto") -> AttentionPatchReport:
    """Install :class:`SamplersAttnProcessor` on every attention layer of a diffusers model it can serve.

    Walks the modules (so models without ``set_attn_processor``, e.g. ``DiTTransformer2DModel``, work
    too) and sets the processor on each of diffusers' ``Attention`` layers that it can serve. Other
    layers keep their processor, and the report names them with the reason (each is also logged at
    INFO on ``samplers.attention``): layers :func:`unsupported_reason` rejects, layers whose processor
    has weights of its own (IP-Adapter, LoRA and custom-diffusion processors are ``nn.Module`` s), and
    the newer per-model attention classes (``AttentionModuleMixin``: rotary embeddings and other
    arguments this processor does not take).

    Args:
        model: any ``nn.Module`` holding diffusers attention layers (UNet2DConditionModel,
            DiTTransformer2DModel, Transformer2DModel, AutoencoderKL, a whole pipeline component).
        backend: passed to :class:`SamplersAttnProcessor`.
    """
    from diffusers.models.attention_processor import Attention

    processor = SamplersAttnProcessor(backend)
    report = AttentionPatchReport()
    for name, layer in model.named_modules():
        current = getattr(layer, "processor", None)
        if current is None or not hasattr(layer, "set_processor"):
            continue  # not an attention layer
        if not isinstance(layer, Attention):
            why: str | None = (
                f"{type(layer).__name__} is not diffusers' Attention class (its processors take other arguments)"
            )
        else:
            why = unsupported_reason(layer)
        if why is None and isinstance(current, torch.nn.Module):
            why = f"its processor {type(current).__name__} has weights of its own"
        if why is None:
            layer.set_processor(processor)
            report.replaced.append(name)
        else:
            report.kept[name] = why
            logger.info("apply_samplers_attention: %s keeps %s: %s", name, type(current).__name__, why)
    return report
