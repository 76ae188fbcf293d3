"""samplers: diffusion samplers and noise schedulers behind one ``step()`` protocol.

    import samplers
    scheduler = samplers.get("ddim", eta=0.0)
    scheduler.set_timesteps(50)

See ``samplers.available()`` for every registered scheduler (built-in and plugins).
"""

from samplers.protocol import SamplerState, Scheduler, StepOutput
from samplers.registry import available, get, registry
from samplers.sampling import GraphedSampler, sample

__version__ = "0.1.0"

__all__ = [
    "Scheduler",
    "SamplerState",
    "StepOutput",
    "available",
    "get",
    "registry",
    "sample",
    "GraphedSampler",
    "__version__",
]
