"""Register the plugin from the source tree when the distribution is not installed."""

import sys
from pathlib import Path

import pytest

import samplers

HERE = Path(__file__).resolve().parent
try:  # installed distribution first; else the source tree next to these tests
    import samplers_extras  # noqa: F401
except ImportError:
    sys.path.insert(0, str(HERE.parent))


@pytest.fixture(scope="module", autouse=True)
def extras_registered():
    registered = "laplace" not in samplers.registry().schedules()
    if registered:
        import samplers_extras.plugin as plugin

        from samplers.registry import Source

        samplers.registry().register(plugin, "extras", Source("extras", "samplers-extras", "source tree"))
    yield
    if registered:  # leave the process-wide registry as it was for the next module
        samplers.registry(reload=True)
