"""``samplers bench --suite popular``: issue 13's samplers under registered names, a short run of all of them,
and the default bench's list left as it was."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

import samplers
from samplers.bench import runner as R
from samplers.bench import suites

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Issue 13's coverage table, row by row, written out here independently of suites.POPULAR.
ISSUE_13 = {
    "DPM-Solver++ 2M and 3M, DPM-Solver (non-++), UniPC": ("dpmpp_2m", "dpmpp_3m", "dpm_multistep", "unipc"),
    "LMS": ("lms",),
    "DPM2, DPM2 ancestral": ("dpm2", "dpm2_ancestral"),
    "DPM++ 2S ancestral": ("dpmpp_2s_ancestral",),
    "DPM++ SDE": ("dpmpp_sde",),
    "DPM++ 2M SDE, DPM++ 3M SDE": ("dpmpp_2m_sde", "dpmpp_3m_sde"),
    "DPM-Solver and DPM-Solver++ singlestep": ("dpm_singlestep", "dpmpp_singlestep"),
    "DPM-Solver fast": ("dpm_fast",),
    "DEIS": ("deis",),
    "PNDM / PLMS, iPNDM": ("pndm", "ipndm"),
    "SA-Solver": ("sa_solver",),
    "LCM, TCD": ("lcm", "tcd"),
    "EDM Euler, EDM DPM-Solver++": ("edm_euler", "edm_dpmpp_2m"),
    "flow Heun, flow Euler": ("flow_heun", "flow_euler"),
    "DDIM inversion, DPM-Solver++ inversion": ("ddim_inverse", "dpmpp_2m_inverse"),
    "RES multistep (+ ancestral), ER-SDE, SEEDS-2/3, gradient estimation, CFG++": (
        "res_multistep",
        "res_multistep_ancestral",
        "er_sde",
        "seeds_2",
        "seeds_3",
        "gradient_estimation",
        "euler_cfgpp",
        "dpmpp_2m_cfgpp",
    ),
    "Restart sampling": ("restart",),
}
DEFAULT_BENCH = ("ddim", "euler", "heun", "euler_ancestral", "ddpm")


def test_popular_covers_issue_13_with_registered_names():
    registered = set(samplers.available())
    asked = [name for names in ISSUE_13.values() for name in names]
    assert not set(asked) - registered, f"issue 13 names not registered: {set(asked) - registered}"
    assert not set(suites.POPULAR) - registered
    assert len(set(suites.POPULAR)) == len(suites.POPULAR), "a suite name twice"
    # every sampler asked for is in the suite, or left out with a stated reason (the inversions)
    assert set(asked) == set(suites.POPULAR) | set(suites.NOT_BENCHED)
    assert set(suites.NOT_BENCHED) == {"ddim_inverse", "dpmpp_2m_inverse"}
    assert not set(suites.NOT_BENCHED) & set(suites.POPULAR)


def test_resolve_union_and_unknown_suite():
    assert suites.resolve(None, None) is None
    assert suites.resolve(None, ["ddim"]) == ("ddim",)
    union = suites.resolve("popular", ["ddim", "dpmpp_2m", "euler"])
    assert union == (*suites.POPULAR, "ddim", "euler")  # suite first; dpmpp_2m (in both) once
    with pytest.raises(ValueError, match=r"unknown suite 'populr' \(known suites: popular\)"):
        suites.resolve("populr", None)


def test_default_bench_list_unchanged(bench_app, tmp_path):
    assert R.problem_defaults("gmm2d")["schedulers"] == DEFAULT_BENCH
    js = tmp_path / "d.json"
    result = CliRunner().invoke(
        bench_app, ["bench", "-n", "2", "--samples", "40", "--ode-samples", "8", "-q", "--json", str(js)]
    )
    assert result.exit_code == 0, result.output
    assert [r["scheduler"] for r in json.loads(js.read_text())["rows"]] == list(DEFAULT_BENCH)


def test_short_run_of_the_popular_suite(bench_app, tmp_path):
    js = tmp_path / "p.json"
    args = ["bench", "--suite", "popular", "-s", "ddim", "-p", "gaussian", "-n", "4", "--samples", "64"]
    result = CliRunner().invoke(bench_app, [*args, "--ode-samples", "16", "-q", "--json", str(js)])
    assert result.exit_code == 0, result.output
    rows = json.loads(js.read_text())["rows"]
    assert [r["scheduler"] for r in rows] == [*suites.POPULAR, "ddim"]
    for r in rows:
        assert r["nfe"] >= 4, r
        assert math.isfinite(r["metrics"]["sw"]), r
        if not r["stochastic"]:  # deterministic rows are scored against the exact ODE solution too
            assert math.isfinite(r["metrics"]["ode_error"]), r


def test_unknown_suite_is_one_clear_line(bench_app):
    result = CliRunner().invoke(bench_app, ["bench", "--suite", "populr", "--samples", "100", "-q"])
    assert result.exit_code == 2
    err = getattr(result, "stderr", "") or result.output
    assert "unknown suite 'populr' (known suites: popular)" in err and "Traceback" not in err
