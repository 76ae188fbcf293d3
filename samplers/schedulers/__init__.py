"""Built-in schedulers, registered through the same hook a third-party plugin implements."""

from samplers.hookspecs import hookimpl
from samplers.schedulers.cfgpp import DPMSolverCFGPPScheduler, EulerCFGPPScheduler
from samplers.schedulers.ddim import DDIMScheduler
from samplers.schedulers.ddim_inverse import DDIMInverseScheduler
from samplers.schedulers.ddpm import DDPMScheduler
from samplers.schedulers.deis import DEISMultistepScheduler
from samplers.schedulers.dpm_fast import DPMSolverFastScheduler
from samplers.schedulers.dpmpp_2s_ancestral import DPMSolverPlusPlus2SAncestralScheduler
from samplers.schedulers.dpmpp_sde import DPMSolverSDEScheduler
from samplers.schedulers.dpmsolver import (
    DPMSolver3MScheduler,
    DPMSolver3MSDEScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverNoisePredictionScheduler,
    DPMSolverSDEMultistepScheduler,
)
from samplers.schedulers.dpmsolver_inverse import DPMSolverMultistepInverseScheduler
from samplers.schedulers.dpmsolver_singlestep import (
    DPMSolverSinglestepNoisePredictionScheduler,
    DPMSolverSinglestepScheduler,
)
from samplers.schedulers.edm_dpmsolver import EDMDPMSolverMultistepScheduler
from samplers.schedulers.edm_euler import EDMEulerScheduler
from samplers.schedulers.er_sde import ERSDEScheduler
from samplers.schedulers.euler import EulerDiscreteScheduler
from samplers.schedulers.euler_ancestral import EulerAncestralDiscreteScheduler
from samplers.schedulers.flow_euler import FlowMatchEulerDiscreteScheduler
from samplers.schedulers.flow_heun import FlowMatchHeunDiscreteScheduler
from samplers.schedulers.gradient_estimation import GradientEstimationScheduler
from samplers.schedulers.heun import HeunDiscreteScheduler
from samplers.schedulers.kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from samplers.schedulers.langevin import AnnealedLangevinScheduler
from samplers.schedulers.lcm import LCMScheduler, TCDScheduler
from samplers.schedulers.lms import LMSDiscreteScheduler
from samplers.schedulers.pndm import IPNDMScheduler, PNDMScheduler
from samplers.schedulers.posterior import PosteriorSamplingScheduler
from samplers.schedulers.predictor_corrector import PredictorCorrectorScheduler
from samplers.schedulers.res_multistep import RESMultistepAncestralScheduler, RESMultistepScheduler
from samplers.schedulers.restart import RestartScheduler
from samplers.schedulers.sa_solver import SASolverScheduler
from samplers.schedulers.seeds import SEEDS2Scheduler, SEEDS3Scheduler
from samplers.schedulers.sigma_space import SigmaSpaceScheduler
from samplers.schedulers.unipc import UniPCMultistepScheduler

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
    # group 'multi': UniPC, DEIS, SA-Solver, DDIM inversion
    UniPCMultistepScheduler,
    DEISMultistepScheduler,
    SASolverScheduler,
    DDIMInverseScheduler,
    # k-diffusion / diffusers classics (LMS, DPM2, DPM++ 2S a, PNDM, iPNDM, LCM, TCD, EDM Euler, flow Heun)
    LMSDiscreteScheduler,
    KDPM2DiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    DPMSolverPlusPlus2SAncestralScheduler,
    EDMEulerScheduler,
    FlowMatchHeunDiscreteScheduler,
    PNDMScheduler,
    IPNDMScheduler,
    LCMScheduler,
    TCDScheduler,
    # DPM-Solver family (samp-dpm helper)
    DPMSolverSinglestepScheduler,
    DPMSolverSinglestepNoisePredictionScheduler,
    DPMSolverFastScheduler,
    DPMSolverSDEScheduler,
    DPMSolverMultistepInverseScheduler,
    EDMDPMSolverMultistepScheduler,
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
