"""The conformance kit (samplers.testing) and the ``samplers check`` command.

The built-ins and the example plugins (registered from ``plugins/`` source) must pass; schedulers
broken on purpose must fail exactly the property they break.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import types
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import samplers
from samplers import parameterization
from samplers.hookspecs import hookimpl
from samplers.ops.reference import COEFF
from samplers.protocol import StepOutput
from samplers.registry import Registry, Source, UnknownSchedulerError
from samplers.schedulers import BUILTIN_SCHEDULERS, DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from samplers.testing import (
    CHECKS,
    ConformanceError,
    GaussianOracle,
    KitSettings,
    assert_conforms,
    check_scheduler,
    run_oracle,
)

registry_module = importlib.import_module("samplers.registry")  # the package re-exports a function of that name

ROOT = Path(__file__).resolve().parents[1]
QUICK = KitSettings.quick(backend="torch")
F64 = torch.float64


def by_name(results):
    return {r.name: r for r in results}


# --------------------------------------------------------------------------------------------
# The Gaussian oracle is exact
# --------------------------------------------------------------------------------------------


def test_oracle_denoiser_is_the_posterior_mean():
    oracle = GaussianOracle.for_shape([3])
    gen = torch.Generator().manual_seed(0)
    n, alpha, sigma = 400_000, 0.6, 0.8
    x0 = oracle.mean + oracle.std * torch.randn(n, 3, generator=gen, dtype=F64)
    x = alpha * x0 + sigma * torch.randn(n, 3, generator=gen, dtype=F64)
    resid = x0 - oracle.denoise(x, alpha, sigma)
    # E[x0 | x] is the unbiased predictor orthogonal to every function of x (here: 1 and x)
    assert float(resid.mean(0).abs().max()) < 5 * float(oracle.std.max()) / math.sqrt(n)
    assert float((resid * (x - x.mean(0))).mean(0).abs().max()) < 2e-3


@pytest.mark.parametrize("kind", parameterization.PREDICTION_TYPES)
def test_oracle_model_output_inverts_to_the_denoiser(kind):
    oracle = GaussianOracle.for_shape([2, 3])
    x = torch.randn(5, 2, 3, dtype=F64)
    alpha, sigma = 0.7, 0.5
    out = oracle.model_output(kind, x, alpha, sigma)
    x0, _ = parameterization.to_x0_eps(kind, out, x, alpha, sigma)
    torch.testing.assert_close(x0, oracle.denoise(x, alpha, sigma))


def test_oracle_ode_map_pushes_the_marginal_to_the_data():
    oracle = GaussianOracle.for_shape([4])
    alpha, sigma = 0.3, 0.95
    mu, s = oracle.mean, oracle.std
    torch.testing.assert_close(oracle.ode_solution(alpha * mu.view(1, -1), alpha, sigma)[0], mu)
    x = alpha * mu + torch.sqrt(alpha**2 * s**2 + sigma**2)  # one marginal std above the mean
    torch.testing.assert_close(oracle.ode_solution(x.view(1, -1), alpha, sigma)[0], mu + s)


def test_deterministic_sampler_converges_to_the_oracle_ode_solution():
    oracle = GaussianOracle.for_shape([4])
    noise = torch.randn(128, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    errors = []
    for steps in (10, 100, 1000):
        x, exact = run_oracle(
            samplers.get("ddim", clip_sample=False, timestep_spacing="trailing"), oracle, noise, steps, backend="torch"
        )
        errors.append(float((x - exact).abs().max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02 * errors[0]


# --------------------------------------------------------------------------------------------
# Everything shipped passes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [cls.name for cls in BUILTIN_SCHEDULERS])
def test_builtin_conforms(name):
    # 6 shape steps (`samplers check`'s own): a 4-step bfloat16 run of an epsilon model at EDM's sigma = 80 reads
    # x0 with 80 times the rounding of its output, more than the check's tolerance (edm_dpmpp_2m's default)
    results = assert_conforms(name, settings=dataclasses.replace(QUICK, shape_steps=6))
    assert [r.name for r in results] == list(CHECKS)
    marginals = by_name(results)["marginals"]
    assert marginals.skipped == (not samplers.get(name).is_stochastic or samplers.get(name).kind == "consistency")
    assert by_name(results)["no_device_sync"].skipped == (not torch.cuda.is_available())
    assert by_name(results)["public_api"].skipped  # core may use its own private names


@pytest.fixture
def plugin_registry(monkeypatch):
    """A registry holding the built-ins and the example plugins from plugins/ source (not installed)."""
    for sub in ("samplers-multistep", "samplers-extras"):
        monkeypatch.syspath_prepend(str(ROOT / "plugins" / sub))
    import samplers_extras.plugin
    import samplers_multistep.plugin

    reg = Registry(autoload=False)
    reg.register(samplers_multistep.plugin, "multistep", Source("multistep", "samplers-multistep", "source"))
    reg.register(samplers_extras.plugin, "extras", Source("extras", "samplers-extras", "source"))
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    return reg


@pytest.mark.parametrize("name", ["dpmpp_3m_exact", "dpmpp_3m_sde_exact"])
def test_example_plugin_schedulers_conform(plugin_registry, name):
    results = assert_conforms(name, settings=QUICK)
    public = by_name(results)["public_api"]
    assert public.passed and not public.skipped, public.detail


def test_public_api_check_reports_a_plugin_reaching_for_private_names(tmp_path, monkeypatch):
    package = tmp_path / "sneaky_plugin"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from samplers.ops._build import BUILD_STATUS\n"
        "import samplers.levels as levels\n"
        "from samplers.schedulers.euler import EulerDiscreteScheduler\n"
        "class Sneaky(EulerDiscreteScheduler):\n"
        "    name = 'sneaky'\n"
        "    def plan_calls(self, levels_):\n"
        "        self._rows_on\n"
        "        levels._check_private_thing = None\n"
        "        return super().plan_calls(levels_)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import sneaky_plugin

    result = by_name(check_scheduler(sneaky_plugin.Sneaky, settings=QUICK, checks=["public_api"]))["public_api"]
    assert not result.passed
    assert "samplers.ops._build" in result.detail and "levels._check_private_thing" in result.detail


def test_private_name_scan_finds_each_form():
    from samplers.testing import private_samplers_names

    found = private_samplers_names(
        "import samplers\nfrom samplers import _x\nimport samplers.ops._build as b\ny = samplers.plan._F\n"
        "from samplers.plan import Call\nz = Call.__name__\n"
    )
    assert len(found) == 3 and not any("__name__" in f for f in found), found


@pytest.mark.parametrize("schedule", ["laplace", "shifted_cosine"])
def test_example_plugin_schedules_serve_builtins(plugin_registry, schedule):
    for name in ("ddim", "euler_ancestral", "dpmpp_2m", "dpmpp_3m_exact"):
        assert_conforms(name, settings=QUICK, checks=["accuracy", "marginals", "config_roundtrip"], schedule=schedule)


# --------------------------------------------------------------------------------------------
# Broken schedulers fail the property they break
# --------------------------------------------------------------------------------------------


class LyingDDIM(DDIMScheduler):
    """Draws noise (eta > 0) but says it is deterministic."""

    name = "lying_ddim"
    stochastic = False


class LoudDDPM(DDPMScheduler):
    """Adds 1.5x the posterior noise: the marginals are wrong at any step count."""

    name = "loud_ddpm"

    def make_plan(self, *args):
        plan = super().make_plan(*args)
        plan.rows[:, COEFF["c"]] *= 1.5
        return plan


class BlindEuler(EulerDiscreteScheduler):
    """Ignores the model: every step returns the sample unchanged."""

    name = "blind_euler"

    def make_plan(self, *args):
        plan = super().make_plan(*args)
        plan.rows[:, COEFF["a"]] = 1.0
        plan.rows[:, COEFF["b"]] = 0.0
        return plan


class LossyDDIM(DDIMScheduler):
    """Forgets ``eta`` when saving its config."""

    name = "lossy_ddim"

    def save_config(self, save_directory, **kwargs):
        path = super().save_config(save_directory, **kwargs)
        data = json.loads(path.read_text())
        data.pop("eta")
        path.write_text(json.dumps(data))
        return path


class Float32Euler(EulerDiscreteScheduler):
    """Returns float32 whatever the sample's dtype."""

    name = "float32_euler"

    def step_functional(self, state, model_output, timestep, sample, **kwargs):
        out, state = super().step_functional(state, model_output, timestep, sample, **kwargs)
        return StepOutput(out.prev_sample.float(), out.pred_original_sample), state


class BadMetadata(DDIMScheduler):
    name = "bad_metadata"
    family = "diagonal"
    order = 0


class StatefulEuler(EulerDiscreteScheduler):
    """Keeps a running counter on the object: interleaved functional runs interfere."""

    name = "stateful_euler"

    def step_functional(self, state, model_output, timestep, sample, **kwargs):
        self._calls = getattr(self, "_calls", 0) + 1
        out, state = super().step_functional(state, model_output, timestep, sample, **kwargs)
        return StepOutput(out.prev_sample * (1 + 1e-3 * (self._calls % 2)), out.pred_original_sample), state


@pytest.mark.parametrize(
    "cls, config, broken",
    [
        (LyingDDIM, {"eta": 1.0}, "determinism"),
        (LoudDDPM, {}, "marginals"),
        (BlindEuler, {}, "accuracy"),
        (LossyDDIM, {"eta": 0.5}, "config_roundtrip"),
        (Float32Euler, {}, "shapes_dtypes"),
        (BadMetadata, {}, "protocol"),
        (StatefulEuler, {}, "determinism"),
    ],
)
def test_broken_scheduler_fails_its_property(cls, config, broken):
    results = by_name(
        check_scheduler(
            cls,
            settings=QUICK,
            checks=["protocol", "config_roundtrip", "shapes_dtypes", "determinism", "marginals", "accuracy"],
            **config,
        )
    )
    assert not results[broken].passed, results[broken].detail
    with pytest.raises(ConformanceError, match=broken) as info:
        assert_conforms(cls, settings=QUICK, checks=[broken], **config)
    assert isinstance(info.value, AssertionError) and info.value.results[0].name == broken
    assert "FAIL" in str(info.value) and cls.__name__ in str(info.value)


def test_lying_ddim_passes_when_honest():
    """The same class with eta = 0 draws no noise, so its stochastic=False is true."""
    assert_conforms(LyingDDIM, settings=QUICK, checks=["determinism"], eta=0.0)


# --------------------------------------------------------------------------------------------
# Inputs to the kit
# --------------------------------------------------------------------------------------------


def test_kit_input_errors():
    with pytest.raises(UnknownSchedulerError, match="did you mean 'ddim'"):
        check_scheduler("ddin")
    with pytest.raises(ValueError, match="unknown check"):
        check_scheduler("ddim", checks=["speed"])
    with pytest.raises(TypeError, match="no config option"):
        check_scheduler("ddim", no_such_option=1)
    with pytest.raises(TypeError, match="Scheduler subclass"):
        check_scheduler(int)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_scheduler("ddim", device="cuda")


def test_check_by_class_and_by_name_agree():
    a = check_scheduler("ddim", settings=QUICK, checks=["accuracy"])
    b = check_scheduler(DDIMScheduler, settings=QUICK, checks=["accuracy"])
    assert a[0].detail == b[0].detail


# --------------------------------------------------------------------------------------------
# samplers check
# --------------------------------------------------------------------------------------------


def _cli(*args):
    from samplers.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_check_passes_with_a_table():
    result = _cli("check", "euler_ancestral", "--quick", "--backend", "torch")
    assert result.exit_code == 0, result.output
    for name in CHECKS:
        assert name in result.output
    assert "all 8 checks passed" in result.output


def test_cli_check_json():
    result = _cli(
        "check", "ddim", "--quick", "--only", "accuracy,determinism", "-o", "eta=0.5", "--json", "--backend", "torch"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] is True and report["config"] == {"eta": 0.5}
    assert [r["name"] for r in report["results"]] == ["accuracy", "determinism"]
    assert "stochastic" in report["results"][1]["detail"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["check", "eulr"], "unknown scheduler 'eulr'; did you mean 'euler'"),
        (["check", "ddim", "--only", "speed"], "unknown check"),
        (["check", "ddim", "-o", "eta"], "must look like KEY=VALUE"),
        (["check", "ddim", "-o", "etaa=1"], "no config option"),
        (["check", "ddim", "--backend", "cuda"], "--backend must be"),
    ],
)
def test_cli_check_bad_input_is_one_line_and_exit_2(args, message):
    result = _cli(*args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_check_failure_exits_1(monkeypatch):
    plugin = types.SimpleNamespace(samplers_register_schedulers=hookimpl(lambda: [BlindEuler]))
    reg = Registry(autoload=False)
    reg.register(plugin, "broken_on_purpose", Source("broken_on_purpose", "test-plugin", "0"))
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    result = _cli("check", "blind_euler", "--quick", "--only", "accuracy,protocol", "--backend", "torch")
    assert result.exit_code == 1
    assert "FAIL" in result.output and "1 failed" in result.output and "test-plugin" in result.output


# --------------------------------------------------------------------------------------------
# CUDA: the sync check runs and catches a sync
# --------------------------------------------------------------------------------------------


class SyncingDDIM(DDIMScheduler):
    name = "syncing_ddim"

    def step_functional(self, state, model_output, timestep, sample, **kwargs):
        if float(model_output.abs().max()) > 1e30:  # reads a device value on the host: a sync
            raise FloatingPointError("huge output")
        return super().step_functional(state, model_output, timestep, sample, **kwargs)


@pytest.mark.cuda
def test_no_device_sync_check_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    results = by_name(check_scheduler("ddim", device="cuda", settings=KitSettings.quick()))
    assert all(r.passed for r in results.values()), results
    assert not results["no_device_sync"].skipped
    syncing = by_name(
        check_scheduler(SyncingDDIM, device="cuda", settings=KitSettings.quick(), checks=["no_device_sync"])
    )
    assert not syncing["no_device_sync"].passed and "synchronized" in syncing["no_device_sync"].detail
