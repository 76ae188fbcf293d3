"""Foreign samplers in ``samplers bench``: diffusers classes and k-diffusion-style functions through adapters.

The equivalence tests pin that the adapters add nothing of their own: diffusers' DDIMScheduler and
k-diffusion's ``sample_euler`` on the same problem, seeds and steps give our ``ddim`` / ``euler`` rows'
samples and metrics to float rounding (float32 samples, float64 oracle).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import math
import time

import diffusers
import pytest
import torch
import typer
from typer.testing import CliRunner

from samplers.bench import foreign
from samplers.bench import runner as R
from samplers.bench.command import bench

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIFFUSERS = f"diffusers {diffusers.__version__}"
KD = f"k-diffusion {importlib.metadata.version('k-diffusion')}"


def _run(schedulers, steps=(4, 10), problem="gmm2d", samples=256, keep=256, **kw) -> R.BenchResult:
    cfg = R.BenchConfig(
        schedulers=tuple(schedulers),
        steps=tuple(steps),
        problem=problem,
        samples=samples,
        ode_samples=min(samples, 64),
        warmup=False,
        metrics=kw.pop("metrics", ("sw", "ode_error")),
        **kw,
    )
    return R.run_benchmark(cfg, keep_samples=keep)


def _rows(result: R.BenchResult, name: str) -> list[R.BenchRow]:
    rows = [r for r in result.rows if r.scheduler == name]
    assert rows, f"no row {name!r} in {[r.scheduler for r in result.rows]}"
    return rows


def _assert_same(result: R.BenchResult, ours: str, theirs: str, atol: float = 2e-5) -> None:
    for a, b in zip(_rows(result, ours), _rows(result, theirs), strict=True):
        assert (a.steps, a.nfe, a.stochastic) == (b.steps, b.nfe, b.stochastic)
        assert b.error is None
        xa, xb = result.samples[f"{ours}@{a.steps}"], result.samples[f"{theirs}@{b.steps}"]
        assert torch.allclose(xa, xb, rtol=0, atol=atol), float((xa - xb).abs().max())
        for m, v in a.metrics.items():
            assert math.isfinite(v) and math.isclose(v, b.metrics[m], rel_tol=1e-4, abs_tol=1e-6), (m, v, b.metrics[m])


# --------------------------------------------------------------------------------------------
# The adapters reproduce our own samplers
# --------------------------------------------------------------------------------------------


def test_diffusers_ddim_gives_our_ddim():
    """Both in their defaults: leading spacing, steps_offset 0, set_alpha_to_one, eta 0 (clipping off for both)."""
    name = f"{DIFFUSERS}: DDIMScheduler"
    result = _run(["ddim", "diffusers:DDIMScheduler"], steps=(4, 13))
    _assert_same(result, "ddim", name)
    assert [r.nfe for r in _rows(result, name)] == [4, 13]
    assert all(math.isfinite(r.metrics["ode_error"]) for r in result.rows)  # the ODE start came from the first call


def test_diffusers_ddim_exact_gaussian_output():
    """The exact output law on the Gaussian problem (the affine probe) goes through the adapter too."""
    name = f"{DIFFUSERS}: DDIMScheduler"
    result = _run(
        ["ddim", "diffusers:DDIMScheduler"], steps=(6,), problem="gaussian", metrics=("kl_exact", "ode_error")
    )
    _assert_same(result, "ddim", name)


@pytest.mark.parametrize(
    ("steps", "options"),
    [
        # k-diffusion's DiscreteSchedule.get_sigmas interpolates log-sigma between training timesteps, our
        # euler (diffusers' linspace) sigma itself: they coincide where every timestep is an integer,
        # linspace(999, 0, n) with 999 / (n - 1) integral.
        ((4, 10), {}),
        # Karras sigmas between the model's sigma_min and sigma_max (rho 7): one grid for both at any n.
        ((5, 13), {"use_karras_sigmas": True}),
    ],
)
def test_k_diffusion_sample_euler_gives_our_euler(steps, options):
    name = f"{KD}: sample_euler"
    result = _run(["euler", "k-diffusion:sample_euler"], steps=steps, options=options)
    _assert_same(result, "euler", name)


def test_diffusers_heun_nfe_is_counted_at_the_model():
    """Heun: 2 steps - 1 model calls (the last step is Euler), counted, not its ``order`` (2) times steps."""
    name = f"{DIFFUSERS}: HeunDiscreteScheduler"
    result = _run(["heun", "diffusers:HeunDiscreteScheduler"], steps=(4, 10))
    assert [r.nfe for r in _rows(result, name)] == [7, 19]
    # diffusers' sigma-space classes derive sigmas from float32 alphas_cumprod: at t = 0, 1 - abar loses
    # ~1e-4 of its value (its sigma_min is 0.0100013 where the float64 schedule has 0.0100005), and the
    # oracle is evaluated at the timestep's exact level. Our heun mirrors diffusers' rule in float64.
    _assert_same(result, "heun", name, atol=1e-3)


def sample_twice(model, x, sigmas, extra_args=None, callback=None, disable=None, repeat=2):
    """A k-diffusion-style Euler that calls the model ``repeat`` times per step (NFE test)."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        for _ in range(repeat):
            denoised = model(x, sigmas[i] * s_in, **extra_args)
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def test_nfe_counts_every_model_call_and_spec_options():
    result = _run(
        ["test_bench_foreign:sample_twice", "test_bench_foreign:sample_twice:repeat=3", "k-diffusion:sample_euler"],
        steps=(4,),
    )
    twice, thrice, euler = (r for r in result.rows)
    assert (twice.nfe, thrice.nfe, euler.nfe) == (8, 12, 4)
    assert thrice.scheduler.endswith("sample_twice(repeat=3)")
    # the same Euler steps, whatever the extra calls: the same samples as k-diffusion's own
    s = result.samples
    assert torch.allclose(s[f"{twice.scheduler}@4"], s[f"{euler.scheduler}@4"], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Labels, files, stochastic rows
# --------------------------------------------------------------------------------------------


def test_labels_carry_library_and_version_in_json_and_csv(tmp_path):
    result = _run(["ddim", "diffusers:DDIMScheduler", "k-diffusion:sample_euler_ancestral"], steps=(4,), keep=0)
    R.write_json(result, tmp_path / "r.json")
    R.write_csv(result, tmp_path / "r.csv")
    doc = json.loads((tmp_path / "r.json").read_text())
    names = [r["scheduler"] for r in doc["rows"]]
    assert names == ["ddim", f"{DIFFUSERS}: DDIMScheduler", f"{KD}: sample_euler_ancestral"]
    with open(tmp_path / "r.csv") as f:
        assert [r["scheduler"] for r in csv.DictReader(f)] == names
    info = doc["schedulers"][f"{DIFFUSERS}: DDIMScheduler"]
    assert info["foreign"] == {
        "spec": "diffusers:DDIMScheduler",
        "adapter": "diffusers",
        "library": "diffusers",
        "version": diffusers.__version__,
    }
    assert info["config"]["clip_sample"] is False and info["config"]["beta_schedule"] == "linear"
    rows = {r["scheduler"]: r for r in doc["rows"]}
    # stochasticity is measured: the ancestral sampler's output depends on its seed, DDIM's does not
    assert rows[f"{KD}: sample_euler_ancestral"]["stochastic"] is True
    assert rows[f"{KD}: sample_euler_ancestral"]["metrics"]["ode_error"] is None  # no ODE error for SDE rows
    assert rows[f"{DIFFUSERS}: DDIMScheduler"]["stochastic"] is False


def test_plot_legend_has_the_label(tmp_path):
    pytest.importorskip("matplotlib")
    from samplers.bench.plots import plot_result

    result = _run(["ddim", "diffusers:DDIMScheduler"], steps=(4, 8), keep=64)
    fig_path = tmp_path / "p.png"
    plot_result(result, fig_path)
    assert fig_path.stat().st_size > 0
    import matplotlib.pyplot as plt

    plt.close("all")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nosuchlib_xyz:Foo", "unknown library prefix 'nosuchlib_xyz'"),
        ("samplers.no_such_module:Foo", "cannot import module 'samplers.no_such_module'"),
        ("diffusers:DDIMSchedulr", "has no attribute 'DDIMSchedulr'; did you mean 'DDIMScheduler'"),
        ("diffusers:UNet2DModel", "diffusers.UNet2DModel is not a scheduler class"),
        ("os.path:join", "neither a diffusers scheduler class"),
        ("k-diffusion:sample_dpm_fast", "not a k-diffusion sampler taking a sigma grid"),
        ("diffusers:DDIMScheduler:no_such_option=1", "DDIMScheduler takes no option 'no_such_option'"),
        ("diffusers:", "expected PREFIX:NAME"),
    ],
)
def test_bad_spec_fails_before_any_sampling(spec, expected, monkeypatch):
    def no_sampling(*a, **k):
        raise AssertionError("sampled before the input was checked")

    monkeypatch.setattr(R, "sample_oracle", no_sampling)
    with pytest.raises(R.BenchInputError) as info:
        _run(["ddim", spec], steps=(4,))
    assert expected in str(info.value) and repr(spec) in str(info.value)


def test_schedule_a_diffusers_class_cannot_express_is_refused():
    with pytest.raises(R.BenchInputError, match=r"cannot express the model's schedule \(edm\)"):
        R.prepare(R.BenchConfig(schedulers=("diffusers:DDIMScheduler",), steps=(4,), schedule="edm"))
    with pytest.raises(R.BenchInputError, match="neither a beta schedule nor a flow shift"):
        R.prepare(R.BenchConfig(schedulers=("diffusers:EDMEulerScheduler",), steps=(4,)))


def test_cli_bad_spec_exits_2_and_writes_nothing(tmp_path):
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("bench")(bench)
    app.command("noop")(lambda: None)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["bench", "-s", "ddim,diffusers:NoSuchScheduler", "-n", "4", "--json", str(out)])
    assert res.exit_code == 2
    assert "diffusers:NoSuchScheduler" in (getattr(res, "stderr", "") or res.output)
    assert not out.exists()


class BrokenStep(diffusers.DDIMScheduler):
    """A scheduler class that constructs and sets its timesteps, then raises in step()."""

    def step(self, model_output, timestep, sample, *args, **kwargs):
        raise RuntimeError("boom in step")


class BrokenInit(diffusers.DDIMScheduler):
    """A scheduler class whose constructor raises."""

    def __init__(self, *args, **kwargs):
        raise ValueError("boom in __init__")


def test_failing_foreign_class_is_its_rows_error_and_the_run_completes(tmp_path):
    result = _run(
        ["ddim", "test_bench_foreign:BrokenStep", "test_bench_foreign:BrokenInit", "k-diffusion:sample_euler"],
        steps=(4, 8),
        keep=0,
    )
    by = {}
    for r in result.rows:
        by.setdefault(r.scheduler.split(": ")[-1], []).append(r)
    for r in by["BrokenStep"]:
        assert r.error is not None and "boom in step" in r.error and r.metrics == {} and math.isnan(r.wall_s)
    for r in by["BrokenInit"]:
        assert r.error is not None and "constructing BrokenInit" in r.error and "boom in __init__" in r.error
    for name in ("ddim", "sample_euler"):
        assert [r.steps for r in by[name]] == [4, 8]
        assert all(r.error is None and math.isfinite(r.metrics["ode_error"]) for r in by[name])
    R.write_json(result, tmp_path / "r.json")
    R.write_csv(result, tmp_path / "r.csv")
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert ["boom in step" in (r["error"] or "") for r in rows] == [
        False,
        False,
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    with open(tmp_path / "r.csv") as f:
        assert sum("boom" in r["error"] for r in csv.DictReader(f)) == 4
    # the table shows the rows and says why they are blank
    from rich.console import Console

    from samplers.bench.command import render

    console = Console(record=True, width=200)
    render(result, console)
    text = console.export_text()
    assert "BrokenStep x4: BrokenStep: RuntimeError: boom in step" in text


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def test_scheduler_list_keeps_spec_options_together():
    text = "ddim,diffusers:DPMSolverMultistepScheduler:solver_order=3,use_karras_sigmas=true,euler"
    assert foreign.split_scheduler_list(text) == (
        "ddim",
        "diffusers:DPMSolverMultistepScheduler:solver_order=3,use_karras_sigmas=true",
        "euler",
    )


def test_global_option_reaches_foreign_classes_and_step_keywords():
    """``-o use_lu_lambdas=true`` (only diffusers takes it) passes; ``eta`` is diffusers DDIM's step keyword."""
    cfg = R.BenchConfig(
        schedulers=("ddim", "diffusers:DPMSolverMultistepScheduler", "diffusers:DDIMScheduler"),
        steps=(4,),
        options={"use_lu_lambdas": True, "eta": 0.0},
    )
    prepared = R.prepare(cfg)
    dpm, ddim = prepared.schedulers[1], prepared.schedulers[2]
    assert dpm.config["use_lu_lambdas"] is True
    assert ddim.step_options == {"eta": 0.0} and "eta" not in ddim.config
    with pytest.raises(R.BenchInputError, match="not a config option of any"):
        R.prepare(R.BenchConfig(schedulers=("ddim", "diffusers:DDIMScheduler"), steps=(4,), options={"nope": 1}))


# --------------------------------------------------------------------------------------------
# The overhead of the adapter (issue 15: <= 5 % over the same sampler run natively)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_adapter_overhead_is_within_five_percent():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import bench_foreign_overhead as B
    finally:
        sys.path.pop(0)
    t0 = time.perf_counter()
    report = B.measure(samples=10_000, steps=50, repeats=5)
    assert time.perf_counter() - t0 < 300
    assert report["max_abs_diff"] == 0.0  # the same numbers both ways (same class, oracle, noise, seed)
    assert min(report["ratio"], report["ratio_min"]) <= 1.05, report  # median or least-disturbed repeat


def test_flow_matching_class_keeps_its_family_and_gives_our_flow_euler():
    """diffusers' FlowMatchEuler (shift 1, no init_noise_sigma, no scale_model_input) next to our flow_euler."""
    name = f"{DIFFUSERS}: FlowMatchEulerDiscreteScheduler"
    result = _run(["flow_euler", "diffusers:FlowMatchEulerDiscreteScheduler"], steps=(4, 9), problem="gaussian")
    assert {r.schedule for r in _rows(result, name)} == {"own default"}
    _assert_same(result, "flow_euler", name)


def test_a_module_that_fails_while_importing_is_its_rows_error(tmp_path, monkeypatch):
    """A path that does not resolve is bad input (refused before sampling, above); a module that exists and
    raises while importing -- its own code, or a dependency it lacks -- is that sampler's rows' error and the
    rest of the run completes."""
    (tmp_path / "raises_on_import.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "lacks_a_dependency.py").write_text("import no_such_dependency_xyz  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = _run(["raises_on_import:Sampler", "ddim", "lacks_a_dependency:Sampler"], steps=(4, 8))
    ddim = [r for r in result.rows if r.scheduler == "ddim"]
    assert [r.steps for r in ddim] == [4, 8]
    assert all(r.error is None and math.isfinite(r.metrics["ode_error"]) for r in ddim)
    assert {r.scheduler for r in result.rows if r.error} == {
        "raises_on_import ?: Sampler",
        "lacks_a_dependency ?: Sampler",
    }
    for needle in ("boom at import", "no_such_dependency_xyz"):
        rows = [r for r in result.rows if needle in (r.error or "")]
        assert [r.steps for r in rows] == [4, 8], needle
        assert all(r.metrics == {} and r.nfe == 0 for r in rows)
