"""The ops package's attention exports, the attention extension's build wiring, and `samplers info`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from typer.testing import CliRunner

import samplers.ops
from samplers.cli import app
from samplers.ops import _build

ROOT = Path(__file__).resolve().parents[1]


def test_attention_is_exported_callable_and_still_the_module():
    from samplers.ops import attention, attention_dispatch_report

    q, k, v = (torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    torch.testing.assert_close(
        attention(q, k, v).double(), samplers.ops.attention_reference(q, k, v), atol=1e-5, rtol=1e-5
    )
    # `from samplers.ops import attention as A` keeps reaching the module's other functions
    assert (
        attention.fused_supported(q, k, v)[0] is False
        and attention.attention_dispatch_report is attention_dispatch_report
    )
    assert {"attention", "attention_dispatch_report"} <= set(samplers.ops.__all__)
    assert "kernel" in attention_dispatch_report() and "choices" in attention_dispatch_report()


def test_calling_the_module_goes_through_a_patched_function(monkeypatch):
    from samplers.ops import attention

    monkeypatch.setattr(attention, "attention", lambda q, k, v, **kw: "patched")
    assert samplers.ops.attention(None, None, None) == "patched"


def test_every_extension_has_its_sources_and_its_module_init():
    from samplers.ops import attention as A

    assert _build.EXTENSIONS["attention_ext"] == (A._CPU_SOURCES, A._CUDA_SOURCES)  # JIT and AOT build one thing
    for name, (cpu, cuda) in _build.EXTENSIONS.items():
        for src in cpu + cuda:
            assert (ROOT / "csrc" / src).is_file(), src
        # the prebuilt samplers._C_<name> is imported by that name: some C++ source must define its init
        text = "".join((ROOT / "csrc" / s).read_text() for s in cpu)
        assert re.search(rf"SAMPLERS_DEFINE_PY_MODULE\(_C_{name},", text), name  # defines PyInit__C_<name>
    macro = (ROOT / "csrc" / "bindings" / "py_module.h").read_text()
    assert "PyInit_##NAME" in macro


def test_aot_gencode_gives_the_attention_kernels_sm90a_only_with_cuda_12():
    att = _build.aot_gencode("attention_ext", "12.4")
    assert any("sm_90a" in f for f in att) and any("sm_80" in f for f in att)
    assert not any(f.endswith("code=sm_90") for f in att)  # sm_90a cubins replace the placeholder-only sm_90 ones
    assert _build.aot_gencode("attention_ext", "11.8") == _build.DEFAULT_GENCODE
    assert _build.aot_gencode("update", "12.4") == _build.DEFAULT_GENCODE


def test_info_shows_the_attention_dispatcher_next_to_the_update_backend():
    runner = CliRunner()
    out = runner.invoke(app, ["info"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "sampler_update:" in out.output and "attention:" in out.output and "dispatcher" in out.output
    if not torch.cuda.is_available():
        assert "SDPA" in out.output
    report = json.loads(runner.invoke(app, ["info", "--json"]).output)
    assert "dispatcher" in report["kernels"]["attention"]
    assert isinstance(report["attention_dispatch"]["choices"], dict) and "kernel" in report["attention_dispatch"]
