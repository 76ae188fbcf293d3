"""Hook specifications: what a plugin can add to samplers (pluggy, as pytest uses it).

A plugin is any module or object with functions marked ``@hookimpl``; a distribution exposes it
through the entry-point group ``samplers``::

    [project.entry-points.samplers]
    my_samplers = "my_samplers.plugin"

The built-in schedulers are registered through these same hooks (``samplers.schedulers``).
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "samplers"
API_VERSION = 2  # bumped when a hook or the Scheduler subclass API changes; plugins may declare SAMPLERS_API_VERSION

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class SamplersHookSpec:
    """The hooks' signatures; pluggy calls the plugins' implementations, never these bodies."""

    @hookspec
    def samplers_register_schedulers(self) -> list[type]:
        """Return scheduler classes (subclasses of ``samplers.protocol.Scheduler`` with a ``name``)."""
        raise NotImplementedError

    @hookspec
    def samplers_register_schedules(self) -> dict[str, type]:
        """Return ``{name: NoiseSchedule subclass}`` for continuous noise schedules."""
        raise NotImplementedError

    @hookspec
    def samplers_register_problems(self) -> dict[str, Any]:
        """Return ``{name: factory}`` of oracle problems for ``samplers bench``."""
        raise NotImplementedError
