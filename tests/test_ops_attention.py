"""samplers.ops.attention: argument checks, masks, the float64 oracle, the dispatcher, and (on a
GPU) the fused kernels against the oracle.

CPU tests run everywhere and take seconds. CUDA tests carry ``@pytest.mark.cuda`` and skip
without a device; they compare every kernel that runs on the device (mma.sync, and wgmma on
sm_90a builds) with the float64 reference by relative Frobenius error.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from samplers.ops import attention as A

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64 = out.double().cpu()
    ref64 = ref.double().cpu()
    return float((out64 - ref64).norm() / ref64.norm().clamp_min(1e-300))


def rand_qkv(B, H, Lq, Lk, D, dtype=torch.float32, device="cpu", gen=None):
    gen = gen or torch.Generator().manual_seed(0)
    q = torch.randn(B, H, Lq, D, generator=gen).to(dtype=dtype, device=device)
    k = torch.randn(B, H, Lk, D, generator=gen).to(dtype=dtype, device=device)
    v = torch.randn(B, H, Lk, D, generator=gen).to(dtype=dtype, device=device)
    return q, k, v


# ---------------------------------------------------------------------------------------------
# CPU: the oracle, SDPA dispatch, masks, errors


@pytest.mark.parametrize("shape", [(2, 3, 17, 17, 64), (1, 2, 5, 33, 80), (3, 1, 40, 7, 128), (1, 1, 1, 1, 16)])
def test_reference_agrees_with_sdpa_math_in_float64(shape):
    B, H, Lq, Lk, D = shape
    q, k, v = rand_qkv(B, H, Lq, Lk, D, torch.float64, gen=torch.Generator().manual_seed(sum(shape)))
    add = torch.randn(B, 1, Lq, Lk, dtype=torch.float64)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=add, scale=0.37)
    ref = A.attention_reference(q, k, v, attn_mask=add, scale=0.37)
    assert ref.dtype == torch.float64 and ref.shape == (B, H, Lq, D)
    assert rel_err(sdpa, ref) < 1e-12


def test_reference_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = rand_qkv(1, 2, 6, 9, 32, torch.float64)
    explicit = A.attention_reference(q, k, v, scale=1 / math.sqrt(32))
    assert torch.equal(A.attention_reference(q, k, v), explicit)
    # a different scale really changes the answer
    assert rel_err(A.attention_reference(q, k, v, scale=1.0), explicit) > 1e-3


def test_cpu_always_dispatches_to_sdpa_and_measures_nothing():
    A.reset_dispatch_cache()
    q, k, v = rand_qkv(2, 2, 8, 8, 64)
    for backend in ("auto", "fused"):
        assert A.resolve_backend(q, k, v, backend=backend) == "sdpa"
    for dtype in (torch.float16, torch.bfloat16):
        qh, kh, vh = (t.to(dtype) for t in (q, k, v))
        assert A.resolve_backend(qh, kh, vh) == "sdpa"
    out = A.attention(q, k, v)
    assert rel_err(out, A.attention_reference(q, k, v)) < 1e-5
    assert A.attention_dispatch_report()["choices"] == {}  # no timing on CPU


def test_fused_attention_refuses_cpu_tensors_with_reason():
    q, k, v = rand_qkv(1, 1, 4, 4, 64)
    ok, reason = A.fused_supported(q, k, v)
    assert not ok and "CUDA-only" in reason
    with pytest.raises(RuntimeError, match="cannot run here: cpu tensor"):
        A.fused_attention(q, k, v)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "math"])
@pytest.mark.parametrize("mask_shape", [None, (2, 3, 11, 19), (2, 1, 1, 19), (1, 3, 11, 1), (11, 19), (19,)], ids=str)
def test_cpu_additive_masks_match_reference(backend, mask_shape):
    gen = torch.Generator().manual_seed(3)
    q, k, v = rand_qkv(2, 3, 11, 19, 64, gen=gen)
    mask = None if mask_shape is None else torch.randn(mask_shape, generator=gen) * 3
    out = A.attention(q, k, v, attn_mask=mask, backend=backend)
    ref = A.attention_reference(q, k, v, attn_mask=mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, ref) < 1e-5
    unmasked = A.attention_reference(q, k, v)
    if mask is not None and mask.shape[-1] == 1:
        # a mask constant along the keys shifts every logit of a row alike: no effect
        assert rel_err(unmasked, ref) < 1e-12
    elif mask is not None:  # the mask matters
        assert rel_err(unmasked, ref) > 1e-2


def test_cpu_bool_mask_and_key_padding_mask_combine():
    gen = torch.Generator().manual_seed(4)
    q, k, v = rand_qkv(2, 2, 6, 10, 64, gen=gen)
    allow = torch.rand(6, 10, generator=gen) > 0.3
    kpm = torch.zeros(2, 10, dtype=torch.bool)
    kpm[0, 7:] = True
    kpm[1, :2] = True
    out = A.attention(q, k, v, attn_mask=allow, key_padding_mask=kpm)
    ref = A.attention_reference(q, k, v, attn_mask=allow, key_padding_mask=kpm)
    assert rel_err(out, ref) < 1e-5
    # an additive version of the same boolean mask gives the same result
    additive = torch.zeros(6, 10).masked_fill(~allow, -math.inf)
    assert rel_err(A.attention(q, k, v, attn_mask=additive, key_padding_mask=kpm), ref) < 1e-5


def test_key_padding_equals_dropping_the_keys():
    gen = torch.Generator().manual_seed(5)
    q, k, v = rand_qkv(1, 2, 9, 12, 64, torch.float64, gen=gen)
    kpm = torch.zeros(1, 12, dtype=torch.bool)
    kpm[0, [1, 4, 5, 11]] = True
    keep = ~kpm[0]
    padded = A.attention(q, k, v, key_padding_mask=kpm)
    dropped = A.attention(q, k[:, :, keep], v[:, :, keep])
    assert rel_err(padded, dropped) < 1e-12


def test_fully_masked_rows_are_zero():
    q, k, v = rand_qkv(1, 1, 4, 6, 64, torch.float64)
    allow = torch.ones(4, 6, dtype=torch.bool)
    allow[2] = False  # query row 2 sees no key
    ref = A.attention_reference(q, k, v, attn_mask=allow)
    assert torch.all(ref[0, 0, 2] == 0) and torch.all(torch.isfinite(ref))
    assert ref[0, 0, 1].abs().sum() > 0
    out = A.attention(q, k, v, attn_mask=allow)
    assert torch.all(out[0, 0, 2] == 0) and rel_err(out, ref) < 1e-12


def test_reference_is_stable_for_huge_logits():
    q, k, v = rand_qkv(1, 1, 8, 8, 64, torch.float64)
    out = A.attention_reference(q * 1e3, k, v)
    assert torch.all(torch.isfinite(out))
    # each row becomes (almost) a one-hot pick of v rows
    picked = v[0, 0][(q[0, 0] @ k[0, 0].T).argmax(-1)]
    assert rel_err(out[0, 0], picked) < 1e-3


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda q, k, v: A.attention(q[0], k, v), ValueError, r"q must be 4-D"),
        (lambda q, k, v: A.attention(q, k[0], v), ValueError, r"k must be 4-D"),
        (lambda q, k, v: A.attention(q, k, v[:, :, :3]), ValueError, r"v must have the shape of k"),
        (lambda q, k, v: A.attention(q, k[:, :1], v[:, :1]), ValueError, r"k must be \[B, H, Lk, D\] with B=2, H=3"),
        (lambda q, k, v: A.attention(q, k[:, :, :0], v[:, :, :0]), ValueError, r"at least one key"),
        (lambda q, k, v: A.attention(q, k.double(), v), TypeError, r"share one dtype"),
        (lambda q, k, v: A.attention(q.long(), k.long(), v.long()), TypeError, r"floating"),
        (lambda q, k, v: A.attention(q, k, v, attn_mask=torch.zeros(5, 7)), ValueError, r"does not broadcast"),
        (
            lambda q, k, v: A.attention(q, k, v, attn_mask=torch.zeros(4, 8, dtype=torch.float64)),
            TypeError,
            r"attn_mask must be bool .* dtype of q",
        ),
        (
            lambda q, k, v: A.attention(q, k, v, attn_mask=torch.zeros(1, 1, 1, 1, 4, 8)),
            ValueError,
            r"does not broadcast",
        ),
        (
            lambda q, k, v: A.attention(q, k, v, key_padding_mask=torch.zeros(2, 8)),
            TypeError,
            r"key_padding_mask must be bool",
        ),
        (
            lambda q, k, v: A.attention(q, k, v, key_padding_mask=torch.zeros(2, 7, dtype=torch.bool)),
            ValueError,
            r"key_padding_mask must be \[B, Lk\] = \[2, 8\]",
        ),
        (lambda q, k, v: A.attention(q, k, v, scale=-1.0), ValueError, r"scale must be positive"),
        (lambda q, k, v: A.attention(q, k, v, scale=float("nan")), ValueError, r"scale must be positive"),
        (lambda q, k, v: A.attention(q, k, v, scale=torch.tensor(1.0)), TypeError, r"scale must be a Python float"),
        (lambda q, k, v: A.attention(q, k, v, backend="flash"), ValueError, r"backend must be one of"),
        (lambda q, k, v: A.attention(q.numpy(), k, v), TypeError, r"q must be a torch.Tensor"),
        (lambda q, k, v: A.fused_attention(q, k, v, kernel="tiles"), ValueError, r"kernel must be one of"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, exc, match):
    q, k, v = rand_qkv(2, 3, 4, 8, 64)
    with pytest.raises(exc, match=match):
        call(q, k, v)


def test_grad_flows_through_sdpa_path():
    q, k, v = rand_qkv(1, 2, 5, 7, 64, torch.float64)
    q.requires_grad_(True)
    out = A.attention(q, k, v)
    out.sum().backward()
    assert q.grad is not None and torch.all(torch.isfinite(q.grad))
    # finite-difference check of one entry
    eps = 1e-6
    qp = q.detach().clone()
    qp[0, 1, 2, 3] += eps
    qm = q.detach().clone()
    qm[0, 1, 2, 3] -= eps
    fd = (A.attention_reference(qp, k, v).sum() - A.attention_reference(qm, k, v).sum()) / (2 * eps)
    assert abs(float(q.grad[0, 1, 2, 3]) - float(fd)) < 1e-6


def test_dispatch_report_shape():
    report = A.attention_dispatch_report()
    assert set(report) >= {"kernel", "choices"}
    assert isinstance(report["choices"], dict)


@pytest.mark.slow
def test_compiled_op_cpu_and_meta_agree_with_reference():
    """Builds the extension (CPU part on a CPU machine) and checks the registered op itself."""
    ok, reason = A._load_kernel()
    from samplers.ops import _build

    status = _build.BUILD_STATUS.get(A._EXT_NAME)
    if status is None or status.backend == "torch":
        pytest.skip(f"extension not built here: {reason}")
    gen = torch.Generator().manual_seed(11)
    q, k, v = rand_qkv(2, 3, 13, 21, 64, gen=gen)
    mask = torch.randn(2, 1, 13, 21, generator=gen)
    kpm = torch.zeros(2, 21, dtype=torch.bool)
    kpm[1, 15:] = True
    out = torch.ops.samplers.attention_fwd(q, k, v, mask, kpm, 0.2, 0)
    ref = A.attention_reference(q, k, v, attn_mask=mask, key_padding_mask=kpm, scale=0.2)
    assert rel_err(out, ref) < 1e-5
    poisoned = torch.full_like(q, float("nan"))
    torch.ops.samplers.attention_fwd_out(q, k, v, mask, kpm, 0.2, 0, poisoned)
    assert torch.equal(poisoned, out)
    meta = torch.ops.samplers.attention_fwd(q.to("meta"), k.to("meta"), v.to("meta"))
    assert meta.shape == q.shape and meta.device.type == "meta"
    with pytest.raises(RuntimeError, match="attn_mask of shape"):
        torch.ops.samplers.attention_fwd(q, k, v, torch.zeros(5, 13, 21), None, 1.0, 0)
    if not CUDA:
        assert torch.ops.samplers.attention_caps(0) == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_attention_kernels_compile_for_sm80_sm90_sm90a(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / ".ci" / "compile_cuda_attention.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "OK: compiled" in proc.stdout
    log = (tmp_path / "attention_wgmma.o.log").read_text()
    # the wgmma kernels have real bodies only in the sm_90a pass (placeholders elsewhere)
    assert "for 'sm_90a'" in log and "attn_fwd_wgmma_kernel" in log
    assert "wgmma.mma_async instructions are serialized" not in log


# ---------------------------------------------------------------------------------------------
# CUDA: the kernels against the float64 oracle

TOL = {torch.bfloat16: 1e-2, torch.float16: 5e-3}


def _kernels() -> list[str]:
    if not CUDA:
        return []
    ok, reason = A._load_kernel()
    if not ok:
        pytest.fail(f"CUDA is here but the attention kernel is not built: {reason}")
    caps = torch.ops.samplers.attention_caps(torch.cuda.current_device())
    names = ["mma"] if caps & 1 else []
    if caps & 2:
        names += list(A.WGMMA_KERNELS)
    return names


def _check(kernel, q, k, v, dtype, **masks):
    """Runs `kernel` into a NaN-poisoned output and compares with the oracle."""
    out = torch.full_like(q, float("nan"))
    A.fused_attention(q, k, v, kernel=kernel, out=out, **masks)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), f"{kernel}: {int((~torch.isfinite(out)).sum())} elements unwritten or non-finite"
    ref = A.attention_reference(q, k, v, **masks)
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"{kernel}: relative error {err:.2e}"
    return out, ref


SHAPES = [
    # B, H, Lq, Lk: tiles are 128 (queries) and 64/128 (keys); tails on both sides
    (1, 1, 1, 1),
    (2, 3, 128, 128),
    (1, 2, 129, 65),
    (2, 1, 77, 300),  # cross attention, Lk > Lq
    (1, 3, 300, 77),  # cross attention, Lk < Lq
    (1, 1, 1000, 1000),
    (3, 2, 64, 4096),
    (1, 1, 257, 1),
]


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cuda_kernels_match_reference(dtype, D, shape):
    B, H, Lq, Lk = shape
    gen = torch.Generator().manual_seed(B * 1000 + Lq * 7 + Lk + D)
    q, k, v = rand_qkv(B, H, Lq, Lk, D, dtype, "cuda", gen)
    for kernel in _kernels():
        _check(kernel, q, k, v, dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("kind", ["additive_full", "additive_bcast", "bool_2d", "key_padding", "both", "dead_rows"])
def test_cuda_kernels_with_masks(dtype, D, kind):
    B, H, Lq, Lk = 2, 3, 150, 203
    gen = torch.Generator().manual_seed(hash(kind) % 1000 + D)
    q, k, v = rand_qkv(B, H, Lq, Lk, D, dtype, "cuda", gen)
    masks: dict = {}
    if kind == "additive_full":
        masks["attn_mask"] = (torch.randn(B, H, Lq, Lk, generator=gen) * 2).to(dtype).cuda()
    elif kind == "additive_bcast":
        masks["attn_mask"] = (torch.randn(B, 1, 1, Lk, generator=gen) * 2).to(dtype).cuda()
    elif kind == "bool_2d":
        masks["attn_mask"] = (torch.rand(Lq, Lk, generator=gen) > 0.5).cuda()
    elif kind in ("key_padding", "both"):
        kpm = torch.zeros(B, Lk, dtype=torch.bool)
        kpm[0, 140:] = True
        kpm[1, ::3] = True
        masks["key_padding_mask"] = kpm.cuda()
        if kind == "both":
            masks["attn_mask"] = (torch.randn(1, H, Lq, 1, generator=gen)).to(dtype).cuda().expand(1, H, Lq, Lk)
    elif kind == "dead_rows":
        allow = torch.rand(Lq, Lk, generator=gen) > 0.2
        allow[[0, 5, 149]] = False  # rows that see no key at all -> zeros
        masks["attn_mask"] = allow.cuda()
    for kernel in _kernels():
        out, _ = _check(kernel, q, k, v, dtype, **masks)
        if kind == "dead_rows":
            assert torch.all(out[:, :, [0, 5, 149]] == 0)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("D", [64, 128])
def test_cuda_strided_layouts_scale_and_large_logits(D):
    """[B, L, H, D] storage viewed as [B, H, L, D] (the diffusers layout), written back the same way."""
    dtype = torch.bfloat16
    B, H, Lq, Lk = 2, 5, 333, 190
    gen = torch.Generator().manual_seed(D)
    q = torch.randn(B, Lq, H, D, generator=gen).to(dtype).cuda().transpose(1, 2)
    k = torch.randn(B, Lk, H, D, generator=gen).to(dtype).cuda().transpose(1, 2)
    v = torch.randn(B, Lk, H, D, generator=gen).to(dtype).cuda().transpose(1, 2)
    out_blhd = torch.full((B, Lq, H, D), float("nan"), dtype=dtype, device="cuda")
    for kernel in _kernels():
        out = A.fused_attention(q, k, v, scale=0.07, kernel=kernel, out=out_blhd.transpose(1, 2))
        assert out.data_ptr() == out_blhd.data_ptr() and torch.isfinite(out_blhd).all()
        assert rel_err(out, A.attention_reference(q, k, v, scale=0.07)) < TOL[dtype]
        # logits of size ~ 1e2: the online softmax must not overflow
        big = A.fused_attention(q, k, v, scale=1.0, kernel=kernel)
        assert torch.isfinite(big).all()
        assert rel_err(big, A.attention_reference(q, k, v, scale=1.0)) < 2 * TOL[dtype]


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_results_are_deterministic_and_graph_capturable():
    dtype = torch.float16
    q, k, v = rand_qkv(2, 4, 500, 700, 128, dtype, "cuda")
    for kernel in _kernels():
        a = A.fused_attention(q, k, v, kernel=kernel)
        b = A.fused_attention(q, k, v, kernel=kernel)
        assert torch.equal(a, b), f"{kernel}: two runs differ (race?)"
        static_out = torch.empty_like(q)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            A.fused_attention(q, k, v, kernel=kernel, out=static_out)  # warm-up outside capture
            with torch.cuda.graph(graph, stream=stream):
                A.fused_attention(q, k, v, kernel=kernel, out=static_out)
        torch.cuda.current_stream().wait_stream(stream)
        q.copy_(torch.randn_like(q))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(static_out, A.attention_reference(q, k, v)) < TOL[dtype]


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_unsupported_head_dim_and_dtype_fall_back():
    q, k, v = rand_qkv(1, 2, 100, 90, 80, torch.bfloat16, "cuda")
    ok, reason = A.fused_supported(q, k, v)
    assert not ok and "head dim 80" in reason
    assert A.resolve_backend(q, k, v, backend="fused") == "sdpa"
    out = A.attention(q, k, v, backend="fused")
    assert rel_err(out, A.attention_reference(q, k, v)) < TOL[torch.bfloat16]
    with pytest.raises(RuntimeError, match="head dim 80"):
        A.fused_attention(q, k, v)
    q32, k32, v32 = rand_qkv(1, 2, 100, 90, 64, torch.float32, "cuda")
    assert A.resolve_backend(q32, k32, v32, backend="fused") == "sdpa"
    with pytest.raises(RuntimeError, match="cannot run here: dtype torch.float32"):
        A.fused_attention(q32, k32, v32)
    # autograd goes to SDPA too
    qg = q32.clone().to(torch.bfloat16)
    kg = torch.randn(1, 2, 90, 64, device="cuda", dtype=torch.bfloat16)
    vg = kg.clone()
    qg.requires_grad_(True)
    assert A.resolve_backend(qg, kg, vg, backend="fused") == "sdpa"
    A.attention(qg, kg, vg).float().sum().backward()
    assert qg.grad is not None


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_dispatcher_measures_once_caches_and_logs(caplog):
    A.reset_dispatch_cache()
    q, k, v = rand_qkv(2, 8, 1024, 1024, 64, torch.bfloat16, "cuda")
    with caplog.at_level(logging.INFO, logger="samplers.attention"):
        first = A.resolve_backend(q, k, v)
    assert any("attention dispatch" in r.message for r in caplog.records)
    report = A.attention_dispatch_report()["choices"]
    assert len(report) == 1
    (entry,) = report.values()
    times = entry["times_ms"]
    assert entry["backend"] == first and all(t > 0 for t in times.values())
    # every wgmma variant (on Hopper builds; else mma.sync) is a candidate of its own, and so is
    # SDPA's default
    kernels = [k for k in _kernels() if k != "mma"] or ["mma"]
    assert {f"fused:{k}" for k in kernels} <= set(times) and "sdpa" in times
    winner = f"fused:{entry['kernel']}" if first == "fused" else first
    assert times[winner] == min(times.values())
    # same bucket (Lq 1000 -> 1024): cached, nothing new measured
    q2, k2, v2 = rand_qkv(2, 8, 1000, 1000, 64, torch.bfloat16, "cuda")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="samplers.attention"):
        assert A.resolve_backend(q2, k2, v2) == first
    assert not caplog.records and len(A.attention_dispatch_report()["choices"]) == 1
    out = A.attention(q2, k2, v2)
    assert rel_err(out, A.attention_reference(q2, k2, v2)) < TOL[torch.bfloat16]


# ---------------------------------------------------------------------------------------------
# torch.library.opcheck: schema, fake (Meta) kernels and AOT dispatch of the registered CPU ops


@pytest.fixture(scope="module")
def attention_ops():
    """The compiled attention ops on CPU, or a clean skip (with the build status) when not built."""
    A._load_kernel()
    from samplers.ops import _build

    status = _build.BUILD_STATUS.get(A._EXT_NAME)
    if status is None or status.backend == "torch" or not hasattr(torch.ops.samplers, "attention_fwd"):
        pytest.skip(f"attention extension not loaded here: {status}")
    if not torch._C._dispatch_has_kernel_for_dispatch_key("samplers::attention_fwd", "CPU"):
        pytest.skip("attention extension has no CPU kernel registered")
    return torch.ops.samplers


def _attention_opcheck_cases():
    """(q, k, v, attn_mask, key_padding_mask, scale, impl) for every mask kind, dtype and a strided q."""
    gen = torch.Generator().manual_seed(5)
    cases = []
    q, k, v = rand_qkv(2, 3, 5, 7, 16, gen=gen)
    cases.append((q, k, v, None, None, 0.25, 0))
    cases.append((q, k, v, torch.randn(2, 1, 5, 7, generator=gen), None, 0.25, 0))  # additive, broadcast over H
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 4:] = True
    cases.append((q, k, v, torch.rand(5, 7, generator=gen) > 0.3, kpm, 1.0, 0))  # bool mask + key padding
    q64, k64, v64 = rand_qkv(1, 2, 4, 3, 8, dtype=torch.float64, gen=gen)
    cases.append((q64, k64, v64, None, None, 0.5, 0))
    qh, kh, vh = rand_qkv(1, 2, 6, 6, 32, dtype=torch.float16, gen=gen)
    cases.append((qh, kh, vh, torch.zeros(1, 2, 6, 6, dtype=torch.float16), None, 0.125, 0))
    wide = torch.randn(2, 5, 3, 16, generator=gen)  # [B, L, H, D] viewed as [B, H, L, D]: not contiguous
    cases.append((wide.transpose(1, 2), k, v, None, None, 0.25, 0))
    return cases


@pytest.mark.parametrize("case", range(6))
def test_opcheck_attention_fwd(attention_ops, case):
    torch.library.opcheck(attention_ops.attention_fwd.default, _attention_opcheck_cases()[case])


@pytest.mark.parametrize("case", range(6))
def test_opcheck_attention_fwd_out(attention_ops, case):
    args = _attention_opcheck_cases()[case]
    q = args[0]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    torch.library.opcheck(attention_ops.attention_fwd_out.default, (*args, out))
    # a [B, L, H, D] buffer viewed as [B, H, L, D] (what the attention processor writes into)
    strided_out = torch.empty(q.shape[0], q.shape[2], q.shape[1], q.shape[3], dtype=q.dtype).transpose(1, 2)
    torch.library.opcheck(attention_ops.attention_fwd_out.default, (*args, strided_out))
    attention_ops.attention_fwd_out(*args, strided_out)  # opcheck ran on copies; write for real
    torch.testing.assert_close(strided_out, attention_ops.attention_fwd(*args), rtol=0, atol=0)
