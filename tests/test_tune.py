"""samplers tune: the tuned grid beats its start on held-out noise, schedule files round-trip and are refused for
another sampler or budget, every scheduler reads them, and diffusers gets them."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

import samplers
from samplers import grids
from samplers import levels as lv
from samplers import tune as T
from samplers.registry import registry

# one torch thread, as the bench and `samplers tune` run: OpenMP workers on a shared 2-core box slow small ops 10x
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def euler_gmm() -> T.TuneResult:
    # small sample counts keep this fast; held-out seeds (0) differ from the tuning seeds (1)
    return T.tune("euler", 8, "gmm2d", samples=64, heldout_samples=128, max_evals=60)


def test_tuned_beats_its_start_on_heldout_seeds(euler_gmm: T.TuneResult) -> None:
    r = euler_gmm
    held = r.heldout
    assert held["seed"] == 0 and r.schedule.meta["tuning_seeds"] == {"seed": 1, "samples": 64}
    assert r.search.value < r.schedule.objective_before  # on the tuning seeds
    start_heldout = held["named"][r.start]
    assert held["tuned"] < start_heldout  # and on seeds it never saw
    assert held["best_named_error"] == min(held["named"].values())
    # monotone, inside the schedule's domain, the start level kept
    levels = torch.tensor(r.schedule.sigmas, dtype=torch.float64)
    assert bool((levels[1:] < levels[:-1]).all())
    lo, hi = lv.reachable_level_range(samplers.get("euler", **_linear()).schedule)
    assert lo <= float(levels.min()) and float(levels.max()) <= hi
    assert float(levels[0]) == pytest.approx(float(r.named[r.start].levels[0]), rel=1e-12)


def _linear() -> dict:
    from samplers.bench.runner import SCHEDULE_PRESETS

    return dict(SCHEDULE_PRESETS["linear"])


def test_schedule_file_round_trip_and_scores_the_same(euler_gmm: T.TuneResult, tmp_path) -> None:
    path = grids.save(euler_gmm.schedule, tmp_path / "euler.json")
    loaded = grids.load(path)
    assert loaded == euler_gmm.schedule
    data = json.loads(path.read_text())
    for key in ("sampler", "nfe", "sigmas", "timesteps", "problem", "model", "objective_before", "objective_after"):
        assert data[key] is not None
    assert data["meta"]["method"] == T.METHOD and data["meta"]["heldout_seeds"]["seed"] == 0
    # the file through sigma_schedule= gives the same run as the tuned levels through sigmas=
    obj = T.Objective("euler", "gmm2d", seed=0, samples=128)
    by_file = obj.error(obj.run(scheduler=obj.build(sigma_schedule=f"file:{path}"), steps=len(loaded.sigmas)))
    assert by_file == pytest.approx(euler_gmm.heldout["tuned"], rel=1e-6)
    # timesteps are the model times of the same levels on the tuned schedule
    sched = samplers.get("euler", **_linear(), sigma_schedule=f"file:{path}")
    sched.set_timesteps(len(loaded.sigmas))
    assert torch.allclose(sched.plan.timesteps.to(torch.float64), torch.tensor(loaded.timesteps, dtype=torch.float64))


def test_file_refused_for_another_sampler_or_budget(euler_gmm: T.TuneResult, tmp_path) -> None:
    path = grids.save(euler_gmm.schedule, tmp_path / "euler.json")
    n = len(euler_gmm.schedule.sigmas)
    other = samplers.get("dpmpp_2m", **_linear(), sigma_schedule=f"file:{path}")
    with pytest.raises(ValueError, match="tuned for sampler 'euler', not 'dpmpp_2m'"):
        other.set_timesteps(n)
    same = samplers.get("euler", **_linear(), sigma_schedule=f"file:{path}")
    with pytest.raises(ValueError, match=f"holds {n} levels .* but this run needs {n + 2}"):
        same.set_timesteps(n + 2)
    with pytest.raises(ValueError, match="tuned for sampler 'euler'"):
        T.load_for(path, "heun")
    same.set_timesteps(n)  # the right sampler and budget: accepted


def test_heun_odd_nfe_names_the_nearest_counts() -> None:
    with pytest.raises(T.TuneError, match=r"heun cannot make exactly 10 .*nearest valid NFE: 9 \(5 steps\) or 11 \(6"):
        T.steps_for_nfe(samplers.get("heun"), 10)
    assert T.steps_for_nfe(samplers.get("heun"), 9) == 5
    assert T.steps_for_nfe(samplers.get("dpmpp_2m"), 10) == 10
    with pytest.raises(T.TuneError, match="-n/--nfe must be an int >= 1"):
        T.steps_for_nfe(samplers.get("euler"), 0)


@pytest.mark.slow  # 2,000 tuning and 10,000 held-out samples (fewer overfit the metric's sampling noise): ~15 s
def test_stochastic_sampler_is_tuned_on_a_distribution_metric() -> None:
    r = T.tune("euler_ancestral", 10, "gmm2d", max_evals=400)
    assert r.schedule.meta["objective"] == "sw"  # one ODE endpoint does not score a sampler that draws noise
    assert r.search.value < r.schedule.objective_before
    assert r.heldout["samples"] == 10000
    assert r.heldout["tuned"] < 0.9 * r.heldout["named"][r.start]  # held out: SW to the exact mixture, fresh noise


def test_distribution_metric_refusals() -> None:
    with pytest.raises(T.TuneError, match="distribution metric .* oracle problems only, not 'digits'"):
        T.Objective("euler_ancestral", "digits", samples=4)
    with pytest.raises(T.TuneError, match="--metric: 'fid' is not one of sw, sw1, mmd, frechet"):
        T.Objective("euler", "gmm2d", samples=4, metric="fid")


def test_inversions_are_refused_with_the_reason() -> None:
    with pytest.raises(T.TuneError, match="runs from data to noise"):
        T.Objective("ddim_inverse", "gmm2d", samples=4)


@pytest.mark.parametrize("name", sorted(registry().available()))
def test_every_scheduler_reads_a_schedule_file(name: str, tmp_path) -> None:
    probe = samplers.get(name)
    n = len(probe.run_levels(6, None, None, None))  # the levels a 6-step run visits (boundaries for some)
    lo, hi = lv.reachable_level_range(probe.schedule)
    lo2, hi2 = lv.level_range(probe.schedule, probe.config)
    levels = grids.exponential(n, sigma_min=max(lo, lo2) * 1.5, sigma_max=min(hi, hi2) / 1.5)
    path = grids.save(
        grids.ScheduleFile(sampler=probe.name, nfe=6, sigmas=tuple(levels.tolist())), tmp_path / "g.json"
    )
    sched = samplers.get(name, sigma_schedule=f"file:{path}")
    sched.set_timesteps(6)
    got = sched.run_levels(6, None, None, None).level.sort(descending=True).values  # inverse samplers ascend
    assert torch.allclose(got.log(), levels.log(), atol=1e-9, rtol=0)


def test_to_diffusers_carries_the_file(euler_gmm: T.TuneResult, tmp_path) -> None:
    pytest.importorskip("diffusers")
    import diffusers

    from samplers.integrations.diffusers import to_diffusers

    path = grids.save(euler_gmm.schedule, tmp_path / "euler.json")
    n = len(euler_gmm.schedule.sigmas)
    want = torch.tensor([*euler_gmm.schedule.sigmas, 0.0])
    wrapper = to_diffusers(samplers.get("euler", **_linear(), sigma_schedule=f"file:{path}"))
    wrapper.set_timesteps(n)
    assert torch.allclose(wrapper.sigmas.to(torch.float64), want.to(torch.float64), rtol=1e-6)
    # diffusers' own Euler with the same training table takes the file's levels as custom sigmas
    native = diffusers.EulerDiscreteScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    T.apply_to_diffusers(native, path)
    assert torch.allclose(native.sigmas.to(torch.float64), want.to(torch.float64), rtol=1e-6)
    assert len(native.timesteps) == n


def test_interpolate_levels_keeps_the_ends_and_is_log_linear() -> None:
    levels = torch.tensor([100.0, 10.0, 1.0, 0.1], dtype=torch.float64)
    out = T.interpolate_levels(levels, 7)
    assert out.shape == (7,)
    assert float(out[0]) == pytest.approx(100.0) and float(out[-1]) == pytest.approx(0.1)
    assert torch.allclose(out.log().diff(), torch.full((6,), -math.log(10) / 2, dtype=torch.float64))
    assert torch.equal(T.interpolate_levels(levels, 4), levels)


def test_pattern_search_finds_a_known_minimum() -> None:
    # a separable quadratic in log sigma with its minimum at known levels: the search must get there
    target = torch.log(torch.tensor([50.0, 12.0, 3.0, 0.7, 0.2], dtype=torch.float64))

    def f(levels: torch.Tensor) -> float:
        return float(((levels.log() - target) ** 2).sum())

    start = torch.tensor([50.0, 20.0, 8.0, 2.0, 0.5], dtype=torch.float64)
    res = T.pattern_search(f, start, lower=0.05, max_evals=2000, min_step=1e-5)
    assert res.value < 1e-6 and float(res.levels[0]) == 50.0
    assert bool((res.levels[1:] < res.levels[:-1]).all())


def test_log_gap_coordinates_round_trip_and_stay_inside_the_range() -> None:
    coords = T.LogGapCoordinates(80.0, 0.002)
    levels = torch.tensor([80.0, 20.0, 3.0, 0.5, 0.01], dtype=torch.float64)
    torch.testing.assert_close(coords.levels(coords.weights(levels)), levels, rtol=1e-12, atol=0)
    for seed in range(5):  # any coordinates: the first level kept, strictly descending, above the lower end
        grid = coords.levels(torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 3)
        assert float(grid[0]) == 80.0 and bool((grid[1:] < grid[:-1]).all()) and float(grid[-1]) > 0.002
    with pytest.raises(ValueError, match="0 < lower < top"):
        T.LogGapCoordinates(1.0, 2.0)


def test_powell_search_finds_a_known_minimum_and_keeps_to_its_budget() -> None:
    # a coupled quadratic in log sigma (the levels' log-gaps interact): Powell's directions handle the coupling
    target = torch.log(torch.tensor([50.0, 12.0, 3.0, 0.7, 0.2], dtype=torch.float64))

    def f(levels: torch.Tensor) -> float:
        d = levels.log() - target
        return float((d**2).sum() + 0.9 * (d[1:] * d[:-1]).sum())

    start = torch.tensor([50.0, 20.0, 8.0, 2.0, 0.5], dtype=torch.float64)
    res = T.powell_search(f, start, lower=0.05, max_evals=3000)
    assert res.value < 1e-8 and float(res.levels[0]) == 50.0 and res.evaluations <= 3000
    assert bool((res.levels[1:] < res.levels[:-1]).all())
    capped = T.powell_search(f, start, lower=0.05, max_evals=25)
    assert capped.evaluations == 25 and capped.value <= f(start)  # the best grid seen within the budget
    # the tuner's search: compass, then Powell; from the optimum itself the compass search cannot move, so the
    # whole rest of the budget goes to one Powell run from the start (no second run from the same grid)
    at_optimum = torch.exp(target)
    found = T.search(f, at_optimum, lower=0.05, max_evals=400)
    assert set(found.stages) == {"compass", "powell from the start"} and found.evaluations <= 400
    assert found.value == pytest.approx(0.0, abs=1e-12)
    moved = T.search(f, start, lower=0.05, max_evals=400)
    assert set(moved.stages) == {"compass", "powell from the start", "powell from compass"}
    assert moved.evaluations <= 400 and moved.value == min(moved.stages.values()) < 1e-4


@pytest.mark.slow  # ~5,000 runs of a 10-NFE multistep sampler on 64 samples: ~25 s on the loaded 2-core CPU
def test_powell_stage_reaches_a_basin_the_compass_search_stops_short_of() -> None:
    """DPM-Solver++(2M) on gmm2d at 10 NFE: the tuner's search (compass, then Powell from the start and from the
    compass result) ends well below the compass search alone (benchmarks/tune_bound.py, 256 samples: 0.0016 against
    the compass search's 0.0070)."""
    obj = T.Objective("dpmpp_2m", "gmm2d", samples=64)
    start = T.best_named(obj.named(T.steps_for_nfe(obj.scheduler, 10)))
    assert start.levels is not None
    lower = T._lower_end(obj)
    compass = T.pattern_search(obj, start.levels, lower=lower, max_evals=1000)
    found = T.search(obj, start.levels, lower=lower, max_evals=4000)
    assert set(found.stages) == {"compass", "powell from the start", "powell from compass"}
    assert found.value == min(found.stages.values()) and found.evaluations <= 4000
    # 64 samples here (0.0033 vs 0.0059 when written); the compass search alone still gains 9x on its start
    assert found.value < 0.7 * compass.value < 0.7 * start.error / 5, (found.stages, compass.value, start.error)


def test_missing_scipy_is_a_clear_error_before_any_work(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # what an install without the bench extra sees
    t0 = time.perf_counter()
    with pytest.raises(T.TuneError, match=r"samplers tune needs scipy .*pip install 'samplers\[bench\]'"):
        T.tune("euler", 8, "gmm2d", samples=16)
    assert time.perf_counter() - t0 < 1.0  # refused up front, not after the named grids and the search


def test_compass_search_reaches_what_independent_optimisers_reach() -> None:
    """On Euler's real objective (gmm2d, 8 NFE, from the best named grid's start) the compass search ends where
    scipy's Nelder-Mead and L-BFGS with exact gradients through an independent Euler loop end (and the loop
    reproduces the objective): where a tuned Euler grid gains little, the sampler is the limit, not the search
    (benchmarks/tune_bound.py, RESULTS.md)."""
    import sys
    from pathlib import Path

    pytest.importorskip("scipy")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import tune_bound as B
    finally:
        sys.path.pop(0)
    row = B.bound_row("euler", "gmm2d", nfe=8, max_evals=400, restarts=0, samples=64)
    found = row["optimisers"]
    assert set(found) >= {"compass", "nelder-mead from named", "powell from named", "lbfgs-autograd from named"}
    assert found["compass"] < row["best_named_error"]  # the search gains ...
    assert found["compass"] <= 1.005 * min(found.values())  # ... all any of them finds, to 0.5 %
    assert row["bound_ratio"] < 1.5  # and Euler's grid cannot gain much here: the number the docs quote


def test_cli_tune_writes_a_file_bench_scores(tmp_path) -> None:
    from typer.testing import CliRunner

    from samplers.cli import app

    out = tmp_path / "t.json"
    args = ["tune", "-s", "dpmpp_2m", "-n", "6", "--samples", "32", "--heldout-samples", "64", "--max-evals", "30"]
    res = CliRunner().invoke(app, [*args, "--no-transfer", "-O", str(out)])
    assert res.exit_code == 0, res.output
    assert "held out: tuned" in res.output and out.exists()
    loaded = grids.load(out)
    assert loaded.sampler == "dpmpp_2m" and loaded.nfe == 6
    bench = CliRunner().invoke(
        app,
        [
            "bench",
            "--schedule-file",
            str(out),
            "--samples",
            "64",
            "-m",
            "ode_error",
            "-q",
            "--json",
            str(tmp_path / "b.json"),
        ],
    )
    assert bench.exit_code == 0, bench.output
    row = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert row["scheduler"] == "dpmpp_2m" and row["steps"] == 6 and row["nfe"] == 6
    assert row["metrics"]["ode_error"] == pytest.approx(loaded.meta["heldout"]["tuned"], rel=1e-5)
    wrong = CliRunner().invoke(app, ["bench", "--schedule-file", str(out), "-s", "euler"])
    assert wrong.exit_code == 2 and "tuned for 'dpmpp_2m'" in wrong.output
    odd = CliRunner().invoke(app, ["tune", "-s", "heun", "-n", "10", "-O", str(tmp_path / "h.json")])
    assert odd.exit_code == 2 and "nearest valid NFE: 9" in odd.output


def test_docs_snippet_runs(tmp_path, monkeypatch) -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "tune.md").read_text()
    (code,) = re.findall(r"<!-- snippet: use -->\s*```python\n(.*?)```", text, re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/tune.md", "exec"), namespace)
    assert (tmp_path / "euler-8.json").exists()
    assert namespace["native"].sigmas[0] == pytest.approx(namespace["result"].schedule.sigmas[0], rel=1e-6)


# --------------------------------------------------------------------------------------------
# --model: a trained network (tests/bench_models.py), scored against the bench's reference solve
# --------------------------------------------------------------------------------------------

TINY = "bench_models:make_tiny"


@pytest.fixture(scope="module")
def tiny_tuned(tmp_path_factory) -> tuple[str, grids.ScheduleFile, str]:
    """`samplers tune --model` on the tiny conv net: 8 tuning / 16 held-out samples, 40 runs (~5 s, most of it the
    reference solves of the named grids' three starts)."""
    from typer.testing import CliRunner

    from samplers.cli import app

    out = tmp_path_factory.mktemp("tiny") / "tiny.json"
    args = ["tune", "-s", "euler", "-n", "6", "--model", TINY, "--samples", "8", "--heldout-samples", "16"]
    res = CliRunner().invoke(app, [*args, "--max-evals", "40", "--no-transfer", "-O", str(out)])
    assert res.exit_code == 0, res.output
    return str(out), grids.load(out), res.output


@pytest.mark.slow  # one tuning run on a network (~5 s on the 2-core CPU), shared with the bench round trip below
def test_model_tuned_grid_beats_the_best_named_on_heldout_seeds(tiny_tuned) -> None:
    _, tuned, output = tiny_tuned
    meta = tuned.meta
    held = meta["heldout"]
    # what it was tuned on: the spec --model takes again, the network's own training schedule
    assert tuned.model == TINY and tuned.problem is None and tuned.sampler == "euler" and tuned.nfe == 6
    assert meta["model_spec"] == TINY and meta["data"] is None and meta["schedule"] == "model"
    assert meta["model_description"]["training_schedule"] == "linear, 1000 timesteps"
    assert meta["tuning_seeds"] == {"seed": 1, "samples": 8} and meta["heldout_seeds"] == {"seed": 0, "samples": 16}
    # the real numbers: tuned below its start on the tuning seeds, and below every named grid on held-out seeds
    assert tuned.objective_after < tuned.objective_before
    assert held["best_named_error"] == min(held["named"].values())
    assert held["tuned"] <= held["best_named_error"]
    assert held["tuned"] < held["named"][meta["start"]]
    # the references were tightened to the bench's margin below the errors they score
    assert 0 < meta["reference_error"] * 20 <= tuned.objective_after
    assert 0 < held["reference_error"] * 20 <= held["tuned"]
    # and the CLI reported those numbers
    assert f"on --model {TINY}, schedule model" in output
    assert (
        f"held out: tuned {held['tuned']:.4g} vs best named {held['best_named']} {held['best_named_error']:.4g}"
        in (output.replace("\n", " "))
    )
    levels = torch.tensor(tuned.sigmas, dtype=torch.float64)
    assert bool((levels[1:] < levels[:-1]).all())


@pytest.mark.slow  # a bench run with a reference solve (~1 s) on the tuning run above
def test_model_schedule_file_round_trips_into_bench(tiny_tuned, tmp_path) -> None:
    from typer.testing import CliRunner

    from samplers.cli import app

    path, tuned, _ = tiny_tuned
    want = tuned.meta["heldout"]["tuned"]
    common = ["--schedule-file", path, "--samples", "16", "--ode-samples", "16", "-m", "ode_error", "-q"]
    for extra in (["--model", TINY], []):  # without --model the file's own network is benched
        out = tmp_path / f"b{len(extra)}.json"
        res = CliRunner().invoke(app, ["bench", *extra, *common, "--json", str(out)])
        assert res.exit_code == 0, res.output
        result = json.loads(out.read_text())
        (row,) = result["rows"]
        assert result["problem"]["spec"] == TINY and row["schedule"] == "model"
        assert (row["scheduler"], row["steps"], row["nfe"]) == ("euler", 6, 6)
        assert row["metrics"]["ode_error"] == pytest.approx(want, rel=1e-9)  # the same seeds, the same reference
    # -p says where to score it instead: the grid runs on that oracle problem, on the problem's schedule
    out = tmp_path / "on-gmm2d.json"
    res = CliRunner().invoke(app, ["bench", "-p", "gmm2d", *common, "--json", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert result["problem"]["spec"] == "gmm2d" and row["schedule"] == "linear" and row["steps"] == 6
    assert math.isfinite(row["metrics"]["ode_error"])
    # and an oracle problem with a network is refused, naming both
    res = CliRunner().invoke(app, ["bench", "-p", "gmm2d", "--model", TINY, *common])
    assert res.exit_code == 2 and "-p/--problem 'gmm2d' and --model 'bench_models:make_tiny'" in res.output


def test_model_and_problem_are_exclusive_and_data_needs_a_model() -> None:
    with pytest.raises(T.TuneError, match="-p/--problem 'gmm2d' and --model 'bench_models:make_tiny'.* not both"):
        T.Objective("euler", "gmm2d", model=TINY, samples=4)
    with pytest.raises(T.TuneError, match="--data: the data set of a --model network; give --model too"):
        T.tune("euler", 6, data="digits.npy")
    with pytest.raises(T.TuneError, match="--schedule 'linear': a --model network is tuned on its own training"):
        T.Objective("euler", model=TINY, schedule="linear", samples=4)
    with pytest.raises(T.TuneError, match="--schedule model: the training schedule of a --model network"):
        T.Objective("euler", "gmm2d", schedule="model", samples=4)


def test_stochastic_sampler_on_a_model_is_refused_with_the_reason() -> None:
    with pytest.raises(T.TuneError, match="distribution metric .* oracle problems only, not --model 'bench_models:"):
        T.Objective("euler_ancestral", model=TINY, samples=4)
    with pytest.raises(T.TuneError, match="--metric .*oracle problems only, not --model"):
        T.Objective("euler", model=TINY, samples=4, metric="sw")


def test_model_objective_runs_on_the_training_schedule() -> None:
    # no tuning: the objective's scheduler is on the network's own schedule and a run makes its NFE at the network
    obj = T.Objective("dpmpp_2m", model=TINY, samples=2)
    assert obj.schedule_preset == "model" and not obj.exact and obj.model_spec == TINY
    assert obj.resolved.config["beta_schedule"] == "linear" and obj.resolved.config["num_train_timesteps"] == 1000
    assert obj.samples == 2 and T.Objective("dpmpp_2m", model=TINY).samples == T.SAMPLES["model"][0]
    run = obj.run(scheduler=obj.build(), steps=3)
    assert run.calls == 3 and run.samples.shape == (2, 16) and bool(torch.isfinite(run.samples).all())


def test_cli_model_input_errors_are_the_bench_s(tmp_path) -> None:
    from typer.testing import CliRunner

    from samplers.cli import app

    base = ["-s", "euler", "-n", "6", "-O", str(tmp_path / "t.json")]
    cases = [
        (["--model", "no_such_folder"], "--model 'no_such_folder': no such file or folder"),
        (["--model", "bench_models:make_wrong_shape"], "the model returned shape (2, 1, 3, 4)"),
        (["--model", TINY, "--data", str(tmp_path / "none.npy")], "--data"),
    ]
    for extra, message in cases:
        tune = CliRunner().invoke(app, ["tune", *base, *extra])
        bench = CliRunner().invoke(app, ["bench", "-s", "euler", "--steps", "6", *extra])
        assert tune.exit_code == 2 and bench.exit_code == 2, (tune.output, bench.output)
        assert message in tune.output and "Traceback" not in tune.output
        assert tune.output.strip() == bench.output.strip()  # the bench's own message, word for word
    both = CliRunner().invoke(app, ["tune", *base, "-p", "gmm2d", "--model", TINY])
    assert both.exit_code == 2 and "not both" in both.output
    data_only = CliRunner().invoke(app, ["tune", *base, "--data", "x.npy"])
    assert data_only.exit_code == 2 and "give --model too" in data_only.output
    assert not (tmp_path / "t.json").exists()
