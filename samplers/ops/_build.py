"""Finding or building the compiled extensions, and saying why when there is none.

Order: a prebuilt module ``samplers._C_<name>`` (``setup.py`` with ``SAMPLERS_BUILD_EXT=1``),
else a JIT build with ninja into torch's extension cache (rebuilt only when a source or flag
changes), else ``None`` and the pure-PyTorch reference is used. ``SAMPLERS_DISABLE_EXT=1``
forces the reference. The outcome of every attempt is kept in :data:`BUILD_STATUS` for
``samplers info``. Nothing here runs at import time: the first call of :func:`load_extension`
builds.

The build lock: torch's JIT build holds ``<build dir>/lock`` (created exclusively, its descriptor
open until the build ends) and every other process waits, without limit, until that file is gone.
A build killed mid-way leaves the file behind. Before building, a lock no live process holds
(read from ``/proc/<pid>/fd``; where that cannot be seen, a lock older than
:data:`STALE_LOCK_AGE_S`) is removed with a warning naming it; a live one is waited on for at most
``SAMPLERS_BUILD_LOCK_TIMEOUT`` seconds (default :data:`DEFAULT_LOCK_TIMEOUT_S`), after which the
op falls back to the reference with the lock named in :data:`BUILD_STATUS`. (A process that takes
the lock between that check and torch's own is still waited on by torch without limit.)
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"

# Host flags: IEEE float32 without contraction into FMA (so the CPU, the CUDA kernels and the
# reference agree bit for bit), no errno/trap semantics so the math loops vectorize, and OpenMP,
# which at::parallel_for (inline in torch's headers) needs to run in parallel at all.
# SAMPLERS_PY_MODULE also gives the library a PyInit__C_<name>, so a JIT-built file can be
# reused as the prebuilt module samplers/_C_<name>.so (benchmarks/gpu_update.sh does).
# The C++ standard is torch's choice (c++17 or c++20 by version); our code is valid in both.
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-DSAMPLERS_PY_MODULE"]
LD_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr"]
# Architectures an ahead-of-time CUDA build targets (A100, H100) when TORCH_CUDA_ARCH_LIST is unset.
DEFAULT_GENCODE = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]


# Sources of each extension, relative to csrc/: (C++ sources, CUDA sources). setup.py builds every
# entry ahead of time as samplers._C_<name>; the ops modules JIT-build their entry on first use.
EXTENSIONS: dict[str, tuple[list[str], list[str]]] = {
    "update": (
        ["update/update_cpu.cpp", "bindings/update_ops.cpp"],
        [
            "update/update_launch.cu",
            "update/update_launch_f32.cu",
            "update/update_launch_f16.cu",
            "update/update_launch_bf16.cu",
            "bindings/update_cuda.cu",
        ],
    ),
    # Named as samplers/ops/attention.py loads it (_EXT_NAME), so the prebuilt module is
    # samplers._C_attention_ext; tests/test_models.py checks the source lists agree with that file.
    "attention_ext": (
        ["bindings/attention_ops.cpp"],
        [
            "bindings/attention_cuda.cu",
            "attention/attention_launch.cu",
            "attention/attention_mma.cu",
            "attention/attention_wgmma.cu",
        ],
    ),
}

# Extensions whose ahead-of-time CUDA build needs other targets than DEFAULT_GENCODE: the attention
# kernels' wgmma path exists only in the arch-specific sm_90a target (a plain sm_90 build compiles
# it to placeholders), and sm_90a cubins run on compute capability 9.0 only, so it replaces sm_90.
AOT_GENCODE: dict[str, list[str]] = {
    "attention_ext": ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a"],
}


def aot_gencode(name: str, cuda_version: str | None) -> list[str]:
    """``-gencode`` flags for the ahead-of-time CUDA build of extension ``name`` (setup.py).

    ``cuda_version`` is torch's CUDA version string (``torch.version.cuda``); arch-specific targets
    such as sm_90a need CUDA 12, so older toolkits get the plain DEFAULT_GENCODE instead.
    """
    flags = AOT_GENCODE.get(name)
    if flags is None:
        return list(DEFAULT_GENCODE)
    try:
        major = int(str(cuda_version).split(".")[0])
    except ValueError:
        major = 0
    if major < 12 and any("90a" in f for f in flags):
        return list(DEFAULT_GENCODE)
    return list(flags)


@dataclass
class BuildStatus:
    name: str
    backend: str  # "prebuilt", "jit", or "torch" (reference)
    reason: str
    cuda: bool = False


BUILD_STATUS: dict[str, BuildStatus] = {}
LOCK_TIMEOUT_ENV = "SAMPLERS_BUILD_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 900.0  # a cold CUDA build of every kernel takes minutes on a small machine
STALE_LOCK_AGE_S = 6 * 3600.0  # only where the lock's holders cannot be seen (no /proc, another user's lock)
_LOCK = threading.Lock()
_MODULES: dict[str, object | None] = {}


def load_extension(name: str, cpu_sources: Sequence[str], cuda_sources: Sequence[str] = ()) -> object | None:
    """Load extension ``name`` (sources relative to ``csrc/``) or return None with the reason recorded.

    Returns the imported module (prebuilt) or the path of the loaded library (JIT); either way its
    ``TORCH_LIBRARY`` registrations are live in ``torch.ops`` afterwards. Cached per process.
    """
    with _LOCK:
        if name in _MODULES:
            return _MODULES[name]
        module = _load(name, list(cpu_sources), list(cuda_sources))
        _MODULES[name] = module
        return module


def cuda_gencode_flags() -> list[str]:
    """``-gencode`` flags for a JIT build: the visible GPUs' architectures (one build per machine)."""
    import torch

    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return []  # torch's cpp_extension turns the list into flags itself
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    if not caps:
        return list(DEFAULT_GENCODE)
    # Hopper (9.0) gets its arch-specific target (sm_90a: wgmma, setmaxnreg); a JIT build only
    # has to run on the GPUs that are here.
    arch = [f"{a}{b}a" if (a, b) == (9, 0) else f"{a}{b}" for a, b in caps]
    return [f"-gencode=arch=compute_{x},code=sm_{x}" for x in arch]


def lock_timeout() -> float:
    """Seconds to wait for another process's build lock (``SAMPLERS_BUILD_LOCK_TIMEOUT``, >= 0)."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{LOCK_TIMEOUT_ENV}={raw!r} must be a number of seconds >= 0")
    return value


def _lock_holders(lock: Path) -> list[int] | None:
    """PIDs of the processes that have ``lock`` open, or None where that cannot be seen.

    torch's FileBaton keeps the lock's descriptor open for the whole build, so a lock with no
    holder was left by a build that died. Only this user's processes can be read, so a lock
    owned by another user counts as unknown.
    """
    if not os.path.isdir("/proc/self/fd"):
        return None
    try:
        if lock.stat().st_uid != os.getuid():
            return None
    except FileNotFoundError:
        return []
    target = os.path.realpath(lock)
    holders = []
    for proc in os.scandir("/proc"):
        if not proc.name.isdigit():
            continue
        try:
            with os.scandir(f"/proc/{proc.name}/fd") as fds:
                if any(_links_to(fd.path, target) for fd in fds):
                    holders.append(int(proc.name))
        except OSError:  # gone, or not ours to read
            continue
    return holders


def _links_to(path: str, target: str) -> bool:
    try:
        return os.readlink(path) == target
    except OSError:
        return False


def _build_lock(ext_name: str) -> Path | None:
    """``<build dir>/lock`` that torch's JIT build of ``ext_name`` takes (None if torch hides where)."""
    from torch.utils import cpp_extension

    get_dir = getattr(cpp_extension, "_get_build_directory", None)
    if get_dir is None:
        return None
    return Path(get_dir(ext_name, verbose=False)) / "lock"


def wait_for_build_lock(lock: Path, timeout: float) -> str | None:
    """Make ``lock`` free: None once it is (a stale one removed), else why the build should not wait.

    Warns once, naming the lock, when it is removed or waited on.
    """
    deadline = time.monotonic() + timeout
    warned = False
    while True:
        try:
            stat = lock.stat()
        except FileNotFoundError:
            return None
        holders = _lock_holders(lock)
        age = time.time() - stat.st_mtime
        if holders == [] or (holders is None and age > STALE_LOCK_AGE_S):
            why = "no process holds it" if holders == [] else f"it is {age / 3600:.1f} h old"
            warnings.warn(
                f"samplers: removing the stale JIT build lock {lock} ({why}; left by a build that was killed?)",
                RuntimeWarning,
                stacklevel=3,
            )
            try:
                lock.unlink()
            except FileNotFoundError:
                pass
            return None
        who = f"held by pid {', '.join(map(str, holders))}" if holders else "its holder cannot be seen"
        if time.monotonic() >= deadline:
            return (
                f"timed out after {timeout:g} s waiting for the JIT build lock {lock} ({who}); "
                f"delete it if no build is running, or raise {LOCK_TIMEOUT_ENV}"
            )
        if not warned:
            warnings.warn(
                f"samplers: waiting up to {timeout:g} s for the JIT build lock {lock} ({who}): another process "
                "is building this extension",
                RuntimeWarning,
                stacklevel=3,
            )
            warned = True
        time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))  # each poll rescans /proc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if "error" in ln.lower()] or text.splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def _load(name: str, cpu_sources: list[str], cuda_sources: list[str]) -> object | None:
    if os.environ.get("SAMPLERS_DISABLE_EXT") == "1":
        BUILD_STATUS[name] = BuildStatus(name, "torch", "SAMPLERS_DISABLE_EXT=1")
        return None
    try:
        module = importlib.import_module(f"samplers._C_{name}")
        BUILD_STATUS[name] = BuildStatus(
            name, "prebuilt", f"imported prebuilt samplers._C_{name}", bool(getattr(module, "WITH_CUDA", 0))
        )
        return module
    except ImportError:
        pass
    if not CSRC.is_dir():
        BUILD_STATUS[name] = BuildStatus(name, "torch", f"no prebuilt samplers._C_{name} and no sources at {CSRC}")
        return None
    missing = [s for s in cpu_sources + cuda_sources if not (CSRC / s).is_file()]
    if missing:
        BUILD_STATUS[name] = BuildStatus(name, "torch", f"sources missing under {CSRC}: {', '.join(missing)}")
        return None
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        BUILD_STATUS[name] = BuildStatus(name, "torch", "no C++ compiler on PATH (set CXX or install g++)")
        return None
    try:
        import torch
        from torch.utils import cpp_extension

        if not cpp_extension.is_ninja_available():
            BUILD_STATUS[name] = BuildStatus(name, "torch", "ninja is not installed (pip install ninja)")
            return None
        lock = _build_lock(f"samplers_{name}")
        lock_problem = wait_for_build_lock(lock, lock_timeout()) if lock is not None else None
        if lock_problem is not None:
            BUILD_STATUS[name] = BuildStatus(name, "torch", lock_problem)
            return None
        with_cuda = bool(cuda_sources) and torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None
        sources = [str(CSRC / s) for s in cpu_sources + (cuda_sources if with_cuda else [])]
        define = ["-DSAMPLERS_WITH_CUDA"] if with_cuda else []
        path = cpp_extension.load(
            name=f"samplers_{name}",
            sources=sources,
            extra_cflags=CXX_FLAGS + define,
            extra_cuda_cflags=NVCC_FLAGS + define + cuda_gencode_flags() if with_cuda else None,
            extra_ldflags=LD_FLAGS,
            extra_include_paths=[str(CSRC)],
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=os.environ.get("SAMPLERS_VERBOSE_BUILD") == "1",
        )
        why = "built with ninja, cached in torch's extension dir"
        if bool(cuda_sources) and not with_cuda:
            why += (
                "; CPU only (" + ("no CUDA device" if not torch.cuda.is_available() else "CUDA_HOME not found") + ")"
            )
        BUILD_STATUS[name] = BuildStatus(name, "jit", why, with_cuda)
        return path
    except Exception as exc:  # no compiler, a build error: fall back, but say why
        BUILD_STATUS[name] = BuildStatus(name, "torch", f"build failed: {type(exc).__name__}: {_first_line(exc)}")
        return None
