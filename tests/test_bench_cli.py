"""``samplers bench`` through Typer's test runner: table, files, plots, bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from samplers.bench import runner as R

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = ["--scheduler", "ddim,heun", "--steps", "4,8", "--samples", "300", "--ode-samples", "100", "--quiet"]


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def _err(result) -> str:
    return getattr(result, "stderr", "") or result.output


def test_table_json_csv_and_plot(bench_app, runner, tmp_path):
    js, cs, png = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    result = runner.invoke(bench_app, ["bench", *SMALL, "--json", str(js), "--csv", str(cs), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "ddim",
        "heun",
        "NFE",
        "SW2",
        "ODE err",
        "samples/s",
        "step ovh ms",
        "sampling noise floor",
        "empirical order",
    ):
        assert text in out
    doc = json.loads(js.read_text())
    assert doc["schema_version"] == 1 and len(doc["rows"]) == 4
    assert [r["nfe"] for r in doc["rows"]] == [4, 8, 7, 15]
    rows = list(csv.DictReader(cs.open()))
    assert [r["scheduler"] for r in rows] == ["ddim", "ddim", "heun", "heun"]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # curves and scatter panels drawn


def test_gaussian_problem_prediction_type_and_threads(bench_app, runner):
    torch.set_num_threads(2)
    result = runner.invoke(
        bench_app,
        [
            "bench",
            *SMALL,
            "--problem",
            "gaussian",
            "--prediction-type",
            "v_prediction",
            "--metric",
            "kl_exact,ode_error",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "KL exact" in result.stdout and "ODE err" in result.stdout and "MMD" not in result.stdout
    assert "1 CPU thread(s)" in result.stdout
    assert torch.get_num_threads() == 2  # the command restores the process setting
    torch.set_num_threads(1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scheduler", "eulr"], "did you mean 'euler'"),
        (["--problem", "swissrol"], "did you mean 'swissroll'"),
        (["--metric", "mdd"], "did you mean 'mmd'"),
        (["--steps", "0,5"], "integer >= 1"),
        (["--steps", "5,x"], "not an integer"),
        (["--json", "/nonexistent-dir/out.json"], "does not exist"),
        (["--option", "karras"], "KEY=VALUE"),
        (["--dtype", "float8"], "unknown dtype"),
        (["--threads", "-1"], "--threads must be in [0, "),
    ],
)
def test_bad_input_one_line_no_traceback(bench_app, runner, args, message):
    result = runner.invoke(bench_app, ["bench", "--samples", "100", "--quiet", *args])
    assert result.exit_code == 2
    err = _err(result)
    assert message in err and "error:" in err
    assert "Traceback" not in result.output and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_prediction_type_a_scheduler_does_not_take(bench_app, runner):
    from samplers.hookspecs import hookimpl
    from samplers.registry import registry
    from samplers.schedulers.ddim import DDIMScheduler

    class EpsOnlyDDIM(DDIMScheduler):
        name = "test_cli_eps_only"
        prediction_types = ("epsilon",)

    class Plugin:
        @hookimpl
        def samplers_register_schedulers(self):
            return [EpsOnlyDDIM]

    reg = registry()
    reg.register(Plugin(), "test-cli-plugin")
    try:
        result = runner.invoke(
            bench_app, ["bench", "--scheduler", "test_cli_eps_only", "--prediction-type", "sample", "--quiet"]
        )
        assert result.exit_code == 2
        assert "does not take prediction type 'sample'" in _err(result)
        ok = runner.invoke(
            bench_app,
            [
                "bench",
                "--scheduler",
                "test_cli_eps_only",
                "--steps",
                "5",
                "--samples",
                "200",
                "--metric",
                "sw",
                "--quiet",
            ],
        )
        assert ok.exit_code == 0 and "test_cli_eps_only" in ok.stdout
    finally:
        reg.pm.unregister(name="test-cli-plugin")
        reg._entries = None


def test_debug_shows_the_exception(bench_app, runner):
    from samplers.bench.runner import BenchInputError

    result = runner.invoke(bench_app, ["bench", "--scheduler", "nope", "--debug"])
    assert result.exit_code != 0 and isinstance(result.exception, BenchInputError)


def test_registered_in_the_samplers_cli(runner):
    from samplers.cli import app as samplers_app

    result = runner.invoke(samplers_app, ["bench", "--help"])
    assert result.exit_code == 0
    for flag in (
        "--scheduler",
        "--steps",
        "--problem",
        "--samples",
        "--device",
        "--dtype",
        "--seed",
        "--json",
        "--csv",
        "--plot",
        "--quiet",
        "--debug",
        "--threads",
    ):
        assert flag in result.output


def _run_module(*args: str, env_extra: dict | None = None):
    import os
    import subprocess
    import sys

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "samplers", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_installed_command_debug_shows_traceback_only_with_debug():
    plain = _run_module("bench", "-s", "nope", "-q")
    assert plain.returncode != 0
    assert "Traceback" not in plain.stderr and "Traceback" not in plain.stdout
    lines = plain.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "unknown scheduler 'nope'" in lines[0]
    assert "error:" not in plain.stdout
    debug = _run_module("bench", "-s", "nope", "--debug", "-q")
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "BenchInputError" in debug.stderr


def test_bad_input_printed_by_rank_zero_only(bench_app, runner, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    result = runner.invoke(bench_app, ["bench", "--scheduler", "nope", "--quiet"])
    assert result.exit_code == 2 and _err(result).strip() == ""
    monkeypatch.setenv("RANK", "0")
    result = runner.invoke(bench_app, ["bench", "--scheduler", "nope", "--quiet"])
    assert result.exit_code == 2 and "unknown scheduler 'nope'" in _err(result)


def _unwritable_paths(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    return [
        ("/proc/samplers-bench-x.json", "cannot write '/proc/samplers-bench-x.json'"),
        (str(afile / "x.json"), f"cannot write '{afile / 'x.json'}'"),
    ]


@pytest.mark.parametrize("flag", ["--json", "--csv"])
def test_unwritable_output_fails_before_sampling(bench_app, runner, tmp_path, monkeypatch, flag):
    from samplers.bench import runner as R

    def no_run(*a, **k):
        raise AssertionError("sampling ran before the output path was checked")

    monkeypatch.setattr(R, "run_benchmark", no_run)
    for path, message in _unwritable_paths(tmp_path):
        result = runner.invoke(bench_app, ["bench", "--samples", "100", "--quiet", flag, path])
        assert result.exit_code == 2, result.output
        err = _err(result)
        assert f"{flag}: {message}" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_check_writable_leaves_no_file(tmp_path):
    from samplers.bench.runner import check_writable

    new, old = tmp_path / "new.json", tmp_path / "old.json"
    old.write_text("keep")
    check_writable(new, "--json")
    check_writable(old, "--json")
    assert not new.exists() and old.read_text() == "keep"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gaussian:dim=abc", "problem 'gaussian' option 'dim' expects an integer, got 'abc'"),
        ("gaussian_nd:dim=2.5", "option 'dim' expects an integer, got 2.5"),
        ("gmm2d:components=many", "option 'components' expects an integer or none, got 'many'"),
        ("gmm2d:radius=wide", "option 'radius' expects a number, got 'wide'"),
    ],
)
def test_problem_option_of_the_wrong_type(bench_app, runner, spec, message):
    result = runner.invoke(bench_app, ["bench", "--samples", "100", "--quiet", "--problem", spec])
    assert result.exit_code == 2
    err = _err(result)
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_problem_option_values_are_converted():
    from samplers.bench.problems import get_problem

    assert get_problem("gmm2d:radius=3,components=none,std=1").dim == 2  # int -> float, none for Optional
    assert get_problem("gaussian", dim=3).dim == 3


@pytest.mark.parametrize("name", ["ddim_inverse", "dpmpp_2m_inverse"])
def test_inversions_are_refused_before_sampling_with_the_reason(name, monkeypatch):
    def no_sampling(*a, **k):
        raise AssertionError("sampled before the input was checked")

    monkeypatch.setattr(R, "sample_oracle", no_sampling)
    with pytest.raises(R.BenchInputError, match="an inversion") as info:
        R.run_benchmark(R.BenchConfig(schedulers=("ddim", name), steps=(4, 8), samples=16, ode_samples=4))
    assert repr(name) in str(info.value) and "reconstruction" in str(info.value)
