"""The plugin registry: built-ins and third-party schedulers behind one lookup.

``samplers.get("ddim", eta=0.5)`` builds a configured scheduler; ``samplers.available()`` lists
names. Third-party distributions are found through the entry-point group ``samplers`` (set
``SAMPLERS_DISABLE_PLUGIN_AUTOLOAD=1`` to skip them). A plugin that fails to import or to
register is recorded in :attr:`Registry.load_errors` (name, distribution, error) and the rest
keep working; two plugins registering one name is an error naming both.
"""

from __future__ import annotations

import difflib
import os
import threading
import traceback
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from samplers import hookspecs
from samplers.protocol import Scheduler

ENTRY_POINT_GROUP = "samplers"
DISABLE_ENV = "SAMPLERS_DISABLE_PLUGIN_AUTOLOAD"


class PluginNameClashError(RuntimeError):
    """Two plugins registered the same scheduler name."""


class UnknownSchedulerError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Source:
    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version} (plugin {self.plugin!r})"


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type[Scheduler]
    source: Source


@dataclass(frozen=True)
class LoadError:
    plugin: str
    distribution: str
    error: str
    detail: str = ""


def _own_version() -> str:
    try:
        return metadata.version("samplers")
    except metadata.PackageNotFoundError:
        return "0+local"


class Registry:
    """A pluggy PluginManager plus the scheduler table it yields."""

    def __init__(self, autoload: bool | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs.SamplersHookSpec)
        self.autoload = os.environ.get(DISABLE_ENV, "") not in ("1", "true", "yes") if autoload is None else autoload
        self.load_errors: list[LoadError] = []
        self._sources: dict[str, Source] = {}
        self._entries: dict[str, Entry] | None = None
        self._lock = threading.Lock()
        from samplers import schedulers as builtins

        self.register(builtins, "builtins", Source("builtins", "samplers", _own_version()))
        if self.autoload:
            self._load_entry_points()

    def register(self, plugin: Any, name: str, source: Source | None = None) -> None:
        """Register a plugin object (module or instance with ``@hookimpl`` functions)."""
        api = getattr(plugin, "SAMPLERS_API_VERSION", hookspecs.API_VERSION)
        if api != hookspecs.API_VERSION:
            src = source or Source(name, "?", "?")
            self.load_errors.append(
                LoadError(
                    name,
                    src.distribution,
                    f"targets samplers plugin API {api}, this samplers has {hookspecs.API_VERSION}",
                )
            )
            return
        self.pm.register(plugin, name=name)
        self._sources[name] = source or Source(name, "(registered at run time)", "")
        self._entries = None

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "?"
            dist_version = dist.version if dist is not None else "?"
            if ep.name in self._sources:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                self.load_errors.append(
                    LoadError(ep.name, dist_name, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=3))
                )
                continue
            self.register(plugin, ep.name, Source(ep.name, dist_name, dist_version))

    def _collect(self) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        for impl in reversed(self.pm.hook.samplers_register_schedulers.get_hookimpls()):
            source = self._sources.get(impl.plugin_name, Source(impl.plugin_name, "?", "?"))
            try:
                classes = list(impl.function() or [])
                for cls in classes:
                    if not (isinstance(cls, type) and issubclass(cls, Scheduler)) or not getattr(cls, "name", ""):
                        raise TypeError(f"{cls!r} is not a named samplers.protocol.Scheduler subclass")
            except Exception as exc:
                self.load_errors.append(
                    LoadError(impl.plugin_name, source.distribution, f"{type(exc).__name__}: {exc}")
                )
                continue
            for cls in classes:
                if cls.name in entries and entries[cls.name].cls is not cls:
                    other = entries[cls.name].source
                    raise PluginNameClashError(
                        f"scheduler name {cls.name!r} is registered twice: by {other} and by {source}; "
                        f"uninstall one or set {DISABLE_ENV}=1"
                    )
                entries[cls.name] = Entry(cls.name, cls, source)
        return entries

    def _collect_named(self, hook_name: str) -> dict[str, tuple[Any, Source]]:
        """``{name: (object, source)}`` from a hook returning dicts; failures recorded, clashes raise."""
        found: dict[str, tuple[Any, Source]] = {}
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            source = self._sources.get(impl.plugin_name, Source(impl.plugin_name, "?", "?"))
            try:
                items = dict(impl.function() or {})
            except Exception as exc:
                self.load_errors.append(
                    LoadError(impl.plugin_name, source.distribution, f"{type(exc).__name__}: {exc}")
                )
                continue
            for name, obj in items.items():
                if name in found and found[name][0] is not obj:
                    raise PluginNameClashError(
                        f"{hook_name.removeprefix('samplers_register_')} name {name!r} is registered twice: "
                        f"by {found[name][1]} and by {source}"
                    )
                found[name] = (obj, source)
        return found

    def schedules(self) -> dict[str, type]:
        """Continuous noise schedules: built-ins plus ``samplers_register_schedules`` plugins."""
        from samplers import schedules as builtin

        extra = {name: obj for name, (obj, _) in self._collect_named("samplers_register_schedules").items()}
        clash = sorted(set(extra) & set(builtin.SCHEDULES))
        if clash:
            raise PluginNameClashError(f"schedule name(s) {clash} are built in and registered again by a plugin")
        return {**builtin.SCHEDULES, **extra}

    def problems(self) -> dict[str, Any]:
        """Oracle problems for ``samplers bench`` added by plugins (``samplers_register_problems``)."""
        return {name: obj for name, (obj, _) in self._collect_named("samplers_register_problems").items()}

    @property
    def entries(self) -> dict[str, Entry]:
        with self._lock:
            if self._entries is None:
                self._entries = self._collect()
            return self._entries

    def available(self) -> list[str]:
        return sorted(self.entries)

    def scheduler_class(self, name: str) -> type[Scheduler]:
        try:
            return self.entries[name].cls
        except KeyError:
            close = difflib.get_close_matches(name, self.available(), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownSchedulerError(
                f"unknown scheduler {name!r}{hint} (available: {', '.join(self.available())})"
            ) from None

    def get(self, name: str, **config: Any) -> Scheduler:
        return self.scheduler_class(name).from_config(config)


_REGISTRY: Registry | None = None
_REGISTRY_LOCK = threading.Lock()


def registry(reload: bool = False) -> Registry:
    """The process-wide registry (built on first use; ``reload=True`` re-reads entry points)."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None or reload:
            _REGISTRY = Registry()
        return _REGISTRY


def get(name: str, **config: Any) -> Scheduler:
    """A new scheduler by registry name, configured with ``config`` (unknown options are errors)."""
    return registry().get(name, **config)


def available() -> list[str]:
    """Names of every registered scheduler, built-in and plugin."""
    return registry().available()
