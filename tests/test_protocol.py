"""The step() protocol on every built-in scheduler, and clear errors for bad input.

Runs are driven by the exact model of Gaussian data (conftest.py), so outputs are meaningful
numbers and every comparison below is between two computations of the same quantity.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import samplers
from samplers import ops, schedules
from samplers.ops.reference import COEFF
from samplers.protocol import SamplerState, StepOutput
from samplers.schedules import DiscreteVPSchedule

F64 = torch.float64
NAMES = samplers.available()
BUILTINS = (
    "ddim",
    "ddpm",
    "euler",
    "euler_ancestral",
    "flow_euler",
    "heun",
    "langevin",
    "posterior",
    "predictor_corrector",
)
MU, STD = torch.tensor(0.1, dtype=F64), torch.tensor(0.5, dtype=F64)
N = 5  # sampling steps used by most tests

# Schedulers whose every call is one first-order step (they take per-sample timesteps).
SINGLE_CALL = {
    "ddpm": {},
    "ddim": {"eta": 0.5},
    "euler": {},
    "euler_karras": {"use_karras_sigmas": True},
    "euler_ancestral": {},
    "flow_euler": {"shift": 3.0},  # SD3's shift: times are not whole numbers
    "posterior": {},
}
MULTI_CALL = ("heun", "langevin", "predictor_corrector")
TIMESTEP_CUSTOM = (
    "ddpm",
    "ddim",
    "posterior",
    "flow_euler",
    "euler",
    "euler_ancestral",
    "heun",
    "langevin",
    "predictor_corrector",
)
# Inversions run from data to noise: timesteps ascend, and each call reads its output at the previous level.
INVERSIONS = ("ddim_inverse", "dpmpp_2m_inverse")
# Every scheduler takes custom sigma-space levels (flow_euler: flow times, diffusers' FlowMatch convention).
SIGMA_CUSTOM = BUILTINS


def make(name: str, **config) -> samplers.Scheduler:
    registry_name = "euler" if name == "euler_karras" else name
    return samplers.get(registry_name, **config)


def start(s, shape=(4, 3), dtype=F64, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=F64) * s.init_noise_sigma).to(dtype)


def model_out(s, call: int, x: torch.Tensor, oracle) -> torch.Tensor:
    t = s.timesteps[call]
    return oracle.output(s, call, s.scale_model_input(x, t), MU, STD)


def calls_for(name: str, steps: int) -> int:
    two_call = dict.fromkeys(("dpm2", "dpm2_ancestral", "dpmpp_2s_ancestral", "flow_heun", "dpmpp_sde"), 2 * steps - 1)
    counts = {"heun": 2 * steps - 1, "langevin": 5 * steps, "predictor_corrector": steps + (steps - 1), **two_call}
    counts["pndm"] = steps + 9  # PNDM (steps >= 4): three 4-call Runge-Kutta steps first
    # papers-only samplers: stages per step, the last step one call; Restart adds 2 calls per backward Heun
    # step of each cycle it makes
    counts.update(seeds_2=2 * steps - 1, seeds_3=3 * steps - 2)
    if name == "restart":
        cycles = make_planned(name, steps).plan.extras["restarts"]
        counts[name] = 2 * steps - 1 + sum(2 * r["steps"] * r["repeats"] for r in cycles)
    return counts.get(name, steps)


def test_every_builtin_is_registered():
    assert set(BUILTINS) <= set(NAMES)


# --------------------------------------------------------------------------------------------
# surface: set_timesteps, timesteps, init_noise_sigma, scale_model_input, metadata
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_metadata_is_complete_and_json(name):
    cls = samplers.registry().scheduler_class(name)
    meta = cls.metadata()
    json.dumps(meta)
    assert meta["name"] == name
    assert meta["family"] in ("vp", "ve", "flow", "any")
    assert meta["order"] >= 1 and meta["nfe_per_step"] >= 1
    assert set(meta["prediction_types"]) <= set(samplers.parameterization.PREDICTION_TYPES)
    assert make(name).prediction_type in meta["prediction_types"]


@pytest.mark.parametrize("name", NAMES)
def test_set_timesteps_surface(name):
    s = make(name)
    s.set_timesteps(N, device="cpu")
    ts = s.timesteps
    assert isinstance(ts, torch.Tensor) and ts.dim() == 1 and ts.device.type == "cpu"
    assert len(ts) == calls_for(name, N) == len(s.plan.timesteps)
    if name in INVERSIONS:
        assert bool((ts[1:] >= ts[:-1]).all())  # cleanest first
    elif name != "restart":  # Restart's cycles go back up to t_max (noisiest first within each pass)
        assert bool((ts[1:] <= ts[:-1]).all())  # noisiest first
    assert isinstance(s.init_noise_sigma, float) and math.isfinite(s.init_noise_sigma) and s.init_noise_sigma > 0
    assert s.step_index is None
    assert s.num_inference_steps == N
    # as diffusers gives them: integers when the calls sit on whole training timesteps, float32 otherwise
    whole = isinstance(s.schedule, DiscreteVPSchedule) and bool((s.plan.timesteps == s.plan.timesteps.round()).all())
    assert ts.dtype == (torch.int64 if whole else torch.float32)
    torch.testing.assert_close(ts.double(), s.plan.timesteps, rtol=1e-6, atol=0)


def _prior_std(s) -> float:
    """Std of x at the first call for unit-variance data, in the space the sampler's x lives in."""
    plan = s.plan
    alpha, sigma, scale = float(plan.model_alpha[0]), float(plan.model_sigma[0]), float(plan.input_scale[0])
    return math.sqrt(alpha * alpha + sigma * sigma) / scale


@pytest.mark.parametrize(
    "name,config",
    [(n, {}) for n in BUILTINS]
    + [
        ("ddim", {"schedule": "edm"}),
        ("ddim", {"schedule": "ve"}),
        ("ddpm", {"schedule": "ve"}),
        ("posterior", {"schedule": "ve"}),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()) or "default",
)
def test_init_noise_sigma_is_the_prior_std(name, config):
    """x_T = init_noise_sigma * randn must be a draw at the first call's noise level (VP: 1, VE: sigma_max)."""
    s = make(name, **config)
    s.set_timesteps(10)
    assert s.init_noise_sigma == pytest.approx(_prior_std(s), rel=0.02), (s.init_noise_sigma, _prior_std(s))


@pytest.mark.parametrize("name", NAMES)
def test_scale_model_input_is_the_plans_input_scale(name, oracle):
    s = make(name)
    s.set_timesteps(N)
    x = start(s)
    for i, t in enumerate(s.timesteps[:3]):
        x_in = s.scale_model_input(x, t)
        torch.testing.assert_close(x_in, x * float(s.plan.input_scale[i]))
        x = s.step(model_out(s, i, x, oracle), t, x, noise=torch.zeros_like(x)).prev_sample
    if s.schedule.family == "ve" or name in ("ddpm", "ddim", "posterior", "flow_euler"):
        assert bool((s.plan.input_scale == 1).all())  # model-space samplers and VE: the sample is the input
    if name in ("euler", "euler_ancestral", "heun"):
        # sigma-space samplers on a VP schedule feed the model x / sqrt(sigma^2 + 1) (k-diffusion's c_in)
        s.set_timesteps(N)
        sigma0 = float(s.sigmas[0])
        torch.testing.assert_close(
            s.scale_model_input(x, s.timesteps[0]), x / math.sqrt(sigma0**2 + 1), rtol=1e-6, atol=0
        )


# --------------------------------------------------------------------------------------------
# step(): shapes, dtypes, StepOutput
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4, 4)], ids=["BD", "BCHW"])
def test_step_shapes_and_dtypes(name, shape, oracle):
    results = {}
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        s = make(name)
        s.set_timesteps(N)
        x = start(s, shape, dtype)
        seeds = ops.batch_seeds(3, shape[0])
        for i, t in enumerate(s.timesteps):
            out = model_out(s, i, x, oracle)
            assert out.dtype == dtype
            step = s.step(out, t, x, seeds=seeds)
            assert isinstance(step, StepOutput)
            assert step.prev_sample.shape == x.shape and step.prev_sample.dtype == dtype
            assert step.pred_original_sample is not None
            assert step.pred_original_sample.shape == x.shape and step.pred_original_sample.dtype == dtype
            assert bool(torch.isfinite(step.prev_sample.float()).all())
            x = step.prev_sample
        results[dtype] = x.double()
    planned = make_planned(name)
    reference, start_size = results[torch.float64], float(start(planned, shape).abs().max())
    # noise-prediction DPM-Solver steps carry eps differences times sigma_t (e^h - 1) ~ 1 / alpha_T: the x0 reading's
    # amplification of the random runs below bounds theirs too (dpm_singlestep)
    amplification = float((planned.plan.input_scale / planned.plan.model_alpha).max())
    for dtype, unit in ((torch.float32, 2.0**-23), (torch.bfloat16, 2.0**-8)):
        error = float((results[dtype] - reference).abs().max())
        assert error <= _rounding_tolerance(unit, start_size, reference, amplification)


def make_planned(name: str, steps: int = N) -> samplers.Scheduler:
    s = make(name)
    s.set_timesteps(steps)
    return s


def _rounding_tolerance(unit: float, start_size: float, reference: torch.Tensor, amplification: float = 1.0) -> float:
    """How far a run stored in a dtype with unit round-off ``unit`` may drift from the float64 run.

    An epsilon-type output converts to x0 as ``(x - sigma * eps) / alpha``: at the first, largest noise
    level the storage error of ``x`` (about ``unit * |x_T|``) enters x0 multiplied by ``1 / alpha``
    (``amplification``, up to 156 at the end of a linear-beta table) when a step jumps far, so the bound
    scales with the start's size times that factor as well as with the result's.
    """
    return 8 * unit * start_size * amplification + 16 * unit * (1 + float(reference.abs().max()))


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    steps=st.integers(1, 12),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(lambda rest: tuple(rest)),
    batch=st.integers(1, 4),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_runs_keep_shape_dtype_and_track_float64(name, steps, shape, batch, dtype, seed, oracle):
    """Any step count, batch and sample shape: outputs keep shape and dtype and follow the float64 run."""
    runs = {}
    for run_dtype in (F64, dtype):
        s = make(name)
        s.set_timesteps(steps)
        x = start(s, (batch,) + shape, run_dtype, seed)
        seeds = ops.batch_seeds(seed, batch)
        for i, t in enumerate(s.timesteps):
            step = s.step(model_out(s, i, x, oracle), t, x, seeds=seeds)
            assert step.prev_sample.shape == x.shape and step.prev_sample.dtype == run_dtype
            assert step.pred_original_sample.shape == x.shape and step.pred_original_sample.dtype == run_dtype
            x = step.prev_sample
        assert bool(torch.isfinite(x.float()).all())
        runs[run_dtype] = x.double()
    planned = make_planned(name, steps)
    start_size = float(start(planned, (batch,) + shape, F64, seed).abs().max())
    unit = 2.0**-23 if dtype == torch.float32 else 2.0**-8
    amplification = float((planned.plan.input_scale / planned.plan.model_alpha).max())  # x0 read at the lowest alpha
    error = float((runs[dtype] - runs[F64]).abs().max())
    assert error <= _rounding_tolerance(unit, start_size, runs[F64], amplification)


@pytest.mark.parametrize("name", NAMES)
def test_step_output_indexing_and_tuple(name, oracle):
    a, b = make(name), make(name)
    a.set_timesteps(N)
    b.set_timesteps(N)
    x = start(a)
    seeds = ops.batch_seeds(1, x.shape[0])
    t = a.timesteps[0]
    out = model_out(a, 0, x, oracle)
    result = a.step(out, t, x, seeds=seeds)
    as_tuple = b.step(out, t, x, seeds=seeds, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    assert result[0] is result.prev_sample and result[1] is result.pred_original_sample
    prev, x0 = result
    assert torch.equal(as_tuple[0], prev) and torch.equal(as_tuple[1], x0)
    assert result.to_tuple() == (result.prev_sample, result.pred_original_sample)


# --------------------------------------------------------------------------------------------
# config round trip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name, tmp_path):
    s = make(name, prediction_type="v_prediction")
    path = s.save_config(tmp_path)
    saved = json.loads(path.read_text())
    assert saved["_class_name"] == type(s).__name__ and saved["prediction_type"] == "v_prediction"
    loaded = type(s).from_pretrained(tmp_path)
    again = type(s).from_config(s.config)
    for other in (loaded, again):
        assert type(other) is type(s) and dict(other.config) == dict(s.config)
        s.set_timesteps(N)
        other.set_timesteps(N)
        assert torch.equal(other.plan.rows, s.plan.rows)
        assert torch.equal(other.timesteps, s.timesteps)
    changed = type(s).from_config(s.config, prediction_type="epsilon")
    assert changed.prediction_type == "epsilon" and s.prediction_type == "v_prediction"
    with pytest.raises(TypeError, match="read-only"):
        s.config["prediction_type"] = "sample"
    assert s.config.prediction_type == "v_prediction"  # attribute access as in diffusers


@pytest.mark.parametrize("name", NAMES)
def test_from_config_rejects_unknown_option(name):
    with pytest.raises(TypeError, match=r"no_such_option"):
        type(make(name)).from_config({"no_such_option": 1})
    # keys starting with "_" (diffusers metadata) are ignored
    assert type(make(name)).from_config({"_diffusers_version": "0.30.0"}).config == make(name).config


# --------------------------------------------------------------------------------------------
# custom grids, begin index, step index
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TIMESTEP_CUSTOM)
def test_custom_timesteps_reproduce_the_default_grid(name):
    s, c = make(name), make(name)
    s.set_timesteps(N)
    c.set_timesteps(timesteps=s.plan.timesteps[:: {"heun": 2, "langevin": 5, "predictor_corrector": 2}.get(name, 1)])
    assert len(c.plan.timesteps) == len(s.plan.timesteps)
    torch.testing.assert_close(c.plan.rows, s.plan.rows, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="descending"):
        c.set_timesteps(timesteps=torch.unique(s.plan.timesteps)[:3])  # unique() sorts ascending


@pytest.mark.parametrize("name", SIGMA_CUSTOM)
def test_custom_sigmas_reproduce_the_default_grid(name):
    s, c = make(name), make(name)
    s.set_timesteps(N)
    if name == "flow_euler":
        sigmas = s.plan.timesteps / s.config.num_train_timesteps
    else:
        sigmas = s.plan.model_sigma / s.plan.model_alpha  # sigma-space levels of the calls
        sigmas = sigmas[:: {"heun": 2, "langevin": 5, "predictor_corrector": 2}.get(name, 1)]
    c.set_timesteps(sigmas=sigmas)
    torch.testing.assert_close(c.plan.rows, s.plan.rows, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(c.plan.model_sigma / c.plan.model_alpha, s.plan.model_sigma / s.plan.model_alpha)


def _clean_cut(plan, begin: int) -> bool:
    """Whether no call from ``begin`` on reads a tensor kept before ``begin`` (the tail is then a run of its own)."""
    for j in range(begin, len(plan.use)):
        for name in plan.use[j]:
            keeper = max(i for i in range(j) if any(k == name for k, _ in plan.keep[i]))
            if keeper < begin:
                return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_step_index_and_begin_index(name, oracle):
    s = make(name)
    s.set_timesteps(N)
    calls = len(s.timesteps)
    x0 = start(s)
    noise = [torch.randn(x0.shape, generator=torch.Generator().manual_seed(50 + i), dtype=F64) for i in range(calls)]
    xs = [x0]
    assert s.step_index is None and s.begin_index is None
    for i, t in enumerate(s.timesteps):
        xs.append(s.step(model_out(s, i, xs[-1], oracle), t, xs[-1], noise=noise[i]).prev_sample)
        assert s.step_index == i + 1
    s.set_timesteps(N)
    assert s.step_index is None  # a new plan is a new run
    # start mid-way (img2img) at a call that begins a step: same tail as the full run
    begin = next((k for k in range(calls // 2, calls) if _clean_cut(s.plan, k)), None)
    if begin is None:
        pytest.skip("every later call continues a multistep history from before it (the warm-up restarts there)")
    s.set_begin_index(begin)
    assert s.begin_index == begin
    x = xs[begin]
    for i in range(begin, calls):
        x = s.step(model_out(s, i, x, oracle), s.timesteps[i], x, noise=noise[i]).prev_sample
    torch.testing.assert_close(x, xs[-1], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="begin_index"):
        s.set_begin_index(calls)


# --------------------------------------------------------------------------------------------
# per-sample timesteps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", sorted(SINGLE_CALL))
def test_per_sample_timesteps_equal_stepping_each_sample_alone(label, oracle):
    config = SINGLE_CALL[label]
    s = make(label, **config)
    steps = 8
    s.set_timesteps(steps)
    ts = s.timesteps
    calls = torch.tensor([0, 3, 1, 7, 5, 2, 6, 4, 7, 0])
    batch = len(calls)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(batch, 3, generator=gen, dtype=F64) * s.init_noise_sigma
    noise = torch.randn(batch, 3, generator=gen, dtype=F64)
    t_batch = ts[calls]
    x_in = s.scale_model_input(x, t_batch)
    out = torch.stack([oracle.output(s, int(k), x_in[b : b + 1], MU, STD)[0] for b, k in enumerate(calls)])
    joint = s.step(out, t_batch, x, noise=noise)
    for b, k in enumerate(calls.tolist()):
        alone = make(label, **config)
        alone.set_timesteps(steps)
        alone.set_begin_index(k)
        x_b_in = alone.scale_model_input(x[b : b + 1], ts[k])
        torch.testing.assert_close(
            x_in[b : b + 1], x_b_in, msg=f"scale_model_input differs for sample {b} at call {k}"
        )
        single = alone.step(out[b : b + 1], ts[k], x[b : b + 1], noise=noise[b : b + 1])
        torch.testing.assert_close(
            joint.prev_sample[b : b + 1],
            single.prev_sample,
            rtol=1e-6,
            atol=1e-6,
            msg=f"sample {b} at call {k} (t={float(ts[k])})",
        )
        torch.testing.assert_close(
            joint.pred_original_sample[b : b + 1], single.pred_original_sample, rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("name", MULTI_CALL)
def test_multi_call_schedulers_reject_per_sample_timesteps(name):
    s = make(name)
    s.set_timesteps(N)
    x = start(s, (2, 3))
    with pytest.raises(ValueError, match="per-sample"):
        s.step(torch.zeros_like(x), s.timesteps[:2], x, noise=torch.zeros_like(x))


# --------------------------------------------------------------------------------------------
# the functional API, determinism, explicit noise
# --------------------------------------------------------------------------------------------


def _snapshot(state: SamplerState) -> tuple:
    return (
        state.step_index,
        {k: (id(v), v.clone()) for k, v in state.kept.items()},
        None if state.seeds is None else state.seeds.clone(),
    )


def _same_snapshot(state: SamplerState, snap: tuple) -> bool:
    index, kept, seeds = snap
    if state.step_index != index or set(state.kept) != set(kept):
        return False
    if any(id(v) != kept[k][0] or not torch.equal(v, kept[k][1]) for k, v in state.kept.items()):
        return False
    return (seeds is None and state.seeds is None) or (seeds is not None and torch.equal(state.seeds, seeds))


def _object_run(name: str, x: torch.Tensor, oracle, **step_kwargs) -> torch.Tensor:
    s = make(name)
    s.set_timesteps(N)
    for i, t in enumerate(s.timesteps):
        x = s.step(model_out(s, i, x, oracle), t, x, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("name", NAMES)
def test_functional_step_matches_object_api_and_leaves_state_alone(name, oracle):
    s = make(name)
    s.set_timesteps(N)
    x = start(s)
    seeds = ops.batch_seeds(9, x.shape[0])
    state = s.init_state()
    assert state.step_index == 0 and not state.kept
    for i, t in enumerate(s.timesteps):
        snap = _snapshot(state)
        result, new_state = s.step_functional(state, model_out(s, i, x, oracle), t, x, seeds=seeds)
        assert _same_snapshot(state, snap), f"step_functional modified its input state at call {i}"
        assert new_state is not state and new_state.step_index == i + 1
        state, x = new_state, result.prev_sample
    assert s.step_index is None  # the object's own run state was not touched
    torch.testing.assert_close(x, _object_run(name, start(s), oracle, seeds=seeds), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_one_scheduler_serves_interleaved_runs(name, oracle):
    s = make(name)
    s.set_timesteps(N)
    xa, xb = start(s, seed=1), start(s, seed=2)
    seeds_a, seeds_b = ops.batch_seeds(11, 4), ops.batch_seeds(12, 4)
    sa, sb = s.init_state(), s.init_state()
    for i, t in enumerate(s.timesteps):
        ra, sa = s.step_functional(sa, model_out(s, i, xa, oracle), t, xa, seeds=seeds_a)
        rb, sb = s.step_functional(sb, model_out(s, i, xb, oracle), t, xb, seeds=seeds_b)
        xa, xb = ra.prev_sample, rb.prev_sample
    torch.testing.assert_close(xa, _object_run(name, start(s, seed=1), oracle, seeds=seeds_a), rtol=0, atol=0)
    torch.testing.assert_close(xb, _object_run(name, start(s, seed=2), oracle, seeds=seeds_b), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_determinism_with_generator_and_seeds(name, oracle):
    s = make(name)
    s.set_timesteps(N)
    x = start(s)
    noisy = any(s.plan.stochastic_calls) or name == "predictor_corrector"
    g1 = _object_run(name, x, oracle, generator=torch.Generator().manual_seed(7))
    g2 = _object_run(name, x, oracle, generator=torch.Generator().manual_seed(7))
    g3 = _object_run(name, x, oracle, generator=torch.Generator().manual_seed(8))
    assert torch.equal(g1, g2)
    assert torch.equal(g1, g3) != noisy, "different seeds must change the result exactly when the plan draws noise"
    s1 = _object_run(name, x, oracle, seeds=ops.batch_seeds(5, 4))
    s2 = _object_run(name, x, oracle, seeds=ops.batch_seeds(5, 4))
    s3 = _object_run(name, x, oracle, seeds=ops.batch_seeds(6, 4))
    assert torch.equal(s1, s2)
    assert torch.equal(s1, s3) != noisy
    if noisy:
        assert make(name).stochastic


@pytest.mark.parametrize("name", NAMES)
def test_explicit_noise_reproduces_the_seeded_run(name, oracle):
    """noise = Philox(seed, call index) given explicitly gives the seeded run: the noise is keyed per call."""
    s = make(name)
    s.set_timesteps(N)
    x = start(s)
    seeds = ops.batch_seeds(21, x.shape[0])
    seeded = _object_run(name, x, oracle, seeds=seeds)
    y = x
    for i, t in enumerate(s.timesteps):
        stream = int(s.plan.rows[i, COEFF["stream"]])  # the call index (Restart keys its kicks by restart)
        z = ops.philox_normal(seeds, stream, y[0].numel()).view_as(y).to(y.dtype)
        y = s.step(model_out(s, i, y, oracle), t, y, noise=z).prev_sample
    torch.testing.assert_close(y, seeded, rtol=1e-6, atol=1e-6)
    # and other explicit noise changes a noisy run
    s.set_timesteps(N)
    other = x
    for i, t in enumerate(s.timesteps):
        z = torch.randn(other.shape, generator=torch.Generator().manual_seed(100 + i), dtype=other.dtype)
        other = s.step(model_out(s, i, other, oracle), t, other, noise=z).prev_sample
    noisy = any(s.plan.stochastic_calls) or name == "predictor_corrector"
    assert torch.equal(other, seeded) != noisy


# --------------------------------------------------------------------------------------------
# add_noise
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_add_noise_is_q_sample_in_the_working_space(name):
    """add_noise(x0, noise, t) is the forward draw at the noise level the plan's call at t works at."""
    s = make(name)
    s.set_timesteps(N)
    gen = torch.Generator().manual_seed(3)
    calls = [i for i in range(len(s.timesteps)) if i == 0 or float(s.timesteps[i]) != float(s.timesteps[i - 1])][:4]
    ts = s.timesteps[calls]
    x0 = torch.randn(len(ts), 3, generator=gen, dtype=F64)
    noise = torch.randn(len(ts), 3, generator=gen, dtype=F64)
    noisy = s.add_noise(x0, noise, ts)
    alpha, sigma = s.plan.model_alpha[calls], s.plan.model_sigma[calls]
    if name in INVERSIONS:  # a call's output is read at the level it starts from; t is where it goes
        alpha, sigma = s.schedule.alpha_sigma(ts)
    if isinstance(s.schedule, DiscreteVPSchedule) and ts.dtype == torch.int64:
        abar = s.schedule.alphas_cumprod[ts]  # whole timesteps: the training table itself
        torch.testing.assert_close(alpha, abar.sqrt())
        torch.testing.assert_close(sigma, (1 - abar).sqrt())
    elif s.schedule.family != "vp" or not isinstance(s.schedule, DiscreteVPSchedule):
        a_ref, s_ref = s.schedule.alpha_sigma(s.plan.timesteps[calls])
        torch.testing.assert_close(alpha, a_ref)
        torch.testing.assert_close(sigma, s_ref)
    if bool((s.plan.input_scale[calls] != 1).any()) or s.schedule.family == "ve":
        sigma, alpha = sigma / alpha, torch.ones_like(alpha)  # sigma space: x / alpha at level sigma / alpha
    expected = schedules.q_sample(x0, noise, alpha.view(-1, 1), sigma.view(-1, 1))
    torch.testing.assert_close(noisy, expected, rtol=1e-6, atol=1e-6)
    # a scalar timestep noises the whole batch to one level
    one = s.add_noise(x0, noise, ts[0])
    torch.testing.assert_close(one[0], noisy[0])


# --------------------------------------------------------------------------------------------
# bad input: each error names the argument
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_model_output_shape_dtype_device_mismatch(name):
    s = make(name)
    s.set_timesteps(N)
    x = start(s, (2, 3), torch.float32)
    t = s.timesteps[0]
    with pytest.raises(ValueError, match=r"model_output.*shape"):
        s.step(torch.zeros(2, 4), t, x)
    with pytest.raises(TypeError, match=r"model_output.*dtype"):
        s.step(torch.zeros(2, 3, dtype=F64), t, x)
    device = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match=r"model_output.*(device|is on)"):
        s.step(torch.zeros(2, 3, device=device), t, x)
    with pytest.raises(TypeError, match="model_output"):
        s.step(x.numpy(), t, x)
    assert s.step_index is None  # failed calls do not advance the run


@pytest.mark.parametrize("name", NAMES)
def test_timestep_not_in_schedule(name):
    s = make(name)
    s.set_timesteps(N)
    x = start(s, (2, 3))
    with pytest.raises(ValueError, match=r"timestep 12345 is not"):
        s.step(torch.zeros_like(x), 12345, x)
    # mid-run, a timestep other than the next one is an error too
    s.step(torch.zeros_like(x), s.timesteps[0], x, noise=torch.zeros_like(x))
    wrong = float(s.timesteps[0]) + 0.5 * abs(float(s.timesteps[0]) - float(s.timesteps[-1])) + 1.0
    with pytest.raises(ValueError, match="timestep"):
        s.step(torch.zeros_like(x), wrong, x)


@pytest.mark.parametrize("name", NAMES)
def test_step_before_set_timesteps_and_past_the_end(name):
    s = make(name)
    x = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 0, x)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.scale_model_input(x, 0)
    s.set_timesteps(2)
    calls = len(s.timesteps)
    for t in s.timesteps:
        x = s.step(torch.zeros_like(x), t, x, noise=torch.zeros_like(x)).prev_sample
    if s.plan.memoryless and len(set(s.plan.timesteps.tolist())) == calls:
        # a function of t, as diffusers' DDPM/DDIM/FlowMatch steps are: the last step may run again
        again = s.step(torch.zeros_like(x), s.timesteps[-1], x, noise=torch.zeros_like(x)).prev_sample
        assert torch.isfinite(again).all()
        return
    with pytest.raises(IndexError, match=rf"{calls} calls"):
        s.step(torch.zeros_like(x), s.timesteps[-1], x)


# (flow samplers' default grids are flow times and EDM Euler's Karras levels: neither strides over the table)
@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("flow_euler", "flow_heun", "edm_euler")])
def test_more_inference_steps_than_training_steps(name):
    """On a discrete schedule of T training steps, asking for more than T sampling steps is an error."""
    s = make(name, schedule="discrete", num_train_timesteps=100)
    with pytest.raises(ValueError, match=r"num_inference_steps"):
        s.set_timesteps(101)


def test_set_timesteps_argument_errors():
    s = make("euler")
    with pytest.raises(ValueError, match="num_inference_steps, timesteps or sigmas"):
        s.set_timesteps()
    with pytest.raises(ValueError, match="either timesteps or sigmas"):
        s.set_timesteps(timesteps=[999, 500], sigmas=[10.0, 1.0])
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(2.5)
    with pytest.raises(TypeError, match="bogus"):
        s.set_timesteps(10, bogus=1)
    with pytest.raises(ValueError, match=r"custom timesteps must lie in \[0, 999\]"):
        s.set_timesteps(timesteps=[1500, 10])


def test_step_argument_errors():
    s = make("ddpm")
    s.set_timesteps(N)
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="bogus"):
        s.step(x, s.timesteps[0], x, bogus=1)
    with pytest.raises(ValueError, match="seeds"):
        s.step(x, s.timesteps[0], x, seeds=torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"per-sample timestep.*batch=2"):
        s.step(x, s.timesteps[:3], x)
    with pytest.raises(ValueError, match="guidance_scale needs uncond"):
        s.step(x, s.timesteps[0], x, guidance_scale=3.0)
    with pytest.raises(ValueError, match="uncond"):
        s.step(x, s.timesteps[0], x, uncond=torch.zeros(2, 4), guidance_scale=3.0)


@pytest.mark.parametrize(
    "name,config", [("ddim", {"prediction_type": "epsilom"}), ("euler", {"prediction_type": "v_predicton"})]
)
def test_unknown_prediction_type_on_a_scheduler(name, config):
    bad = config["prediction_type"]
    with pytest.raises(ValueError, match=rf"prediction_type '{bad}'.*did you mean"):
        make(name, **config)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_finite_rejects_nan_and_inf(name, bad):
    s = make(name)
    s.set_timesteps(N)
    x = start(s, (2, 3), torch.float32)
    out = torch.zeros_like(x)
    out[1, 2] = bad
    with pytest.raises(FloatingPointError, match="model_output"):
        s.step(out, s.timesteps[0], x, check_finite=True)
    assert s.step_index is None
    # guidance's unconditional branch is checked too
    with pytest.raises(FloatingPointError, match="uncond"):
        s.step(torch.zeros_like(x), s.timesteps[0], x, uncond=out, guidance_scale=2.0, check_finite=True)


@pytest.mark.parametrize(
    "name,config",
    [
        ("flow_euler", {"prediction_type": "epsilon"}),
        ("flow_euler", {"prediction_type": "score"}),
        ("ddim", {"schedule": "flow", "prediction_type": "epsilon"}),
    ],
)
def test_prediction_type_that_cannot_be_inverted_at_alpha_zero(name, config):
    """epsilon/score outputs say nothing about x0 where alpha = 0 (flow at t = 1): the error names the type."""
    s = make(name, **config)
    with pytest.raises(ValueError, match=r"(?s)(alpha=0|alpha = 0).*prediction.type") as info:
        s.set_timesteps(10)
    assert config["prediction_type"] in str(info.value)
    # starting below t = 1 is fine
    s.set_timesteps(sigmas=[0.9, 0.5, 0.1]) if name == "flow_euler" else s.set_timesteps(timesteps=[0.9, 0.5, 0.1])


# --------------------------------------------------------------------------------------------
# CUDA: the same numbers as on the CPU, and no host-device sync inside step()
# --------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
def test_cuda_run_matches_cpu_and_never_syncs(name, oracle):
    """Same seeds, same numbers on both devices; after a warm-up run fills the device caches of the plan
    (coefficient rows, lookup keys), a whole run of step_functional() calls makes no host-device sync."""

    def run(s, device: str, check: bool) -> torch.Tensor:
        x = start(s, (4, 3), torch.float32).to(device)
        seeds = ops.batch_seeds(13, 4, device=device)
        state = s.init_state()
        for i, t in enumerate(s.timesteps):
            out = model_out(s, i, x, oracle)
            if check:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            try:
                result, state = s.step_functional(state, out, t, x, seeds=seeds)
            finally:
                if check:
                    torch.cuda.set_sync_debug_mode(0)
            x = result.prev_sample
        return x.cpu().double()

    cpu = make(name)
    cpu.set_timesteps(N)
    gpu = make(name)
    gpu.set_timesteps(N, device="cuda")
    assert gpu.timesteps.device.type == "cuda"
    warm = run(gpu, "cuda", check=False)
    checked = run(gpu, "cuda", check=True)
    assert torch.equal(warm, checked)
    expected = run(cpu, "cpu", check=False)
    torch.testing.assert_close(checked, expected, rtol=1e-4, atol=1e-4 * (1 + float(expected.abs().max())))


# ---- bad input found in review: every error names the argument ---------------------------------


def test_per_sample_timestep_not_in_the_schedule_is_an_error():
    s = samplers.get("ddim")
    s.set_timesteps(10)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"per-sample timestep\[1\]=7 is not in this scheduler's timesteps"):
        s.step(torch.randn(2, 3), torch.tensor([900, 7]), x)
    good = s.step(torch.randn(2, 3), torch.tensor([900, 0]), x).prev_sample  # members of the grid still work
    assert good.shape == x.shape and torch.isfinite(good).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(timesteps=[999.0, float("nan"), 10.0]), "custom timesteps must be finite"),
        (dict(num_inference_steps=5, sigmas=[1.0, 0.5]), "num_inference_steps=5 disagrees with the 2 custom sigmas"),
        (dict(num_inference_steps=4, mu=0.5), "mu .* only applies to flow schedulers"),
    ],
)
def test_set_timesteps_rejects_arguments_it_would_ignore(kwargs, message):
    with pytest.raises(ValueError, match=message):
        samplers.get("euler").set_timesteps(**kwargs)


def test_flow_scheduler_takes_mu():
    s = samplers.get("flow_euler", use_dynamic_shifting=True)
    s.set_timesteps(4, mu=0.5)
    low = s.timesteps.clone()
    s.set_timesteps(4, mu=1.5)
    assert (s.timesteps[1:] > low[1:]).all()  # a larger shift keeps the grid at higher noise


@pytest.mark.parametrize(
    "name, option, error, message",
    [
        ("ddim", dict(eta="abc"), TypeError, "eta must be float"),
        ("ddpm", dict(num_train_timesteps="10"), TypeError, "num_train_timesteps must be int"),
        ("ddpm", dict(clip_sample="yes"), TypeError, "clip_sample must be bool"),
        ("langevin", dict(beta_schedule="cosin"), ValueError, "unknown beta_schedule 'cosin'.*did you mean 'cosine'"),
        ("posterior", dict(timestep_spacing="lead"), ValueError, "unknown timestep_spacing 'lead'"),
        ("ddim", dict(clip_sample_range=-1.0), ValueError, "clip_sample_range must be > 0"),
        ("ddpm", dict(dynamic_thresholding_ratio=1.5), ValueError, r"dynamic_thresholding_ratio must be in \(0, 1\]"),
    ],
)
def test_config_values_are_checked_by_name(name, option, error, message):
    with pytest.raises(error, match=message):
        samplers.get(name, **option)


def test_numpy_and_int_config_values_are_accepted():
    s = samplers.get("ddpm", num_train_timesteps=np.int64(100), beta_end=np.float64(0.02), clip_sample_range=1)
    s.set_timesteps(10)
    assert len(s.timesteps) == 10


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_non_finite_guidance_scale_is_named(backend):
    s = samplers.get("ddim")
    s.set_timesteps(4)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        s.step(x, s.timesteps[0], x, uncond=x, guidance_scale=float("nan"), backend=backend)
