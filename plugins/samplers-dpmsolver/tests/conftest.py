"""Make the plugin's schedulers available whether or not the distribution is installed.

Installed (``pip install ./plugins/samplers-dpmsolver``), the ``samplers`` entry point already
registered them; from a source checkout the plugin module is registered by hand, exactly as the
entry point would.
"""

import sys
from pathlib import Path

import pytest

import samplers

HERE = Path(__file__).resolve().parent
try:  # installed distribution first; else the source tree next to these tests
    import samplers_dpmsolver  # noqa: F401
except ImportError:
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))  # gmm_oracle


@pytest.fixture(scope="module", autouse=True)
def dpmsolver_registered():
    registered = "dpmpp_2m" not in samplers.available()
    if registered:
        import samplers_dpmsolver.plugin as plugin

        from samplers.registry import Source

        samplers.registry().register(plugin, "dpmsolver", Source("dpmsolver", "samplers-dpmsolver", "source tree"))
    yield
    if registered:  # leave the process-wide registry as it was for the next module
        samplers.registry(reload=True)
