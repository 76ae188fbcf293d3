"""Entry-point module of ``samplers-extras``: noise schedules through ``samplers_register_schedules``."""

from samplers.hookspecs import hookimpl
from samplers_extras.schedules import LaplaceSchedule, ShiftedCosineSchedule

SAMPLERS_API_VERSION = 2


@hookimpl
def samplers_register_schedules() -> dict[str, type]:
    return {"laplace": LaplaceSchedule, "shifted_cosine": ShiftedCosineSchedule}
