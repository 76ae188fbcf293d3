"""Hostile input and faults outside the scheduler protocol (issue 11): plugins, the CLI, the JIT build
lock, the diffusers wrapper's loader, seeds, size bounds and the conformance kit's NaN handling.

Anything that used to hang runs in a subprocess with a timeout, so a regression fails instead of
stalling the suite.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import samplers
from samplers.cli import app
from samplers.hookspecs import hookimpl
from samplers.registry import DISABLE_ENV, Registry, Source
from samplers.schedulers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

reg_mod = importlib.import_module("samplers.registry")  # the module; samplers.registry is also a function
ROOT = Path(__file__).resolve().parents[1]
BUILTINS = {"ddim", "ddpm", "euler", "euler_ancestral", "flow_euler", "heun", "langevin", "posterior"}
runner = CliRunner()


def _run_python(code: str, timeout: float = 90, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with this tree on the path; a hang fails the test (timeout)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=str(ROOT),
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hung for {timeout} s (stdout: {exc.stdout!r}, stderr: {exc.stderr!r})")


class _FakeEntryPoint:
    def __init__(self, name: str, load, dist_name: str = "hostile-dist", version: str = "0.1") -> None:
        self.name = name
        self.group = reg_mod.ENTRY_POINT_GROUP
        self.dist = SimpleNamespace(metadata={"Name": dist_name}, version=version)
        self._load = load

    def load(self):
        return self._load()


def _with_entry_points(monkeypatch, *eps: _FakeEntryPoint) -> None:
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: list(eps))


# --------------------------------------------------------------------------------------------
# 1. a plugin that looks schedulers up while it is being loaded
# --------------------------------------------------------------------------------------------


def _within(seconds: float, fn):
    """``fn()`` on a daemon thread; a deadlock fails the test instead of hanging it."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"deadlocked: still waiting after {seconds} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class _Mine(DDIMScheduler):
    name = "reentrant_ddim"


@pytest.fixture
def fresh_process_registry(monkeypatch):
    """An empty process-wide registry slot with its own lock (a deadlocked thread holds only that
    lock, and monkeypatch puts the real registry back)."""
    monkeypatch.setattr(reg_mod, "_REGISTRY", None)
    kind = threading.RLock if "RLock" in type(reg_mod._REGISTRY_LOCK).__name__ else threading.Lock
    monkeypatch.setattr(reg_mod, "_REGISTRY_LOCK", kind())


def test_plugin_calling_available_at_import_sees_the_builtins(monkeypatch, fresh_process_registry):
    """Today: the process registry's lock is held while entry points import, and the plugin's
    samplers.available() waits on it forever."""
    seen = {}

    def load():
        seen["at_import"] = samplers.available()
        return _Plugin(_Mine)

    _with_entry_points(monkeypatch, _FakeEntryPoint("reentrant", load, "reentrant-dist"))
    names = _within(10, samplers.available)
    assert "ddim" in seen["at_import"] and "reentrant_ddim" not in seen["at_import"], seen
    assert "reentrant_ddim" in names and samplers.registry().load_errors == []


def test_plugin_hook_calling_available_is_a_load_error_not_a_deadlock(monkeypatch, fresh_process_registry):
    """Today: the hook runs under the registry's (non re-entrant) lock and its lookup deadlocks."""

    class LookingUp:
        @hookimpl
        def samplers_register_schedulers(self):
            samplers.get("ddim")
            return [_Mine]

    _with_entry_points(monkeypatch, _FakeEntryPoint("reentrant", LookingUp, "reentrant-dist"))
    names = _within(10, samplers.available)
    assert "ddim" in names and "reentrant_ddim" not in names, names
    (err,) = samplers.registry().load_errors
    assert err.plugin == "reentrant" and err.distribution == "reentrant-dist"
    assert "RegistryReentryError" in err.error and "samplers_register_schedulers" in err.error, err


# --------------------------------------------------------------------------------------------
# 2. SystemExit (and other BaseExceptions) from a plugin
# --------------------------------------------------------------------------------------------


class _Plugin:
    def __init__(self, *classes) -> None:
        self.classes = classes

    @hookimpl
    def samplers_register_schedulers(self):
        return list(self.classes)


def _raise(exc: BaseException):
    def load():
        raise exc

    return load


class _Tiny(DDIMScheduler):
    name = "hostile_tiny"


def test_plugin_raising_systemexit_at_import_is_a_load_error(monkeypatch):
    _with_entry_points(
        monkeypatch,
        _FakeEntryPoint("quitter", _raise(SystemExit(3)), "quitter-dist"),
        _FakeEntryPoint("good", lambda: _Plugin(_Tiny), "good-dist"),
    )
    reg = Registry()
    (err,) = reg.load_errors
    assert err.plugin == "quitter" and err.distribution == "quitter-dist" and "SystemExit" in err.error
    assert "hostile_tiny" in reg.available() and BUILTINS <= set(reg.available())


def test_plugin_raising_systemexit_keeps_the_cli_alive(monkeypatch):
    _with_entry_points(monkeypatch, _FakeEntryPoint("quitter", _raise(SystemExit(7)), "quitter-dist"))
    reg = Registry()
    monkeypatch.setattr(reg_mod, "registry", lambda reload=False: reg)
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "quitter" in result.output and "SystemExit" in result.output and "ddim" in result.output


def test_plugin_hook_raising_systemexit_is_a_load_error():
    class Quitter:
        @hookimpl
        def samplers_register_schedulers(self):
            raise SystemExit("bye")

    reg = Registry(autoload=False)
    reg.register(Quitter(), "quitter", Source("quitter", "quitter-dist", "1"))
    assert BUILTINS <= set(reg.available())
    assert any(e.plugin == "quitter" and "SystemExit" in e.error for e in reg.load_errors)


def test_keyboard_interrupt_from_a_plugin_still_interrupts(monkeypatch):
    _with_entry_points(monkeypatch, _FakeEntryPoint("ctrl_c", _raise(KeyboardInterrupt()), "x"))
    with pytest.raises(KeyboardInterrupt):
        Registry()


# --------------------------------------------------------------------------------------------
# 3. scheduler names
# --------------------------------------------------------------------------------------------


def _named(value):
    return type("BadName", (DDIMScheduler,), {"name": value, "__module__": "hostile_plugin"})


@pytest.mark.parametrize("bad", [123, "", "   ", "has space", "tab\tname", "a/b", "[red]x", b"ddim", "9lives"])
def test_bad_scheduler_name_is_a_load_error_naming_plugin_and_class(bad):
    reg = Registry(autoload=False)
    reg.register(_Plugin(_named(bad), _Tiny), "badname", Source("badname", "badname-dist", "1"))
    names = reg.available()
    assert BUILTINS <= set(names) and all(isinstance(n, str) for n in names)
    (err,) = [e for e in reg.load_errors if e.plugin == "badname"]
    assert "hostile_plugin.BadName" in err.error and "name" in err.error, err.error
    assert err.distribution == "badname-dist"


def test_bad_scheduler_name_leaves_list_and_check_working(monkeypatch):
    reg = Registry(autoload=False)
    reg.register(_Plugin(_named(42)), "badname", Source("badname", "badname-dist", "1"))
    monkeypatch.setattr(reg_mod, "_REGISTRY", reg)
    for args in (["list"], ["list", "--json"]):
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "badname" in result.output
    result = runner.invoke(app, ["check", "ddim", "--only", "protocol", "--backend", "torch"])
    assert result.exit_code == 0, result.output


def test_valid_plugin_names_are_accepted():
    classes = [
        type(f"Ok{i}", (DDIMScheduler,), {"name": n}) for i, n in enumerate(["my_solver_2m", "unipc-v2", "x.y"])
    ]
    reg = Registry(autoload=False)
    reg.register(_Plugin(*classes), "ok", Source("ok", "ok-dist", "1"))
    assert {"my_solver_2m", "unipc-v2", "x.y"} <= set(reg.available()) and reg.load_errors == []


# --------------------------------------------------------------------------------------------
# 4. rich markup in plugin-provided text
# --------------------------------------------------------------------------------------------

MARKUP = "closing tag [/red] and [bold]open[/bold] and [link=x]"


class _MarkupBroken:
    @hookimpl
    def samplers_register_schedulers(self):
        raise RuntimeError(MARKUP)


@pytest.fixture
def markup_registry(monkeypatch):
    reg = Registry(autoload=False)
    reg.register(_MarkupBroken(), "[/red]plugin", Source("[/red]plugin", "dist[/]", "1[/bold]"))
    reg.register(_Plugin(_Tiny), "tiny", Source("tiny", "[red]tiny-dist[/]", "[/]2"))
    monkeypatch.setattr(reg_mod, "registry", lambda reload=False: reg)
    return reg


@pytest.mark.parametrize("command", ["list", "info"])
def test_markup_in_plugin_text_is_printed_verbatim(markup_registry, monkeypatch, command):
    monkeypatch.setenv("SAMPLERS_DISABLE_EXT", "1")
    result = runner.invoke(app, [command], env={"COLUMNS": "400"})
    assert result.exit_code == 0, (result.output, result.exception)
    assert MARKUP in result.output and "[/red]plugin" in result.output and "dist[/]" in result.output
    assert "[red]tiny-dist[/]" in result.output


# --------------------------------------------------------------------------------------------
# 5. a stale JIT build lock
# --------------------------------------------------------------------------------------------

# Stubs torch's compile and library load (the real build takes minutes) but keeps torch's own
# FileBaton logic, which is where a stale lock makes every later build wait forever.
_BUILD_PRELUDE = """
    import os, sys, warnings
    from torch.utils import cpp_extension
    from samplers.ops import _build

    built = []
    cpp_extension._write_ninja_file_and_build_library = lambda **kw: built.append(kw["name"])
    cpp_extension._import_module_from_library = lambda name, d, is_py: os.path.join(d, name + ".so")
    cpp_extension.is_ninja_available = lambda: True
    lock = os.path.join(os.environ["TORCH_EXTENSIONS_DIR"], "samplers_update", "lock")
    os.makedirs(os.path.dirname(lock), exist_ok=True)
"""


@pytest.mark.slow  # a fresh interpreter (torch import, ~5 s): a regression must not hang the suite
def test_stale_build_lock_is_removed_with_a_warning(tmp_path):
    code = (
        _BUILD_PRELUDE
        + """
    open(lock, "w").close()  # left by a build that was killed: no process holds it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = _build.load_extension("update", ["update/update_cpu.cpp"], [])
    assert path is not None and built, (path, built, _build.BUILD_STATUS)
    assert not os.path.exists(lock)
    assert any(lock in str(w.message) and "stale" in str(w.message) for w in caught), [str(w.message) for w in caught]
    print("OK")
    """
    )
    result = _run_python(code, timeout=60, TORCH_EXTENSIONS_DIR=str(tmp_path), SAMPLERS_DISABLE_EXT="0")
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr


@pytest.mark.slow  # a fresh interpreter (torch import, ~5 s): a regression must not hang the suite
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="holders are read from /proc")
def test_live_build_lock_times_out_to_the_reference_with_the_lock_named(tmp_path):
    holder_code = """
        import os, sys, time
        os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
        fd = os.open(sys.argv[1], os.O_CREAT | os.O_EXCL)  # as torch's FileBaton does
        print("held", flush=True)
        time.sleep(120)
    """
    lock = tmp_path / "samplers_update" / "lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(holder_code), str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code = (
            _BUILD_PRELUDE
            + """
    import time
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = _build.load_extension("update", ["update/update_cpu.cpp"], [])
    took = time.perf_counter() - start
    status = _build.BUILD_STATUS["update"]
    assert path is None and not built and status.backend == "torch", (path, built, status)
    assert lock in status.reason and "timed out" in status.reason, status.reason
    assert str(HOLDER) in status.reason, status.reason
    assert any(lock in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert 1.0 <= took < 10, took
    assert os.path.exists(lock)  # a live build's lock is never removed
    print("OK")
    """.replace("HOLDER", str(holder.pid))
        )
        result = _run_python(
            code,
            timeout=60,
            TORCH_EXTENSIONS_DIR=str(tmp_path),
            SAMPLERS_DISABLE_EXT="0",
            SAMPLERS_BUILD_LOCK_TIMEOUT="1",
        )
        assert result.returncode == 0 and "OK" in result.stdout, result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_build_lock_timeout_env_is_validated(monkeypatch):
    from samplers.ops import _build

    monkeypatch.setenv("SAMPLERS_BUILD_LOCK_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="SAMPLERS_BUILD_LOCK_TIMEOUT"):
        _build.lock_timeout()


# --------------------------------------------------------------------------------------------
# 6. SamplersScheduler.from_pretrained never goes to the network for a local path
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize(
    "path",
    ["does-not-exist-sched", "./nope", "/tmp/samplers-nope/none", "~/samplers-nope", "cfg.json", "a/b/c"],
)
def test_wrapper_from_pretrained_missing_local_path_fails_fast(no_network, path):
    from samplers.integrations.diffusers import SamplersScheduler

    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json|no such"):
        SamplersScheduler.from_pretrained(path)
    assert time.perf_counter() - start < 0.5


def test_wrapper_from_pretrained_relative_path_in_an_existing_folder_is_local(no_network, tmp_path, monkeypatch):
    from samplers.integrations.diffusers import SamplersScheduler

    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="out/scheduler"):
        SamplersScheduler.from_pretrained("out/scheduler")  # looks like a Hub id, but out/ is here
    assert time.perf_counter() - start < 0.5


def test_wrapper_from_pretrained_local_folder_and_file_offline(no_network, tmp_path):
    from samplers.integrations.diffusers import SamplersScheduler

    SamplersScheduler("ddim", eta=0.25).save_pretrained(tmp_path / "sched")
    start = time.perf_counter()
    a = SamplersScheduler.from_pretrained(tmp_path / "sched")
    b = SamplersScheduler.from_pretrained(str(tmp_path), subfolder="sched")
    c = SamplersScheduler.from_pretrained(str(tmp_path / "sched" / "scheduler_config.json"))
    d, unused = SamplersScheduler.from_pretrained(tmp_path / "sched", return_unused_kwargs=True, foo=1)
    assert time.perf_counter() - start < 1.0
    for s in (a, b, c, d):
        assert s.scheduler.name == "ddim" and s.scheduler.config.eta == 0.25
    assert unused == {"foo": 1}
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        SamplersScheduler.from_pretrained(tmp_path)  # a folder without the file


# --------------------------------------------------------------------------------------------
# 7. SAMPLERS_DISABLE_PLUGIN_AUTOLOAD spellings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", "yes", "YES", "on", "On", " 1 "])
def test_disable_autoload_truthy_spellings(monkeypatch, value):
    _with_entry_points(monkeypatch, _FakeEntryPoint("tiny", lambda: _Plugin(_Tiny)))
    monkeypatch.setenv(DISABLE_ENV, value)
    reg = Registry()
    assert not reg.autoload and "hostile_tiny" not in reg.available()


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "no", "No", "off", "OFF", ""])
def test_disable_autoload_falsy_spellings(monkeypatch, value):
    _with_entry_points(monkeypatch, _FakeEntryPoint("tiny", lambda: _Plugin(_Tiny)))
    monkeypatch.setenv(DISABLE_ENV, value)
    reg = Registry()
    assert reg.autoload and "hostile_tiny" in reg.available()


@pytest.mark.parametrize("value", ["2", "maybe", "disable", "y"])
def test_disable_autoload_other_values_are_an_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(DISABLE_ENV, value)
    with pytest.raises(ValueError, match=DISABLE_ENV) as info:
        Registry()
    assert repr(value) in str(info.value) and "on" in str(info.value)


# --------------------------------------------------------------------------------------------
# 8. seeds out of range
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [2**64, 2**64 + 5, -1, -(2**63)])
def test_batch_seeds_refuses_seeds_outside_uint64(seed):
    from samplers.ops import batch_seeds

    with pytest.raises(ValueError, match=r"base_seed=.*0 <= base_seed < 2\*\*64"):
        batch_seeds(seed, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(base_seed=1.5, batch_size=2), "base_seed must be an int"),
        (dict(base_seed=True, batch_size=2), "base_seed must be an int"),
        (dict(base_seed=1, batch_size=-1), "batch_size"),
        (dict(base_seed=1, batch_size=2, sample_offset=-1), "sample_offset"),
        (dict(base_seed=1, batch_size=4, sample_offset=2**64 - 2), "sample_offset"),
    ],
)
def test_batch_seeds_argument_errors(kwargs, match):
    from samplers.ops import batch_seeds

    with pytest.raises((ValueError, TypeError), match=match):
        batch_seeds(**kwargs)


def test_batch_seeds_accepts_the_whole_range():
    import numpy as np

    from samplers.ops import batch_seeds

    top = batch_seeds(2**64 - 1, 3)
    assert top.dtype == torch.int64 and top.shape == (3,)
    assert not torch.equal(top, batch_seeds(0, 3))
    assert torch.equal(batch_seeds(np.uint64(7), 3), batch_seeds(7, 3))
    assert torch.equal(batch_seeds(5, 2, sample_offset=2**64 - 2), batch_seeds(5, 2, sample_offset=2**64 - 2))
    assert batch_seeds(1, 0).shape == (0,)


# --------------------------------------------------------------------------------------------
# 9. size bound on num_train_timesteps
# --------------------------------------------------------------------------------------------


def test_num_train_timesteps_is_bounded(tmp_path):
    from samplers import schedules

    (tmp_path / "scheduler_config.json").write_text('{"num_train_timesteps": 100000000}')  # 37 bytes
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"num_train_timesteps must be at most \d+, got 100000000"):
        samplers.registry().scheduler_class("ddim").from_pretrained(tmp_path)  # today: 2.5 GB of tables
    assert time.perf_counter() - start < 1.0
    limit = schedules.MAX_TRAIN_TIMESTEPS
    assert limit >= 100_000
    assert len(schedules.make_betas("linear", limit)) == limit
    with pytest.raises(ValueError, match=f"num_train_timesteps.*{limit}"):
        schedules.make_betas("linear", limit + 1)
    with pytest.raises(ValueError, match=f"{limit}"):
        schedules.DiscreteVPSchedule.from_config(num_train_timesteps=10**8)
    with pytest.raises(ValueError, match=f"{limit}"):
        samplers.get("euler", num_train_timesteps=limit + 1)


# --------------------------------------------------------------------------------------------
# 10. the conformance kit never passes NaN / Inf
# --------------------------------------------------------------------------------------------


def _poisoned(base: type, value: float, name: str) -> type:
    """A scheduler whose every step returns ``value`` (NaN or Inf) in place of the sample."""

    def step_functional(self, state, model_output, timestep, sample, **kwargs):
        out, state = base.step_functional(self, state, model_output, timestep, sample, **kwargs)
        return type(out)(torch.full_like(out.prev_sample, value), out.pred_original_sample), state

    return type(name, (base,), {"name": name, "step_functional": step_functional})


STEPPING_CHECKS = ["protocol", "shapes_dtypes", "determinism", "accuracy"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("base", [DDPMScheduler, EulerDiscreteScheduler])
def test_kit_fails_every_stepping_check_on_non_finite_output(base, value):
    from samplers.testing import KitSettings, check_scheduler

    cls = _poisoned(base, value, "poisoned")
    checks = STEPPING_CHECKS + (["marginals"] if base.stochastic else [])
    results = {r.name: r for r in check_scheduler(cls, settings=KitSettings.quick(backend="torch"), checks=checks)}
    for name in checks:
        r = results[name]
        assert not r.passed and not r.skipped, (name, r.detail)
        assert "non-finite" in r.detail, (name, r.detail)


def test_kit_marginals_fail_when_only_the_long_run_is_nan():
    """langevin on EDM: finite at the fewer-steps run, NaN at the more-steps run, once reported PASS."""
    from samplers.testing import KitSettings, check_scheduler

    class LateNaN(DDPMScheduler):
        name = "late_nan"

        def step_functional(self, state, model_output, timestep, sample, **kwargs):
            out, state = super().step_functional(state, model_output, timestep, sample, **kwargs)
            if len(self.plan.timesteps) > 50:
                return type(out)(out.prev_sample * float("nan"), out.pred_original_sample), state
            return out, state

    (r,) = check_scheduler(LateNaN, settings=KitSettings.quick(backend="torch"), checks=["marginals"])
    assert not r.passed and "non-finite" in r.detail, r.detail


def test_kit_roundtrip_fails_on_a_non_finite_plan():
    from samplers.testing import KitSettings, check_scheduler

    class NaNScale(EulerDiscreteScheduler):
        name = "nan_scale"

        def make_plan(self, *args):
            plan = super().make_plan(*args)
            plan.input_scale[-1] = float("nan")
            return plan

    results = {
        r.name: r
        for r in check_scheduler(
            NaNScale, settings=KitSettings.quick(backend="torch"), checks=["protocol", "config_roundtrip"]
        )
    }
    for r in results.values():
        assert not r.passed and "non-finite" in r.detail, (r.name, r.detail)


def test_cli_check_reports_fail_on_nan_marginals(monkeypatch):
    reg = Registry(autoload=False)
    reg.register(_Plugin(_poisoned(DDPMScheduler, float("nan"), "nan_ddpm")), "nan", Source("nan", "nan-dist", "0"))
    monkeypatch.setattr(reg_mod, "_REGISTRY", reg)
    result = runner.invoke(
        app, ["check", "nan_ddpm", "--quick", "--only", "marginals", "--backend", "torch", "--json"]
    )
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["passed"] is False and "non-finite" in report["results"][0]["detail"]


@pytest.mark.parametrize("threads", [100_000, -1, 2.5])
def test_kit_refuses_absurd_thread_counts(threads):
    """torch.set_num_threads(100000) segfaults in libgomp; the kit refuses it before any run."""
    from samplers.testing import KitSettings, check_scheduler

    before = torch.get_num_threads()
    with pytest.raises(ValueError, match=r"cpu_threads must be None or an int in \[0, \d+\]"):
        check_scheduler("ddim", settings=KitSettings.quick(cpu_threads=threads), checks=["protocol"])
    assert torch.get_num_threads() == before
