"""The module the ``samplers`` entry point names: one hook returning the scheduler classes.

Kept small on purpose: ``samplers`` imports it while building its registry, so importing it
must be cheap and must not fail on a machine without optional extras.
"""

from samplers.hookspecs import hookimpl
from samplers_multistep.exact import Exact3MScheduler, Exact3MSDEScheduler

SAMPLERS_API_VERSION = 2  # the samplers plugin API this module was written against


@hookimpl
def samplers_register_schedulers() -> list[type]:
    return [Exact3MScheduler, Exact3MSDEScheduler]
