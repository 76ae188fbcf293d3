"""Finding or building the compiled extensions, and saying why when there is none.

Order: a prebuilt module (``setup.py`` with ``SAMPLERS_BUILD_EXT=1``), else a JIT build with
ninja into torch's extension cache (once per source hash), else ``None`` and the pure-PyTorch
reference is used. ``SAMPLERS_DISABLE_EXT=1`` forces the reference. The outcome of every
attempt is kept in :data:`BUILD_STATUS` for ``samplers info``.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

CSRC = Path(__file__).resolve().parents[2] / "csrc"


@dataclass
class BuildStatus:
    name: str
    backend: str  # "prebuilt", "jit", or "torch" (reference)
    reason: str
    cuda: bool = False


BUILD_STATUS: dict[str, BuildStatus] = {}
_LOCK = threading.Lock()
_MODULES: dict[str, ModuleType | None] = {}


def load_extension(name: str, cpu_sources: list[str], cuda_sources: list[str] = ()) -> ModuleType | None:
    """Load extension ``name`` (sources relative to ``csrc/``) or return None with the reason recorded."""
    with _LOCK:
        if name in _MODULES:
            return _MODULES[name]
        module = _load(name, list(cpu_sources), list(cuda_sources))
        _MODULES[name] = module
        return module


def _load(name: str, cpu_sources: list[str], cuda_sources: list[str]) -> ModuleType | None:
    if os.environ.get("SAMPLERS_DISABLE_EXT") == "1":
        BUILD_STATUS[name] = BuildStatus(name, "torch", "SAMPLERS_DISABLE_EXT=1")
        return None
    try:
        module = importlib.import_module(f"samplers.{name}")
        BUILD_STATUS[name] = BuildStatus(name, "prebuilt", f"imported samplers.{name}", getattr(module, "WITH_CUDA", False))
        return module
    except ImportError:
        pass
    if not CSRC.is_dir():
        BUILD_STATUS[name] = BuildStatus(name, "torch", f"no prebuilt module and no sources at {CSRC}")
        return None
    try:
        import torch
        from torch.utils import cpp_extension

        with_cuda = bool(cuda_sources) and torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None
        sources = [str(CSRC / s) for s in cpu_sources + (cuda_sources if with_cuda else [])]
        flags = ["-O3", "-fopenmp", "-DSAMPLERS_WITH_CUDA" if with_cuda else "-USAMPLERS_WITH_CUDA"]
        module = cpp_extension.load(
            name=f"samplers_{name}",
            sources=sources,
            extra_cflags=flags,
            extra_cuda_cflags=["-O3", "-DSAMPLERS_WITH_CUDA", "-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_80,code=sm_80"],
            extra_ldflags=["-fopenmp"],
            extra_include_paths=[str(CSRC)],
            is_python_module=False,
            verbose=os.environ.get("SAMPLERS_VERBOSE_BUILD") == "1",
        )
        BUILD_STATUS[name] = BuildStatus(name, "jit", "built with ninja (cached in torch's extension dir)", with_cuda)
        return module
    except Exception as exc:  # no compiler, no ninja, a build error: fall back, but say why
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        BUILD_STATUS[name] = BuildStatus(name, "torch", f"build failed: {type(exc).__name__}: {first_line}")
        return None
