"""Every built-in scheduler, run end to end with ``backend="fused"`` and ``backend="torch"``.

``test_ops_update.py`` checks one update at a time against the reference; this checks whole
sampling loops the way a user runs them: the scheduler's plan rows, its history tensors
(multistep / second-order calls), data-dependent coefficients (dynamic thresholding, Langevin
step sizes), classifier-free guidance and in-op Philox noise from per-sample ``seeds``, in
float32, float16 and bfloat16, contiguous and not.

The model is the exact Gaussian denoiser from ``conftest`` (a smooth, deterministic function of
``x`` and ``t``), so both runs see the same model and differ only through the update op.
Without noise the two backends agree bit for bit; with in-op noise the kernels' own
log/sin/cos differ from torch's by a few float32 ulp, and a half-precision output may round
one ulp the other way. The tolerances below are what that allows over a 6-step run (measured:
see ``TOLERANCE``), not a loose "close enough".
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

import samplers
from samplers.ops import _build, update
from samplers.ops.reference import COEFF, NUM_COEFFS, batch_seeds
from samplers.registry import registry

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
STEPS = 6
SHAPES = ((3, 4, 5, 7), (2, 1, 3, 5))

# Largest |fused - torch| over a run, in eps of the dtype at the tensors' scale (see worst_ulps).
# Measured over every case in this file (CPU, x86-64): float32 up to 15 eps (1.8e-6 relative;
# predictor_corrector, whose data-dependent corrector step carries the in-op noise difference
# along; ~5 eps for the others); float16 up to 0.14 eps; bfloat16 0 (the float32 noise
# difference never moves a bfloat16 rounding here). Allowed: 32 eps (3.8e-6) for float32,
# 2 eps (a rounding flip either way) for the half types.
TOLERANCE = {torch.float32: 32, torch.float16: 2, torch.bfloat16: 2}


def _can_build() -> bool:
    try:
        from torch.utils.cpp_extension import is_ninja_available
    except ImportError:
        return False
    return (shutil.which("g++") is not None or shutil.which("c++") is not None) and is_ninja_available()


def _fused_available() -> bool:
    return update._ops_loaded()


@pytest.fixture(scope="module")
def fused_op():
    """Skip (with the build status) when the compiled CPU extension is not here; fail when it should be."""
    if not _fused_available():
        status = _build.BUILD_STATUS.get(update.EXTENSION)
        if _can_build():
            pytest.fail(f"a compiler and ninja are here but the extension did not load: {status}")
        pytest.skip(f"no compiled extension: {status}")
    return torch.ops.samplers.sampler_update


def builtin_schedulers() -> list[str]:
    """Registry names whose entry comes from this distribution (plugins are someone else's kernels)."""
    entries = registry().entries
    return [name for name in samplers.available() if entries[name].source.distribution == "samplers"]


BUILTINS = builtin_schedulers()


def prediction_types(name: str) -> tuple[str, ...]:
    """The outputs a model trained on the scheduler's default schedule has: on a flow schedule the
    run starts at alpha=0, where an epsilon output cannot be inverted (and is refused)."""
    cls = registry().scheduler_class(name)
    on_flow = samplers.get(name).config["schedule"] == "flow"
    wanted = ("flow", "v_prediction") if on_flow else ("epsilon", "v_prediction")
    return tuple(p for p in wanted if p in cls.prediction_types)


CASES = [(name, pred) for name in BUILTINS for pred in prediction_types(name)]


def make(name: str, **config) -> samplers.protocol.Scheduler:
    s = samplers.get(name, **config)
    s.set_timesteps(STEPS)
    return s


def data(shape, dtype):
    """Gaussian data (mu, std over one sample), a start sample and per-sample seeds."""
    gen = torch.Generator().manual_seed(sum(shape) * 7 + DTYPES.index(dtype))
    mu = 0.5 * torch.randn(shape[1:], generator=gen, dtype=torch.float64)
    std = 0.3 + torch.rand(shape[1:], generator=gen, dtype=torch.float64)
    start = torch.randn(shape, generator=gen)
    seeds = batch_seeds(1234 + shape[0], shape[0])
    return mu, std, start, seeds


def run(scheduler, start, mu, std, oracle, backend, seeds, *, dtype, layout=None, guidance=None):
    """The whole plan from ``start``: per call ``(prev_sample, x0, input scale)``, outputs as float32 contiguous."""
    relayout = layout or (lambda t: t)
    x = relayout((start * scheduler.init_noise_sigma).to(dtype))
    trajectory = []
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        out = relayout(oracle.output(scheduler, i, x_in, mu, std))
        kw = {}
        if guidance is not None:
            # unconditional branch: the same oracle for data centred at 0
            kw = dict(
                uncond=relayout(oracle.output(scheduler, i, x_in, torch.zeros_like(mu), std)), guidance_scale=guidance
            )
        step = scheduler.step(out, t, x, seeds=seeds, backend=backend, **kw)
        scale = max(1.0, float(x.float().abs().max()))
        x = step.prev_sample
        assert x.dtype == dtype
        trajectory.append((x.float().contiguous(), step.pred_original_sample.float().contiguous(), scale))
    return trajectory


def worst_ulps(got, want, dtype) -> float:
    """The largest fused-vs-torch difference over a run, in eps of ``dtype`` at the tensors' scale.

    ``prev_sample`` is measured against ``max(1, max |prev|)``: relative to the tensor's scale,
    not to each element, since the noise difference is absolute (~4e-6 times the noise
    coefficient, which grows with the sample), so an element near zero may carry as large an
    absolute difference as a big one. ``x0 = p x + q out`` is measured against the scale of the
    call's input sample as well: at high noise ``x0`` is a small difference of large terms
    (|p| = 1/alpha), so an input one ulp apart moves it by an ulp of the *input*, not of ``x0``.
    """
    eps = torch.finfo(dtype).eps
    worst = 0.0
    for (g_prev, g_x0, _), (w_prev, w_x0, in_scale) in zip(got, want, strict=True):
        assert torch.isfinite(w_prev).all() and torch.isfinite(w_x0).all()
        prev_err = float((g_prev - w_prev).abs().max()) / max(1.0, float(w_prev.abs().max()))
        x0_err = float((g_x0 - w_x0).abs().max()) / max(in_scale, float(w_x0.abs().max()))
        worst = max(worst, prev_err / eps, x0_err / eps)
    return worst


def assert_same_run(got, want, dtype, what=""):
    ulps = worst_ulps(got, want, dtype)
    assert ulps <= TOLERANCE[dtype], (
        f"{what}: fused and torch runs differ by {ulps:.2f} eps of {dtype} (allowed {TOLERANCE[dtype]})"
    )


def compare(name, pred, shape, dtype, oracle, config=None, layout=None, guidance=None):
    mu, std, start, seeds = data(shape, dtype)
    config = {"prediction_type": pred, **(config or {})}
    want = run(make(name, **config), start, mu, std, oracle, "torch", seeds, dtype=dtype, guidance=guidance)
    got = run(
        make(name, **config), start, mu, std, oracle, "fused", seeds, dtype=dtype, layout=layout, guidance=guidance
    )
    assert len(got) == len(want) >= STEPS
    assert_same_run(got, want, dtype, f"{name} {pred} {shape} {config} guidance={guidance}")
    return got, want


# ---- every built-in scheduler x dtype x prediction type ------------------------------------------


def test_builtins_are_found():
    assert {"ddim", "ddpm", "euler"} <= set(BUILTINS)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,pred", CASES)
def test_fused_run_matches_torch_run(fused_op, one_torch_thread, oracle, name, pred, dtype):
    for shape in SHAPES:
        compare(name, pred, shape, dtype, oracle)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", BUILTINS)
def test_fused_run_with_classifier_free_guidance(fused_op, one_torch_thread, oracle, name, dtype):
    compare(name, prediction_types(name)[0], SHAPES[0], dtype, oracle, guidance=3.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "name,config",
    [
        ("ddpm", dict(clip_sample=True, clip_sample_range=0.5)),
        ("ddim", dict(clip_sample=True, clip_sample_range=0.5, eta=1.0)),
        ("ddim", dict(clip_sample=True, clip_sample_range=0.5, use_clipped_model_output=True)),
        ("ddpm", dict(clip_sample=False, thresholding=True, dynamic_thresholding_ratio=0.8, sample_max_value=1.5)),
        (
            "ddim",
            dict(clip_sample=False, thresholding=True, dynamic_thresholding_ratio=0.8, sample_max_value=1.5, eta=0.5),
        ),
    ],
    ids=["ddpm-clip", "ddim-clip-eta1", "ddim-clip-clipped-output", "ddpm-threshold", "ddim-threshold-eta05"],
)
def test_fused_run_with_clipping_and_thresholding(fused_op, one_torch_thread, oracle, name, config, dtype):
    got, _ = compare(name, "epsilon", SHAPES[0], dtype, oracle, config=config, guidance=2.0)
    limit = config.get("clip_sample_range") if config.get("clip_sample") else config["sample_max_value"]
    # the clamp really bit: x0 reached its limit (before dynamic thresholding's division)
    assert max(float(x0.abs().max()) for _, x0, _ in got) <= limit * (1 + 1e-2)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _strided(t: torch.Tensor) -> torch.Tensor:
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", [_channels_last, _strided], ids=["channels_last", "strided"])
@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral", "heun"])
def test_fused_run_on_other_layouts(fused_op, one_torch_thread, oracle, name, layout, dtype):
    """A channels-last or non-contiguous sample (and model output) gives the contiguous torch run."""
    got, _ = compare(name, "epsilon", SHAPES[0], dtype, oracle, layout=layout, guidance=1.5)
    assert all(math.isfinite(float(x.abs().max())) for x, _, _ in got)


# ---- non-finite coefficients are an error on both backends --------------------------------------


def _coeffs() -> torch.Tensor:
    c = torch.zeros(1, NUM_COEFFS)
    c[0, COEFF["p"]] = 1.0
    c[0, COEFF["lim"]] = math.inf
    c[0, COEFF["div"]] = 1.0
    c[0, COEFF["b"]] = 1.0
    c[0, COEFF["w"]] = 1.0
    return c


def _backends():
    return ["torch", "fused"] if _fused_available() else ["torch"]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize(
    "column,value,match",
    [
        ("q", math.nan, "coefficient 'q' of row 0 is nan"),
        ("w", math.inf, "coefficient 'w' of row 0 is inf"),
        ("c", -math.inf, "coefficient 'c' of row 0 is -inf"),
        ("lim", math.nan, "coefficient 'lim' of row 0 is nan"),
        ("div", 0.0, "coefficient 'div' of row 0 is 0; div must be finite and nonzero"),
    ],
)
def test_non_finite_coefficients_raise_on_both_backends(backend, column, value, match):
    x = torch.randn(2, 3)
    c = _coeffs()
    prev, _ = update.sampler_update(x, x, c, backend=backend)  # finite: fine, and lim=inf means no clamp
    torch.testing.assert_close(prev, x)
    bad = c.clone()
    bad[0, COEFF[column]] = value
    with pytest.raises(RuntimeError, match=match):
        update.sampler_update(x, x, bad, backend=backend)
    per_sample = c.expand(2, -1).clone()
    per_sample[1, COEFF[column]] = value
    with pytest.raises(RuntimeError, match=match.replace("row 0", "row 1")):
        update.sampler_update(x, x, per_sample, backend=backend)


def test_non_finite_coefficients_raise_for_float64_samples():
    """float64 has no kernel, so even backend='auto' runs the torch path: it checks too."""
    x = torch.randn(2, 3, dtype=torch.float64)
    bad = _coeffs().double()
    bad[0, COEFF["a"]] = math.nan
    with pytest.raises(RuntimeError, match="coefficient 'a' of row 0 is nan"):
        update.sampler_update(x, x, bad, backend="auto")
    big = _coeffs().double()
    big[0, COEFF["a"]] = 1e300  # finite in float64, inf in the float32 math both backends use
    with pytest.raises(RuntimeError, match="coefficient 'a' of row 0 is inf"):
        update.sampler_update(x, x, big, backend="torch")


@pytest.mark.parametrize(
    "backend,dtype",
    [("torch", torch.float32), ("torch", torch.float64), ("auto", torch.float64)]
    + ([("fused", torch.float32)] if _fused_available() else []),
)
def test_nan_guidance_scale_is_an_error_not_silent_nan(backend, dtype):
    """Through a scheduler: refused up front (step's own check) or by the op, never a NaN sample."""
    s = make("ddim", prediction_type="epsilon")
    x = torch.randn(2, 3, 4, dtype=dtype)
    out = torch.randn(2, 3, 4, dtype=dtype)
    with pytest.raises(
        (ValueError, RuntimeError),
        match="guidance_scale must be finite|guidance_scale must be a finite|coefficient 'w' of row 0 is nan",
    ):
        s.step(out, s.timesteps[0], x, uncond=torch.zeros_like(out), guidance_scale=math.nan, backend=backend)
    # the op itself, as a scheduler step would call it with such a row
    coeffs = s.plan.rows[:1].to(torch.float32).clone()
    coeffs[0, COEFF["w"]] = math.nan
    with pytest.raises(RuntimeError, match="coefficient 'w' of row 0 is nan; coefficients must be finite"):
        update.sampler_update(x, out, coeffs, uncond=torch.zeros_like(out), backend=backend)
