"""Make the plugin's schedulers available whether or not the distribution is installed.

Installed (``pip install ./plugins/samplers-multistep``), the ``samplers`` entry point already
registered them; from a source checkout the plugin module is registered by hand, exactly as the
entry point would.
"""

import sys
from pathlib import Path

import pytest

import samplers

HERE = Path(__file__).resolve().parent
try:  # installed distribution first; else the source tree next to these tests
    import samplers_multistep  # noqa: F401
except ImportError:
    sys.path.insert(0, str(HERE.parent))


@pytest.fixture(scope="module", autouse=True)
def multistep_registered():
    if "dpmpp_3m_exact" not in samplers.available():
        import samplers_multistep.plugin as plugin

        from samplers.registry import Source

        samplers.registry().register(plugin, "multistep", Source("multistep", "samplers-multistep", "source"))
    yield
