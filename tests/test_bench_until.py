"""``samplers bench --until``: the fewest steps reaching a target, found by a search that reuses runs; the
error-vs-NFE figure (log-log, a line per sampler, the noise-floor band)."""

from __future__ import annotations

import csv
import json
import math

import pytest
from typer.testing import CliRunner

from samplers.bench import runner as R
from samplers.bench import until as U
from samplers.bench.distributed import DistContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGET = 0.05
GAUSSIAN = dict(problem="gaussian", samples=300, ode_samples=300, metrics=("sw", "ode_error"), warmup=False)


def _search(target: str | float, lo: int, hi: int, schedulers: tuple[str, ...], keep: int = 0, **config):
    search = U.UntilSearch(U.UntilSpec(target, lo, hi))
    cfg = R.BenchConfig(schedulers=schedulers, steps=(lo, hi), **{**GAUSSIAN, **config})
    result = R.run_benchmark(cfg, keep_samples=keep, search=search)
    result.until = U.summarize(result, search.spec)
    return result


@pytest.fixture(scope="module")
def gaussian_until() -> R.BenchResult:
    return _search(TARGET, 2, 256, ("euler", "heun", "ddpm"), keep=100)


def test_answer_is_the_smallest_step_count_below_the_target(gaussian_until):
    """The answer reaches the target, and a fresh run one step below it does not (for a first- and a
    second-order sampler, both searched on the ODE error)."""
    for name in ("euler", "heun"):
        entry = gaussian_until.until["samplers"][name]
        assert entry["metric"] == "ode_error" and entry["reached"], entry
        steps, error = entry["steps"], entry["error"]
        assert error <= TARGET and steps > 2
        fresh = R.run_benchmark(R.BenchConfig(schedulers=(name,), steps=(steps - 1, steps), **GAUSSIAN))
        below, at = (r.metrics["ode_error"] for r in fresh.rows)
        assert below > TARGET, (name, steps, below)
        assert at == pytest.approx(error, rel=1e-12)  # the search's run is the run
        assert entry["below"] == {"steps": steps - 1, "nfe": fresh.rows[0].nfe, "error": pytest.approx(below)}
        assert entry["nfe"] == (2 * steps - 1 if name == "heun" else steps)  # NFE counted at the model
    euler, heun = (gaussian_until.until["samplers"][n] for n in ("euler", "heun"))
    assert heun["nfe"] < euler["nfe"] / 2  # second order needs far fewer evaluations for the same error


def test_stochastic_sampler_is_judged_on_the_distribution_metric(gaussian_until):
    ddpm = gaussian_until.until["samplers"]["ddpm"]
    assert ddpm["metric"] == "sw"  # no ODE error for a stochastic sampler
    floor = gaussian_until.noise_floor["sw"]["mean"]
    assert ddpm["floor"] == floor and TARGET < floor  # 0.05 is below SW's sampling noise at 300 samples
    assert not ddpm["reached"] and ddpm["max_steps"] == 256
    best = min(r.metrics["sw"] for r in gaussian_until.rows if r.scheduler == "ddpm")
    assert ddpm["best"]["error"] == best
    line = U.describe("ddpm", ddpm, gaussian_until.until)
    assert "does not reach SW2 <= 0.05" in line and "below its noise floor" in line and "within 256 NFE" in line


def test_search_runs_each_step_count_once_and_counts_calls_at_the_model(monkeypatch):
    calls = {"n": 0}

    class CountingOracle(R.OracleModel):
        def __call__(self, *args, **kwargs):
            calls["n"] += 1
            return super().__call__(*args, **kwargs)

        def at(self, *args, **kwargs):
            calls["n"] += 1
            return super().at(*args, **kwargs)

    monkeypatch.setattr(R, "OracleModel", CountingOracle)
    result = _search(TARGET, 2, 256, ("euler",))
    pairs = [(r.scheduler, r.steps) for r in result.rows]
    assert len(pairs) == len(set(pairs))  # nothing ran twice
    assert calls["n"] == sum(r.nfe for r in result.rows) == result.until["samplers"]["euler"]["model_calls"]
    # bracketing 2..2^k then bisection down to neighbours: about 2 log2(answer) runs, not one per step count
    answer = result.until["samplers"]["euler"]["steps"]
    assert len(pairs) <= 2 * math.ceil(math.log2(answer)) + 1
    assert sorted(s for _, s in pairs)[: int(math.log2(answer))] == [
        2**k for k in range(1, int(math.log2(answer)) + 1)
    ]


def _row(steps: int, stochastic: bool, **metrics: float) -> R.BenchRow:
    return R.BenchRow(
        "fake", steps, steps, "epsilon", "linear", stochastic, 1, metrics, 1.0, 0.5, 1.0, 0.0, 0, "none", 0.0
    )


def _drive(search: U.UntilSearch, make_row, metric_names=("sw", "ode_error"), floors=None) -> list[int]:
    rows: list[R.BenchRow] = []
    asked = []
    for steps in search.plan("fake", rows, metric_names, floors or {}, DistContext()):
        asked.append(steps)
        rows.append(make_row(steps))
    return asked


def test_bisection_finds_the_boundary_of_a_monotone_error():
    asked = _drive(U.UntilSearch(U.UntilSpec(1 / 37, 1, 1000)), lambda s: _row(s, False, ode_error=1 / s))
    assert asked == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    asked = _drive(U.UntilSearch(U.UntilSpec(1e-9, 3, 100)), lambda s: _row(s, False, ode_error=1 / s))
    assert asked == [3, 6, 12, 24, 48, 96, 100]  # clamped to the upper bound, then it stops


def test_metric_switch_restarts_the_search_on_cached_runs():
    """DDPM-like: deterministic at one step (judged on the ODE error), stochastic above. The search then
    starts over on SW from the runs it has: nothing is run twice, and the answer is SW's boundary."""
    search = U.UntilSearch(U.UntilSpec(0.1, 1, 1000))
    asked = _drive(search, lambda s: _row(s, s >= 2, ode_error=1.0 if s == 1 else math.nan, sw=1 / s))
    assert asked == [1, 2, 4, 8, 16, 12, 10, 9]
    assert search.metric("fake", ("sw", "ode_error")) == "sw"


def test_floor_target_is_mean_plus_two_sd():
    floors = {"sw": {"mean": 0.5, "std": 0.125}}  # target 0.75: 0.5 + 8 / s reaches it from s = 32 on
    search = U.UntilSearch(U.UntilSpec("floor", 1, 1000))
    asked = _drive(search, lambda s: _row(s, False, ode_error=1e-9, sw=0.5 + 8 / s), floors=floors)
    assert asked == [1, 2, 4, 8, 16, 32, 24, 28, 30, 31]  # the tiny ODE error is not what "floor" judges


@pytest.mark.parametrize("text", ["abc", "0", "-0.5", "nan", "inf", "", "floors"])
def test_bad_until_values_are_refused(text):
    with pytest.raises(R.BenchInputError, match="--until"):
        U.parse_until(text)


def test_until_values_and_bounds_parse():
    assert U.parse_until(" Floor ") == "floor" and U.parse_until("1e-3") == 1e-3
    assert U.search_bounds(None, R.MAX_STEPS) == (2, 1000)
    assert U.search_bounds((50,), R.MAX_STEPS) == (2, 50)
    assert U.search_bounds((1,), R.MAX_STEPS) == (1, 1)
    assert U.search_bounds((10, 5, 400), R.MAX_STEPS) == (5, 400)
    with pytest.raises(R.BenchInputError, match="--steps with --until"):
        U.search_bounds((0, 10), R.MAX_STEPS)
    with pytest.raises(R.BenchInputError, match="speed only"):
        U.check_metrics(U.UntilSpec("floor"), [])
    with pytest.raises(R.BenchInputError, match="noise floor"):
        U.check_metrics(U.UntilSpec("floor"), ["ode_error", "kl_exact"])
    U.check_metrics(U.UntilSpec(0.01), ["ode_error"])  # a number can be reached on the ODE error alone


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "abc"], "--until: expected 'floor' or a positive error"),
        (["--until", "-1"], "positive finite"),
        (["--until", "floor", "-m", "ode_error"], "--until floor needs a distribution metric"),
        (["--until", "0.1", "--steps", "0,10"], "--steps with --until"),
    ],
)
def test_cli_refuses_bad_until_before_any_work(bench_app, tmp_path, args, message):
    js = tmp_path / "r.json"
    result = CliRunner().invoke(bench_app, ["bench", "-p", "gaussian", "--samples", "100", "--json", str(js), *args])
    assert result.exit_code == 2, result.output
    assert message in (getattr(result, "stderr", "") or result.output)
    assert not js.exists()


def test_cli_prints_json_and_csv_the_answer(bench_app, tmp_path):
    js, cs, png = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    args = ["bench", "-p", "gaussian", "-s", "heun,ddpm", "--samples", "300", "-n", "32", "--until", "floor", "-q"]
    result = CliRunner().invoke(bench_app, [*args, "--json", str(js), "--csv", str(cs), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(js.read_text())
    until = doc["until"]
    assert until["target"] == "floor" and until["steps_range"] == [2, 32] and until["floor_sds"] == 2.0
    heun = until["samplers"]["heun"]
    floor = doc["noise_floor"]["sw"]
    assert heun["metric"] == "sw" and heun["target"] == pytest.approx(floor["mean"] + 2 * floor["std"])
    assert heun["reached"] and heun["error"] <= heun["target"] < heun["below"]["error"]
    out = result.stdout
    assert (
        f"heun: reaches SW2 <= {U._num(heun['target'])} (noise floor) at {heun['nfe']} NFE (steps {heun['steps']})"
        in out
    )
    assert "ddpm: " in out and "metric: a distribution metric with a noise floor" in out
    rows = list(csv.DictReader(cs.open()))
    assert list(rows[0])[-3:] == list(U.CSV_COLUMNS)
    marked = [(r["scheduler"], int(r["steps"])) for r in rows if r["until"] == "reached"]
    assert ("heun", heun["steps"]) in marked and len(marked) == sum(e["reached"] for e in until["samplers"].values())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plain_runs_keep_their_json_schema():
    plain = R.BenchResult({}, {}, {}, [], [], {}, {}, {})
    assert "until" not in plain.to_dict()  # the key appears only with --until
    assert list(csv.DictReader(R.to_csv(plain).splitlines()).fieldnames or []) == list(R.CSV_COLUMNS)


def _panel_checks(fig, schedulers: set[str], metric_labels: set[str]) -> None:
    """Every accuracy panel: log-log, one line per scheduler (NFE on x), the noise-floor band where it has one."""
    from matplotlib.patches import Polygon, Rectangle

    panels = [ax for ax in fig.axes if ax.get_xlabel() == "NFE (model evaluations)"]
    assert {ax.get_ylabel() for ax in panels} == metric_labels
    for ax in panels:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        lines = {ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")}
        assert schedulers <= lines | {"ddpm"} and (schedulers - {"ddpm"}) <= lines
    floors = [ax for ax in panels if ax.get_ylabel() != "ODE err"]
    for ax in floors:
        bands = [p for p in ax.patches if isinstance(p, (Polygon, Rectangle)) and p.get_label() == "noise floor"]
        assert len(bands) == 1  # axhspan


def test_figure_is_error_vs_nfe_log_log_with_the_floor_band(gaussian_until):
    from samplers.bench.plots import figure

    fig = figure(gaussian_until)
    _panel_checks(fig, {"euler", "heun", "ddpm"}, {"SW2", "ODE err"})
    sw = next(ax for ax in fig.axes if ax.get_ylabel() == "SW2")
    xs = {tuple(ln.get_xdata()) for ln in sw.get_lines() if ln.get_label() == "heun"}
    assert xs == {tuple(sorted(r.nfe for r in gaussian_until.rows if r.scheduler == "heun"))}  # NFE, not steps
    ode = next(ax for ax in fig.axes if ax.get_ylabel() == "ODE err")
    assert TARGET in {ln.get_ydata()[0] for ln in ode.get_lines() if ln.get_label() == "--until target"}


def test_figure_for_gmm2d():
    from samplers.bench.plots import figure

    gmm = R.run_benchmark(
        R.BenchConfig(schedulers=("euler", "ddpm"), steps=(4, 8), problem="gmm2d", samples=300, warmup=False),
        keep_samples=100,
    )
    _panel_checks(figure(gmm), {"euler", "ddpm"}, {"SW1", "ODE err"})


def test_figure_for_digits():
    """The image problem's figure (accuracy panels above a sample grid); no ODE error, to skip its reference solve."""
    from samplers.bench.plots import figure

    cfg = R.BenchConfig(
        schedulers=("euler", "ddpm"),
        steps=(3, 6),
        problem="digits",
        samples=16,
        ode_samples=16,
        schedule="edm",
        metrics=("sw", "fd_features"),
        warmup=False,
    )
    _panel_checks(figure(R.run_benchmark(cfg, keep_samples=16)), {"euler", "ddpm"}, {"SW2", "FD feat"})


@pytest.mark.slow
def test_torchrun_searches_the_same_step_counts_as_one_process(tmp_path):
    """Only rank 0 has metrics; its verdicts are broadcast, so both ranks run the same step counts."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    args = ["-m", "samplers", "bench", "-p", "gaussian", "--samples", "400", "-s", "euler,ddpm"]
    args += ["--until", "floor", "-n", "64", "-q", "--json"]
    subprocess.run([sys.executable, *args, "one.json"], check=True, cwd=tmp_path, env=env, timeout=300)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    done = subprocess.run(
        [*launcher, *args, "two.json"], cwd=tmp_path, env=env, timeout=300, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert b["environment"]["world_size"] == 2
    assert [(r["scheduler"], r["steps"]) for r in a["rows"]] == [(r["scheduler"], r["steps"]) for r in b["rows"]]
    assert a["until"] == b["until"] and a["until"]["samplers"]["euler"]["reached"]
