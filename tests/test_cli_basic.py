"""``samplers list`` and ``samplers info`` through typer's CliRunner."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from typer.testing import CliRunner

import samplers
from samplers.cli import app
from samplers.hookspecs import hookimpl
from samplers.registry import DISABLE_ENV, Registry, Source
from samplers.schedulers import DDIMScheduler

reg_mod = importlib.import_module("samplers.registry")
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
runner = CliRunner()


def test_list_table_shows_every_builtin():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    for name in BUILTINS:
        assert name in result.output
    assert f"samplers {samplers.__version__}" in result.output  # source distribution and version
    # config-dependent noise is said as such: DDIM draws noise only for eta > 0, Heun only with churn
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│")}
    assert "if eta > 0" in rows["ddim"] and "if s_churn > 0" in rows["heun"]
    assert "│ no " in rows["euler"] and "│ yes " in rows["ddpm"]


def test_list_json_parses_with_metadata():
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    rows = {row["name"]: row for row in payload["schedulers"]}
    assert set(BUILTINS) <= set(rows)
    for name in BUILTINS:
        cls = samplers.registry().scheduler_class(name)
        row = rows[name]
        assert row["family"] == cls.family and row["order"] == cls.order and row["stochastic"] == cls.stochastic
        assert row["nfe_per_step"] == cls.nfe_per_step and row["prediction_types"] == list(cls.prediction_types)
        assert row["distribution"] == "samplers" and row["plugin"] == "builtins"
    assert rows["heun"]["order"] == 2 and rows["ddpm"]["stochastic"] is True and rows["euler"]["stochastic"] is False
    assert isinstance(payload["load_errors"], list)


class _Tiny(DDIMScheduler):
    name = "tiny_cli_ddim"


class _Plugin:
    @hookimpl
    def samplers_register_schedulers(self):
        return [_Tiny]


class _Broken:
    @hookimpl
    def samplers_register_schedulers(self):
        raise ImportError("missing dependency for the demo plugin")


def test_list_shows_plugins_and_load_errors(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")
    reg = Registry()
    reg.register(_Plugin(), "tiny", Source("tiny", "tiny-dist", "3.1"))
    reg.register(_Broken(), "broken", Source("broken", "broken-dist", "0.0.1"))
    monkeypatch.setattr(reg_mod, "registry", lambda reload=False: reg)
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "tiny_cli_ddim" in result.output and "tiny-dist 3.1" in result.output
    assert "broken" in result.output and "broken-dist" in result.output and "missing dependency" in result.output
    payload = json.loads(runner.invoke(app, ["list", "--json"]).output)
    assert any(row["name"] == "tiny_cli_ddim" and row["distribution"] == "tiny-dist" for row in payload["schedulers"])
    assert any(e["plugin"] == "broken" and e["distribution"] == "broken-dist" for e in payload["load_errors"])


def test_info_prints_versions_and_kernel_backend():
    result = runner.invoke(app, ["info"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"samplers: {samplers.__version__}" in out
    assert f"torch: {torch.__version__}" in out
    assert "python:" in out and "cuda_available:" in out
    assert "kernels" in out and "sampler_update:" in out
    assert ("torch reference" in out) or ("fused" in out)  # which backend runs, and why


def test_info_json():
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["samplers"] == samplers.__version__ and report["torch"] == torch.__version__
    assert report["cuda_available"] == torch.cuda.is_available()
    assert "sampler_update" in report["kernels"]
    assert any("builtins" in p for p in report["plugins"])


@pytest.mark.parametrize("args", [[], ["--help"]])
def test_help_lists_commands(args):
    result = runner.invoke(app, args)
    assert "list" in result.output and "info" in result.output


def test_list_groups_samplers_by_kind_with_order_nfe_and_paper():
    from typer.testing import CliRunner

    from samplers.cli import KIND_TITLES, app

    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    titles = [line.split(":")[0].strip() for line in result.output.splitlines() if "sampler(s)" in line]
    assert titles and set(titles) <= set(KIND_TITLES.values()), titles
    assert "Karras et al. 2022" in result.output and "NFE/step" in result.output


def test_list_schedules_names_every_grid_with_description_and_source():
    from typer.testing import CliRunner

    from samplers import grids
    from samplers.cli import app

    result = CliRunner().invoke(app, ["list", "--schedules", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)["schedules"]}
    assert set(rows) == set(grids.GRIDS)
    assert all(r["description"] and r["source"] for r in rows.values())
