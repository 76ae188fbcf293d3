"""The plugin registry: built-ins and third-party schedulers behind one lookup.

``samplers.get("ddim", eta=0.5)`` builds a configured scheduler; ``samplers.available()`` lists
names. Third-party distributions are found through the entry-point group ``samplers`` (set
``SAMPLERS_DISABLE_PLUGIN_AUTOLOAD`` to 1/true/yes/on to skip them; 0/false/no/off or empty loads
them; any other value is an error). A plugin that fails to import or to register (any exception,
``SystemExit`` included; only ``KeyboardInterrupt`` propagates), or that registers a class without a
valid ``name``, is recorded in :attr:`Registry.load_errors` (name, distribution, error) and the rest
keep working; two plugins registering one name is an error naming both.

Re-entry: a plugin module that calls ``samplers.available()`` / ``samplers.get()`` while it is being
imported gets the registry as built so far (the built-ins and the plugins loaded before it). A hook
(``samplers_register_schedulers``) that looks schedulers up while the registry is collecting them
gets a :class:`RegistryReentryError`, which makes it a load error of that plugin; neither deadlocks.
"""

from __future__ import annotations

import json
import os
import re
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from samplers import hookspecs
from samplers.errors import did_you_mean
from samplers.protocol import Scheduler

ENTRY_POINT_GROUP = "samplers"
DISABLE_ENV = "SAMPLERS_DISABLE_PLUGIN_AUTOLOAD"


class PluginNameClashError(RuntimeError):
    """Two plugins registered the same scheduler name."""


class RegistryReentryError(RuntimeError):
    """A plugin hook looked schedulers up while the registry was collecting them from the hooks."""


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


# Scheduler names are CLI arguments, table cells and config values: a letter, then letters, digits,
# "_", "-" or "." (at most 64 characters).
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def autoload_from_env() -> bool:
    """Whether entry points load, from ``SAMPLERS_DISABLE_PLUGIN_AUTOLOAD`` (case-insensitive, trimmed)."""
    raw = os.environ.get(DISABLE_ENV, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return False
    if value in _FALSE:
        return True
    raise ValueError(
        f"{DISABLE_ENV}={raw!r} is not understood: use one of {', '.join(_TRUE)} to skip plugin entry points, "
        f"or one of {', '.join(v for v in _FALSE if v)} (or leave it empty) to load them"
    )


def _fatal(exc: BaseException) -> bool:
    """Exceptions a plugin failure must not swallow: Ctrl-C (and interpreter shutdown)."""
    return isinstance(exc, (KeyboardInterrupt, GeneratorExit))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _class_problem(cls: Any) -> str | None:
    """Why ``cls`` cannot be registered, or None."""
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        return f"{cls!r} is not a samplers.protocol.Scheduler subclass"
    label = f"{cls.__module__}.{cls.__qualname__}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str):
        return f"{label} has name {name!r} ({type(name).__name__}); a scheduler name must be a str"
    if not NAME_PATTERN.fullmatch(name):
        return (
            f"{label} has name {name!r}; a scheduler name is a letter followed by letters, digits, '_', '-' or '.' "
            "(at most 64 characters)"
        )
    try:
        json.dumps(cls.metadata())  # `samplers list --json` prints it
    except Exception as exc:
        return f"{label}.metadata() failed or is not JSON-serializable: {_describe(exc)}"
    return None


def _own_version() -> str:
    try:
        return metadata.version("samplers")
    except metadata.PackageNotFoundError:
        return "0+local"


class Registry:
    """A pluggy PluginManager plus the scheduler table it yields."""

    def __init__(self, autoload: bool | None = None, *, _defer_entry_points: bool = False) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs.SamplersHookSpec)
        self.autoload = autoload_from_env() if autoload is None else autoload
        self.load_errors: list[LoadError] = []
        self._sources: dict[str, Source] = {}
        self._entries: dict[str, Entry] | None = None
        # Re-entrant: a plugin's import may call back into this registry on the same thread.
        self._lock = threading.RLock()
        self._collecting = False
        from samplers import schedulers as builtins

        self.register(builtins, "builtins", Source("builtins", "samplers", _own_version()))
        if self.autoload and not _defer_entry_points:
            self.load_entry_points()

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

    def load_entry_points(self) -> None:
        """Import and register every entry point of the ``samplers`` group (once per name)."""
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "?"
            dist_version = dist.version if dist is not None else "?"
            if ep.name in self._sources:
                continue
            try:
                plugin = ep.load()
            except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not take the rest down
                if _fatal(exc):
                    raise
                self.load_errors.append(LoadError(ep.name, dist_name, _describe(exc), traceback.format_exc(limit=3)))
                continue
            self.register(plugin, ep.name, Source(ep.name, dist_name, dist_version))

    def _collect(self) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        for impl in reversed(self.pm.hook.samplers_register_schedulers.get_hookimpls()):
            source = self._sources.get(impl.plugin_name, Source(impl.plugin_name, "?", "?"))
            try:
                returned = impl.function() or []
                if not isinstance(returned, Iterable):
                    raise TypeError(
                        f"samplers_register_schedulers returned a {type(returned).__name__}, not a list of classes"
                    )
                classes = list(returned)
                for cls in classes:
                    problem = _class_problem(cls)
                    if problem:
                        raise TypeError(problem)
            except BaseException as exc:  # the plugin's classes are all skipped; the others keep working
                if _fatal(exc):
                    raise
                self.load_errors.append(LoadError(impl.plugin_name, source.distribution, _describe(exc)))
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
            except BaseException as exc:
                if _fatal(exc):
                    raise
                self.load_errors.append(LoadError(impl.plugin_name, source.distribution, _describe(exc)))
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
                if self._collecting:  # only this thread can be here: a hook looked schedulers up
                    raise RegistryReentryError(
                        "a samplers_register_schedulers hook called samplers.available()/get() while the registry "
                        "was collecting schedulers; return classes from the hook and look them up afterwards"
                    )
                self._collecting = True
                try:
                    self._entries = self._collect()
                finally:
                    self._collecting = False
            return self._entries

    def available(self) -> list[str]:
        return sorted(self.entries)

    def scheduler_class(self, name: str) -> type[Scheduler]:
        try:
            return self.entries[name].cls
        except KeyError:
            raise UnknownSchedulerError(
                f"unknown scheduler {name!r}{did_you_mean(name, self.available())} "
                f"(available: {', '.join(self.available())})"
            ) from None

    def get(self, name: str, **config: Any) -> Scheduler:
        return self.scheduler_class(name).from_config(config)


_REGISTRY: Registry | None = None
_REGISTRY_LOCK = threading.RLock()  # re-entrant: plugins imported while it is held may call registry()
_BUILDING: Registry | None = None  # the registry whose entry points are being imported (under the lock)


def registry(reload: bool = False) -> Registry:
    """The process-wide registry (built on first use; ``reload=True`` re-reads entry points).

    Called from a plugin module while the registry imports it (same thread), this returns the
    registry built so far, built-ins included, instead of waiting on itself or loading again.
    """
    global _REGISTRY, _BUILDING
    with _REGISTRY_LOCK:
        if _BUILDING is not None:  # we hold the lock, so this thread is the one importing plugins
            return _BUILDING
        if _REGISTRY is None or reload:
            reg = Registry(_defer_entry_points=True)
            if reg.autoload:
                _BUILDING = reg
                try:
                    reg.load_entry_points()
                finally:
                    _BUILDING = None
            _REGISTRY = reg
        return _REGISTRY


def get(name: str, **config: Any) -> Scheduler:
    """A new scheduler by registry name, configured with ``config`` (unknown options are errors)."""
    return registry().get(name, **config)


def available() -> list[str]:
    """Names of every registered scheduler, built-in and plugin."""
    return registry().available()
