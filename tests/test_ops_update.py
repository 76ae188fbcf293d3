"""The fused sampler-update op (C++ CPU kernel, CUDA kernel) against the reference contract.

The kernels evaluate the reference's float32 expression in the same order with explicitly
rounded operations, so they must agree with ``samplers.ops.reference`` bit for bit in every
storage dtype, for every noise source. In-op noise (Philox and Brownian) is drawn with the
kernels' own log / sin / cos, a few float32 ulp from torch's: the comparisons run the reference
with an exact replica of the kernels' normals (``test_ops_noise.kernel_normals``), so that every
other operation is compared bit for bit; ``test_in_op_noise_is_close_to_the_true_reference``
bounds the difference to the reference's own normals.
"""

from __future__ import annotations

import math
import shutil
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ops_noise import kernel_normals

from samplers.ops import _build, reference, update
from samplers.ops.reference import COEFF, COEFF_NAMES, MAX_HISTORY, NUM_COEFFS, batch_seeds

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NOISES = ("none", "tensor", "philox", "brownian")
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
    """Random rows; stream an integer below 2^24 and Brownian times in [0, 1], as the protocol writes them."""
    c = torch.randn(rows, NUM_COEFFS, generator=gen, dtype=torch.float64)
    c[:, COEFF["lim"]] = torch.rand(rows, generator=gen, dtype=torch.float64) + 0.5 if clamp else math.inf
    c[:, COEFF["div"]] = torch.rand(rows, generator=gen, dtype=torch.float64) + 0.5
    c[:, COEFF["stream"]] = torch.randint(0, reference.MAX_STREAM, (rows,), generator=gen).double()
    c[:, COEFF["bt0"]] = torch.rand(rows, generator=gen, dtype=torch.float64)
    c[:, COEFF["bt1"]] = torch.rand(rows, generator=gen, dtype=torch.float64)
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


def relaid(kw: dict, kind: str) -> dict:
    """kw with every sample-shaped tensor (history included) in layout `kind`."""

    def one(v):
        return layout(v, kind) if isinstance(v, torch.Tensor) and v.dim() == 4 else v

    return {k: [one(h) for h in v] if k == "history" else one(v) for k, v in kw.items()}


def inputs(shape, dtype, gen, uncond=False, noise="none", history=0, per_sample=True, clamp=True):
    """Arguments of one update; noise is one of NOISES ("philox" and "brownian" draw in the op)."""
    b = shape[0]

    def rnd():
        return torch.randn(shape, generator=gen).to(dtype)

    return dict(
        x=rnd(),
        model_output=rnd(),
        coeffs=make_coeffs(b if per_sample else 1, gen, clamp),
        uncond=rnd() if uncond else None,
        noise=rnd() if noise == "tensor" else None,
        seeds=batch_seeds(int(torch.randint(0, 2**62, (1,), generator=gen)), b)
        if noise in ("philox", "brownian")
        else None,
        noise_stream=int(torch.randint(0, 2**40, (1,), generator=gen)),
        history=[rnd() for _ in range(history)],
        brownian=noise == "brownian",
    )


def call_ref(kw, write_x0=True, exact_noise=True):
    """The reference; with exact_noise, drawing the kernels' normals (see the module docstring)."""
    args = (kw["x"], kw["model_output"], kw["coeffs"], kw["uncond"], kw["noise"], kw["seeds"], kw["noise_stream"])
    if not exact_noise:
        return reference.sampler_update(*args, kw["history"], write_x0, kw["brownian"])
    with kernel_normals():
        return reference.sampler_update(*args, kw["history"], write_x0, kw["brownian"])


def call_fused(kw, write_x0=True, backend="fused"):
    return update.sampler_update(**kw, write_x0=write_x0, backend=backend)


def assert_matches_reference(got, want):
    """Bit for bit (NaN where the reference has NaN), in the reference's dtype and shape."""
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


def noise_only_row(**cols: float) -> torch.Tensor:
    """A row with prev = c * noise (+ the given columns), no clamp."""
    c = torch.zeros(1, NUM_COEFFS)
    c[0, COEFF["lim"]] = math.inf
    c[0, COEFF["div"]] = 1.0
    c[0, COEFF["c"]] = 1.0
    for name, value in cols.items():
        c[0, COEFF[name]] = value
    return c


# ---- one list of columns, one noise limit ----------------------------------------------------------


def test_the_kernels_read_the_reference_columns():
    """The C++ column list (SAMPLERS_COEFF_COLUMNS) is the reference's, in order."""
    assert tuple(torch.ops.samplers.update_coeff_names().split()) == COEFF_NAMES


def test_the_kernels_noise_limit_is_the_references():
    """The C++ per-sample limit of in-op noise (named once, kMaxNoiseNumelPerSample) is the Python one.

    A stride-0 view makes a tensor of 2^34 + 1 elements per sample that takes 4 bytes.
    """
    limit = reference.MAX_NOISE_NUMEL_PER_SAMPLE
    x = torch.zeros(1, 1).expand(1, limit + 1)
    c = noise_only_row().expand(1, -1)
    with pytest.raises(RuntimeError, match=f"at most {limit} "):
        torch.ops.samplers.sampler_update(x, x, c, None, None, batch_seeds(0, 1), 0, [], True, False)
    with pytest.raises(RuntimeError, match=f"at most {limit} "):
        torch.ops.samplers.brownian_normal(
            batch_seeds(0, 1), torch.zeros(1, dtype=torch.int64), c[0, :1], c[0, :1], limit + 1
        )


# ---- agreement with the reference ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["contiguous", "channels_last", "strided", "transposed"])
@pytest.mark.parametrize("noise", NOISES)
def test_matches_reference_across_layouts(dtype, kind, noise):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{dtype}{kind}{noise}".encode()))
    for uncond, history, per_sample, clamp in [
        (False, 0, False, False),
        (True, 2, True, True),
        (True, 1, False, True),
        (False, 4, True, True),
    ]:
        kw = inputs((3, 5, 6, 7), dtype, gen, uncond, noise, history, per_sample, clamp)
        want = call_ref(kw)
        laid = relaid(kw, kind)
        got = call_fused(laid)
        assert_matches_reference(got, want)
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
    noise=st.sampled_from(NOISES),
    history=st.integers(0, MAX_HISTORY),
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
    assert_matches_reference(got, want)


@pytest.mark.parametrize("shape", [(1, 1), (1,), (2, 1), (3, 5), (2, 7, 3), (5, 4, 3, 3), (1, 4099), (2, 8195)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_odd_sizes(shape, dtype):
    """1 element, sizes that are not a multiple of 4 (a Philox group) or of the 16-byte pack, > one chunk."""
    gen = torch.Generator().manual_seed(len(shape) * 1000 + shape[-1])
    for noise in NOISES:
        kw = inputs(shape, dtype, gen, uncond=True, noise=noise, history=3)
        assert_matches_reference(call_fused(kw), call_ref(kw))


@pytest.mark.parametrize("count", range(MAX_HISTORY + 1))
def test_each_history_tensor_is_weighed_by_its_own_column(count):
    gen = torch.Generator().manual_seed(count)
    kw = inputs((2, 3, 9), torch.float32, gen, uncond=True, noise="philox", history=count, per_sample=True)
    assert_matches_reference(call_fused(kw), call_ref(kw))
    for j in range(count):
        c = noise_only_row(c=0.0, **{f"h{j}": 1.0})
        prev, _ = update.sampler_update(kw["x"], kw["model_output"], c, history=kw["history"], backend="fused")
        assert torch.equal(prev, kw["history"][j]), j
    # columns past the history given weigh nothing: 1e30 in h3 with fewer tensors changes no bit
    c = noise_only_row(c=0.0, a=1.0, h3=1e30)
    if count < MAX_HISTORY:
        prev, _ = update.sampler_update(kw["x"], kw["model_output"], c, history=kw["history"], backend="fused")
        assert torch.equal(prev, kw["x"])


def test_u_weighs_the_unconditional_output_or_the_model_output():
    gen = torch.Generator().manual_seed(2)
    kw = inputs((2, 3, 17), torch.float32, gen, uncond=True)
    c = noise_only_row(c=0.0, u=1.0, w=7.5)
    prev, _ = update.sampler_update(kw["x"], kw["model_output"], c, uncond=kw["uncond"], backend="fused")
    assert torch.equal(prev, kw["uncond"])  # the raw unconditional output, not the guided one
    prev, _ = update.sampler_update(kw["x"], kw["model_output"], c, backend="fused")
    assert torch.equal(prev, kw["model_output"])
    for uncond in (kw["uncond"], None):  # and with every other column set, the reference's sum
        kw2 = dict(kw, uncond=uncond)
        assert_matches_reference(call_fused(kw2), call_ref(kw2))


@pytest.mark.parametrize("brownian", [False, True])
def test_per_sample_rows_key_noise_as_the_scalar_path(brownian):
    """Sample b's noise is the one a single-sample call with its own row (stream, bt0, bt1) draws."""
    gen = torch.Generator().manual_seed(31)
    x = torch.randn(4, 3, 5, 5, generator=gen)
    rows = noise_only_row().repeat(4, 1)
    rows[:, COEFF["stream"]] = torch.tensor([0.0, 1.0, 1.0, 2**24 - 1])
    rows[:, COEFF["bt0"]] = torch.tensor([0.1, 0.1, 0.5, 0.0])
    rows[:, COEFF["bt1"]] = torch.tensor([0.6, 0.3, 0.5, 1.0])
    seeds = batch_seeds(77, 4)
    kw = dict(noise_stream=40, brownian=brownian, backend="fused")
    prev, _ = update.sampler_update(x, x, rows, seeds=seeds, **kw)
    numel = x[0].numel()
    for b in range(4):
        single, _ = update.sampler_update(x[b : b + 1], x[b : b + 1], rows[b : b + 1], seeds=seeds[b : b + 1], **kw)
        assert torch.equal(prev[b], single[0]), b
        stream = torch.tensor([40 + int(rows[b, COEFF["stream"]])])
        if brownian:
            t0, t1 = rows[b : b + 1, COEFF["bt0"]], rows[b : b + 1, COEFF["bt1"]]
            z = torch.ops.samplers.brownian_normal(seeds[b : b + 1], stream, t0, t1, numel)
        else:
            z = torch.ops.samplers.philox_normal(seeds[b : b + 1], int(stream), numel)
        assert torch.equal(prev[b].flatten(), z[0]), b
    assert (prev[2] == 0).all() == brownian  # bt0 == bt1: no Brownian motion (Philox ignores the times)
    assert not torch.equal(prev[0], prev[1])  # other stream, or other interval


def test_mixed_layouts_and_float32_coeffs():
    gen = torch.Generator().manual_seed(7)
    for noise in ("philox", "brownian"):
        kw = inputs((2, 3, 4, 5), torch.float32, gen, uncond=True, noise=noise, history=3)
        want = call_ref(kw)
        kw2 = dict(kw)
        kw2["x"] = layout(kw["x"], "channels_last")
        kw2["uncond"] = layout(kw["uncond"], "strided")
        kw2["history"] = [kw["history"][0], layout(kw["history"][1], "transposed"), kw["history"][2]]
        kw2["coeffs"] = kw["coeffs"].float()
        assert_matches_reference(call_fused(kw2), want)


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
    for noise in ("philox", "brownian"):
        kw = inputs((2, 4, 6, 5), torch.float32, gen, noise=noise, history=1)
        base = call_fused(kw)
        for kind in ("channels_last", "strided", "transposed"):
            got = call_fused(relaid(kw, kind))
            assert torch.equal(got[0], base[0]), kind
            assert torch.equal(got[1], base[1]), kind


def test_batch_split_gives_the_same_result():
    gen = torch.Generator().manual_seed(11)
    for noise in ("philox", "brownian"):
        kw = inputs((6, 3, 5, 5), torch.float32, gen, uncond=True, noise=noise, history=2, per_sample=True)
        kw["seeds"] = batch_seeds(1234, 6)
        whole = call_fused(kw)
        pieces = []
        for lo, hi in [(0, 1), (1, 4), (4, 6)]:
            part = {k: (v[lo:hi] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
            part["history"] = [h[lo:hi] for h in kw["history"]]
            part["seeds"] = batch_seeds(1234, hi - lo, sample_offset=lo)
            pieces.append(call_fused(part))
        assert torch.equal(whole[0], torch.cat([p[0] for p in pieces]))
        assert torch.equal(whole[1], torch.cat([p[1] for p in pieces]))


def test_in_op_noise_equals_the_noise_ops():
    """With a = b = e = u = 0 and c = 1, prev is the in-op noise itself."""
    seeds = batch_seeds(99, 3)
    x = torch.randn(3, 2, 11, 13)
    c = noise_only_row(stream=5.0, bt0=0.25, bt1=0.75)
    numel = x[0].numel()
    prev, _ = update.sampler_update(x, x, c, seeds=seeds, noise_stream=17, backend="fused")
    assert torch.equal(prev, torch.ops.samplers.philox_normal(seeds, 22, numel).view_as(x))
    prev, _ = update.sampler_update(x, x, c, seeds=seeds, noise_stream=17, brownian=True, backend="fused")
    path, t0, t1 = torch.full((3,), 22), torch.full((3,), 0.25), torch.full((3,), 0.75)
    assert torch.equal(prev, torch.ops.samplers.brownian_normal(seeds, path, t0, t1, numel).view_as(x))


@pytest.mark.parametrize("noise", ["philox", "brownian"])
def test_in_op_noise_is_close_to_the_true_reference(noise):
    """Against the reference's own normals (torch's log / sin / cos): a few ulp of noise times |c|."""
    gen = torch.Generator().manual_seed(13)
    kw = inputs((2, 4, 6, 6), torch.float32, gen, uncond=True, noise=noise, history=2)
    got = call_fused(kw)
    want = call_ref(kw, exact_noise=False)
    assert torch.equal(got[1], want[1])  # x0 never involves noise
    c = kw["coeffs"][:, COEFF["c"]].abs().view(-1, 1, 1, 1).float()
    bound = 4e-6 * c
    if noise == "brownian":  # W moves by a few ulp too, divided by sqrt(|bt1 - bt0|)
        span = (kw["coeffs"][:, COEFF["bt1"]] - kw["coeffs"][:, COEFF["bt0"]]).abs().float().view(-1, 1, 1, 1)
        bound = 3e-5 * c / span.sqrt()
    assert ((got[0] - want[0]).abs() <= bound + 1e-6 * want[0].abs()).all()
    assert not torch.equal(got[0], want[0])


# ---- dispatch -----------------------------------------------------------------------------------


def test_auto_uses_the_fused_op_and_falls_back_for_other_dtypes(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    kw = inputs((2, 9), torch.float32, gen, noise="philox")
    fused = call_fused(kw, backend="fused")
    assert torch.equal(call_fused(kw, backend="auto")[0], fused[0])
    # the reference's noise differs in the last bits, so "torch" really is the other path
    assert not torch.equal(call_fused(kw, backend="torch")[0], fused[0])
    kw64 = inputs((2, 9), torch.float64, gen, noise="philox")
    auto64 = call_fused(kw64, backend="auto")
    torch.testing.assert_close(auto64[0], call_ref(kw64, exact_noise=False)[0], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="dtype torch.float64 is not supported"):
        call_fused(kw64, backend="fused")
    # an extension that failed to build: fused says why, auto quietly uses the reference
    monkeypatch.setattr(update, "_ops_loaded", lambda: False)
    monkeypatch.setitem(
        _build.BUILD_STATUS, update.EXTENSION, _build.BuildStatus("update", "torch", "no compiler here")
    )
    with pytest.raises(RuntimeError, match="no compiler here"):
        call_fused(kw, backend="fused")
    torch.testing.assert_close(call_fused(kw, backend="auto")[0], call_ref(kw, exact_noise=False)[0], rtol=0, atol=0)


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
    with pytest.raises(ValueError, match=rf"coeffs must have shape \[1, {NUM_COEFFS}\] or \[batch=2, {NUM_COEFFS}\]"):
        update.sampler_update(x, x, torch.zeros(3, NUM_COEFFS), backend="fused")
    with pytest.raises(ValueError, match="coeffs must have shape"):
        update.sampler_update(x, x, torch.zeros(1, NUM_COEFFS - 1), backend="fused")
    with pytest.raises(TypeError, match="coeffs must be a floating torch.Tensor"):
        update.sampler_update(x, x, torch.zeros(1, NUM_COEFFS, dtype=torch.int64), backend="fused")
    with pytest.raises(ValueError, match="seeds must be int64"):
        update.sampler_update(x, x, c, seeds=torch.zeros(2, dtype=torch.int32), backend="fused")
    with pytest.raises(RuntimeError, match="not supported by the fused op"):
        update.sampler_update(x.double(), x.double(), c, backend="fused")
    with pytest.raises(ValueError, match="backend must be"):
        update.sampler_update(x, x, c, backend="cuda")
    with pytest.raises(ValueError, match=f"history must be a list of at most {MAX_HISTORY} tensors"):
        update.sampler_update(x, x, c, history=[x] * (MAX_HISTORY + 1), backend="fused")
    with pytest.raises(TypeError, match=r"history\[2\] has dtype torch.float16"):
        update.sampler_update(x, x, c, history=[x, x, x.half()], backend="fused")
    with pytest.raises(ValueError, match=r"history\[1\] has shape \(2, 3, 5\)"):
        update.sampler_update(x, x, c, history=[x, torch.randn(2, 3, 5)], backend="fused")


def test_op_checks_arguments_itself():
    op = torch.ops.samplers.sampler_update
    x = torch.randn(2, 3, 4)
    c = make_coeffs(1, torch.Generator().manual_seed(0)).float()
    with pytest.raises(RuntimeError, match="model_output has shape"):
        op(x, x[:, :2], c, None, None, None, 0, [], True, False)
    with pytest.raises(RuntimeError, match=r"history\[1\] has dtype"):
        op(x, x, c, None, None, None, 0, [x, x.half()], True, False)
    with pytest.raises(RuntimeError, match=r"history\[3\] has shape"):
        op(x, x, c, None, None, None, 0, [x, x, x, x[:1]], True, False)
    with pytest.raises(RuntimeError, match=r"history has 5 tensors; at most 4 \(weighed by columns h0 .. h3\)"):
        op(x, x, c, None, None, None, 0, [x] * 5, True, False)
    with pytest.raises(RuntimeError, match="float16, bfloat16 and float32"):
        op(x.double(), x.double(), c, None, None, None, 0, [], True, False)
    with pytest.raises(RuntimeError, match="coeffs must have shape"):
        op(x, x, c[:, :5], None, None, None, 0, [], True, False)
    with pytest.raises(RuntimeError, match="seeds must be int64 of shape"):
        op(x, x, c, None, None, torch.zeros(3, dtype=torch.int64), 0, [], True, True)
    for name, value, why in [
        ("q", float("nan"), "coefficients must be finite"),
        ("div", 0.0, "div must be finite and nonzero"),
        ("lim", float("nan"), "lim must not be NaN"),
        ("bt1", float("inf"), "coefficients must be finite"),
        ("u", float("-inf"), "coefficients must be finite"),
    ]:
        bad = c.clone()
        bad[0, COEFF[name]] = value
        with pytest.raises(RuntimeError, match=f"coefficient '{name}' of row 0 is .*; {why}"):
            op(x, x, bad, None, None, None, 0, [], True, False)
    # the Meta kernel refuses too
    xm = x.to("meta")
    with pytest.raises(RuntimeError, match="history has 5 tensors"):
        op(xm, xm, c.to("meta"), None, None, None, 0, [xm] * 5, True, False)
    with pytest.raises(RuntimeError, match=r"history\[0\] must match sample"):
        op(xm, xm, c.to("meta"), None, None, None, 0, [xm.half()], True, False)


# ---- torch.library / torch.compile --------------------------------------------------------------


def _opcheck_cases():
    gen = torch.Generator().manual_seed(21)
    cases = []
    for dtype, kind, uncond, noise, history, write_x0 in [
        (torch.float32, "contiguous", False, "none", 0, True),
        (torch.float32, "channels_last", True, "philox", 2, True),
        (torch.float16, "strided", True, "tensor", 1, False),
        (torch.bfloat16, "contiguous", False, "philox", 0, True),
        (torch.float32, "transposed", True, "brownian", 4, True),
        (torch.float16, "contiguous", False, "brownian", 3, False),
    ]:
        kw = relaid(inputs((2, 3, 4, 5), dtype, gen, uncond, noise, history), kind)
        cases.append(
            (
                kw["x"],
                kw["model_output"],
                kw["coeffs"].float(),
                kw["uncond"],
                kw["noise"],
                kw["seeds"],
                kw["noise_stream"],
                kw["history"],
                write_x0,
                kw["brownian"],
            )
        )
    return cases


@pytest.mark.parametrize("case", range(6))
def test_opcheck_sampler_update(case):
    torch.library.opcheck(torch.ops.samplers.sampler_update.default, _opcheck_cases()[case])


def test_torch_compile_fullgraph_dynamic():
    gen = torch.Generator().manual_seed(8)

    def step(x, out, c, seeds, h0, h1, h2):
        prev, x0 = torch.ops.samplers.sampler_update(x, out, c, None, None, seeds, 4, [h0, h1, h2], True, True)
        return prev * 2 + x0

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for shape in [(2, 3, 8, 8), (3, 3, 5, 7)]:
        kw = inputs(shape, torch.float32, gen, noise="brownian", history=3)
        args = (kw["x"], kw["model_output"], kw["coeffs"].float(), kw["seeds"], *kw["history"])
        torch.testing.assert_close(compiled(*args), step(*args), rtol=1e-6, atol=1e-6)


# ---- CUDA ---------------------------------------------------------------------------------------


def _to(kw, device):
    def one(v):
        return v.to(device) if isinstance(v, torch.Tensor) else v

    return {k: [one(h) for h in v] if k == "history" else one(v) for k, v in kw.items()}


def _require_cuda_kernel():
    if not torch._C._dispatch_has_kernel_for_dispatch_key("samplers::sampler_update", "CUDA"):
        pytest.fail(f"CUDA is here but the extension has no CUDA kernel: {_build.BUILD_STATUS.get(update.EXTENSION)}")


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (3, 5, 7), (1, 1), (4, 8195)])
def test_cuda_matches_cpu_bitwise_and_reference(dtype, noise, shape):
    """Same explicitly rounded math and the same noise functions: CUDA == CPU bit for bit."""
    _require_cuda_kernel()
    gen = torch.Generator().manual_seed(sum(shape))
    for uncond, history, per_sample, clamp in [
        (False, 0, False, False),
        (True, 2, True, True),
        (True, 1, False, True),
        (False, 3, True, True),
        (True, 4, True, False),
    ]:
        for write_x0 in (True, False):
            kw = inputs(shape, dtype, gen, uncond, noise, history, per_sample, clamp)
            cpu = call_fused(kw, write_x0)
            dev = call_fused(_to(kw, "cuda"), write_x0)
            assert dev[0].is_cuda
            assert torch.equal(dev[0].cpu(), cpu[0]), (uncond, history, write_x0)
            assert torch.equal(dev[1].cpu(), cpu[1])
            assert_matches_reference([t.cpu() for t in dev], call_ref(kw, write_x0))


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("noise", ["philox", "brownian"])
def test_cuda_misaligned_layouts_and_large_batch(dtype, noise):
    _require_cuda_kernel()
    gen = torch.Generator().manual_seed(1)
    kw = inputs((3, 4, 8, 8), dtype, gen, uncond=True, noise=noise, history=4)
    cpu = call_fused(kw)
    dev = _to(kw, "cuda")
    # misaligned: a view starting one element into a buffer (forces the scalar kernel)
    for key in ("x", "history"):
        src = dev["x"] if key == "x" else dev["history"][3]
        buf = torch.empty(src.numel() + 1, dtype=dtype, device="cuda")
        buf[1:] = src.flatten()
        moved = dict(dev)
        if key == "x":
            moved["x"] = buf[1:].view_as(src)
        else:
            moved["history"] = dev["history"][:3] + [buf[1:].view_as(src)]
        got = call_fused(moved)
        assert torch.equal(got[0].cpu(), cpu[0]) and torch.equal(got[1].cpu(), cpu[1]), key
    for kind in ("channels_last", "strided", "transposed"):
        got = call_fused(relaid(dev, kind))
        assert torch.equal(got[0].cpu(), cpu[0]), kind
    # more samples than one grid row holds (grid-stride over the batch axis), each with its own row
    big = inputs((70000, 3), dtype, gen, noise=noise, per_sample=True)
    torch.testing.assert_close(call_fused(_to(big, "cuda"))[0].cpu(), call_fused(big)[0], rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_noise_equals_cpu_noise():
    seeds = batch_seeds(2024, 5)
    for n in (1, 3, 4, 1000, 65537):
        cpu = torch.ops.samplers.philox_normal(seeds, 9, n)
        dev = torch.ops.samplers.philox_normal(seeds.cuda(), 9, n)
        assert torch.equal(dev.cpu(), cpu), n
        with kernel_normals():
            assert torch.equal(reference.philox_normal(seeds.cuda(), 9, n).cpu(), cpu), n


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("noise", ["philox", "brownian"])
def test_cuda_graph_capture_and_device_errors(noise):
    gen = torch.Generator().manual_seed(4)
    kw = _to(inputs((4, 4, 32, 32), torch.float16, gen, noise=noise, history=2), "cuda")
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
        torch.ops.samplers.sampler_update(kw["x"], kw["x"], kw["coeffs"].cpu(), None, None, None, 0, [], True, False)
    with pytest.raises(RuntimeError, match=r"history\[1\] is on cpu"):
        torch.ops.samplers.sampler_update(
            kw["x"], kw["x"], kw["coeffs"], None, None, None, 0, [kw["x"], kw["x"].cpu()], True, False
        )


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_opcheck():
    for case in _opcheck_cases():
        case = tuple(
            [h.cuda() for h in v] if isinstance(v, list) else (v.cuda() if isinstance(v, torch.Tensor) else v)
            for v in case
        )
        torch.library.opcheck(torch.ops.samplers.sampler_update.default, case)
    torch.library.opcheck(torch.ops.samplers.philox_normal.default, (batch_seeds(3, 4, device="cuda"), 5, 37))
