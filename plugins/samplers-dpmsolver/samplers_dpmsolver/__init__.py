"""High-order multistep samplers for ``samplers``: DPM-Solver++ (2M, 3M, SDE-2M) and UniPC.

Installed, they register themselves through the ``samplers`` entry-point group::

    import samplers
    scheduler = samplers.get("dpmpp_2m")      # or "dpmpp_3m", "dpmpp_2m_sde", "unipc"
"""

from samplers_dpmsolver.dpmsolver import DPMSolver3MScheduler, DPMSolverMultistepScheduler, DPMSolverSDEScheduler
from samplers_dpmsolver.unipc import UniPCMultistepScheduler

__version__ = "0.1.0"
__all__ = [
    "DPMSolverMultistepScheduler",
    "DPMSolver3MScheduler",
    "DPMSolverSDEScheduler",
    "UniPCMultistepScheduler",
    "__version__",
]
