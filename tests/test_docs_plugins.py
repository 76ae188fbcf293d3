"""docs/plugins.md's code runs as printed: the minimal plugin and the multistep solver of "Writing a scheduler".

The blocks are read from the page (the ``# my_samplers.py`` and ``# ab2.py`` code blocks), executed as
modules, registered the way an entry point would, and held to what the page claims: they pass the
conformance kit, the minimal plugin is DDIM on trailing timesteps, and Adams-Bashforth 2 converges
at second order on the exact Gaussian oracle.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import samplers
from samplers.registry import Registry, Source
from samplers.testing import KitSettings, assert_conforms

from battery import assert_order

ROOT = Path(__file__).resolve().parents[1]
QUICK = KitSettings.quick(backend="torch")


def _blocks() -> dict[str, str]:
    text = (ROOT / "docs" / "plugins.md").read_text()
    return dict(re.findall(r"```python\n# (\w+\.py)\n(.*?)```", text, flags=re.S))


@pytest.fixture(scope="module")
def docs_registry(tmp_path_factory):
    """The page's modules written to files and imported, registered as the entry points would."""
    import importlib

    folder = tmp_path_factory.mktemp("docs_plugins")
    for name, body in _blocks().items():
        (folder / name).write_text(body)
    sys.path.insert(0, str(folder))  # also lets the kit's public_api check import the modules by name
    minimal, ab2 = importlib.import_module("my_samplers"), importlib.import_module("ab2")
    ab2.samplers_register_schedulers = samplers.hookspecs.hookimpl(lambda: [ab2.AdamsBashforth2])
    reg = Registry(autoload=False)
    reg.register(minimal, "my_samplers", Source("my_samplers", "my-samplers", "docs"))
    reg.register(ab2, "ab2", Source("ab2", "docs-ab2", "docs"))
    registry_module = importlib.import_module("samplers.registry")  # the package re-exports a function of that name
    saved = registry_module._REGISTRY
    registry_module._REGISTRY = reg
    yield reg
    registry_module._REGISTRY = saved
    sys.path.remove(str(folder))
    for name in ("my_samplers", "ab2"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("name", ["ddim_trailing", "ab2"])
def test_docs_schedulers_conform(docs_registry, name):
    assert_conforms(name, settings=QUICK)


def test_minimal_plugin_is_ddim_on_trailing_timesteps(docs_registry):
    ours = samplers.get("ddim_trailing")
    ddim = samplers.get("ddim", timestep_spacing="trailing", clip_sample=False)
    ours.set_timesteps(10)
    ddim.set_timesteps(10)
    assert torch.equal(ours.timesteps, ddim.timesteps)
    torch.testing.assert_close(ours.plan.rows, ddim.plan.rows, rtol=1e-12, atol=1e-12)


def test_adams_bashforth_2_converges_at_second_order(docs_registry):
    assert_order("ab2", {}, 2.0, steps=(16, 32, 64, 128))
