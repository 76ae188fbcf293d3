"""Extra noise schedules for ``samplers``: ``laplace`` and ``shifted_cosine``.

Installed, every scheduler takes them by name::

    import samplers
    scheduler = samplers.get("ddim", schedule="laplace", schedule_kwargs={"mu": 0.0, "b": 0.5})
"""

from samplers_extras.schedules import LaplaceSchedule, LogSNRSchedule, ShiftedCosineSchedule

__version__ = "0.1.0"
__all__ = ["LaplaceSchedule", "LogSNRSchedule", "ShiftedCosineSchedule", "__version__"]
