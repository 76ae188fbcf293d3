"""CI compile check of the CUDA kernels: they must build with nvcc for sm_80 and sm_90 on machines
with no GPU and only a CPU build of torch (the kernels are torch-free; see .ci/compile_cuda.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from samplers.ops.reference import MAX_HISTORY

ROOT = Path(__file__).resolve().parents[1]
# The variant space of csrc/update/update_dispatch.h, per storage type: guidance on/off, four
# noise sources (none, tensor, Philox, Brownian), 0 .. MAX_HISTORY history tensors, write_x0 on/off.
VARIANTS_PER_STORAGE = 2 * 4 * (MAX_HISTORY + 1) * 2


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
    # both architectures are in every kernel object, and every variant the dispatch can pick has
    # its vector and its scalar kernel (no combination falls through the switch)
    for obj in ("update_launch_f32", "update_launch_f16", "update_launch_bf16"):
        log = (tmp_path / f"{obj}.o.log").read_text()
        assert "for 'sm_80'" in log and "for 'sm_90'" in log
        for kernel in ("update_vec_kernel", "update_scalar_kernel"):
            entries = set(re.findall(rf"Compiling entry function '(\w*{kernel}\w*)' for 'sm_90'", log))
            assert len(entries) == VARIANTS_PER_STORAGE, (obj, kernel, len(entries))
        assert re.search(r"NoiseModeE3ELi4E", log), "Brownian noise with four history tensors"
    noise_log = (tmp_path / "update_launch.o.log").read_text()
    noise_entries = re.findall(r"Compiling entry function '\w*normal_noise_kernel\w*' for 'sm_\d+'", noise_log)
    assert len(noise_entries) == 4  # Philox and Brownian, two architectures
    symbols = (tmp_path / "symbols.txt").read_text()
    for entry in ("launch_sampler_update(", "launch_philox_normal(", "launch_brownian_normal("):
        assert f"samplers::{entry}" in symbols, entry
