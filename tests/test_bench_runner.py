"""The benchmark runner: accuracy the way theory says, timings, schema, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from samplers.bench import runner as R
from samplers.hookspecs import hookimpl
from samplers.registry import registry
from samplers.schedulers.euler import EulerDiscreteScheduler

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class EpsOnlyEuler(EulerDiscreteScheduler):
    """A 'third-party' scheduler that only takes epsilon outputs."""

    name = "test_bench_eps_only"
    prediction_types = ("epsilon",)


class _Plugin:
    @hookimpl
    def samplers_register_schedulers(self):
        return [EpsOnlyEuler]


@pytest.fixture
def eps_only_plugin():
    reg = registry()
    reg.register(_Plugin(), "test-bench-plugin")
    yield EpsOnlyEuler.name
    reg.pm.unregister(name="test-bench-plugin")
    reg._entries = None


@pytest.fixture(scope="module")
def gaussian_result() -> R.BenchResult:
    cfg = R.BenchConfig(
        schedulers=("euler", "heun", "ddim", "ddpm"), steps=(8, 16, 32), problem="gaussian", samples=600
    )
    return R.run_benchmark(cfg, keep_samples=50)


def test_gaussian_orders_match_theory(gaussian_result):
    orders = gaussian_result.orders
    # ODE error: Euler and DDIM (Euler in VE coordinates) first order, Heun second
    assert orders["euler"]["ode_error"]["order"] == pytest.approx(1.0, abs=0.2)
    assert orders["ddim"]["ode_error"]["order"] == pytest.approx(1.0, abs=0.2)
    assert orders["heun"]["ode_error"]["order"] == pytest.approx(2.0, abs=0.35)
    # exact KL of the output distribution goes like error^2
    assert orders["euler"]["kl_exact"]["order"] == pytest.approx(2.0, abs=0.4)
    assert orders["heun"]["kl_exact"]["order"] > 3.0
    assert "ddpm" not in orders  # stochastic: no ODE reference, no exact output
    for row in gaussian_result.rows:
        if row.scheduler == "ddpm":
            assert math.isnan(row.metrics["ode_error"]) and math.isnan(row.metrics["kl_exact"])
        else:
            assert row.metrics["kl_exact"] >= 0 and row.metrics["ode_error"] > 0


def test_rows_count_nfe_and_time_consistently(gaussian_result):
    for row in gaussian_result.rows:
        assert row.nfe == (2 * row.steps - 1 if row.scheduler == "heun" else row.steps)
        assert row.wall_s > row.model_s > 0
        assert row.step_overhead_ms == pytest.approx(1000 * (row.wall_s - row.model_s) / row.steps)
        assert row.samples_per_s == pytest.approx(600 / row.wall_s)
        assert row.peak_mem_bytes >= 0 and row.peak_mem_kind in ("rss_peak", "ru_maxrss", "cuda_max_allocated")
    t = gaussian_result.timing
    assert t["total_s"] >= t["sampling_s"] + t["metrics_s"]
    assert 0 <= t["harness_fraction"] < 1


def test_exact_output_distribution_matches_the_samples():
    prob = R.get_problem("gaussian")
    rs = R.resolve_scheduler("ddim", R.BenchConfig())
    mean, cov = R._exact_output_gaussian(rs, prob, 12, torch.device("cpu"), "auto")
    noise = R._initial_noise(R.batch_seeds(1, 20000), 2, torch.float64)
    run = R.sample_oracle(R._build_scheduler(rs), prob, noise, R.batch_seeds(1, 20000), 12)
    x = run.samples
    se = (cov.diagonal() / 20000).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0.05, atol=0.02)


def test_same_seed_same_numbers_and_prediction_types_agree():
    base = dict(
        schedulers=("ddim",),
        steps=(10,),
        problem="gmm2d",
        samples=300,
        metrics=("sw", "ode_error"),
        warmup=False,
        ode_samples=50,
    )
    a = R.run_benchmark(R.BenchConfig(**base), keep_samples=300)
    b = R.run_benchmark(R.BenchConfig(**base), keep_samples=300)
    c = R.run_benchmark(R.BenchConfig(**base, seed=1), keep_samples=300)
    assert torch.equal(a.samples["ddim@10"], b.samples["ddim@10"]) and a.rows[0].metrics == b.rows[0].metrics
    assert not torch.equal(a.samples["ddim@10"], c.samples["ddim@10"])
    # the same exact model in every parameterization: same samples up to float32 rounding
    for pt in ("sample", "v_prediction", "flow", "score"):
        other = R.run_benchmark(R.BenchConfig(**base, prediction_type=pt), keep_samples=300)
        assert other.rows[0].prediction_type == pt
        torch.testing.assert_close(other.samples["ddim@10"], a.samples["ddim@10"], rtol=0, atol=2e-4)


def test_heun_beats_euler_at_equal_nfe_on_gmm2d():
    cfg = R.BenchConfig(
        schedulers=("euler", "heun"),
        steps=(40, 80),
        problem="gmm2d",
        samples=400,
        metrics=("ode_error",),
        options={"use_karras_sigmas": True},
        ode_samples=400,
    )
    res = R.run_benchmark(cfg)
    err = {(r.scheduler, r.nfe): r.metrics["ode_error"] for r in res.rows}
    assert err[("heun", 79)] < err[("euler", 80)] / 2


def test_result_json_schema_is_stable(gaussian_result, tmp_path):
    path = R.write_json(gaussian_result, tmp_path / "r.json")
    doc = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert doc["schema_version"] == R.SCHEMA_VERSION == 1
    assert doc["kind"] == "samplers.bench"
    assert set(doc) == {
        "schema_version",
        "kind",
        "config",
        "problem",
        "environment",
        "metric_names",
        "schedulers",
        "noise_floor",
        "rows",
        "orders",
        "timing",
    }
    assert set(doc["schedulers"]) == {"euler", "heun", "ddim", "ddpm"}
    assert doc["schedulers"]["heun"]["config"]["beta_end"] == 0.02  # the bench's model schedule, not Heun's default
    assert doc["schedulers"]["ddim"]["config"]["clip_sample"] is False
    assert "samplers" in doc["schedulers"]["ddim"]["source"]
    assert set(doc["rows"][0]) == {
        "scheduler",
        "steps",
        "nfe",
        "prediction_type",
        "schedule",
        "stochastic",
        "order",
        "metrics",
        "wall_s",
        "model_s",
        "samples_per_s",
        "step_overhead_ms",
        "peak_mem_bytes",
        "peak_mem_kind",
        "metrics_s",
        "error",  # None, or a foreign sampler's run-time failure (samplers.bench.foreign)
    }
    assert doc["rows"][0]["error"] is None
    assert set(doc["config"]) == {
        "schedulers",
        "steps",
        "problem",
        "samples",
        "device",
        "dtype",
        "seed",
        "prediction_type",
        "metrics",
        "schedule",
        "options",
        "ode_samples",
        "backend",
        "warmup",
        "model",  # --model / --data (None on oracle problems)
        "data",
    }
    assert {"torch", "samplers", "device_name", "world_size", "date", "sampler_update_backend"} <= set(
        doc["environment"]
    )
    assert {"total_s", "sampling_s", "model_s", "metrics_s", "reference_s", "harness_s", "harness_fraction"} <= set(
        doc["timing"]
    )
    ddpm = next(r for r in doc["rows"] if r["scheduler"] == "ddpm")
    assert ddpm["metrics"]["ode_error"] is None  # NaN is written as null
    assert doc["metric_names"] == list(R.GAUSSIAN_METRICS)
    assert set(doc["noise_floor"]["sw"]) == {"mean", "std", "sets"}
    assert doc["orders"]["heun"]["ode_error"]["points"] == 3


def test_csv_has_the_fixed_columns(gaussian_result, tmp_path):
    import csv

    path = R.write_csv(gaussian_result, tmp_path / "r.csv")
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == list(R.CSV_COLUMNS)
    assert len(rows) == 12
    assert rows[0]["schema_version"] == "1" and rows[0]["scheduler"] == "euler"
    assert rows[0]["mmd"] == ""  # a metric column that was not computed stays blank
    assert float(rows[0]["ode_error"]) == pytest.approx(gaussian_result.rows[0].metrics["ode_error"], rel=1e-7)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"schedulers": ("eulr",)}, "did you mean 'euler'"),
        ({"steps": (10, 0)}, "integer >= 1"),
        ({"problem": "gmm3d"}, "did you mean 'gmm2d'"),
        ({"metrics": ("sww",)}, "did you mean 'sw'"),
        ({"dtype": "float8"}, "unknown dtype"),
        ({"schedule": "linaer"}, "did you mean 'linear'"),
        ({"samples": 1}, "--samples"),
        ({"options": {"no_such_option": 1}}, "not a config option"),
        ({"prediction_type": "velocity_x"}, "unknown prediction_type"),
        ({"device": "tpu"}, "--device"),
        ({"schedulers": ("flow_euler",), "prediction_type": "epsilon"}, "flow_euler"),
    ],
)
def test_bad_input_is_a_clear_error(changes, message):
    with pytest.raises(R.BenchInputError, match=message):
        R.prepare(R.BenchConfig(**changes))


def test_plugin_scheduler_by_name_and_prediction_type_check(eps_only_plugin):
    cfg = R.BenchConfig(schedulers=(eps_only_plugin,), steps=(5,), samples=200, metrics=("sw",), warmup=False)
    res = R.run_benchmark(cfg)
    assert res.rows[0].scheduler == eps_only_plugin and res.rows[0].metrics["sw"] > 0
    with pytest.raises(R.BenchInputError, match="does not take prediction type 'v_prediction'; it takes epsilon"):
        R.prepare(R.BenchConfig(schedulers=(eps_only_plugin,), prediction_type="v_prediction"))


def test_check_writable(tmp_path):
    assert R.check_writable(tmp_path / "x.json", "--json") == tmp_path / "x.json"
    with pytest.raises(R.BenchInputError, match="does not exist"):
        R.check_writable(tmp_path / "missing" / "x.json", "--json")
    with pytest.raises(R.BenchInputError, match="is a directory"):
        R.check_writable(tmp_path, "--csv")


@pytest.mark.slow
def test_ddpm_at_1000_steps_reaches_the_noise_floor():
    cfg = R.BenchConfig(schedulers=("ddpm",), steps=(1000,), samples=10000, metrics=("sw", "sw1", "mmd"))
    res = R.run_benchmark(cfg)
    for name in ("sw", "sw1", "mmd"):
        floor = res.noise_floor[name]
        assert res.rows[0].metrics[name] <= floor["mean"] + 2 * floor["std"], name
