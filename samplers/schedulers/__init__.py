"""Built-in schedulers, registered through the same hook a third-party plugin implements."""

from samplers.hookspecs import hookimpl
from samplers.schedulers.cfgpp import DPMSolverCFGPPScheduler, EulerCFGPPScheduler
from samplers.schedulers.ddim import DDIMScheduler
from samplers.schedulers.ddpm import DDPMScheduler
from samplers.schedulers.dpmsolver import (
    DPMSolver3MScheduler,
    DPMSolver3MSDEScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverNoisePredictionScheduler,
    DPMSolverSDEMultistepScheduler,
)
from samplers.schedulers.er_sde import ERSDEScheduler
from samplers.schedulers.euler import EulerDiscreteScheduler
from samplers.schedulers.euler_ancestral import EulerAncestralDiscreteScheduler
from samplers.schedulers.flow_euler import FlowMatchEulerDiscreteScheduler
from samplers.schedulers.gradient_estimation import GradientEstimationScheduler
from samplers.schedulers.heun import HeunDiscreteScheduler
from samplers.schedulers.langevin import AnnealedLangevinScheduler
from samplers.schedulers.posterior import PosteriorSamplingScheduler
from samplers.schedulers.predictor_corrector import PredictorCorrectorScheduler
from samplers.schedulers.res_multistep import RESMultistepAncestralScheduler, RESMultistepScheduler
from samplers.schedulers.restart import RestartScheduler
from samplers.schedulers.seeds import SEEDS2Scheduler, SEEDS3Scheduler
from samplers.schedulers.sigma_space import SigmaSpaceScheduler

BUILTIN_SCHEDULERS = [
    DDPMScheduler,
    DDIMScheduler,
    EulerDiscreteScheduler,
    EulerAncestralDiscreteScheduler,
    HeunDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    AnnealedLangevinScheduler,
    PredictorCorrectorScheduler,
    PosteriorSamplingScheduler,
    DPMSolverMultistepScheduler,
    DPMSolver3MScheduler,
    DPMSolverSDEMultistepScheduler,
    DPMSolver3MSDEScheduler,
    DPMSolverNoisePredictionScheduler,
    # papers-only samplers (issue 13, group samp-papers)
    RESMultistepScheduler,
    RESMultistepAncestralScheduler,
    ERSDEScheduler,
    SEEDS2Scheduler,
    SEEDS3Scheduler,
    GradientEstimationScheduler,
    EulerCFGPPScheduler,
    DPMSolverCFGPPScheduler,
    RestartScheduler,
]


@hookimpl
def samplers_register_schedulers() -> list[type]:
    return list(BUILTIN_SCHEDULERS)


__all__ = [cls.__name__ for cls in BUILTIN_SCHEDULERS] + ["BUILTIN_SCHEDULERS", "SigmaSpaceScheduler"]
