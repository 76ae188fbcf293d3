"""Restart sampling (Xu et al. 2023): K = 0 is Heun, the forward jump (X1) merged into the row ending at
t_min, kicks keyed by the restart (not the call), so that with a fixed seed Restart is an ODE solver with
fixed kicks and converges at Heun's order 2 to the exactly composed map; marginals kept at high NFE.

Equation labels (X1)-(X3) are those of samplers/schedulers/restart.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from samplers.ops.reference import COEFF, brownian_normal, philox_normal
from samplers.schedulers.restart import MAX_REPEATS, RESTART_STREAM

import battery

F64 = torch.float64
FLOW = {**battery.FAMILIES["flow_shift3"], "prediction_type": "flow"}
EDM = battery.ORDER_FAMILY


def _plan(steps: int = 10, **config):
    s = samplers.get("restart", **{**EDM, **config})
    s.set_timesteps(steps)
    return s


def test_no_repeats_is_heun() -> None:
    ours = _plan(restart_intervals=[[3, 0, 0.1, 2.0]])
    heun = samplers.get("heun", **EDM)
    heun.set_timesteps(10)
    assert torch.equal(ours.plan.rows, heun.plan.rows)
    assert torch.equal(ours.plan.timesteps, heun.plan.timesteps)
    assert not ours.is_stochastic and ours.plan.extras["restarts"] == []


def test_kick_rides_on_the_corrector_ending_at_t_min() -> None:
    """(X1) merged: the kick rows are Heun correctors at the snapped t_min, with c = sqrt(t_max^2 - t_min^2)
    and the next call at t_max; the backward pass (X2) returns to t_min on a rho = 7 grid."""
    s = _plan(restart_intervals=[[4, 2, 0.1, 2.0]])
    plan, info = s.plan, s.plan.extras["restarts"][0]
    level = (plan.model_sigma / plan.model_alpha).tolist()
    t_min, t_max = info["t_min"], info["t_max"]
    assert info["steps"] == 4 and info["repeats"] == 2 and t_max == 2.0
    kicks = [i for i, tag in enumerate(plan.tags) if tag.startswith("restart:")]
    assert len(kicks) == 2 and plan.stochastic_calls == [i in kicks for i in range(len(plan))]
    for k, i in enumerate(kicks):
        row = plan.rows[i]
        assert level[i] == t_min and level[i + 1] == t_max  # ends at t_min, the next call starts at t_max
        assert float(row[COEFF["c"]]) == pytest.approx(math.sqrt(t_max**2 - t_min**2))
        assert plan.use[i] == ("x_hat", "x0_1")  # a Heun corrector
        assert plan.noise_intervals[i] == pytest.approx((t_min, t_max))
        assert int(row[COEFF["stream"]]) == RESTART_STREAM + k  # keyed by (interval 0, repeat k)
    # the backward pass: 4 Heun steps from t_max to t_min (8 calls), then the next kick or the main grid
    assert kicks[1] - kicks[0] == 8
    inner = [*level[kicks[0] + 1 : kicks[1] : 2], level[kicks[1]]]  # each Heun step's first call, then t_min
    assert inner[0] == t_max and inner[-1] == t_min and len(inner) == 5
    assert inner == pytest.approx(samplers.schedules.karras_sigmas(5, t_min, t_max, 7.0).tolist())


def test_t_min_snaps_to_the_main_grid_and_intervals_without_room_are_skipped() -> None:
    main = _plan().plan.sigmas.double().tolist()[:-1]
    crowded = [2, 1, 0.95 * main[3], 0.97 * main[3]]  # t_min snaps up to main[3] >= t_max: no room
    s = _plan(restart_intervals=[[2, 1, 0.1, 2.0], crowded, [2, 1, 1e-6, 1.0]])
    restarts = s.plan.extras["restarts"]
    near = min(main[1:], key=lambda v: abs(math.log(v / 0.1)))
    assert [r["interval"] for r in restarts] == [0, 2]
    assert restarts[0]["t_min"] == pytest.approx(near, rel=1e-6)
    assert restarts[1]["t_min"] == pytest.approx(main[-1], rel=1e-6)  # snapped to the last main level
    assert all(r["t_min"] < r["t_max"] for r in restarts)


def _kicks(plan, seeds: torch.Tensor, brownian: bool) -> dict[str, torch.Tensor]:
    """The kick of each restart as the op draws it: Philox keyed by the row's stream, or W(1) - W(0)."""
    out = {}
    for i, tag in enumerate(plan.tags):
        if tag:
            stream = int(plan.rows[i, COEFF["stream"]])
            if brownian:
                ones = torch.ones(len(seeds))
                z = brownian_normal(seeds, stream, 0 * ones, ones, 4)
            else:
                z = philox_normal(seeds, stream, 4)
            out[tag] = z.to(F64)
    return out


def _composed_exact(start: torch.Tensor, plan, kicks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The exact probability-flow map (Gaussian oracle, sigma space) composed with the same kicks."""

    def flow(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
        return battery.MU + torch.sqrt(battery.STD**2 + b * b) / torch.sqrt(battery.STD**2 + a * a) * (x - battery.MU)

    x, level = start, float(plan.model_sigma[0] / plan.model_alpha[0])
    for r in plan.extras["restarts"]:
        x = flow(x, level, r["t_min"])
        for k in range(r["repeats"]):
            jump = math.sqrt(r["t_max"] ** 2 - r["t_min"] ** 2)
            x = flow(x + jump * kicks[f"restart:{r['interval']}:{k}"], r["t_max"], r["t_min"])
        level = r["t_min"]
    return flow(x, level, 0.0)


@pytest.mark.parametrize("noise", ["philox", pytest.param("brownian", marks=pytest.mark.slow)])  # slow: W(1) twice
@pytest.mark.parametrize("family", [EDM, FLOW], ids=["edm", "flow_shift3"])
def test_second_order_with_kicks_keyed_by_restart(family, noise: str) -> None:
    """With a fixed seed the kicks are the same at every step count, so the run converges (at order 2) to the
    exact flow composed with those kicks; with the default intervals the backward passes refine too."""
    steps = (8, 16, 32, 64)
    z = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    seeds = samplers.ops.batch_seeds(1234, 256)
    errors = []
    for n in steps:
        s = samplers.get("restart", **family, noise=noise)
        s.set_timesteps(n)
        x, _ = battery.run(s, z, seeds=seeds)
        kicks = _kicks(s.plan, seeds, noise == "brownian")
        assert len(kicks) == 2
        errors.append(float((x - _composed_exact(z * s.init_noise_sigma, s.plan, kicks)).pow(2).mean().sqrt()))
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert abs(battery.fitted_order(errors, steps) - 2) <= 0.35, errors


def test_brownian_kick_is_the_paths_root_increment() -> None:
    for n in (8, 40):
        s = _plan(n, noise="brownian")
        for i, tag in enumerate(s.plan.tags):
            if tag:
                _, interval, k = tag.split(":")
                row = s.plan.rows[i]
                assert (float(row[COEFF["bt0"]]), float(row[COEFF["bt1"]])) == (0.0, 1.0)
                assert int(row[COEFF["stream"]]) == RESTART_STREAM + int(interval) * MAX_REPEATS + int(k)


def test_marginals_kept_at_high_nfe() -> None:
    mean_z, var_z = battery.moments_error("restart", {}, 100, n=4096)
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


def test_fixed_inner_steps_leave_a_bias() -> None:
    """Why the default inner passes follow the main grid: with 3 fixed Heun steps the cycles' own error
    does not shrink as the main grid refines (variance z-score ~10 at 25 and at 100 steps)."""
    config = {"restart_intervals": [[3, 2, 0.1, 2.0]]}
    fixed = [battery.moments_error("restart", config, n, n=2048)[1] for n in (25, 100)]
    assert min(fixed) > 4, fixed


def test_nfe_per_step_is_set_per_run() -> None:
    s = _plan(20)
    assert s.nfe_per_step == math.ceil(len(s.timesteps) / 20) > 2


@pytest.mark.parametrize(
    "bad",
    [[[0, 1, 0.1, 2.0]], [[2, -1, 0.1, 2.0]], [[2, 1, 2.0, 0.1]], [[2, 1, 0.1]], "0.1,2", [[2, 1.5, 0.1, 2.0]]],
)
def test_config_errors(bad) -> None:
    with pytest.raises((ValueError, TypeError), match="restart_intervals"):
        samplers.get("restart", restart_intervals=bad)
