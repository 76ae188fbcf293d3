"""Optional ahead-of-time build of the ``samplers._C`` extension.

``pip install .`` builds nothing native by default: the kernels are JIT-compiled with
ninja on first use (see ``samplers/ops/_build.py``). Set ``SAMPLERS_BUILD_EXT=1`` to
compile them ahead of time (CUDA sources too when ``nvcc`` and a CUDA torch are there).
"""

import os

from setuptools import setup

ext_modules = []
cmdclass = {}
if os.environ.get("SAMPLERS_BUILD_EXT", "0") == "1":
    from samplers_build import extension_for_setup  # noqa: E402  (defined in csrc build helper)

    ext, build_ext = extension_for_setup()
    ext_modules = [ext]
    cmdclass = {"build_ext": build_ext}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
