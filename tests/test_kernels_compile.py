"""CI compile check of the CUDA kernels: they must build with nvcc for sm_80 and sm_90 on machines
with no GPU and only a CPU build of torch (the kernels are torch-free; see .ci/compile_cuda.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_kernels_compile_for_sm80_and_sm90(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / ".ci" / "compile_cuda.sh"), str(tmp_path)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "OK: compiled" in proc.stdout
    assert (tmp_path / "libsamplers_update_kernels.so").is_file()
    objects = sorted(p.name for p in tmp_path.glob("*.o"))
    assert objects == [
        "update_launch.o",
        "update_launch_bf16.o",
        "update_launch_f16.o",
        "update_launch_f32.o",
    ]
    # both architectures are in every kernel object
    for obj in ("update_launch_f32", "update_launch_f16", "update_launch_bf16"):
        log = (tmp_path / f"{obj}.o.log").read_text()
        assert "for 'sm_80'" in log and "for 'sm_90'" in log
        assert "update_vec_kernel" in log and "update_scalar_kernel" in log
