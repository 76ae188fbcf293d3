"""The plugin registry: built-ins through the same hooks as plugins, failures isolated, clashes named."""

from __future__ import annotations

import importlib
import importlib.metadata
from types import SimpleNamespace

import pytest

import samplers
from samplers.hookspecs import hookimpl
from samplers.registry import DISABLE_ENV, PluginNameClashError, Registry, Source, UnknownSchedulerError
from samplers.schedulers import DDIMScheduler, EulerDiscreteScheduler

reg_mod = importlib.import_module("samplers.registry")  # the module; samplers.registry is also a function
BUILTINS = {
    "ddim",
    "ddpm",
    "euler",
    "euler_ancestral",
    "flow_euler",
    "heun",
    "langevin",
    "posterior",
    "predictor_corrector",
}


class TinyDDIM(DDIMScheduler):
    """A third-party scheduler: DDIM under another name (enough to prove it is built and stepped)."""

    name = "tiny_ddim"


class ImpostorDDIM(EulerDiscreteScheduler):
    name = "ddim"  # clashes with the built-in


class _Plugin:
    def __init__(self, classes):
        self.classes = classes

    @hookimpl
    def samplers_register_schedulers(self):
        return list(self.classes)


class _BrokenPlugin:
    @hookimpl
    def samplers_register_schedulers(self):
        raise RuntimeError("plugin exploded on purpose")


@pytest.fixture
def fresh(monkeypatch) -> Registry:
    """A registry that reads no entry points (the process-wide one is left alone)."""
    monkeypatch.setenv(DISABLE_ENV, "1")
    return Registry()


def test_available_lists_every_builtin():
    names = samplers.available()
    assert BUILTINS <= set(names) and names == sorted(names)
    for name in BUILTINS:
        entry = samplers.registry().entries[name]
        assert entry.source.plugin == "builtins" and entry.source.distribution == "samplers"
        assert entry.cls.name == name


def test_get_builds_a_configured_scheduler():
    s = samplers.get("ddim", eta=0.5, num_train_timesteps=500)
    assert isinstance(s, DDIMScheduler)
    assert s.config.eta == 0.5 and s.config.num_train_timesteps == 500 and len(s.alphas_cumprod) == 500
    for name in BUILTINS:
        assert samplers.get(name).name == name


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownSchedulerError, match=r"unknown scheduler 'ddmi'; did you mean .*'ddim'") as info:
        samplers.get("ddmi")
    assert "available:" in str(info.value)
    with pytest.raises(KeyError):  # UnknownSchedulerError is a KeyError for dict-like callers
        samplers.get("eulr_ancestral")


def test_unknown_config_option_is_named():
    with pytest.raises(TypeError, match=r"DDIMScheduler has no config option\(s\) \['etaa'\]"):
        samplers.get("ddim", etaa=0.5)


def test_plugin_object_registers_with_its_source(fresh):
    fresh.register(_Plugin([TinyDDIM]), "tiny", Source("tiny", "tiny-samplers", "1.2.3"))
    assert "tiny_ddim" in fresh.available() and BUILTINS <= set(fresh.available())
    entry = fresh.entries["tiny_ddim"]
    assert entry.cls is TinyDDIM
    assert (entry.source.plugin, entry.source.distribution, entry.source.version) == ("tiny", "tiny-samplers", "1.2.3")
    s = fresh.get("tiny_ddim", eta=0.0)
    s.set_timesteps(4)
    assert len(s.timesteps) == 4
    # registered without a source: still listed, marked as registered at run time
    other = Registry()
    other.register(_Plugin([TinyDDIM]), "anon")
    assert other.entries["tiny_ddim"].source.distribution == "(registered at run time)"


def test_plugin_whose_hook_raises_is_recorded_and_builtins_keep_working(fresh):
    fresh.register(_BrokenPlugin(), "broken", Source("broken", "broken-dist", "0.1"))
    assert BUILTINS <= set(fresh.available())
    errors = [e for e in fresh.load_errors if e.plugin == "broken"]
    assert len(errors) == 1
    assert errors[0].distribution == "broken-dist" and "plugin exploded on purpose" in errors[0].error
    assert isinstance(fresh.get("euler"), EulerDiscreteScheduler)


def test_plugin_returning_a_non_scheduler_is_recorded(fresh):
    fresh.register(_Plugin([int]), "bad-types", Source("bad-types", "bad-dist", "0.1"))
    assert BUILTINS <= set(fresh.available())
    assert any(e.plugin == "bad-types" and "Scheduler" in e.error for e in fresh.load_errors)


def test_plugin_for_another_api_version_is_recorded_not_registered(fresh):
    plugin = _Plugin([TinyDDIM])
    plugin.SAMPLERS_API_VERSION = 999
    fresh.register(plugin, "future", Source("future", "future-dist", "9.0"))
    assert "tiny_ddim" not in fresh.available()
    assert any(e.plugin == "future" and "999" in e.error for e in fresh.load_errors)


def test_name_clash_names_both_sources(fresh):
    fresh.register(_Plugin([ImpostorDDIM]), "impostor", Source("impostor", "impostor-dist", "6.6.6"))
    with pytest.raises(PluginNameClashError) as info:
        fresh.available()
    message = str(info.value)
    assert "'ddim'" in message and "impostor-dist 6.6.6" in message and "samplers" in message and "builtins" in message


def test_same_class_twice_is_not_a_clash(fresh):
    fresh.register(_Plugin([TinyDDIM]), "a", Source("a", "dist-a", "1"))
    fresh.register(_Plugin([TinyDDIM]), "b", Source("b", "dist-b", "1"))
    assert "tiny_ddim" in fresh.available()


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------


class _FakeEntryPoint:
    def __init__(self, name: str, target, dist_name: str, version: str) -> None:
        self.name = name
        self.group = reg_mod.ENTRY_POINT_GROUP
        self.dist = SimpleNamespace(metadata={"Name": dist_name}, version=version)
        self._target = target
        self.loaded = False

    def load(self):
        self.loaded = True
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


@pytest.fixture
def fake_entry_points(monkeypatch):
    good = _FakeEntryPoint("tiny", _Plugin([TinyDDIM]), "tiny-samplers", "2.0")
    bad = _FakeEntryPoint("broken", ImportError("No module named 'broken_samplers'"), "broken-samplers", "0.3")
    seen_groups = []

    def entry_points(**kwargs):
        seen_groups.append(kwargs.get("group"))
        return [bad, good]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return SimpleNamespace(good=good, bad=bad, groups=seen_groups)


def test_entry_points_load_and_failures_are_recorded(monkeypatch, fake_entry_points):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    r = Registry()
    assert r.autoload and fake_entry_points.groups == ["samplers"]
    assert fake_entry_points.good.loaded and fake_entry_points.bad.loaded
    entry = r.entries["tiny_ddim"]
    assert (entry.source.plugin, entry.source.distribution, entry.source.version) == ("tiny", "tiny-samplers", "2.0")
    (error,) = r.load_errors
    assert error.plugin == "broken" and error.distribution == "broken-samplers"
    assert "ImportError" in error.error and "broken_samplers" in error.error
    assert BUILTINS <= set(r.available())


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_disable_autoload_skips_entry_points(monkeypatch, fake_entry_points, value):
    monkeypatch.setenv(DISABLE_ENV, value)
    r = Registry()
    assert not r.autoload
    assert not fake_entry_points.bad.loaded and not fake_entry_points.good.loaded
    assert r.load_errors == [] and "tiny_ddim" not in r.available()
    assert BUILTINS <= set(r.available())


def test_process_registry_reload_picks_up_entry_points(monkeypatch, fake_entry_points):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    try:
        assert "tiny_ddim" in reg_mod.registry(reload=True).available()
        assert isinstance(samplers.get("tiny_ddim"), TinyDDIM)
    finally:
        monkeypatch.undo()
        reg_mod.registry(reload=True)  # back to the real entry points for the other tests
    assert "tiny_ddim" not in samplers.available()
