"""Classifier-free guidance (Ho & Salimans 2022), negative prompts and guidance rescale.

``guided = uncond + w (cond - uncond)`` (eq. 6 written as in most pipelines); with a negative
prompt the "uncond" branch is simply the model evaluated on the negative conditioning.
Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", eq. 15-16) pulls the guided output's per-sample std back to the conditional one's.

Plain guidance is linear, so schedulers fuse it into the update kernel
(``step(cond_out, t, x, uncond=uncond_out, guidance_scale=w)``); rescale needs per-sample
standard deviations and is applied here first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def classifier_free_guidance(
    cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float | torch.Tensor
) -> torch.Tensor:
    """``uncond + w * (cond - uncond)``; ``w`` a float or a per-sample tensor [B]."""
    if cond.shape != uncond.shape:
        raise ValueError(f"cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)} must have one shape")
    w = _per_sample(guidance_scale, cond)
    return uncond + w * (cond - uncond)


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Lin et al. eq. 15-16: ``phi * guided * std(cond)/std(guided) + (1 - phi) * guided`` per sample."""
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
    dims = tuple(range(1, guided.dim()))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * guided


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        if value.shape[0] != like.shape[0]:
            raise ValueError(f"per-sample guidance_scale must have shape [{like.shape[0]}], got {tuple(value.shape)}")
        return value.to(like).view(-1, *([1] * (like.dim() - 1)))
    return value


class GuidedModel:
    """Wrap ``model(x, t, **cond_kwargs)`` so one batched call gives both branches.

    ``GuidedModel(model, cond_kwargs, uncond_kwargs)(x, t)`` returns ``(cond_out, uncond_out)``;
    conditioning tensors in the kwargs are concatenated along the batch (cond first), so the
    network runs once on ``2B`` samples. ``guide(x, t, scale, rescale)`` returns the guided output.
    """

    def __init__(
        self, model: Callable[..., torch.Tensor], cond_kwargs: dict[str, Any], uncond_kwargs: dict[str, Any]
    ) -> None:
        if set(cond_kwargs) != set(uncond_kwargs):
            raise ValueError(
                f"cond_kwargs {sorted(cond_kwargs)} and uncond_kwargs {sorted(uncond_kwargs)} need the same keys"
            )
        self.model = model
        self.kwargs = {
            k: torch.cat([v, uncond_kwargs[k]]) if isinstance(v, torch.Tensor) else v for k, v in cond_kwargs.items()
        }

    def __call__(self, x: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        t2 = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() == 1 else t
        out = self.model(torch.cat([x, x]), t2, **self.kwargs)
        cond, uncond = out.chunk(2)
        return cond, uncond

    def guide(self, x: torch.Tensor, t: Any, guidance_scale: float, guidance_rescale: float = 0.0) -> torch.Tensor:
        cond, uncond = self(x, t)
        guided = classifier_free_guidance(cond, uncond, guidance_scale)
        return rescale_guidance(guided, cond, guidance_rescale) if guidance_rescale > 0 else guided
