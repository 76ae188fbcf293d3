"""SamplersAttnProcessor in diffusers models: same outputs as diffusers' own processors, masks, what it refuses."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import DiTTransformer2DModel, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import Attention, AttnProcessor2_0  # noqa: E402

from samplers.integrations.attention_processor import (  # noqa: E402
    SamplersAttnProcessor,
    apply_samplers_attention,
    unsupported_reason,
)
from samplers.ops import attention as A  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = dict(atol=2e-5, rtol=2e-5)


def _seeded(build, seed: int = 0):
    """Build a diffusers module with weights from `seed`, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def _tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _tiny_dit(head_dim: int = 16) -> DiTTransformer2DModel:
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=32,
    )


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    return _seeded(_tiny_unet)


@pytest.fixture
def spy(monkeypatch) -> list:
    """Records the q shape of every call of samplers.ops.attention.attention."""
    calls: list = []
    original = A.attention

    def wrapped(q, k, v, **kwargs):
        calls.append((tuple(q.shape), tuple(k.shape), kwargs.get("attn_mask") is not None))
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(A, "attention", wrapped)
    return calls


def _inputs(batch: int = 2, context: int = 7):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, 4, 8, 8, generator=g),
        torch.tensor([10, 500][:batch]),
        torch.randn(batch, context, 32, generator=g),
    )


def _run_unet(unet, processor, *args, **kwargs) -> torch.Tensor:
    unet.set_attn_processor(processor)
    with torch.no_grad():
        return unet(*args, **kwargs).sample


# ---- whole models ---------------------------------------------------------------------------------


def test_unet_matches_the_default_processor_and_uses_samplers_attention(unet, spy):
    x, t, ctx = _inputs()
    ref = _run_unet(unet, AttnProcessor2_0(), x, t, ctx)
    assert not spy
    report = apply_samplers_attention(unet)
    with torch.no_grad():
        out = unet(x, t, ctx).sample
    torch.testing.assert_close(out, ref, **TOL)
    assert len(report.replaced) == 8 and not report.kept  # attn1 + attn2 in 4 transformer blocks
    assert len(spy) == len(report.replaced)  # every attention layer went through the op
    assert all(type(p) is SamplersAttnProcessor for p in unet.attn_processors.values())


def test_unet_encoder_attention_mask_matches_default_and_equals_dropping_those_tokens(unet, spy):
    x, t, ctx = _inputs()
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False  # sample 0 sees 4 context tokens, sample 1 all 7
    ref = _run_unet(unet, AttnProcessor2_0(), x, t, ctx, encoder_attention_mask=mask)
    out = _run_unet(unet, SamplersAttnProcessor(), x, t, ctx, encoder_attention_mask=mask)
    torch.testing.assert_close(out, ref, **TOL)
    assert sum(masked for *_, masked in spy) == 4  # the 4 cross-attention layers got the mask
    # Masked keys are ignored exactly: sample 0 equals a run on its first 4 context tokens alone.
    short = _run_unet(unet, SamplersAttnProcessor(), x[:1], t[:1], ctx[:1, :4])
    torch.testing.assert_close(out[:1], short, **TOL)
    assert not torch.allclose(out[:1], _run_unet(unet, SamplersAttnProcessor(), x[:1], t[:1], ctx[:1]), atol=1e-4)


def test_dit_transformer_matches_the_default_processor(spy):
    dit = _seeded(_tiny_dit)
    x, t, _ = _inputs()
    labels = torch.tensor([1, 3])
    with torch.no_grad():
        ref = dit(x, timestep=t, class_labels=labels).sample
        report = apply_samplers_attention(dit)  # DiTTransformer2DModel has no set_attn_processor
        out = dit(x, timestep=t, class_labels=labels).sample
    torch.testing.assert_close(out, ref, **TOL)
    assert len(report.replaced) == 2 and len(spy) == 2
    assert spy[0][0] == (2, 2, 16, 16)  # [B, heads, tokens, head_dim]


# ---- single layers: every part of the calling convention -----------------------------------------


def _layer_case(kind: str):
    """(layer, call kwargs) for one Attention configuration."""
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 12, 32, generator=g)
    if kind == "image_groupnorm_residual_rescale":  # the VAE mid-block layout: 4-D in and out
        layer = Attention(
            32, heads=2, dim_head=16, norm_num_groups=8, residual_connection=True, rescale_output_factor=2.0, bias=True
        )
        return layer, dict(hidden_states=torch.randn(2, 32, 4, 3, generator=g))
    if kind == "cross_layer_norm":
        layer = Attention(32, cross_attention_dim=24, heads=4, dim_head=8, cross_attention_norm="layer_norm")
        return layer, dict(hidden_states=tokens, encoder_hidden_states=torch.randn(2, 5, 24, generator=g))
    if kind == "qk_layer_norm":
        return Attention(32, heads=2, dim_head=16, qk_norm="layer_norm"), dict(hidden_states=tokens)
    if kind == "unscaled_qk":  # scale_qk=False: scores are plain q.k (diffusers' default is AttnProcessor)
        return Attention(32, heads=2, dim_head=16, scale_qk=False), dict(hidden_states=tokens * 0.3)
    if kind == "spatial_norm":
        layer = Attention(32, heads=2, dim_head=16, spatial_norm_dim=6)
        return layer, dict(
            hidden_states=torch.randn(2, 32, 4, 4, generator=g), temb=torch.randn(2, 6, 2, 2, generator=g)
        )
    if kind in ("fused_self", "fused_cross"):
        cross = kind == "fused_cross"
        layer = Attention(32, cross_attention_dim=24 if cross else None, heads=2, dim_head=16)
        kwargs = dict(hidden_states=tokens)
        if cross:
            kwargs["encoder_hidden_states"] = torch.randn(2, 5, 24, generator=g)
        return layer, kwargs
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "image_groupnorm_residual_rescale",
        "cross_layer_norm",
        "qk_layer_norm",
        "unscaled_qk",
        "spatial_norm",
        "fused_self",
        "fused_cross",
    ],
)
def test_single_layer_matches_its_default_processor(kind, spy):
    layer, kwargs = _seeded(lambda: _layer_case(kind)[0]), _layer_case(kind)[1]
    with torch.no_grad():
        ref = layer(**kwargs)  # the processor diffusers picked for this layer
        if kind.startswith("fused"):
            layer.fuse_projections()  # to_qkv / to_kv now exist; ours must use them
        layer.set_processor(SamplersAttnProcessor())
        out = layer(**kwargs)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, **TOL)
    assert len(spy) == 1
    if kind.startswith("fused"):
        assert layer.fused_projections


@pytest.mark.parametrize(
    "layout", ["bool [B, Lk]", "additive [B, 1, Lk]", "additive [B*heads, Lq, Lk]", "bool [B, heads, Lq, Lk]"]
)
def test_attention_mask_layouts_match_the_default_processor(layout):
    layer = _seeded(lambda: Attention(32, cross_attention_dim=24, heads=2, dim_head=16))
    g = torch.Generator().manual_seed(3)
    h, ctx = torch.randn(2, 6, 32, generator=g), torch.randn(2, 5, 24, generator=g)
    keep = torch.rand(2, 2, 6, 5, generator=g) > 0.4
    keep[..., 0] = True  # no fully masked row (SDPA and the op differ there on purpose: NaN vs zeros)
    if layout == "bool [B, Lk]":
        mask = keep[:, 0, 0, :]
    elif layout == "additive [B, 1, Lk]":
        mask = torch.where(keep[:, 0, :1, :], 0.0, -10000.0)
    elif layout == "additive [B*heads, Lq, Lk]":
        mask = torch.where(keep, 0.0, -10000.0).reshape(4, 6, 5)
    else:
        mask = keep
    # diffusers' processor takes no 4-D mask; it gets the same mask as [B * heads, Lq, Lk]
    ref_mask = keep.reshape(4, 6, 5) if mask.dim() == 4 else mask
    with torch.no_grad():
        layer.set_processor(AttnProcessor2_0())
        ref = layer(h, ctx, attention_mask=ref_mask)
        layer.set_processor(SamplersAttnProcessor())
        out = layer(h, ctx, attention_mask=mask)
        unmasked = layer(h, ctx)
    torch.testing.assert_close(out, ref, **TOL)
    assert not torch.allclose(out, unmasked, atol=1e-4)  # the mask did something
    with pytest.raises(ValueError, match="covers 4 keys"):
        layer(h, ctx, attention_mask=torch.ones(2, 4, dtype=torch.bool))


# ---- what it refuses ------------------------------------------------------------------------------


class _WeightedProcessor(torch.nn.Module):
    """A processor with weights of its own (like IP-Adapter's): replacing it would drop them."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        return AttnProcessor2_0()(attn, hidden_states, encoder_hidden_states, attention_mask) * self.gain


def test_unsupported_layers_raise_and_are_kept_by_apply():
    added_kv = Attention(32, heads=2, dim_head=16, added_kv_proj_dim=12)
    assert "added key/value projections" in unsupported_reason(added_kv)
    with pytest.raises(NotImplementedError, match="added key/value"):
        SamplersAttnProcessor()(added_kv, torch.randn(1, 3, 32), torch.randn(1, 2, 12))
    weighted = Attention(32, heads=2, dim_head=16)
    weighted.set_processor(_WeightedProcessor())
    plain = Attention(32, heads=2, dim_head=16)
    model = torch.nn.ModuleDict({"added_kv": added_kv, "weighted": weighted, "plain": plain})
    report = apply_samplers_attention(model)
    assert report.replaced == ["plain"] and set(report.kept) == {"added_kv", "weighted"}
    assert "weights of its own" in report.kept["weighted"] and "kept 2" in str(report)
    assert isinstance(weighted.processor, _WeightedProcessor) and isinstance(plain.processor, SamplersAttnProcessor)
    with pytest.raises(ValueError, match="backend must be one of"):
        SamplersAttnProcessor("flash")


# ---- GPU ------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["auto", "fused", "sdpa"])
def test_cuda_half_precision_models_match_the_default_processor(backend):
    """fp16 on the GPU: a UNet (head dim 8: SDPA) and a DiT with head dim 64 (the fused kernel's)."""
    unet = _seeded(_tiny_unet).to("cuda", torch.float16)
    x, t, ctx = (a.cuda() for a in _inputs())
    x, ctx = x.half(), ctx.half()
    mask = torch.ones(2, 7, dtype=torch.bool, device="cuda")
    mask[0, 5:] = False
    ref = _run_unet(unet, AttnProcessor2_0(), x, t, ctx, encoder_attention_mask=mask).float()
    out = _run_unet(unet, SamplersAttnProcessor(backend), x, t, ctx, encoder_attention_mask=mask).float()
    assert ((out - ref).norm() / ref.norm()).item() < 1e-2

    dit = _seeded(lambda: _tiny_dit(head_dim=64)).to("cuda", torch.float16)
    labels = torch.tensor([1, 3], device="cuda")
    with torch.no_grad():
        ref = dit(x, timestep=t, class_labels=labels).sample.float()
        apply_samplers_attention(dit, backend=backend)
        out = dit(x, timestep=t, class_labels=labels).sample.float()
    assert ((out - ref).norm() / ref.norm()).item() < 1e-2
    if backend == "auto":
        assert A.attention_dispatch_report()["choices"]  # the dispatcher measured these shapes


def test_processor_is_part_of_the_diffusers_integration():
    """Issue 5 names `samplers.integrations.diffusers` as the processor's home: one import for diffusers users."""
    from samplers.integrations import diffusers as integration

    assert integration.SamplersAttnProcessor is SamplersAttnProcessor
    assert "SamplersAttnProcessor" in integration.__all__
