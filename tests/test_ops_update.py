"""The fused sampler-update op (C++ CPU kernel, CUDA kernel) against the reference contract.

The kernels evaluate the reference's float32 expression in the same order with explicitly
rounded operations, so without Philox noise (no noise, or a noise tensor) they must agree with
``samplers.ops.reference`` bit for bit in every storage dtype. With in-op noise, the only
difference is the kernels' own log/sin/cos (a few float32 ulp), so there the comparison allows
that much, scaled by the noise coefficient.
"""

from __future__ import annotations

import math
import shutil
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samplers.ops import _build, reference, update
from samplers.ops.reference import COEFF, NUM_COEFFS, batch_seeds

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CUDA = torch.cuda.is_available()


def _can_build() -> bool:
    try:
        from torch.utils.cpp_extension import is_ninja_available
    except ImportError:
        return False
    return (shutil.which("g++") is not None or shutil.which("c++") is not None) and is_ninja_available()


@pytest.fixture(scope="module", autouse=True)
def fused_op():
    if not update._ops_loaded():
        status = _build.BUILD_STATUS.get(update.EXTENSION)
        if _can_build():
            pytest.fail(f"a compiler and ninja are here but the extension did not load: {status}")
        pytest.skip(f"no compiled extension: {status}")
    return torch.ops.samplers.sampler_update


def make_coeffs(rows: int, gen: torch.Generator, clamp: bool = True, dtype=torch.float64) -> torch.Tensor:
    c = torch.randn(rows, NUM_COEFFS, generator=gen, dtype=torch.float64)
    c[:, COEFF["lim"]] = torch.rand(rows, generator=gen, dtype=torch.float64) + 0.5 if clamp else math.inf
    c[:, COEFF["div"]] = torch.rand(rows, generator=gen, dtype=torch.float64) + 0.5
    return c.to(dtype)


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same logical values in another memory layout."""
    if kind == "contiguous":
        return t.contiguous()
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # every other element of a wider buffer: not dense
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    if kind == "transposed":  # dense, but not row-major
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    raise ValueError(kind)


def inputs(shape, dtype, gen, uncond=False, noise="none", history=0, per_sample=True, clamp=True):
    b = shape[0]

    def rnd():
        return torch.randn(shape, generator=gen).to(dtype)

    kw = dict(
        x=rnd(),
        model_output=rnd(),
        coeffs=make_coeffs(b if per_sample else 1, gen, clamp),
        uncond=rnd() if uncond else None,
        noise=rnd() if noise == "tensor" else None,
        seeds=batch_seeds(int(torch.randint(0, 2**62, (1,), generator=gen)), b) if noise == "seeds" else None,
        noise_stream=int(torch.randint(0, 2**40, (1,), generator=gen)),
        history0=rnd() if history >= 1 else None,
        history1=rnd() if history >= 2 else None,
    )
    return kw


def call_ref(kw, write_x0=True):
    return reference.sampler_update(
        kw["x"],
        kw["model_output"],
        kw["coeffs"],
        kw["uncond"],
        kw["noise"],
        kw["seeds"],
        kw["noise_stream"],
        kw["history0"],
        kw["history1"],
        write_x0,
    )


def call_fused(kw, write_x0=True, backend="fused"):
    return update.sampler_update(**kw, write_x0=write_x0, backend=backend)


def assert_matches_reference(got, want, kw):
    """Bitwise without Philox noise; with it, a few float32 ulp of the noise times |c|."""
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0, equal_nan=True)  # x0 never involves noise
    if kw["seeds"] is None or kw["noise"] is not None:
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0, equal_nan=True)
        return
    cmax = kw["coeffs"][:, COEFF["c"]].abs().max().item()
    eps = torch.finfo(got[0].dtype).eps
    # noise differs by <= ~4e-6 (values up to 5.8); half/bf16 outputs may then round one ulp apart
    atol = 4e-6 * cmax + (0 if got[0].dtype == torch.float32 else eps * 8)
    rtol = 1e-6 if got[0].dtype == torch.float32 else eps
    torch.testing.assert_close(got[0].float(), want[0].float(), rtol=rtol, atol=atol)


# ---- agreement with the reference ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "strided", "transposed"])
@pytest.mark.parametrize("noise", ["none", "tensor", "seeds"])
def test_matches_reference_across_layouts(dtype, kind, noise):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{dtype}{kind}{noise}".encode()))
    for uncond, history, per_sample, clamp in [
        (False, 0, False, False),
        (True, 2, True, True),
        (True, 1, False, True),
    ]:
        kw = inputs((3, 5, 6, 7), dtype, gen, uncond, noise, history, per_sample, clamp)
        want = call_ref(kw)
        laid = {k: layout(v, kind) if isinstance(v, torch.Tensor) and v.dim() == 4 else v for k, v in kw.items()}
        got = call_fused(laid)
        assert_matches_reference(got, want, kw)
        # outputs keep x's memory format (a strided x gives dense outputs)
        if kind == "channels_last":
            assert got[0].is_contiguous(memory_format=torch.channels_last)
            assert got[1].is_contiguous(memory_format=torch.channels_last)
        if kind == "transposed":
            assert got[0].stride() == laid["x"].stride()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 4),
    rest=st.lists(st.integers(1, 9), min_size=0, max_size=3),
    dtype=st.sampled_from(DTYPES),
    uncond=st.booleans(),
    noise=st.sampled_from(["none", "tensor", "seeds"]),
    history=st.integers(0, 2),
    per_sample=st.booleans(),
    clamp=st.booleans(),
    write_x0=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference_hypothesis(
    batch, rest, dtype, uncond, noise, history, per_sample, clamp, write_x0, scale, seed
):
    gen = torch.Generator().manual_seed(seed)
    kw = inputs((batch, *rest), dtype, gen, uncond, noise, history, per_sample, clamp)
    kw["x"] = (kw["x"].float() * scale).to(dtype)
    want = call_ref(kw, write_x0)
    got = call_fused(kw, write_x0)
    if not write_x0:
        assert got[1].shape == (0,) and want[1].shape == (0,)
    assert_matches_reference(got, want, kw)


@pytest.mark.parametrize("shape", [(1, 1), (1,), (2, 1), (3, 5), (2, 7, 3), (5, 4, 3, 3), (1, 4099), (2, 8195)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_odd_sizes(shape, dtype):
    """1 element, sizes that are not a multiple of 4 (a Philox group) or of the 16-byte pack, > one chunk."""
    gen = torch.Generator().manual_seed(len(shape) * 1000 + shape[-1])
    for noise in ("none", "seeds"):
        kw = inputs(shape, dtype, gen, uncond=True, noise=noise, history=1)
        assert_matches_reference(call_fused(kw), call_ref(kw), kw)


def test_mixed_layouts_and_float32_coeffs():
    gen = torch.Generator().manual_seed(7)
    kw = inputs((2, 3, 4, 5), torch.float32, gen, uncond=True, noise="seeds", history=2)
    want = call_ref(kw)
    kw2 = dict(kw)
    kw2["x"] = layout(kw["x"], "channels_last")
    kw2["uncond"] = layout(kw["uncond"], "strided")
    kw2["coeffs"] = kw["coeffs"].float()
    assert_matches_reference(call_fused(kw2), want, kw)


def test_clamp_and_nan_propagate_like_torch_clamp():
    x = torch.tensor([[float("nan"), 5.0, -5.0, 0.25, float("inf"), -float("inf"), 1.0, 2.0]])
    out = torch.zeros_like(x)
    c = torch.zeros(1, NUM_COEFFS)
    c[0, COEFF["p"]] = 1.0
    c[0, COEFF["lim"]] = 1.0
    c[0, COEFF["div"]] = 2.0
    c[0, COEFF["b"]] = 1.0
    prev, x0 = update.sampler_update(x, out, c, backend="fused")
    want = torch.tensor([[float("nan"), 0.5, -0.5, 0.125, 0.5, -0.5, 0.5, 0.5]])
    torch.testing.assert_close(x0, want, equal_nan=True)
    ref_prev, _ = reference.sampler_update(x, out, c)  # 0 * inf = nan in prev, as in the reference
    torch.testing.assert_close(prev, ref_prev, rtol=0, atol=0, equal_nan=True)
    assert prev[0, :4].isnan().tolist() == [True, False, False, False]


def test_noise_depends_on_logical_index_not_layout():
    gen = torch.Generator().manual_seed(3)
    kw = inputs((2, 4, 6, 5), torch.float32, gen, noise="seeds")
    base = call_fused(kw)
    for kind in ("channels_last", "strided", "transposed"):
        laid = {k: layout(v, kind) if isinstance(v, torch.Tensor) and v.dim() == 4 else v for k, v in kw.items()}
        got = call_fused(laid)
        assert torch.equal(got[0], base[0]), kind
        assert torch.equal(got[1], base[1]), kind


def test_batch_split_gives_the_same_result():
    gen = torch.Generator().manual_seed(11)
    kw = inputs((6, 3, 5, 5), torch.float32, gen, uncond=True, noise="seeds", per_sample=True)
    kw["seeds"] = batch_seeds(1234, 6)
    whole = call_fused(kw)
    pieces = []
    for lo, hi in [(0, 1), (1, 4), (4, 6)]:
        part = {k: (v[lo:hi] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        part["seeds"] = batch_seeds(1234, hi - lo, sample_offset=lo)
        pieces.append(call_fused(part))
    assert torch.equal(whole[0], torch.cat([p[0] for p in pieces]))
    assert torch.equal(whole[1], torch.cat([p[1] for p in pieces]))


def test_in_op_noise_equals_philox_normal():
    """With a = b = e = 0 and c = 1, prev is the in-op noise itself."""
    seeds = batch_seeds(99, 3)
    x = torch.randn(3, 2, 11, 13)
    c = torch.zeros(1, NUM_COEFFS)
    c[0, COEFF["c"]] = 1.0
    c[0, COEFF["lim"]] = math.inf
    c[0, COEFF["div"]] = 1.0
    prev, _ = update.sampler_update(x, x, c, seeds=seeds, noise_stream=17, backend="fused")
    noise = torch.ops.samplers.philox_normal(seeds, 17, x[0].numel()).view_as(x)
    assert torch.equal(prev, noise)
    ref = reference.philox_normal(seeds, 17, x[0].numel()).view_as(x)
    assert (prev - ref).abs().max() < 4e-6


# ---- dispatch -----------------------------------------------------------------------------------


def test_auto_uses_the_fused_op_and_falls_back_for_other_dtypes(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    kw = inputs((2, 9), torch.float32, gen, noise="seeds")
    fused = call_fused(kw, backend="fused")
    assert torch.equal(call_fused(kw, backend="auto")[0], fused[0])
    # the reference's noise differs in the last bits, so "torch" really is the other path
    assert not torch.equal(call_fused(kw, backend="torch")[0], fused[0])
    kw64 = inputs((2, 9), torch.float64, gen, noise="seeds")
    auto64 = call_fused(kw64, backend="auto")
    torch.testing.assert_close(auto64[0], call_ref(kw64)[0], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="dtype torch.float64 is not supported"):
        call_fused(kw64, backend="fused")
    # an extension that failed to build: fused says why, auto quietly uses the reference
    monkeypatch.setattr(update, "_ops_loaded", lambda: False)
    monkeypatch.setitem(
        _build.BUILD_STATUS, update.EXTENSION, _build.BuildStatus("update", "torch", "no compiler here")
    )
    with pytest.raises(RuntimeError, match="no compiler here"):
        call_fused(kw, backend="fused")
    torch.testing.assert_close(call_fused(kw, backend="auto")[0], call_ref(kw)[0], rtol=0, atol=0)


def test_backend_status_says_which_backend_is_live():
    status = update.backend_status()
    assert "fused" in status["sampler_update"]
    assert _build.BUILD_STATUS[update.EXTENSION].backend in ("jit", "prebuilt")


def test_importing_samplers_does_not_build():
    import subprocess
    import sys

    code = (
        "import samplers, samplers.ops, samplers.ops.update as u, samplers.ops._build as b;"
        "assert not b.BUILD_STATUS and not b._MODULES, b.BUILD_STATUS"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_rejected_with_clear_errors():
    x = torch.randn(2, 3, 4)
    c = make_coeffs(1, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="model_output has shape"):
        update.sampler_update(x, torch.randn(2, 3, 5), c, backend="fused")
    with pytest.raises(TypeError, match="uncond has dtype torch.float16"):
        update.sampler_update(x, x, c, uncond=x.half(), backend="fused")
    with pytest.raises(ValueError, match="noise is on meta"):
        update.sampler_update(x, x, c, noise=torch.empty(2, 3, 4, device="meta"), backend="fused")
    with pytest.raises(ValueError, match=r"coeffs must have shape \[1, 11\] or \[batch=2, 11\]"):
        update.sampler_update(x, x, torch.zeros(3, NUM_COEFFS), backend="fused")
    with pytest.raises(ValueError, match="coeffs must have shape"):
        update.sampler_update(x, x, torch.zeros(1, 10), backend="fused")
    with pytest.raises(TypeError, match="coeffs must be a floating torch.Tensor"):
        update.sampler_update(x, x, torch.zeros(1, NUM_COEFFS, dtype=torch.int64), backend="fused")
    with pytest.raises(ValueError, match="seeds must be int64"):
        update.sampler_update(x, x, c, seeds=torch.zeros(2, dtype=torch.int32), backend="fused")
    with pytest.raises(RuntimeError, match="not supported by the fused op"):
        update.sampler_update(x.double(), x.double(), c, backend="fused")
    with pytest.raises(ValueError, match="backend must be"):
        update.sampler_update(x, x, c, backend="cuda")


def test_op_checks_arguments_itself():
    op = torch.ops.samplers.sampler_update
    x = torch.randn(2, 3, 4)
    c = make_coeffs(1, torch.Generator().manual_seed(0)).float()
    with pytest.raises(RuntimeError, match="model_output has shape"):
        op(x, x[:, :2], c, None, None, None, 0, None, None, True)
    with pytest.raises(RuntimeError, match="history1 has dtype"):
        op(x, x, c, None, None, None, 0, None, x.half(), True)
    with pytest.raises(RuntimeError, match="float16, bfloat16 and float32"):
        op(x.double(), x.double(), c, None, None, None, 0, None, None, True)
    with pytest.raises(RuntimeError, match="coeffs must have shape"):
        op(x, x, c[:, :5], None, None, None, 0, None, None, True)
    with pytest.raises(RuntimeError, match="seeds must be int64 of shape"):
        op(x, x, c, None, None, torch.zeros(3, dtype=torch.int64), 0, None, None, True)
    bad = c.clone()
    bad[0, COEFF["q"]] = float("nan")
    with pytest.raises(RuntimeError, match="coefficient 'q' of row 0 is nan"):
        op(x, x, bad, None, None, None, 0, None, None, True)
    bad = c.clone()
    bad[0, COEFF["div"]] = 0.0
    with pytest.raises(RuntimeError, match="div must be finite and nonzero"):
        op(x, x, bad, None, None, None, 0, None, None, True)
    with pytest.raises(RuntimeError, match="seeds must be a 1-D int64"):
        torch.ops.samplers.philox_normal(torch.zeros(2, 2, dtype=torch.int64), 0, 5)


# ---- torch.library / torch.compile --------------------------------------------------------------


def _opcheck_cases():
    gen = torch.Generator().manual_seed(21)
    cases = []
    for dtype, kind, uncond, noise, history, write_x0 in [
        (torch.float32, "contiguous", False, "none", 0, True),
        (torch.float32, "channels_last", True, "seeds", 2, True),
        (torch.float16, "strided", True, "tensor", 1, False),
        (torch.bfloat16, "contiguous", False, "seeds", 0, True),
    ]:
        kw = inputs((2, 3, 4, 5), dtype, gen, uncond, noise, history)
        kw = {k: layout(v, kind) if isinstance(v, torch.Tensor) and v.dim() == 4 else v for k, v in kw.items()}
        cases.append(
            (
                kw["x"],
                kw["model_output"],
                kw["coeffs"].float(),
                kw["uncond"],
                kw["noise"],
                kw["seeds"],
                kw["noise_stream"],
                kw["history0"],
                kw["history1"],
                write_x0,
            )
        )
    return cases


@pytest.mark.parametrize("case", range(4))
def test_opcheck_sampler_update(case):
    torch.library.opcheck(torch.ops.samplers.sampler_update.default, _opcheck_cases()[case])


def test_opcheck_philox_normal():
    torch.library.opcheck(torch.ops.samplers.philox_normal.default, (batch_seeds(3, 4), 5, 37))
    torch.library.opcheck(torch.ops.samplers.philox_normal.default, (batch_seeds(3, 1), 0, 1))


def test_torch_compile_fullgraph_dynamic():
    gen = torch.Generator().manual_seed(8)

    def step(x, out, c, seeds):
        prev, x0 = torch.ops.samplers.sampler_update(x, out, c, None, None, seeds, 4, None, None, True)
        return prev * 2 + x0

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for shape in [(2, 3, 8, 8), (3, 3, 5, 7)]:
        kw = inputs(shape, torch.float32, gen, noise="seeds")
        c = kw["coeffs"].float()
        want = step(kw["x"], kw["model_output"], c, kw["seeds"])
        torch.testing.assert_close(compiled(kw["x"], kw["model_output"], c, kw["seeds"]), want, rtol=1e-6, atol=1e-6)


# ---- CUDA ---------------------------------------------------------------------------------------


def _to(kw, device):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("noise", ["none", "tensor", "seeds"])
@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (3, 5, 7), (1, 1), (4, 8195)])
def test_cuda_matches_cpu_bitwise_and_reference(dtype, noise, shape):
    """Same explicitly rounded math and the same noise functions: CUDA == CPU bit for bit."""
    if not torch._C._dispatch_has_kernel_for_dispatch_key("samplers::sampler_update", "CUDA"):
        pytest.fail(f"CUDA is here but the extension has no CUDA kernel: {_build.BUILD_STATUS.get(update.EXTENSION)}")
    gen = torch.Generator().manual_seed(sum(shape))
    for uncond, history, per_sample, clamp in [
        (False, 0, False, False),
        (True, 2, True, True),
        (True, 1, False, True),
    ]:
        for write_x0 in (True, False):
            kw = inputs(shape, dtype, gen, uncond, noise, history, per_sample, clamp)
            cpu = call_fused(kw, write_x0)
            dev = call_fused(_to(kw, "cuda"), write_x0)
            assert dev[0].is_cuda
            assert torch.equal(dev[0].cpu(), cpu[0]), (uncond, history, write_x0)
            assert torch.equal(dev[1].cpu(), cpu[1])
            assert_matches_reference([t.cpu() for t in dev], call_ref(kw, write_x0), kw)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_misaligned_layouts_and_large_batch(dtype):
    gen = torch.Generator().manual_seed(1)
    kw = inputs((3, 4, 8, 8), dtype, gen, uncond=True, noise="seeds", history=1)
    cpu = call_fused(kw)
    dev = _to(kw, "cuda")
    # misaligned: a view starting one element into a buffer (forces the scalar kernel)
    buf = torch.empty(kw["x"].numel() + 1, dtype=dtype, device="cuda")
    buf[1:] = dev["x"].flatten()
    dev["x"] = buf[1:].view_as(dev["x"])
    got = call_fused(dev)
    assert torch.equal(got[0].cpu(), cpu[0]) and torch.equal(got[1].cpu(), cpu[1])
    for kind in ("channels_last", "strided", "transposed"):
        laid = {k: layout(v, kind) if isinstance(v, torch.Tensor) and v.dim() == 4 else v for k, v in dev.items()}
        got = call_fused(laid)
        assert torch.equal(got[0].cpu(), cpu[0]), kind
    # more samples than one grid row holds (grid-stride over the batch axis)
    big = inputs((70000, 3), dtype, gen, noise="seeds")
    torch.testing.assert_close(call_fused(_to(big, "cuda"))[0].cpu(), call_fused(big)[0], rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_noise_equals_cpu_noise():
    seeds = batch_seeds(2024, 5)
    for n in (1, 3, 4, 1000, 65537):
        cpu = torch.ops.samplers.philox_normal(seeds, 9, n)
        dev = torch.ops.samplers.philox_normal(seeds.cuda(), 9, n)
        assert torch.equal(dev.cpu(), cpu), n
        ref_dev = reference.philox_normal(seeds.cuda(), 9, n)
        assert (ref_dev.cpu() - cpu).abs().max() < 4e-6


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_graph_capture_and_device_errors():
    gen = torch.Generator().manual_seed(4)
    kw = _to(inputs((4, 4, 32, 32), torch.float16, gen, noise="seeds"), "cuda")
    kw["coeffs"] = kw["coeffs"].float()
    want = call_fused(kw)
    static = dict(kw)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        call_fused(static)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call_fused(static)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])
    with pytest.raises(ValueError, match="is on cpu but sample is on cuda"):
        update.sampler_update(kw["x"], kw["model_output"].cpu(), kw["coeffs"], backend="fused")
    with pytest.raises(RuntimeError, match="coeffs is on cpu"):
        torch.ops.samplers.sampler_update(kw["x"], kw["x"], kw["coeffs"].cpu(), None, None, None, 0, None, None, True)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_opcheck():
    for case in _opcheck_cases():
        case = tuple(v.cuda() if isinstance(v, torch.Tensor) else v for v in case)
        torch.library.opcheck(torch.ops.samplers.sampler_update.default, case)
    torch.library.opcheck(torch.ops.samplers.philox_normal.default, (batch_seeds(3, 4, device="cuda"), 5, 37))
