"""A small DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers") as a reference denoiser.

No weights are downloaded: every parameter is drawn from a seeded ``torch.Generator``, so a given
(config, seed) is the same network on every machine and device. It is meant for what needs a real
network but no trained one: timing samplers end to end (``samplers bench --problem dit``),
exercising the attention op on realistic shapes, and tests.

Architecture (the paper's DiT with adaLN-Zero blocks, without the learned-sigma channels):

* patchify: a ``p x p`` stride-``p`` convolution, ``[B, C, H, W] -> [B, L, hidden]`` with
  ``L = (H / p) (W / p)``, plus a fixed 2-D sine-cosine position embedding;
* conditioning ``c = MLP(sinusoidal(t)) (+ class embedding)``, ``[B, hidden]``;
* ``depth`` blocks: ``h += gate * Attn(LN(h) * (1 + scale) + shift)`` and the same for an MLP, with
  (shift, scale, gate) x 2 regressed from ``c``; attention runs through :mod:`samplers.ops.attention`
  with ``q, k, v`` as ``[B, heads, L, head_dim]``;
* final layer: adaLN (shift, scale), a linear map to ``p * p * C`` per token, and unpatchify back
  to ``[B, C, H, W]``.

``init="adaln_zero"`` is the paper's initialization (every modulation and the final linear layer
zero, so the untrained network outputs exactly zero and each block starts as the identity);
``init="random"`` (the default) draws those too, so the output depends on the input and on ``t``,
which is what a benchmark or a test of the sampling loop wants.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from samplers.errors import did_you_mean
from samplers.ops import attention as attention_ops

Init = Literal["random", "adaln_zero"]
_M = TypeVar("_M", bound=nn.Module)


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of a :class:`DiT`.

    Attributes:
        input_size: height = width of the input (``H``, ``W``) the position embedding is built for;
            other sizes divisible by ``patch_size`` work too (the embedding is then computed per call).
        in_channels: ``C``; the output has the same channels.
        patch_size: ``p``; the sequence length is ``(H / p) * (W / p)``.
        hidden_size: token width; must be divisible by ``num_heads``.
        depth: number of transformer blocks.
        num_heads: attention heads (head dim = ``hidden_size / num_heads``).
        mlp_ratio: MLP hidden width / ``hidden_size``.
        num_classes: 0 for an unconditional model; otherwise class labels ``0 .. num_classes - 1``
            plus a null label ``num_classes`` (the unconditional branch of classifier-free guidance).
        frequency_embedding_size: width of the sinusoidal timestep features.
    """

    input_size: int = 16
    in_channels: int = 4
    patch_size: int = 2
    hidden_size: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 0
    frequency_embedding_size: int = 256

    def __post_init__(self) -> None:
        for name in (
            "input_size",
            "in_channels",
            "patch_size",
            "hidden_size",
            "depth",
            "num_heads",
            "frequency_embedding_size",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DiTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} must be divisible by patch_size {self.patch_size}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The paper's sizes (Table 1) on 256 x 256 images' 32 x 32 x 4 latents with 2 x 2 patches (256
# tokens), 1000 ImageNet classes; "dit-tiny" is small enough for CPU tests and CPU benchmarks.
# DiT-XL's head dim is 72, which the fused attention kernel does not take (64 and 128): SDPA runs.
DIT_PRESETS: dict[str, DiTConfig] = {
    "dit-tiny": DiTConfig(
        input_size=16, in_channels=4, patch_size=2, hidden_size=128, depth=2, num_heads=4, num_classes=10
    ),
    "dit-s": DiTConfig(input_size=32, patch_size=2, hidden_size=384, depth=12, num_heads=6, num_classes=1000),
    "dit-b": DiTConfig(input_size=32, patch_size=2, hidden_size=768, depth=12, num_heads=12, num_classes=1000),
    "dit-l": DiTConfig(input_size=32, patch_size=2, hidden_size=1024, depth=24, num_heads=16, num_classes=1000),
    "dit-xl": DiTConfig(input_size=32, patch_size=2, hidden_size=1152, depth=28, num_heads=16, num_classes=1000),
}


# --------------------------------------------------------------------------------------------
# embeddings


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps, in float32.

    ``[cos(t w_0), ..., cos(t w_{h-1}), sin(t w_0), ..., sin(t w_{h-1})]`` with ``h = dim // 2`` and
    frequencies ``w_i = max_period^(-i / h)`` from 1 down to about ``1 / max_period`` (a zero is
    appended when ``dim`` is odd). Each (cos, sin) pair has unit norm, and the inner product of two
    embeddings depends only on ``t - s``.

    Args:
        t: ``[B]`` (or 0-d) timesteps, any real dtype.
        dim: output width.
    Returns:
        ``[B, dim]`` float32.
    """
    t = torch.as_tensor(t).reshape(-1).to(torch.float32)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1))
    args = t[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding: ``[grid_h * grid_w, dim]`` float32, row-major tokens.

    Half the channels encode the row index, half the column index (each as in
    :func:`timestep_embedding` with ``max_period = 10000``). ``dim`` must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"the 2-D position embedding needs hidden_size divisible by 4, got {dim}")
    rows = torch.arange(grid_h, dtype=torch.float32, device=device)
    cols = torch.arange(grid_w, dtype=torch.float32, device=device)
    gy, gx = torch.meshgrid(rows, cols, indexing="ij")
    half = dim // 2
    return torch.cat([timestep_embedding(gy.reshape(-1), half), timestep_embedding(gx.reshape(-1), half)], dim=-1)


def _as(module: object, kind: type[_M]) -> _M:
    """``module`` as the ``kind`` it was built as: items of nn.Sequential / nn.ModuleList and submodule
    attributes are typed as ``nn.Module`` (or ``Tensor | Module``), whatever they hold."""
    if not isinstance(module, kind):
        raise TypeError(f"expected a {kind.__name__}, got {type(module).__name__}")
    return module


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` per sample: x ``[B, L, N]``, shift/scale ``[B, N]``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# --------------------------------------------------------------------------------------------
# modules


class TimestepEmbedder(nn.Module):
    """``t [B] -> [B, hidden]``: sinusoidal features, then Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # Features in float32 (t up to ~1000 times frequencies near 1 would lose the phase in fp16).
        feats = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(feats.to(_as(self.mlp[0], nn.Linear).weight.dtype))


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens ``[B, L, hidden]`` through :func:`samplers.ops.attention`."""

    def __init__(self, hidden_size: int, num_heads: int, backend: attention_ops.Backend = "auto") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.backend = backend
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, N = x.shape
        # [B, L, 3, H, D] -> three [B, H, L, D] views (last dim contiguous: the kernel reads them in place)
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # Looked up on the module at call time, so a patched samplers.ops.attention.attention is what runs.
        out = attention_ops.attention(q, k, v, backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(B, L, N))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: tokens ``[B, L, hidden]``, conditioning ``[B, hidden]``."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, backend: attention_ops.Backend = "auto"
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, backend)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden_size)
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(_modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """adaLN then a linear map to the patch pixels: ``[B, L, hidden] -> [B, L, p * p * C]``."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """The reference denoiser: ``model(x [B, C, H, W], t [B] or 0-d, y [B] | None) -> [B, C, H, W]``.

    Args:
        config: architecture (see :data:`DIT_PRESETS`).
        seed: seed of the ``torch.Generator`` every parameter is drawn from (on the CPU, in
            float32, so the weights do not depend on the device or dtype moved to afterwards).
        init: ``"random"`` (default) or ``"adaln_zero"`` (the paper's: zero output at init).
        attention_backend: passed to :func:`samplers.ops.attention` (``"auto"`` measures per shape).

    The output is whatever prediction type the caller treats it as (epsilon by default in a
    sampler); with random weights it is a fixed random function of (x, t, y), of order-one scale.
    """

    pos_embed: torch.Tensor  # a buffer (register_buffer): declared so that reads are typed as a tensor

    def __init__(
        self,
        config: DiTConfig | None = None,
        *,
        seed: int = 0,
        init: Init = "random",
        attention_backend: attention_ops.Backend = "auto",
    ) -> None:
        super().__init__()
        if init not in ("random", "adaln_zero"):
            raise ValueError(f"init must be 'random' or 'adaln_zero', got {init!r}")
        cfg = config or DIT_PRESETS["dit-tiny"]
        self.config = cfg
        self.seed, self.init = int(seed), init
        N, p, C = cfg.hidden_size, cfg.patch_size, cfg.in_channels
        # torch's default initializers draw from the global RNG: fork it, so building a model leaves
        # the caller's random stream untouched (reset_parameters then draws every weight from `seed`).
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            self.x_embedder = nn.Conv2d(C, N, kernel_size=p, stride=p)
            self.t_embedder = TimestepEmbedder(N, cfg.frequency_embedding_size)
            # One extra row: the null label of classifier-free guidance.
            self.y_embedder = nn.Embedding(cfg.num_classes + 1, N) if cfg.num_classes else None
            self.blocks = nn.ModuleList(
                DiTBlock(N, cfg.num_heads, cfg.mlp_ratio, attention_backend) for _ in range(cfg.depth)
            )
            self.final_layer = FinalLayer(N, p, C)
        grid = cfg.input_size // p
        self.register_buffer("pos_embed", sincos_pos_embed_2d(N, grid, grid, torch.device("cpu")), persistent=False)
        self.reset_parameters()

    # ---- weights -----------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every parameter from ``torch.Generator().manual_seed(self.seed)`` (fixed order)."""
        gen = torch.Generator().manual_seed(self.seed)

        def draw(w: torch.Tensor, fill) -> None:
            # Drawn in float32 on the CPU (the generator's device), so a moved or cast model gets the
            # same weights; in place when w already is such a tensor (no second copy of a big model).
            if w.device.type == "cpu" and w.dtype == torch.float32:
                fill(w)
            else:
                w.copy_(fill(torch.empty(w.shape, dtype=torch.float32, device="cpu")))

        def xavier(w: torch.Tensor) -> None:
            fan_out, fan_in = w.shape[0], w[0].numel()
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            draw(w, lambda u: u.uniform_(-bound, bound, generator=gen))

        def normal(w: torch.Tensor, std: float) -> None:
            draw(w, lambda u: u.normal_(0.0, std, generator=gen))

        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                xavier(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
        if self.y_embedder is not None:
            normal(self.y_embedder.weight, 0.02)
        for layer in (_as(self.t_embedder.mlp[0], nn.Linear), _as(self.t_embedder.mlp[2], nn.Linear)):
            normal(layer.weight, 0.02)
        zero_init = self.init == "adaln_zero"
        modulated = [_as(b, DiTBlock).adaLN_modulation for b in self.blocks] + [self.final_layer.adaLN_modulation]
        heads = [_as(m[-1], nn.Linear) for m in modulated]
        for layer in heads:
            if zero_init:
                layer.weight.zero_()
            else:
                # Small enough that (1 + scale) stays near 1 and the gates near 0: a stable
                # residual stream through any depth, like a trained DiT's.
                normal(layer.weight, 0.02)
            layer.bias.zero_()
        if zero_init:
            self.final_layer.linear.weight.zero_()
            self.final_layer.linear.bias.zero_()

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def null_class(self) -> int:
        """The label of the unconditional branch (``num_classes``); only for class-conditional models."""
        if self.y_embedder is None:
            raise AttributeError("this DiT is unconditional (num_classes = 0): it has no null class")
        return self.config.num_classes

    # ---- forward -----------------------------------------------------------------------------

    def _pos_embed(self, grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
        """``[grid_h * grid_w, hidden]``: the stored table at the configured size, else computed."""
        if grid_h == grid_w == self.config.input_size // self.config.patch_size:
            return self.pos_embed
        return sincos_pos_embed_2d(self.config.hidden_size, grid_h, grid_w, device)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None) -> torch.Tensor:
        """Denoiser output for noisy input ``x`` at time ``t``.

        Args:
            x: ``[B, C, H, W]`` with ``H`` and ``W`` divisible by ``patch_size``; any floating dtype
                (computed in the parameters' dtype, returned in ``x``'s).
            t: ``[B]`` or a scalar (broadcast over the batch): the model time the scheduler passes
                (e.g. 0 .. 999 for DDPM-style schedules).
            y: ``[B]`` int64 class labels in ``0 .. num_classes`` (``num_classes`` = null label);
                None = all null (unconditional). Must be None for an unconditional model.
        Returns:
            ``[B, C, H, W]`` in ``x``'s dtype.
        """
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be [B, {cfg.in_channels}, H, W], got {tuple(x.shape)}")
        B, C, H, W = x.shape
        p = cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"H and W must be divisible by patch_size {p}, got {H} x {W}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0 or t.numel() == 1:
            t = t.reshape(1).expand(B)
        elif t.shape != (B,):
            raise ValueError(f"t must be a scalar or [B] = [{B}], got {tuple(t.shape)}")
        dtype = self.x_embedder.weight.dtype
        h = self.x_embedder(x.to(dtype)).flatten(2).transpose(1, 2)  # [B, L, N]
        h = h + self._pos_embed(H // p, W // p, x.device).to(dtype)
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            if y is None:
                y = torch.full((B,), cfg.num_classes, dtype=torch.long, device=x.device)
            elif y.shape != (B,):
                raise ValueError(f"y must be [B] = [{B}] class labels, got {tuple(y.shape)}")
            c = c + self.y_embedder(y)
        elif y is not None:
            raise ValueError("this DiT is unconditional (num_classes = 0); pass y=None")
        for block in self.blocks:
            h = block(h, c)
        h = self.final_layer(h, c)  # [B, L, p * p * C]
        return self._unpatchify(h, H // p, W // p).to(x.dtype)

    def _unpatchify(self, h: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """``[B, gh * gw, p * p * C] -> [B, C, gh * p, gw * p]`` (token (i, j) is the patch at row i, column j)."""
        B = h.shape[0]
        p, C = self.config.patch_size, self.config.in_channels
        h = h.reshape(B, gh, gw, p, p, C)
        return torch.einsum("bhwpqc->bchpwq", h).reshape(B, C, gh * p, gw * p)

    def extra_repr(self) -> str:
        return f"seed={self.seed}, init={self.init!r}, params={self.num_parameters:,}"


def build_dit(
    preset: str | DiTConfig = "dit-tiny",
    *,
    seed: int = 0,
    init: Init = "random",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    attention_backend: attention_ops.Backend = "auto",
    **overrides: Any,
) -> DiT:
    """A :class:`DiT` from a preset name (:data:`DIT_PRESETS`) or a config, with field overrides.

    ``build_dit("dit-s", input_size=64, device="cuda", dtype=torch.float16)``. Weights are drawn on
    the CPU in float32 and then moved, so they are identical for every device and dtype (up to the
    dtype's rounding). The model is returned in eval mode.
    """
    if isinstance(preset, DiTConfig):
        cfg = preset
    else:
        key = str(preset).lower().replace("_", "-")
        if key not in DIT_PRESETS:
            hint = did_you_mean(key, DIT_PRESETS)
            raise ValueError(f"unknown DiT preset {preset!r}{hint} (expected one of: {', '.join(DIT_PRESETS)})")
        cfg = DIT_PRESETS[key]
    if overrides:
        unknown = sorted(set(overrides) - set(DiTConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown DiTConfig field(s) {unknown}; fields: {sorted(DiTConfig.__dataclass_fields__)}")
        cfg = replace(cfg, **overrides)
    model = DiT(cfg, seed=seed, init=init, attention_backend=attention_backend)
    model = model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model
    return model.eval()
