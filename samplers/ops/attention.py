"""Scaled dot-product attention: a fused CUDA kernel, PyTorch SDPA, and a measured dispatcher.

``attention(q, k, v)`` computes ``softmax(q k^T * scale + mask) v`` per batch and head:

* ``q``: ``[B, H, Lq, D]``; ``k``, ``v``: ``[B, H, Lk, D]`` (self attention when ``Lk == Lq``,
  cross attention otherwise). Any strides; the fused kernel wants the last dim contiguous and
  copies otherwise.
* ``attn_mask``: additive (dtype of ``q``) or boolean (``True`` = attend), broadcastable to
  ``[B, H, Lq, Lk]`` (e.g. ``[B, 1, 1, Lk]`` or ``[Lq, Lk]``).
* ``key_padding_mask``: boolean ``[B, Lk]``, ``True`` = that key is padding and is ignored
  (the convention of ``torch.nn.MultiheadAttention``).
* A query row whose keys are all masked gives zeros.

Backends: ``"fused"`` (this project's kernel: flash-attention-style forward, fp16/bf16, head dims
64 and 128, mma.sync on sm_80+, wgmma on sm_90a builds; other inputs fall back to SDPA),
``"sdpa"`` (PyTorch's own pick), ``"sdpa_flash"``, ``"sdpa_cudnn"``, ``"sdpa_efficient"``,
``"math"`` (one SDPA backend forced), and ``"auto"``: per (device, dtype, head dim, mask kind,
size bucket) it times every eligible candidate once on the real inputs (CUDA events, round
robin, median of a few calls) - each fused kernel variant built for the device and each SDPA
backend - caches the fastest, and logs the choice on ``logging.getLogger("samplers.attention")``.
:func:`attention_dispatch_report` returns the cached choices (``samplers info`` prints it).
CPU tensors always go to SDPA. The fused kernel is forward-only: when autograd needs a
gradient, SDPA runs instead.

:func:`attention_reference` is the float64 oracle the tests compare against.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeGuard, get_args

import torch
import torch.nn.functional as F

logger = logging.getLogger("samplers.attention")

Backend = Literal["auto", "fused", "sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "math"]
Kernel = Literal["auto", "mma", "wgmma", "wgmma_alt", "wgmma_tma", "wgmma_tma_alt"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
KERNELS: dict[str, int] = {"auto": 0, "mma": 1, "wgmma": 2, "wgmma_alt": 3, "wgmma_tma": 4, "wgmma_tma_alt": 5}
WGMMA_KERNELS = ("wgmma", "wgmma_alt", "wgmma_tma", "wgmma_tma_alt")
FUSED_DTYPES = (torch.float16, torch.bfloat16)
FUSED_HEAD_DIMS = (64, 128)

# Candidates the dispatcher times on CUDA, in this order (ties keep the earlier one).
_AUTO_CANDIDATES = ("fused", "sdpa", "sdpa_cudnn", "sdpa_flash", "sdpa_efficient")
_WARMUP = 2
_REPS = 5
# Each timed sample is a batch of back-to-back calls lasting about this long, so the GPU queue
# stays full and host-side overhead (Python checks, launch latency) does not pose as kernel time.
_SAMPLE_MS = 1.0
_MAX_BATCH = 64

_EXT_NAME = "attention_ext"
_CPU_SOURCES = ["bindings/attention_ops.cpp"]
_CUDA_SOURCES = [
    "bindings/attention_cuda.cu",
    "attention/attention_launch.cu",
    "attention/attention_mma.cu",
    "attention/attention_wgmma.cu",
]


def is_backend(value: object) -> TypeGuard[Backend]:
    """Whether ``value`` names an attention backend (narrows a user's string to :data:`Backend`)."""
    return value in BACKENDS


# --------------------------------------------------------------------------------------------
# argument checks


def _check_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    scale: float | None,
    backend: str,
) -> float:
    """Raise a clear error for any argument attention() cannot take; return the softmax scale."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q must be 4-D [B, H, Lq, D], got shape {tuple(q.shape)}")
    if k.dim() != 4:
        raise ValueError(f"k must be 4-D [B, H, Lk, D], got shape {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    B, H, Lq, D = q.shape
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != D:
        raise ValueError(
            f"k must be [B, H, Lk, D] with B={B}, H={H}, D={D} taken from q {tuple(q.shape)}, got {tuple(k.shape)}"
        )
    Lk = k.shape[2]
    if Lk == 0:
        raise ValueError("k must hold at least one key (Lk = 0): the softmax over no keys is undefined")
    if not q.is_floating_point():
        raise TypeError(f"q, k, v must be floating tensors, got dtype {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
            raise TypeError(
                f"attn_mask must be bool (True = attend) or additive with the dtype of q ({q.dtype}), "
                f"got {attn_mask.dtype}"
            )
        if attn_mask.device != q.device:
            raise ValueError(f"attn_mask is on {attn_mask.device} but q is on {q.device}")
        full = (B, H, Lq, Lk)
        pairs = zip(reversed(attn_mask.shape), reversed(full), strict=False)
        ok = attn_mask.dim() <= 4 and all(s == 1 or s == f for s, f in pairs)
        if not ok:
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to [B, H, Lq, Lk] = {list(full)}"
            )
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor):
            raise TypeError(f"key_padding_mask must be a torch.Tensor or None, got {type(key_padding_mask).__name__}")
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask must be bool (True = ignore that key), got {key_padding_mask.dtype}")
        if tuple(key_padding_mask.shape) != (B, Lk):
            raise ValueError(f"key_padding_mask must be [B, Lk] = [{B}, {Lk}], got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}; got {backend!r}")
    if scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a Python float or None, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    return float(scale)


# --------------------------------------------------------------------------------------------
# reference (test oracle)


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention in float64 on upcast inputs: the oracle. Returns float64 ``[B, H, Lq, D]``.

    Same contract as :func:`attention`, including zeros for fully masked rows.
    """
    scale = _check_args(q, k, v, attn_mask, key_padding_mask, scale, "math")
    qd, kd, vd = (t.detach().to(torch.float64) for t in (q, k, v))
    s = (qd @ kd.transpose(-2, -1)) * scale
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            s = s.masked_fill(~attn_mask, -math.inf)
        else:
            s = s + attn_mask.to(torch.float64)
    if key_padding_mask is not None:
        s = s.masked_fill(key_padding_mask[:, None, None, :], -math.inf)
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    denom = p.sum(dim=-1, keepdim=True)
    out = (p @ vd) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return out


# --------------------------------------------------------------------------------------------
# SDPA


def _sdpa_mask(q: torch.Tensor, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None):
    """One 4-D mask in SDPA's convention (bool True = attend, or additive) from both of ours."""
    if attn_mask is not None and attn_mask.dim() < 4:
        # some SDPA kernels index dims -2/-1 of the mask: give it all four (views, no copy)
        attn_mask = attn_mask.view((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    if key_padding_mask is None:
        return attn_mask
    keep = ~key_padding_mask[:, None, None, :]
    if attn_mask is None:
        return keep
    if attn_mask.dtype == torch.bool:
        return attn_mask & keep
    return attn_mask.masked_fill(~keep, -math.inf)


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {
        "sdpa_flash": SDPBackend.FLASH_ATTENTION,
        "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def _run_sdpa(q, k, v, attn_mask, key_padding_mask, scale: float, backend: str) -> torch.Tensor:
    mask = _sdpa_mask(q, attn_mask, key_padding_mask)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(_sdpa_backend(backend)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


# --------------------------------------------------------------------------------------------
# the compiled kernel


_ext_lock = threading.Lock()
_ext_state: dict[str, object] = {}


def _load_kernel() -> tuple[bool, str]:
    """Build/load the extension once; return (CUDA kernel registered, reason)."""
    with _ext_lock:
        if "ok" in _ext_state:
            return bool(_ext_state["ok"]), str(_ext_state["reason"])
        from samplers.ops import _build

        _build.load_extension(_EXT_NAME, cpu_sources=_CPU_SOURCES, cuda_sources=_CUDA_SOURCES)
        status = _build.BUILD_STATUS.get(_EXT_NAME)
        has_cuda = _has_cuda_kernel()
        if has_cuda:
            reason = f"compiled kernel ({status.backend if status else 'loaded'})"
        elif status is not None and status.backend == "torch":
            reason = f"no compiled kernel: {status.reason}"
        else:
            reason = "extension built without CUDA (no CUDA toolkit or no GPU at build time)"
        _ext_state["ok"], _ext_state["reason"] = has_cuda, reason
        return has_cuda, reason


def _has_cuda_kernel() -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key("samplers::attention_fwd", "CUDA"))
    except RuntimeError:  # op not registered at all
        return False


_caps_cache: dict[int, int] = {}


def _device_caps(device: torch.device) -> int:
    """Capability bits of the kernels on `device` (1: mma.sync, 2: wgmma); cached."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _caps_cache:
        _caps_cache[index] = int(torch.ops.samplers.attention_caps(index))
    return _caps_cache[index]


def fused_supported(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> tuple[bool, str]:
    """Whether the fused kernel can run on these inputs, and if not, why (no side effects but
    building the extension on first use with a CUDA tensor)."""
    if q.device.type != "cuda":
        return False, f"{q.device.type} tensor: the fused kernel is CUDA-only"
    if q.dtype not in FUSED_DTYPES:
        return False, f"dtype {q.dtype} (the kernel takes float16 and bfloat16)"
    if q.shape[-1] not in FUSED_HEAD_DIMS:
        return False, f"head dim {q.shape[-1]} (the kernel takes {' and '.join(map(str, FUSED_HEAD_DIMS))})"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return False, "gradients requested (the kernel is forward-only)"
    if attn_mask is not None and attn_mask.requires_grad and torch.is_grad_enabled():
        return False, "gradients requested for attn_mask"
    if q.shape[0] * q.shape[1] > 65535:
        return False, "batch * heads > 65535"
    ok, reason = _load_kernel()
    if not ok:
        return False, reason
    if not _device_caps(q.device) & 1:
        return False, f"compute capability {torch.cuda.get_device_capability(q.device)} < 8.0"
    return True, "ok"


def _addressable(t: torch.Tensor, align: int, stride_multiple: int) -> bool:
    return (
        t.stride(-1) == 1
        and t.data_ptr() % align == 0
        and all(s % stride_multiple == 0 for s, n in zip(t.stride()[:-1], t.shape[:-1], strict=True) if n > 1)
    )


def _kernel_ready(t: torch.Tensor) -> torch.Tensor:
    """t itself when the kernel can address it (last dim contiguous, 16-byte aligned base and
    rows), else a contiguous copy."""
    return t if _addressable(t, 16, 8) else t.contiguous()


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    kernel: Kernel = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fused kernel itself, no fallback: raises if it cannot run on these inputs.

    ``kernel`` picks the implementation: ``"auto"`` (the fastest wgmma variant for the head dim
    where built and supported, else mma.sync), ``"mma"``, or one wgmma variant: ``"wgmma"`` /
    ``"wgmma_alt"`` (cp.async loads, two tilings), ``"wgmma_tma"`` / ``"wgmma_tma_alt"`` (TMA
    loads with mbarriers, two tilings); these exist for tuning and tests.
    ``out``, if given, receives the result: shape and dtype of ``q``, last dim contiguous, any
    other strides (e.g. a ``[B, L, H, D]`` buffer viewed as ``[B, H, L, D]``).
    Shapes as in :func:`attention`; returns ``[B, H, Lq, D]`` in the dtype of ``q`` (``out``
    when given).
    """
    scale = _check_args(q, k, v, attn_mask, key_padding_mask, scale, "fused")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(repr(x) for x in KERNELS)}; got {kernel!r}")
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
        if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
            raise ValueError(
                f"out must match q: shape {tuple(q.shape)}, {q.dtype} on {q.device}; "
                f"got {tuple(out.shape)}, {out.dtype} on {out.device}"
            )
        if not _addressable(out, 4, 2):
            raise ValueError(f"out must have a contiguous last dim and even strides, got strides {out.stride()}")
    ok, reason = fused_supported(q, k, v, attn_mask, key_padding_mask)
    if not ok:
        raise RuntimeError(f"the fused attention kernel cannot run here: {reason}")
    return _run_fused(q, k, v, attn_mask, key_padding_mask, scale, KERNELS[kernel], out)


def _run_fused(q, k, v, attn_mask, key_padding_mask, scale: float, impl: int = 0, out=None) -> torch.Tensor:
    if q.numel() == 0:
        return q.new_empty(q.shape) if out is None else out
    mask = attn_mask
    if mask is not None and mask.dtype == torch.bool:
        # The kernel reads one additive mask; convert at the mask's own (broadcast) size.
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, -math.inf)
    args = (_kernel_ready(q), _kernel_ready(k), _kernel_ready(v), mask, key_padding_mask, scale, impl)
    if out is None:
        return torch.ops.samplers.attention_fwd(*args)
    torch.ops.samplers.attention_fwd_out(*args, out)
    return out


# --------------------------------------------------------------------------------------------
# dispatcher


@dataclass
class DispatchChoice:
    """One cached decision: the backend (and, for "fused", which kernel), with the median
    milliseconds of every candidate timed (fused kernels as "fused:<kernel>")."""

    backend: str
    kernel: str = "auto"
    times_ms: dict[str, float] = field(default_factory=dict)
    shape: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        d = {"backend": self.backend, "times_ms": dict(self.times_ms), "measured_on": list(self.shape)}
        if self.backend == "fused":
            d["kernel"] = self.kernel
        return d


_dispatch_lock = threading.Lock()
_dispatch_cache: dict[tuple, DispatchChoice] = {}


def _pow2_bucket(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _dispatch_key(q, k, attn_mask, key_padding_mask) -> tuple:
    B, H, Lq, D = q.shape
    mask_kind = {
        (False, False): "none",
        (True, False): "additive",
        (False, True): "key_padding",
        (True, True): "both",
    }[(attn_mask is not None, key_padding_mask is not None)]
    return (
        str(q.device),
        str(q.dtype).removeprefix("torch."),
        D,
        mask_kind,
        _pow2_bucket(B * H),
        _pow2_bucket(Lq),
        _pow2_bucket(k.shape[2]),
    )


def _key_str(key: tuple) -> str:
    dev, dtype, D, mask_kind, bh, lq, lk = key
    return f"{dev} {dtype} D={D} mask={mask_kind} BH<={bh} Lq<={lq} Lk<={lk}"


def _candidate_fn(name: str, q, k, v, attn_mask, key_padding_mask, scale) -> Callable[[], torch.Tensor]:
    if name.startswith("fused:"):
        impl = KERNELS[name.split(":", 1)[1]]
        return lambda: _run_fused(q, k, v, attn_mask, key_padding_mask, scale, impl)
    return lambda: _run_sdpa(q, k, v, attn_mask, key_padding_mask, scale, name)


def _time_batch(fn: Callable[[], object], n: int) -> float:
    """Milliseconds per call of n back-to-back calls, timed with CUDA events."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def _batch_size(fn: Callable[[], object]) -> int:
    """Calls per timed sample so that one sample lasts about _SAMPLE_MS."""
    once = _time_batch(fn, 2)
    return max(1, min(_MAX_BATCH, int(_SAMPLE_MS / max(once, 1e-3))))


def _fused_candidates(device: torch.device) -> list[str]:
    """Every kernel built for this device, each timed on its own by the dispatcher."""
    caps = _device_caps(device)
    names = list(WGMMA_KERNELS) if caps & 2 else []
    return [f"fused:{n}" for n in names or ["mma"]]


def _measure(q, k, v, attn_mask, key_padding_mask, scale, fused_ok: bool) -> DispatchChoice:
    """Time every candidate that runs on these inputs; the fastest median wins."""
    fns: dict[str, Callable[[], torch.Tensor]] = {}
    names: list[str] = []
    for name in _AUTO_CANDIDATES:
        if name == "fused":
            names += _fused_candidates(q.device) if fused_ok else []
        else:
            names.append(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SDPA warns about each backend it cannot use
        for name in names:
            fn = _candidate_fn(name, q, k, v, attn_mask, key_padding_mask, scale)
            try:
                for _ in range(_WARMUP):
                    fn()
            except RuntimeError as exc:  # backend not available for these inputs
                logger.debug(
                    "attention dispatch: %s unavailable (%s)", name, str(exc).splitlines()[0] if str(exc) else exc
                )
                continue
            fns[name] = fn
        torch.cuda.synchronize(q.device)
        batch = {name: _batch_size(fn) for name, fn in fns.items()}
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(_REPS):  # round robin, so clock drift hits every candidate alike
            for name, fn in fns.items():
                samples[name].append(_time_batch(fn, batch[name]))
    times = {name: statistics.median(ts) for name, ts in samples.items()}
    best = min(times, key=times.__getitem__) if times else "sdpa"
    shape = tuple(q.shape) + (k.shape[2],)
    if best.startswith("fused:"):
        return DispatchChoice("fused", best.split(":", 1)[1], times, shape)
    return DispatchChoice(best, "auto", times, shape)


def _choose(q, k, v, attn_mask, key_padding_mask, scale) -> DispatchChoice:
    """The decision for backend="auto" (measured once per bucket, then cached)."""
    if q.device.type != "cuda":
        return DispatchChoice("sdpa")
    fused_ok, why_not = fused_supported(q, k, v, attn_mask, key_padding_mask)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return DispatchChoice("sdpa")
    key = _dispatch_key(q, k, attn_mask, key_padding_mask)
    with _dispatch_lock:
        choice = _dispatch_cache.get(key)
    if choice is not None:
        return choice
    capturing = torch.cuda.is_current_stream_capturing()
    compiling = torch.compiler.is_compiling() if hasattr(torch, "compiler") else False
    if capturing or compiling:
        # No timing inside a graph capture or a trace: a fixed guess, not cached.
        return DispatchChoice("fused" if fused_ok else "sdpa")
    choice = _measure(q, k, v, attn_mask, key_padding_mask, scale, fused_ok)
    with _dispatch_lock:
        choice = _dispatch_cache.setdefault(key, choice)
    timing = ", ".join(f"{n} {t:.4f} ms" for n, t in sorted(choice.times_ms.items(), key=lambda kv: kv[1]))
    picked = f"fused ({choice.kernel})" if choice.backend == "fused" else choice.backend
    logger.info(
        "attention dispatch [%s]: %s (%s)%s",
        _key_str(key),
        picked,
        timing,
        "" if fused_ok else f"; fused skipped: {why_not}",
    )
    return choice


def resolve_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: Backend = "auto",
) -> str:
    """The concrete backend :func:`attention` would run for these arguments (measuring, for
    ``"auto"`` on a new CUDA bucket, exactly as attention() would)."""
    scale = _check_args(q, k, v, attn_mask, key_padding_mask, scale, backend)
    return _resolve(q, k, v, attn_mask, key_padding_mask, scale, backend)[0]


def _resolve(q, k, v, attn_mask, key_padding_mask, scale: float, backend: str) -> tuple[str, str]:
    """(backend, fused kernel) that will run."""
    if backend == "auto":
        choice = _choose(q, k, v, attn_mask, key_padding_mask, scale)
        return choice.backend, choice.kernel
    if backend == "fused":
        if q.device.type != "cuda":
            return "sdpa", "auto"
        ok, reason = fused_supported(q, k, v, attn_mask, key_padding_mask)
        if ok:
            return "fused", "auto"
        if not _has_cuda_kernel():
            raise RuntimeError(f"backend='fused' but the compiled attention kernel is unavailable: {reason}")
        logger.debug("attention: fused kernel skipped (%s), using SDPA", reason)
        return "sdpa", "auto"
    return backend, "auto"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v``; returns ``[B, H, Lq, D]`` in the dtype of ``q``.

    Args:
        q: queries ``[B, H, Lq, D]``.
        k, v: keys and values ``[B, H, Lk, D]``.
        attn_mask: additive (dtype of q) or bool (True = attend), broadcastable to ``[B, H, Lq, Lk]``.
        key_padding_mask: bool ``[B, Lk]``, True = ignore that key.
        scale: softmax scale, default ``1 / sqrt(D)``.
        backend: see the module docstring. ``"fused"`` runs the kernel where it supports the
            inputs and SDPA elsewhere (CPU, other dtypes / head dims, autograd), and raises if
            the kernel was not built at all for a CUDA tensor.
    """
    scale = _check_args(q, k, v, attn_mask, key_padding_mask, scale, backend)
    chosen, kernel = _resolve(q, k, v, attn_mask, key_padding_mask, scale, backend)
    if chosen == "fused":
        return _run_fused(q, k, v, attn_mask, key_padding_mask, scale, KERNELS[kernel])
    return _run_sdpa(q, k, v, attn_mask, key_padding_mask, scale, chosen)


def attention_dispatch_report() -> dict:
    """What ``samplers info`` shows: the kernel's status and every cached dispatch choice."""
    report: dict = {}
    if "ok" in _ext_state:
        report["kernel"] = _ext_state["reason"]
        if _ext_state["ok"] and torch.cuda.is_available():
            try:
                report["kernel_impl"] = str(torch.ops.samplers.attention_kernel_name(torch.cuda.current_device()))
            except Exception as exc:  # report must not fail
                report["kernel_impl"] = f"unknown ({exc})"
    elif torch.cuda.is_available():
        report["kernel"] = "not loaded yet (built on the first CUDA call)"
    else:
        report["kernel"] = "no CUDA device: attention runs on PyTorch SDPA"
    with _dispatch_lock:
        report["choices"] = {_key_str(key): c.as_dict() for key, c in _dispatch_cache.items()}
    return report


def reset_dispatch_cache() -> None:
    """Forget every measured choice (the next call of each bucket measures again)."""
    with _dispatch_lock:
        _dispatch_cache.clear()
