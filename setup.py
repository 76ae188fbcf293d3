"""Optional ahead-of-time build of the compiled ops (``samplers._C_update``, ...).

``pip install .`` builds nothing native: the kernels are JIT-compiled with ninja on first use
(``samplers/ops/_build.py``), and the pure-PyTorch reference runs where no compiler is found.
To compile them ahead of time, with torch already installed in the environment::

    SAMPLERS_BUILD_EXT=1 pip install --no-build-isolation .        # or: python setup.py build_ext --inplace

This builds one module per entry of ``EXTENSIONS`` (``samplers._C_update``, the sampler update;
``samplers._C_attention_ext``, the attention op): a ``CppExtension`` with a CPU-only torch and a
``CUDAExtension`` when torch has CUDA and nvcc is found (``SAMPLERS_BUILD_CUDA=0`` forces CPU
only; ``SAMPLERS_BUILD_ONLY=update`` builds a subset). The attention kernels are CUDA-only; its
CPU-only module holds the op schema and the plain CPU implementation. CUDA targets sm_80 and sm_90
(the attention kernels sm_80 and sm_90a, where their wgmma path lives) unless
``TORCH_CUDA_ARCH_LIST`` says otherwise (e.g. ``"8.0;9.0a"``). Flags and source lists come from
``samplers/ops/_build.py`` so the JIT and ahead-of-time builds compile the same thing.
"""

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _build_config():
    # Load samplers/ops/_build.py by path: importing the package would import torch-dependent code.
    spec = importlib.util.spec_from_file_location("_samplers_build_config", ROOT / "samplers" / "ops" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cfg = _build_config()
    with_cuda = (
        torch.version.cuda is not None and CUDA_HOME is not None and os.environ.get("SAMPLERS_BUILD_CUDA", "1") != "0"
    )
    define = ["-DSAMPLERS_WITH_CUDA"] if with_cuda else []
    only = {n.strip() for n in os.environ.get("SAMPLERS_BUILD_ONLY", "").split(",") if n.strip()}
    unknown = only - set(cfg.EXTENSIONS)
    if unknown:
        raise SystemExit(
            f"SAMPLERS_BUILD_ONLY names unknown extension(s) {sorted(unknown)}; known: {sorted(cfg.EXTENSIONS)}"
        )
    modules = []
    for name, (cpu_sources, cuda_sources) in cfg.EXTENSIONS.items():
        if only and name not in only:
            continue
        # torch's BuildExtension adds no arch flags of its own once -gencode is in the nvcc flags.
        gencode = [] if os.environ.get("TORCH_CUDA_ARCH_LIST") else cfg.aot_gencode(name, torch.version.cuda)
        sources = [f"csrc/{s}" for s in cpu_sources + (cuda_sources if with_cuda else [])]
        kwargs = dict(
            name=f"samplers._C_{name}",
            sources=sources,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args={"cxx": cfg.CXX_FLAGS + define, "nvcc": cfg.NVCC_FLAGS + define + gencode},
            extra_link_args=list(cfg.LD_FLAGS),
        )
        modules.append(CUDAExtension(**kwargs) if with_cuda else CppExtension(**kwargs))
    return modules, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = [], {}
if os.environ.get("SAMPLERS_BUILD_EXT", "0") == "1":
    ext_modules, cmdclass = extensions()

setup(ext_modules=ext_modules, cmdclass=cmdclass)
