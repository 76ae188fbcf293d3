"""A hypothesis fuzz of the public API (issue 11): every case ends in a right answer or a clear error.

Random registered scheduler x schedule family x prediction type x grid (step count, custom sigmas,
custom timesteps, or a named spacing) x batch shape x dtype x call order. For each case:

* building the plan either succeeds or raises ``ValueError`` / ``TypeError`` with a message, before
  any output exists;
* a run in order with the exact Gaussian model (tests/battery.py) stays finite, keeps shape and
  dtype, tracks the float64 run of the same case to the storage dtype's rounding, and, for
  deterministic samplers with enough steps, lands near the exact ODE endpoint (a wildly wrong
  scale or distribution fails this);
* out-of-order calls are either valid (memoryless plans are functions of t: repeating a call gives
  the same answer) or refused with a ``ValueError`` naming the timestep, with the state untouched.

The default run is bounded for CI; ``-m slow`` runs a longer one.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import samplers
from samplers import ops, parameterization

from battery import FAMILIES, MU, STD, exact_output

F64 = torch.float64
NAMES = [n for n, e in samplers.registry().entries.items() if e.source.distribution == "samplers"]
GRID_KINDS = ("steps", "sigmas", "timesteps", "named")
NAMED = ("karras", "exponential", "lu", "beta", "kl_optimal")
# derandomize: CI draws the same cases every run (a random draw found criterion gaps at random, failing unrelated
# changes); to explore new cases, run locally with derandomize=False.
SETTINGS = dict(
    deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


@st.composite
def cases(draw):
    name = draw(st.sampled_from(NAMES))
    family = draw(st.sampled_from(list(FAMILIES)))
    prediction = draw(st.sampled_from(parameterization.PREDICTION_TYPES))
    grid = draw(st.sampled_from(GRID_KINDS))
    steps = draw(st.integers(1, 14))
    fractions = draw(st.lists(st.floats(0.02, 0.98), min_size=steps, max_size=steps, unique=True))
    named = draw(st.sampled_from(NAMED))
    batch = draw(st.integers(1, 3))
    width = draw(st.sampled_from([(4,), (2, 4)]))  # the data are 4-d Gaussian coordinates
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    order = draw(st.sampled_from(["in_order", "repeat", "skip", "back"]))
    return dict(
        name=name,
        family=family,
        prediction=prediction,
        grid=grid,
        steps=steps,
        fractions=sorted(fractions, reverse=True),
        named=named,
        shape=(batch, *width),
        dtype=dtype,
        order=order,
    )


def _build(case) -> samplers.Scheduler | None:
    """The planned scheduler, or None when the configuration is refused with a clear error."""
    options = {**FAMILIES[case["family"]], "prediction_type": case["prediction"]}
    if case["grid"] == "named":
        options.update(sigma_schedule=case["named"], sigma_schedule_kwargs={})
    try:
        s = samplers.get(case["name"], **options)
        lo, hi = s.schedule.time_domain()
        if case["grid"] == "steps" or case["grid"] == "named":
            s.set_timesteps(case["steps"])
        elif case["grid"] == "timesteps":
            hi = min(hi, 80.0)
            s.set_timesteps(timesteps=[lo + f * (hi - lo) for f in case["fractions"]])
        else:
            levels = s.schedule.ve_sigma(torch.tensor([lo + f * (min(hi, 80.0) - lo) for f in case["fractions"]]))
            s.set_timesteps(sigmas=levels.clamp(max=1e4).tolist())
    except (ValueError, TypeError) as exc:
        assert str(exc).strip(), "an error must say what is wrong"
        return None
    return s


def _start(s: samplers.Scheduler, shape) -> torch.Tensor:
    """The run's start in float64: the same standard noise for every dtype of one case."""
    z = torch.randn(shape, generator=torch.Generator().manual_seed(11), dtype=F64)
    return z * s.init_noise_sigma


def _run(s: samplers.Scheduler, shape, dtype, seeds) -> torch.Tensor:
    x = _start(s, shape).to(dtype)
    state = s.init_state()
    for i, t in enumerate(s.timesteps):
        x_in = (x.to(F64) * s.plan.scales[i]).reshape(-1, 4)  # coordinates of the 4-d Gaussian data
        out = exact_output(s, i, x_in).reshape(shape).to(dtype)
        result, state = s.step_functional(state, out, t, x, seeds=seeds, backend="torch")
        assert result.prev_sample.shape == x.shape and result.prev_sample.dtype == dtype
        x = result.prev_sample
    return x.to(F64)


def _is_inversion(s: samplers.Scheduler) -> bool:
    """Whether the sampler runs from data to noise: its level rises over its plan (over a 4-step plan of its
    own config when the case makes one call; a config whose default grid is refused is no inversion)."""
    plan = s.plan
    if len(plan.timesteps) < 2:
        probe = type(s).from_config(s.config)
        try:
            probe.set_timesteps(4)
        except ValueError:
            return False
        plan = probe.plan
    return plan.inverts


def _check_case(case) -> None:
    s = _build(case)
    assume(s is not None)
    shape, dtype = case["shape"], case["dtype"]
    seeds = ops.batch_seeds(5, shape[0])
    x64 = _run(s, shape, F64, seeds)
    assert bool(torch.isfinite(x64).all()), f"{case}: non-finite float64 run"
    if dtype != F64:
        x = _run(s, shape, dtype, seeds)
        unit = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-23
        amplification = float((s.plan.input_scale / s.plan.model_alpha).max())
        if _is_inversion(s):
            # an inversion (data to noise) turns a rounded x0 into noise, eps = (x - alpha x0) / sigma, at the
            # least noisy level first: the rounding grows by alpha / sigma there
            amplification *= float((s.plan.model_alpha / s.plan.model_sigma).max())
        bound = 64 * unit * (1 + float(x64.abs().max())) * amplification * max(1.0, s.init_noise_sigma)
        assert float((x - x64).abs().max()) <= bound, f"{case}: {dtype} run drifts from float64"
    levels = s.plan.call_levels.tolist()
    on_default_grid = case["grid"] in ("steps", "named") and (s.num_inference_steps or 0) >= 10
    # Random custom grids may be coarse, and so are some named grids at 10 steps by design: diffusers'
    # beta grid is linear in sigma, so on a VP table (sigma_max 157) its last step jumps from 7.4 to
    # 0.01, far coarser than the data (std <= 1.3). The endpoint is checked where the grid resolves it.
    # Heun-type samplers call the model twice per level, so the test is on the last level above the endpoint.
    above_end = [v for v in levels if v > 0.05]
    resolves_data = levels[-1] <= 0.05 and bool(above_end) and above_end[-1] <= 1.5
    if not s.is_stochastic and on_default_grid and resolves_data:
        error, spread = _endpoint_error(s, x64, shape)
        if error > 0.5 * spread + 0.05:
            # still coarse where the data lives (Karras at 10 steps on EDM: 1.5 -> 0.47 -> 0.12; beta at 13 on VE:
            # 4.6 -> 1.5 -> 0.01): then the run must converge to the exact endpoint as the same grid refines
            finer = _build(dict(case, steps=4 * case["steps"]))
            finer_error, _ = _endpoint_error(finer, _run(finer, shape, F64, seeds), shape)
            assert finer_error <= 0.5 * error, (
                f"{case}: error {error:.3g} to the exact endpoint (spread {spread:.3g}) and {finer_error:.3g} at "
                f"{4 * case['steps']} steps: not converging"
            )
    _check_order(case)


def _endpoint_error(s: samplers.Scheduler, x64: torch.Tensor, shape: tuple[int, ...]) -> tuple[float, float]:
    """``(RMS error of the float64 run x64 to the exact ODE endpoint from the same start, RMS spread of that
    endpoint around the data mean)``, per coordinate in model space."""
    alpha0, sigma0 = float(s.plan.model_alpha[0]), float(s.plan.model_sigma[0])
    start = _start(s, shape).reshape(-1, 4) * s.plan.scales[0]
    exact = MU + STD / torch.sqrt(alpha0**2 * STD**2 + sigma0**2) * (start - alpha0 * MU)
    spread = float((exact - MU).pow(2).mean().sqrt())
    return float((x64.reshape(-1, 4) - exact).pow(2).mean().sqrt()), spread


def _check_order(case) -> None:
    """Out-of-order calls: valid for memoryless plans (a function of t), else a clear error."""
    s = _build(case)
    if case["order"] == "in_order" or len(s.plan.timesteps) < 3:
        return
    x = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(3)) * s.init_noise_sigma
    seeds = ops.batch_seeds(5, 2)
    times = s.timesteps
    first = s.step(exact_output(s, 0, x * s.plan.scales[0]), times[0], x, seeds=seeds, backend="torch").prev_sample
    target = {"repeat": 0, "skip": 2, "back": 0}[case["order"]]
    if case["order"] == "back":
        s.step(exact_output(s, 1, first * s.plan.scales[1]), times[1], first, seeds=seeds, backend="torch")
    out = exact_output(s, target, x * s.plan.scales[target])
    if s.plan.memoryless:
        again = s.step(out, times[target], x, seeds=seeds, backend="torch").prev_sample
        if target == 0:
            torch.testing.assert_close(again, first, rtol=0, atol=0)
        assert bool(torch.isfinite(again).all())
    elif abs(s.plan.times[target] - s.plan.times[s.step_index]) > 1e-4 * max(1.0, abs(s.plan.times[s.step_index])):
        # not (within the lookup tolerance) the next call's timestep: refused
        before = s.step_index
        with pytest.raises(ValueError, match="timestep"):
            s.step(out, times[target], x, seeds=seeds, backend="torch")
        assert s.step_index == before, "a refused step must leave the run where it was"


@settings(max_examples=30, **SETTINGS)
@given(case=cases())
def test_fuzz_public_api(case):
    _check_case(case)


@pytest.mark.slow
@settings(max_examples=400, **SETTINGS)
@given(case=cases())
def test_fuzz_public_api_long(case):
    _check_case(case)


def test_fuzz_strategy_reaches_every_sampler_and_grid_kind():
    """The strategy is not degenerate: NAMES holds the core samplers and every grid kind is drawn."""
    assert len(NAMES) >= 9 and set(GRID_KINDS) == {"steps", "sigmas", "timesteps", "named"}
    assert math.isclose(float(STD.max()), 1.0)
