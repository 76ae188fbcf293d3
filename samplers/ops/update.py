"""Python face of the fused sampler update: argument checks, backend choice, dispatch.

See :mod:`samplers.ops.reference` for the exact semantics of the op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeGuard, get_args

import torch

from samplers.ops import _build, reference
from samplers.ops.reference import COEFF, COEFF_NAMES, MAX_HISTORY, MAX_NOISE_NUMEL_PER_SAMPLE, NUM_COEFFS

Backend = Literal["auto", "fused", "torch"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)


def is_backend(value: object) -> TypeGuard[Backend]:
    """Whether ``value`` names an update backend (narrows a user's string to :data:`Backend`)."""
    return value in BACKENDS


KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

EXTENSION = "update"
CPU_SOURCES, CUDA_SOURCES = _build.EXTENSIONS[EXTENSION]


def _ops_loaded() -> bool:
    """Build or load the extension on first use; True when ``torch.ops.samplers.sampler_update`` exists."""
    if _build.load_extension(EXTENSION, CPU_SOURCES, CUDA_SOURCES) is None:
        return False
    return hasattr(torch.ops.samplers, "sampler_update")


def _fused_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the compiled op cannot run on (device, dtype), or None when it can.

    While ``torch.compile`` traces, the answer is taken once, eagerly, as a constant of the graph.
    """
    if torch.compiler.is_compiling():
        return _fused_unavailable_constant(device.type, dtype)
    return _fused_unavailable_eager(device, dtype)


@torch.compiler.assume_constant_result
def _fused_unavailable_constant(device_type: str, dtype: torch.dtype) -> str | None:
    return _fused_unavailable_eager(torch.device(device_type), dtype)


def _fused_unavailable_eager(device: torch.device, dtype: torch.dtype) -> str | None:
    if dtype not in KERNEL_DTYPES:
        return f"dtype {dtype} is not supported by the fused op (float16, bfloat16, float32)"
    if device.type not in ("cpu", "cuda"):
        return f"the fused op has no kernel for device type {device.type!r}"
    if not _ops_loaded():
        status = _build.BUILD_STATUS.get(EXTENSION)
        return f"the compiled extension is not available ({status.reason if status else 'not loaded'})"
    if device.type == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key(
        "samplers::sampler_update", "CUDA"
    ):
        status = _build.BUILD_STATUS.get(EXTENSION)
        return f"the compiled extension has no CUDA kernel ({status.reason if status else 'CPU-only build'})"
    return None


def backend_status() -> dict[str, str]:
    """Which backend ``sampler_update(backend='auto')`` uses and why (for ``samplers info``).

    Loads (and on first use builds) the extension: that is the question being asked.
    """
    _ops_loaded()
    status = _build.BUILD_STATUS.get(EXTENSION)
    if status is None or status.backend == "torch":
        why = status.reason if status else "extension not loaded"
        return {"sampler_update": f"torch reference ({why})"}
    devices = "CPU and CUDA" if status.cuda else "CPU"
    where = "prebuilt" if status.backend == "prebuilt" else "JIT"
    return {
        "sampler_update": f"fused {where} kernels for {devices} in float16/bfloat16/float32 ({status.reason}); "
        "other dtypes and devices use the torch reference"
    }


def _check_like(name: str, t: torch.Tensor | None, x: torch.Tensor) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != x.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but sample has shape {tuple(x.shape)}; they must match")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but sample has dtype {x.dtype}; they must match")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but sample is on {x.device}; they must be on one device")


def check_update_args(
    x: torch.Tensor,
    model_output: torch.Tensor,
    coeffs: torch.Tensor,
    uncond: torch.Tensor | None,
    noise: torch.Tensor | None,
    seeds: torch.Tensor | None,
    history: Sequence[torch.Tensor],
) -> None:
    """Raise a clear error for any argument the op cannot take (checked before any launch, no device sync)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"sample must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"sample must be a floating tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"sample must have a non-empty batch dimension first, got shape {tuple(x.shape)}")
    _check_like("model_output", model_output, x)
    _check_like("uncond", uncond, x)
    _check_like("noise", noise, x)
    if not isinstance(history, (list, tuple)) or len(history) > MAX_HISTORY:
        raise ValueError(f"history must be a list of at most {MAX_HISTORY} tensors, got {history!r:.80}")
    for j, h in enumerate(history):
        _check_like(f"history[{j}]", h, x)
    if not isinstance(coeffs, torch.Tensor) or not coeffs.is_floating_point():
        got = getattr(coeffs, "dtype", type(coeffs).__name__)
        raise TypeError(f"coeffs must be a floating torch.Tensor [1 or batch, {NUM_COEFFS}], got {got}")
    if coeffs.dim() != 2 or coeffs.shape[1] != NUM_COEFFS or coeffs.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"coeffs must have shape [1, {NUM_COEFFS}] or [batch={x.shape[0]}, {NUM_COEFFS}], "
            f"got {tuple(coeffs.shape)}"
        )
    if coeffs.device != x.device:
        raise ValueError(f"coeffs is on {coeffs.device} but sample is on {x.device}")
    if seeds is not None:
        if seeds.dtype != torch.int64 or seeds.shape != (x.shape[0],):
            raise ValueError(f"seeds must be int64 of shape [{x.shape[0]}], got {seeds.dtype} {tuple(seeds.shape)}")
        if seeds.device != x.device:
            raise ValueError(f"seeds is on {seeds.device} but sample is on {x.device}")
        if noise is None and x[0].numel() > MAX_NOISE_NUMEL_PER_SAMPLE:
            raise ValueError(
                f"in-op noise supports at most {MAX_NOISE_NUMEL_PER_SAMPLE} elements per sample, got {x[0].numel()}"
            )


def check_finite_coeffs(coeffs: torch.Tensor) -> None:
    """Raise, naming the column and row, for a coefficient that would silently poison the result.

    The same rule and message as the compiled op's own check (``csrc/bindings/update_ops.cpp``),
    on the float32 values both backends compute with: every column finite, except ``lim`` (inf
    means no clamp; only NaN is refused), and ``div`` also nonzero. Like the compiled op, this
    runs only for host tensors (the table is tiny, so it is nearly free); coefficients on a GPU
    are not checked, since that would need a host-device sync on every step. Skipped while
    ``torch.compile`` traces, where a data-dependent branch would break the graph.
    """
    if coeffs.device.type != "cpu" or torch.compiler.is_compiling():
        return
    c = coeffs.to(torch.float32)
    ok = torch.isfinite(c)
    ok[:, COEFF["lim"]] = ~torch.isnan(c[:, COEFF["lim"]])
    ok[:, COEFF["div"]] &= c[:, COEFF["div"]] != 0
    if bool(ok.all()):
        return
    row, col = (int(i) for i in (~ok).nonzero()[0])
    name = COEFF_NAMES[col]
    why = {"lim": "lim must not be NaN (inf means no clamp)", "div": "div must be finite and nonzero"}.get(
        name, "coefficients must be finite"
    )
    raise RuntimeError(f"samplers::sampler_update: coefficient {name!r} of row {row} is {float(c[row, col]):g}; {why}")


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def sampler_update(
    x: torch.Tensor,
    model_output: torch.Tensor,
    coeffs: torch.Tensor,
    *,
    uncond: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
    noise_stream: int = 0,
    history: Sequence[torch.Tensor] = (),
    write_x0: bool = True,
    brownian: bool = False,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused sampler update. Returns ``(prev, x0)``; shapes and dtype of ``x``.

    Args:
        x: current sample ``[B, ...]``.
        model_output: model output for ``x`` (the conditional branch when ``uncond`` is given).
        coeffs: ``[1 or B, NUM_COEFFS]`` rows of :data:`samplers.ops.reference.COEFF_NAMES`.
        uncond: unconditional model output for classifier-free guidance (weight in column ``w``).
        noise: explicit noise; else drawn in-op from ``seeds`` (Philox keyed by the row's ``stream``
            plus ``noise_stream``, or with ``brownian`` the increment of a Brownian path over the
            row's ``[bt0, bt1]``).
        history: up to ``MAX_HISTORY`` tensors kept from earlier calls (columns h0, h1, ...).
        write_x0: also return the call's estimate (else an empty tensor).
        backend: ``"fused"`` (compiled op, error if unavailable), ``"torch"`` (reference), or
            ``"auto"`` (compiled op when it is built and supports the dtype). When gradients are
            needed through any input, ``"auto"`` runs the reference (differentiable) instead.
    """
    history = list(history)
    check_update_args(x, model_output, coeffs, uncond, noise, seeds, history)
    if backend not in ("auto", "fused", "torch"):
        raise ValueError(f"backend must be 'auto', 'fused' or 'torch', got {backend!r}")
    if backend == "fused" and _needs_grad(x, model_output, uncond, noise, *history):
        raise RuntimeError(
            "backend='fused' has no backward and an input requires grad; use backend='auto' (which falls back "
            "to the differentiable reference) or 'torch', or run under torch.no_grad()"
        )
    if backend == "fused" or (backend == "auto" and not _needs_grad(x, model_output, uncond, noise, *history)):
        why_not = _fused_unavailable(x.device, x.dtype)
        if why_not is None:
            return torch.ops.samplers.sampler_update.default(
                x,
                model_output,
                coeffs,
                uncond,
                noise,
                seeds,
                int(noise_stream),
                history,
                bool(write_x0),
                bool(brownian),
            )
        if backend == "fused":
            raise RuntimeError(f"backend='fused' cannot run: {why_not}; use backend='auto' or 'torch'")
    check_finite_coeffs(coeffs)  # the compiled op checks its own (on the host); the reference does not
    return reference.sampler_update(
        x, model_output, coeffs, uncond, noise, seeds, noise_stream, history, write_x0, brownian
    )
