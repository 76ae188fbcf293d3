"""HuggingFace diffusers drop-in: map diffusers schedulers to ours, and wrap ours for diffusers pipelines.

    from samplers.integrations.diffusers import SamplersScheduler, from_diffusers, to_diffusers

    ours = from_diffusers(pipe.scheduler)       # a samplers Scheduler with the same numerics
    pipe.scheduler = to_diffusers(ours)         # a diffusers SchedulerMixin that wraps it
    # or the diffusers idiom, straight from a (saved) diffusers config:
    pipe.scheduler = SamplersScheduler.from_config(pipe.scheduler.config)
    pipe.unet.set_attn_processor(SamplersAttnProcessor())   # attention through samplers.ops.attention

**Config mapping.** :data:`SUPPORTED_CLASSES` lists the diffusers classes that map (DDPM, DDIM, Euler,
Euler ancestral, Heun, FlowMatch Euler). Every option in the diffusers class's ``__init__`` is either
forwarded under the same name, accepted only at the values whose numerics we reproduce, or (for a
few that never reach the numerics) dropped; anything else raises :class:`UnsupportedConfigError`
naming the option, so nothing is silently ignored. Keys outside the class's ``__init__`` are the ones
diffusers' ``from_config`` keeps for *other* scheduler classes (so one can swap back); the class never
reads them, and neither do we. Private keys (``_class_name``, ``_diffusers_version``, ...) are metadata.

**The wrapper.** :class:`SamplersScheduler` subclasses ``SchedulerMixin`` and ``ConfigMixin``, so
``DiffusionPipeline.from_pretrained(..., scheduler=obj)`` accepts it and ``pipe.save_pretrained``
round-trips it (loading needs this module imported: diffusers imports no library a folder names).
Its ``config`` is the wrapped scheduler's config plus ``_samplers_name``; a pipeline
that edits ``scheduler._internal_dict`` (Stable Diffusion does for ``steps_offset``/``clip_sample``)
gets a rebuilt scheduler at the next ``set_timesteps``, as diffusers would. Pipelines probe
``inspect.signature(scheduler.step)`` for ``eta`` and ``generator``: the signature shown is the one
of the diffusers class the wrapped scheduler mirrors (``eta`` only where the scheduler takes it, as
DDIM does), so a pipeline never passes an ``eta`` that would be ignored.

**Noise.** With ``noise="diffusers"`` (default) a stochastic step draws its noise exactly as diffusers
does: ``randn_tensor(sample.shape, generator=generator, device=model_output.device,
dtype=model_output.dtype)``, one draw per step that uses noise. Given the same generator, a pipeline
therefore produces the same images as with diffusers' own scheduler. (diffusers' Euler also draws,
and discards, noise on deterministic steps, and DDIM and Euler ancestral on their noise-free last
step; we do not, so the generator's state after a run can differ, never the images.)
``noise="philox"`` uses our in-kernel counter-based noise instead (one seed drawn from the generator
per run): the same across devices and batch splits, but not diffusers' numbers.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

# The attention side of the drop-in lives in its own module (it needs no scheduler code); it is
# re-exported here so `samplers.integrations.diffusers` is the one import for diffusers users.
from samplers.integrations.attention_processor import SamplersAttnProcessor, apply_samplers_attention
from samplers.ops.reference import COEFF
from samplers.protocol import Scheduler
from samplers.registry import registry
from samplers.schedulers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    EDMEulerScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    IPNDMScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    SASolverScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)
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
from samplers.schedulers.sigma_space import SigmaSpaceScheduler

__all__ = [
    "NOISE_MODES",
    "SUPPORTED_CLASSES",
    "SamplersAttnProcessor",
    "SamplersScheduler",
    "SamplersSchedulerOutput",
    "UnsupportedConfigError",
    "apply_samplers_attention",
    "diffusers_config_to_samplers",
    "from_diffusers",
    "samplers_config_to_diffusers",
    "to_diffusers",
]

NOISE_MODES: tuple[str, ...] = ("diffusers", "philox")


class UnsupportedConfigError(ValueError):
    """A diffusers option (or value) this mapping cannot reproduce; the message names each one."""


# --------------------------------------------------------------------------------------------
# Option tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """How one diffusers option maps.

    ``forward``: passed to our scheduler under the same name (else dropped). ``allowed``: the values
    we reproduce (None: whatever our scheduler's constructor accepts). ``applies``: the value matters
    only when this holds for the whole config (else any value is fine). ``why``: for the error.
    """

    forward: bool = True
    allowed: tuple[Any, ...] | None = None
    applies: Callable[[Mapping[str, Any]], bool] | None = None
    why: str = ""

    def problem(self, name: str, value: Any, config: Mapping[str, Any]) -> str | None:
        if self.allowed is None or _value_in(value, self.allowed):
            return None
        if self.applies is not None and not self.applies(config):
            return None
        supported = ", ".join(repr(v) for v in self.allowed)
        return f"{name}={value!r} (supported: {supported})" + (f": {self.why}" if self.why else "")


def _value_in(value: Any, allowed: tuple[Any, ...]) -> bool:
    """``value in allowed`` without Python's ``True == 1`` and ``0 == False`` coincidences."""
    for a in allowed:
        if a is None:
            if value is None:
                return True
        elif isinstance(a, bool):
            if isinstance(value, (bool, np.bool_)) and bool(value) is a:
                return True
        elif value is not None and not isinstance(value, (bool, np.bool_)) and value == a:
            return True
    return False


def _same(*allowed: Any, why: str = "", applies: Callable[[Mapping[str, Any]], bool] | None = None) -> _Rule:
    return _Rule(True, allowed or None, applies, why)


def _fixed(value: Any, why: str, applies: Callable[[Mapping[str, Any]], bool] | None = None) -> _Rule:
    """Not forwarded: our scheduler always behaves as diffusers does at this one value."""
    return _Rule(False, (value,), applies, why)


def _inert(why: str) -> _Rule:
    """Bookkeeping: accepted at any value and dropped, because it cannot change the numerics."""
    return _Rule(False, None, None, why)


_VP = {
    "num_train_timesteps": _same(),
    "beta_start": _same(),
    "beta_end": _same(),
    "beta_schedule": _same(
        "linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", why="other beta schedules are not implemented here"
    ),
    "trained_betas": _same(),
}
_SPACING = {
    "timestep_spacing": _same("leading", "trailing", "linspace"),
    "steps_offset": _same(),
}
_X0_LIMITS = {
    "clip_sample": _same(),
    "clip_sample_range": _same(),
    "thresholding": _same(),
    "dynamic_thresholding_ratio": _same(),
    "sample_max_value": _same(),
}
_SIGMA_SPACINGS = {
    "use_karras_sigmas": _same(),
    "use_exponential_sigmas": _same(),
    "use_beta_sigmas": _same(),
}
_PRED_VP = _same("epsilon", "sample", "v_prediction")

_RULES: dict[str, dict[str, _Rule]] = {
    "DDPMScheduler": {
        **_VP,
        **_SPACING,
        **_X0_LIMITS,
        "variance_type": _same(
            "fixed_small",
            "fixed_small_log",
            "fixed_large",
            "learned_range",
            why="diffusers reads 'learned' extra channels as a variance (we read a log-variance, as Improved "
            "DDPM does) and takes the square root of a log for 'fixed_large_log'",
        ),
        "prediction_type": _PRED_VP,
        "rescale_betas_zero_snr": _same(),
    },
    "DDIMScheduler": {
        **_VP,
        **_SPACING,
        **_X0_LIMITS,
        "set_alpha_to_one": _same(),
        "prediction_type": _PRED_VP,
        "rescale_betas_zero_snr": _same(),
    },
    "EulerDiscreteScheduler": {
        **_VP,
        **_SPACING,
        **_SIGMA_SPACINGS,
        "prediction_type": _PRED_VP,
        "interpolation_type": _same(
            "linear",
            why="diffusers' 'log_linear' spaces sigmas log-linearly over the whole training range, ignoring "
            "the timesteps, which our interpolation_type does not reproduce",
        ),
        "sigma_min": _same(),
        "sigma_max": _same(),
        "timestep_type": _fixed(
            "discrete",
            "'continuous' feeds the model 0.25 * log(sigma) instead of the timestep",
            applies=lambda c: c.get("prediction_type") == "v_prediction",  # diffusers uses it only then
        ),
        "rescale_betas_zero_snr": _same(),
        "final_sigmas_type": _fixed("zero", "the run always ends at sigma = 0"),
    },
    "EulerAncestralDiscreteScheduler": {
        **_VP,
        **_SPACING,
        "prediction_type": _same("epsilon", "v_prediction"),
        "rescale_betas_zero_snr": _same(),
    },
    "HeunDiscreteScheduler": {
        **_VP,
        **_SPACING,
        **_SIGMA_SPACINGS,
        "prediction_type": _PRED_VP,
        "clip_sample": _fixed(False, "our Heun does not clip x0"),
        # read only when clip_sample=True, which is refused above
        "clip_sample_range": _inert("used only with clip_sample=True"),
    },
    "FlowMatchEulerDiscreteScheduler": {
        "num_train_timesteps": _same(),
        "shift": _same(),
        "use_dynamic_shifting": _same(),
        # the four below are read by pipelines (to compute mu), not by the scheduler; kept for them
        "base_shift": _same(),
        "max_shift": _same(),
        "base_image_seq_len": _same(),
        "max_image_seq_len": _same(),
        "invert_sigmas": _fixed(False, "inverted sigmas are not implemented here"),
        "shift_terminal": _same(),
        "use_karras_sigmas": _fixed(False, "Karras spacing of flow sigmas is not implemented here"),
        "use_exponential_sigmas": _fixed(False, "exponential sigma spacing is not implemented here"),
        "use_beta_sigmas": _fixed(False, "beta-distribution sigma spacing is not implemented here"),
        "time_shift_type": _same("exponential", "linear"),
        "stochastic_sampling": _fixed(False, "stochastic flow sampling is not implemented here"),
    },
}

_OURS: dict[str, type[Scheduler]] = {
    "DDPMScheduler": DDPMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "HeunDiscreteScheduler": HeunDiscreteScheduler,
    "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
}

#: diffusers class name -> the samplers class it maps to.
SUPPORTED_CLASSES: dict[str, type[Scheduler]] = dict(_OURS)

# Our options that diffusers' class has no name for, at the value that behaves as diffusers does
# (``samplers_config_to_diffusers`` refuses any other value). Callables get our config.
# Options every samplers scheduler has; diffusers' classes express only their defaults.
_COMMON = {"sigma_schedule": None, "sigma_schedule_kwargs": None, "noise": "philox"}
_DISCRETE = {**_COMMON, "schedule": "discrete", "schedule_kwargs": None}
_SIGMA_DEFAULTS = {
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "sigma_min": None,
    "sigma_max": None,
}
_OURS_ONLY: dict[str, dict[str, Any]] = {
    "DDPMScheduler": dict(_DISCRETE),
    "DDIMScheduler": {**_DISCRETE, "eta": 0.0, "use_clipped_model_output": False},
    "EulerDiscreteScheduler": {**_DISCRETE, "rho": 7.0},
    "EulerAncestralDiscreteScheduler": {**_DISCRETE, **_SIGMA_DEFAULTS, "rho": 7.0, "eta": 1.0},
    "HeunDiscreteScheduler": {
        **_DISCRETE,
        "interpolation_type": "linear",
        "sigma_min": None,
        "sigma_max": None,
        "rho": 7.0,
        "s_churn": 0.0,
        "s_tmin": 0.0,
        "s_tmax": math.inf,
        "s_noise": 1.0,
    },
    "FlowMatchEulerDiscreteScheduler": {
        **_COMMON,
        "prediction_type": "flow",
        "schedule": "flow",
        "schedule_kwargs": None,
    },
}


# ---- group 'multi': UniPC, DEIS, SA-Solver, DDIM inversion ------------------------------------------------
# These classes take diffusers' own grid flags (use_karras/exponential/beta/flow_sigmas, flow_shift, dynamic
# shifting) and reproduce them exactly (samplers.schedulers.flagged_multistep), so the flags forward as they are.
_PRED_FLOW = _same("epsilon", "sample", "v_prediction", "flow_prediction")
_FLAGGED_GRIDS = {
    "use_karras_sigmas": _same(),
    "use_exponential_sigmas": _same(),
    "use_beta_sigmas": _same(),
    "use_flow_sigmas": _same(
        False,
        applies=lambda c: any(c.get(f) for f in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")),
        why="a second grid flag with flow sigmas (diffusers silently prefers the first) is refused here",
    ),
    "flow_shift": _same(),
}
_RULES.update(
    {
        "UniPCMultistepScheduler": {
            **_VP,
            **_SPACING,
            **_FLAGGED_GRIDS,
            "solver_order": _same(1, 2, 3, why="UniPC here has orders 1 to 3"),
            "prediction_type": _PRED_FLOW,
            "thresholding": _same(
                False,
                applies=lambda c: not c.get("predict_x0", True),
                why="diffusers' UniPC ignores thresholding with predict_x0=False; drop it",
            ),
            "dynamic_thresholding_ratio": _same(),
            "sample_max_value": _same(),
            "predict_x0": _same(),
            "solver_type": _same("bh1", "bh2"),
            "lower_order_final": _same(),
            "disable_corrector": _same(),
            "solver_p": _fixed(None, "an external predictor scheduler (solver_p) cannot be folded into update rows"),
            "final_sigmas_type": _same("zero", "sigma_min"),
            "rescale_betas_zero_snr": _same(),
            "use_dynamic_shifting": _same(),
            "time_shift_type": _same("exponential", "linear"),
            "sigma_min": _same(),
            "sigma_max": _same(),
            "shift_terminal": _same(),
        },
        "DEISMultistepScheduler": {
            **_VP,
            **_SPACING,
            **_FLAGGED_GRIDS,
            "solver_order": _same(1, 2, 3, why="DEIS has orders 1 to 3"),
            "prediction_type": _PRED_FLOW,
            "thresholding": _same(),
            "dynamic_thresholding_ratio": _same(),
            "sample_max_value": _same(),
            "algorithm_type": _same("deis"),  # diffusers stores 'deis' for every algorithm it accepts
            "solver_type": _same("logrho"),
            "lower_order_final": _same(),
            "use_dynamic_shifting": _same(),
            "time_shift_type": _same("exponential"),
        },
        "SASolverScheduler": {
            **_VP,
            **_SPACING,
            **_FLAGGED_GRIDS,
            "predictor_order": _same(1, 2, 3, 4),
            "corrector_order": _same(1, 2, 3, 4),
            "prediction_type": _PRED_FLOW,
            "tau_func": _fixed(
                None,
                "a tau_func callable cannot be saved or reproduced; use SASolverScheduler's tau and tau_interval "
                "(a constant tau on an interval of model times)",
            ),
            "thresholding": _same(
                False,
                applies=lambda c: c.get("algorithm_type") == "noise_prediction",
                why="diffusers' noise-prediction thresholding indexes alpha_t with timestep=None",
            ),
            "dynamic_thresholding_ratio": _same(),
            "sample_max_value": _same(),
            "algorithm_type": _same("data_prediction", "noise_prediction"),
            "lower_order_final": _same(),
            "lambda_min_clipped": _same(),
            "variance_type": _fixed(None, "diffusers keeps the first 3 channels of a learned-variance output"),
        },
        "DDIMInverseScheduler": {
            **_VP,
            "timestep_spacing": _same("leading", "trailing"),
            "steps_offset": _same(),
            "clip_sample": _same(),
            "clip_sample_range": _same(),
            "set_alpha_to_one": _same(),
            "prediction_type": _PRED_VP,
            "rescale_betas_zero_snr": _same(),
        },
    }
)
_MULTI = {
    "UniPCMultistepScheduler": UniPCMultistepScheduler,
    "DEISMultistepScheduler": DEISMultistepScheduler,
    "SASolverScheduler": SASolverScheduler,
    "DDIMInverseScheduler": DDIMInverseScheduler,
}
_OURS.update(_MULTI)
SUPPORTED_CLASSES.update(_MULTI)
# DEIS and SA-Solver end their default grid at the first training timestep and repeat a flagged grid's last
# level: our final_sigmas_type="sigma_min"; ours end at clean data by default.
_OURS_ONLY.update(
    {
        "UniPCMultistepScheduler": {**_DISCRETE, "rho": 7.0},
        "DEISMultistepScheduler": {
            **_DISCRETE,
            "rho": 7.0,
            "final_sigmas_type": "sigma_min",
            "rescale_betas_zero_snr": False,
        },
        "SASolverScheduler": {
            **_DISCRETE,
            "rho": 7.0,
            "final_sigmas_type": "sigma_min",
            "rescale_betas_zero_snr": False,
            "tau": 1.0,
            "tau_interval": None,
        },
        "DDIMInverseScheduler": dict(_DISCRETE),
    }
)
# diffusers' SASolverScheduler draws noise on every step, tau = 0 or not: the wrapper draws as it does, so that a
# shared generator gives the same noise to the same calls.
_DRAWS_EVERY_CALL = {SASolverScheduler}
# ---- end of group 'multi' ------------------------------------------------------------------------------------
# ---- group "samp-kd" (issue 13): LMS, KDPM2 (+ ancestral), PNDM, iPNDM, LCM, TCD, EDM Euler, FlowMatch Heun,
# and FlowMatch Euler's stochastic_sampling. diffusers' sigma-spacing flags select samplers.grids by name.
_KD_SIGMA_SPACINGS = {"use_karras_sigmas": _same(), "use_exponential_sigmas": _same(), "use_beta_sigmas": _same()}
_KD_SIGMA_ONLY = {"interpolation_type": "linear", "sigma_min": None, "sigma_max": None, "rho": 7.0}
_KD_FLOW_ONLY = {
    **_COMMON,
    "prediction_type": "flow",
    "schedule": "flow",
    "schedule_kwargs": None,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
_KD_CONSISTENCY = {
    **_VP,
    "original_inference_steps": _same(),
    "prediction_type": _same("epsilon", "sample", "v_prediction"),
    "rescale_betas_zero_snr": _same(),
    # read by diffusers only for custom timesteps below 0 (which it refuses) or not at all
    "set_alpha_to_one": _inert("the grid never steps below timestep 0"),
    "steps_offset": _inert("not read by the LCM/TCD grid"),
    "timestep_spacing": _inert("not read by the LCM/TCD grid"),
}
_RULES.update(
    {
        "LMSDiscreteScheduler": {**_VP, **_SPACING, **_KD_SIGMA_SPACINGS, "prediction_type": _PRED_VP},
        "KDPM2DiscreteScheduler": {
            **_VP,
            **_SPACING,
            **_KD_SIGMA_SPACINGS,
            "prediction_type": _same("epsilon", "v_prediction"),
        },
        "KDPM2AncestralDiscreteScheduler": {
            **_VP,
            **_SPACING,
            **_KD_SIGMA_SPACINGS,
            "prediction_type": _same("epsilon", "v_prediction"),
        },
        "PNDMScheduler": {
            **_VP,
            **_SPACING,
            "skip_prk_steps": _same(),
            "set_alpha_to_one": _same(),
            "prediction_type": _same("epsilon", "v_prediction"),
        },
        "IPNDMScheduler": {
            "num_train_timesteps": _same(),
            "trained_betas": _same(
                None, why="custom iPNDM sigma tables are not implemented here (pass sigmas= instead)"
            ),
        },
        "LCMScheduler": {
            **_KD_CONSISTENCY,
            **_X0_LIMITS,
            "timestep_scaling": _same(),
        },
        "TCDScheduler": {
            **_KD_CONSISTENCY,
            # diffusers' TCD never clips or thresholds x0 in step(); only the default values reproduce that
            "clip_sample": _fixed(False, "TCD's step does not clip x0"),
            "clip_sample_range": _inert("TCD's step does not clip x0"),
            "thresholding": _fixed(False, "TCD's step does not threshold x0"),
            "dynamic_thresholding_ratio": _inert("TCD's step does not threshold x0"),
            "sample_max_value": _inert("TCD's step does not threshold x0"),
            "timestep_scaling": _inert("TCD has no boundary-condition scalings"),
        },
        "EDMEulerScheduler": {
            "sigma_min": _same(),
            "sigma_max": _same(),
            "sigma_data": _same(),
            "sigma_schedule": _same("karras", "exponential"),
            "num_train_timesteps": _same(),
            "prediction_type": _same("epsilon", "v_prediction"),
            "rho": _same(),
            "final_sigmas_type": _same("zero", "sigma_min"),
        },
        "FlowMatchHeunDiscreteScheduler": {"num_train_timesteps": _same(), "shift": _same()},
    }
)
_RULES["FlowMatchEulerDiscreteScheduler"]["stochastic_sampling"] = _same()
_KD_OURS: dict[str, type[Scheduler]] = {
    "LMSDiscreteScheduler": LMSDiscreteScheduler,
    "KDPM2DiscreteScheduler": KDPM2DiscreteScheduler,
    "KDPM2AncestralDiscreteScheduler": KDPM2AncestralDiscreteScheduler,
    "PNDMScheduler": PNDMScheduler,
    "IPNDMScheduler": IPNDMScheduler,
    "LCMScheduler": LCMScheduler,
    "TCDScheduler": TCDScheduler,
    "EDMEulerScheduler": EDMEulerScheduler,
    "FlowMatchHeunDiscreteScheduler": FlowMatchHeunDiscreteScheduler,
}
_OURS.update(_KD_OURS)
SUPPORTED_CLASSES.update(_KD_OURS)
_OURS_ONLY.update(
    {
        "LMSDiscreteScheduler": {**_DISCRETE, **_KD_SIGMA_ONLY, "solver_order": 4},
        "KDPM2DiscreteScheduler": {
            **_DISCRETE,
            **_KD_SIGMA_ONLY,
            "s_churn": 0.0,
            "s_tmin": 0.0,
            "s_tmax": math.inf,
            "s_noise": 1.0,
        },
        "KDPM2AncestralDiscreteScheduler": {**_DISCRETE, **_KD_SIGMA_ONLY, "eta": 1.0},
        # diffusers combines raw v outputs and converts once (first order; see samplers.schedulers.pndm)
        "PNDMScheduler": {
            **_DISCRETE,
            "combine": lambda c: c.get("combine", "eps") if c.get("prediction_type") == "epsilon" else "output",
        },
        # diffusers' iPNDM: a v-prediction model with alpha = cos(pi t / 2), and x0 read as 0 out of pure noise
        "IPNDMScheduler": {
            **_COMMON,
            "prediction_type": "v_prediction",
            "pure_noise_x0": "zero",
            "schedule": "vp_cosine",
            "schedule_kwargs": {"s": 0.0, "t_max": 1.0},
        },
        "LCMScheduler": dict(_DISCRETE),
        "TCDScheduler": {**_DISCRETE, "eta": 0.3},  # diffusers' step(eta=0.3) default; pipelines pass their own
        "EDMEulerScheduler": {
            "sigma_schedule_kwargs": None,
            "noise": "philox",
            "preconditioning": "edm",  # diffusers' EDM model wrapper: c_in, c_noise, c_skip/c_out
            "schedule": "edm",
            "schedule_kwargs": None,
            "s_churn": 0.0,  # diffusers takes churn per step() call, as ours does too
            "s_tmin": 0.0,
            "s_tmax": math.inf,
            "s_noise": 1.0,
        },
        "FlowMatchHeunDiscreteScheduler": dict(_KD_FLOW_ONLY),
    }
)
# ---- DPM-Solver family (samp-dpm): DPMSolverMultistep ---------------------------------------------
# Generic hooks, used by this block first: _PICK chooses our class from a diffusers config (one diffusers
# class, several registry names); _ALSO_OURS names the diffusers class of our classes beyond _OURS; and
# _DIFFUSERS_VALUES gives diffusers' values for options our config leaves at None (a class default).
_PICK: dict[str, Callable[[Mapping[str, Any]], type[Scheduler]]] = {}
_ALSO_OURS: dict[type[Scheduler], str] = {}
_DIFFUSERS_VALUES: dict[str, Callable[[Scheduler], dict[str, Any]]] = {}
_FROM_DIFFUSERS: dict[str, dict[str, Any]] = {}  # our options a diffusers class implies (set when mapping from it)


@dataclass(frozen=True)
class _Unless(_Rule):
    """Forwarded, but refused in each listed combination: ``(predicate on the whole config, why)``."""

    refuse: tuple[tuple[Callable[[Mapping[str, Any]], bool], str], ...] = ()

    def problem(self, name: str, value: Any, config: Mapping[str, Any]) -> str | None:
        reasons = [why for bad, why in self.refuse if bad(config)]
        return f"{name}={value!r}: {'; '.join(reasons)}" if reasons else None


_SDE3_SIGN = (
    "diffusers' sde-dpmsolver++ of order 3 has the wrong sign on the 1/2 of its D2 weight (an inconsistent "
    "update); samplers' dpmpp_3m_sde uses the consistent weight (k-diffusion's sample_dpmpp_3m_sde)"
)
_DPM_FLAGS = {
    "use_karras_sigmas": _same(),
    "use_exponential_sigmas": _same(),
    "use_beta_sigmas": _same(),
    "use_flow_sigmas": _same(),
    "flow_shift": _same(),
}
_RULES["DPMSolverMultistepScheduler"] = {
    **_VP,
    **_SPACING,
    **_DPM_FLAGS,
    "solver_order": _same(1, 2, why=_SDE3_SIGN, applies=lambda c: c.get("algorithm_type") == "sde-dpmsolver++"),
    "prediction_type": _Unless(
        refuse=(
            (
                lambda c: c.get("prediction_type") == "v_prediction" and bool(c.get("use_flow_sigmas")),
                "with use_flow_sigmas diffusers reads v as x0 = alpha x - sigma v, which holds only where "
                "alpha^2 + sigma^2 = 1 (not on a flow schedule)",
            ),
            (
                lambda c: c.get("prediction_type") == "flow_prediction" and not c.get("use_flow_sigmas"),
                "without use_flow_sigmas diffusers reads a velocity as x0 = x - sigma v, which holds only on a "
                "flow schedule",
            ),
        )
    ),
    "thresholding": _same(
        False,
        why="thresholding with a noise-prediction algorithm is not implemented here",
        applies=lambda c: c.get("algorithm_type") in ("dpmsolver", "sde-dpmsolver"),
    ),
    "dynamic_thresholding_ratio": _same(),
    "sample_max_value": _same(),
    "algorithm_type": _same(),
    "solver_type": _same(),
    "lower_order_final": _same(),
    "euler_at_final": _same(),
    "use_lu_lambdas": _same(),
    "use_dynamic_shifting": _same(),
    "time_shift_type": _same("exponential"),
    "final_sigmas_type": _same(
        "zero",
        why="with use_flow_sigmas diffusers ends at the VP table's first level used as a flow time",
        applies=lambda c: bool(c.get("use_flow_sigmas")),
    ),
    "lambda_min_clipped": _same(),
    "variance_type": _fixed(None, "learned variance channels are not read here (diffusers keeps the first 3)"),
    "rescale_betas_zero_snr": _same(),
}
_OURS["DPMSolverMultistepScheduler"] = DPMSolverMultistepScheduler
SUPPORTED_CLASSES["DPMSolverMultistepScheduler"] = DPMSolverMultistepScheduler
_OURS_ONLY["DPMSolverMultistepScheduler"] = {
    **_DISCRETE,
    "sigma_min": None,
    "sigma_max": None,
    "rho": 7.0,
    "eta": None,
}


def _pick_dpm_multistep(config: Mapping[str, Any]) -> type[Scheduler]:
    """dpmpp_2m / dpmpp_3m / dpmpp_2m_sde / dpmpp_3m_sde / dpm_multistep by algorithm type and order."""
    algorithm, third = config.get("algorithm_type", "dpmsolver++"), config.get("solver_order", 2) == 3
    if algorithm == "dpmsolver++":
        return DPMSolver3MScheduler if third else DPMSolverMultistepScheduler
    if algorithm == "sde-dpmsolver++":
        return DPMSolver3MSDEScheduler if third else DPMSolverSDEMultistepScheduler
    return DPMSolverNoisePredictionScheduler


def _dpm_values(scheduler: Scheduler) -> dict[str, Any]:
    if not isinstance(scheduler, DPMSolverMultistepScheduler):  # every DPM-Solver class derives from it
        raise TypeError(f"expected a DPM-Solver scheduler, got {type(scheduler).__name__}")
    return {"solver_order": scheduler.solver_order, "algorithm_type": scheduler.algorithm}


_PICK["DPMSolverMultistepScheduler"] = _pick_dpm_multistep
_DIFFUSERS_VALUES["DPMSolverMultistepScheduler"] = _dpm_values
for _cls in (DPMSolver3MScheduler, DPMSolverSDEMultistepScheduler, DPMSolver3MSDEScheduler):
    _ALSO_OURS[_cls] = "DPMSolverMultistepScheduler"
_ALSO_OURS[DPMSolverNoisePredictionScheduler] = "DPMSolverMultistepScheduler"

# DPMSolverSinglestepScheduler: dpmpp_singlestep / dpm_singlestep by algorithm type
_RULES["DPMSolverSinglestepScheduler"] = {
    **{k: v for k, v in _RULES["DPMSolverMultistepScheduler"].items() if k in _VP or k in _DPM_FLAGS},
    **{
        k: _RULES["DPMSolverMultistepScheduler"][k]
        for k in (
            "prediction_type",
            "thresholding",
            "dynamic_thresholding_ratio",
            "sample_max_value",
            "algorithm_type",
            "solver_type",
            "lower_order_final",
            "use_dynamic_shifting",
            "time_shift_type",
            "final_sigmas_type",
            "lambda_min_clipped",
            "variance_type",
        )
    },
    "solver_order": _same(
        1,
        2,
        why=_SDE3_SIGN.replace("dpmsolver++ of order 3", "dpmsolver++ of order 3 (heun)"),
        applies=lambda c: c.get("algorithm_type") == "sde-dpmsolver++" and c.get("solver_type") == "heun",
    ),
}
_OURS["DPMSolverSinglestepScheduler"] = DPMSolverSinglestepScheduler
SUPPORTED_CLASSES["DPMSolverSinglestepScheduler"] = DPMSolverSinglestepScheduler
_OURS_ONLY["DPMSolverSinglestepScheduler"] = dict(_OURS_ONLY["DPMSolverMultistepScheduler"])
_PICK["DPMSolverSinglestepScheduler"] = lambda c: (
    DPMSolverSinglestepNoisePredictionScheduler
    if c.get("algorithm_type") == "dpmsolver"
    else DPMSolverSinglestepScheduler
)
_DIFFUSERS_VALUES["DPMSolverSinglestepScheduler"] = _dpm_values
_ALSO_OURS[DPMSolverSinglestepNoisePredictionScheduler] = "DPMSolverSinglestepScheduler"

# DPMSolverSDEScheduler: dpmpp_sde. diffusers draws its noise from a torchsde Brownian tree seeded by
# noise_sampler_seed, not from the generator: the drop-in's noise="diffusers" mode asks the same tree for the
# same intervals (the increments of one step's two calls are correlated), so given the seed the images match.
_DIFFUSERS_NOISE: dict[type[Scheduler], Callable[[Any, Scheduler, torch.Tensor], torch.Tensor]] = {}
_RULES["DPMSolverSDEScheduler"] = {
    **_VP,
    **_SPACING,
    "prediction_type": _same("epsilon", "v_prediction", why="diffusers' DPMSolverSDEScheduler refuses 'sample'"),
    "use_karras_sigmas": _same(),
    "use_exponential_sigmas": _same(),
    "use_beta_sigmas": _same(),
    "noise_sampler_seed": _same(),
}
_OURS["DPMSolverSDEScheduler"] = DPMSolverSDEScheduler
_FROM_DIFFUSERS["DPMSolverSDEScheduler"] = {"noise": "brownian"}
SUPPORTED_CLASSES["DPMSolverSDEScheduler"] = DPMSolverSDEScheduler
_OURS_ONLY["DPMSolverSDEScheduler"] = {
    **_DISCRETE,
    "noise": "brownian",  # diffusers' noise is a Brownian tree: each call's increment, correlated within a step
    "interpolation_type": "linear",
    "sigma_min": None,
    "sigma_max": None,
    "rho": 7.0,
    "eta": 1.0,
    "s_noise": 1.0,
    "r": 0.5,
}


def _brownian_tree_noise(wrapper: Any, inner: Scheduler, sample: torch.Tensor) -> torch.Tensor:
    """diffusers' DPMSolverSDEScheduler noise for the current call: its Brownian tree over the call's interval."""
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    plan = inner._require_plan()
    cached = wrapper.__dict__.get("_brownian_tree")
    if cached is None or cached[0] is not plan:  # a new tree per set_timesteps, as diffusers builds one
        sigmas = _diffusers_sde_sigmas(inner, plan)
        low, high = float(sigmas[sigmas > 0].min()), float(sigmas.max())
        tree = BrownianTreeNoiseSampler(sample, low, high, inner.config.get("noise_sampler_seed"))
        cached = (plan, tree, sigmas)
        wrapper.__dict__["_brownian_tree"] = cached
    _, tree, sigmas = cached
    k = inner._state.step_index
    if float(inner.config.get("r", 0.5)) != 0.5:  # not diffusers' midpoint: the plan's own interval
        ends = plan.noise_intervals[k]
        assert ends is not None
        return tree(torch.tensor(ends[0], dtype=torch.float32), torch.tensor(ends[1], dtype=torch.float32))
    # diffusers' call k (its step index counts calls) asks for [sigmas[k], sigmas[k + 1]] on a step's first
    # call with the next level replaced by the midpoint in -log sigma, [sigmas[k - 1], sigmas[k]] on its second
    first = k % 2 == 0
    sigma, sigma_next = (sigmas[k], sigmas[k + 1]) if first else (sigmas[k - 1], sigmas[k])
    t, t_next = -sigma.log(), -sigma_next.log()
    if first:
        t_next = t + (t_next - t) * 0.5
    return tree(t.neg().exp(), t_next.neg().exp())


def _diffusers_sde_sigmas(inner: Scheduler, plan: Any) -> torch.Tensor:
    """diffusers' own float32 ``sigmas`` for this run where it has the same grid, else the plan's.

    A Brownian path is only 1/2-Hoelder: an ulp of difference in a queried level (or in the tree's ends) moves
    an increment by ~1e-3, so the tree must see diffusers' bits, not a float32 rounding of ours.
    """
    ours = plan.sigmas
    assert ours is not None
    try:
        # from its module: the package attribute is typed as the stand-in diffusers exports without torchsde
        from diffusers.schedulers.scheduling_dpmsolver_sde import DPMSolverSDEScheduler as NativeSDE

        _, config = samplers_config_to_diffusers(inner)
        native = NativeSDE(**config)
        native.set_timesteps(int(inner.num_inference_steps or 0))
    except (UnsupportedConfigError, ValueError, TypeError):
        return ours
    theirs = native.sigmas.to(torch.float32)
    if theirs.shape == ours.shape and bool(torch.allclose(theirs, ours, rtol=1e-3, atol=0)):  # same grid
        return theirs
    return ours


_DIFFUSERS_NOISE[DPMSolverSDEScheduler] = _brownian_tree_noise

# DPMSolverMultistepInverseScheduler: dpmpp_2m_inverse (data to noise; ODE algorithms only)
_MULTISTEP = _RULES["DPMSolverMultistepScheduler"]
_RULES["DPMSolverMultistepInverseScheduler"] = {
    **_VP,
    **_SPACING,
    **{
        k: _MULTISTEP[k]
        for k in (
            "thresholding",
            "dynamic_thresholding_ratio",
            "sample_max_value",
            "solver_type",
            "lower_order_final",
            "euler_at_final",
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "lambda_min_clipped",
            "variance_type",
        )
    },
    "solver_order": _same(),
    "prediction_type": _same("epsilon", "sample", "v_prediction"),
    "algorithm_type": _same(
        "dpmsolver++", "dpmsolver", why="an SDE cannot be run backwards (diffusers' inverse SDE variants give NaN)"
    ),
    "use_flow_sigmas": _fixed(
        False, "diffusers' inverse scheduler lays flow sigmas out descending: it samples instead of inverting"
    ),
    "flow_shift": _inert("read only with use_flow_sigmas=True"),
}
_OURS["DPMSolverMultistepInverseScheduler"] = DPMSolverMultistepInverseScheduler
SUPPORTED_CLASSES["DPMSolverMultistepInverseScheduler"] = DPMSolverMultistepInverseScheduler
_OURS_ONLY["DPMSolverMultistepInverseScheduler"] = {**_DISCRETE, "sigma_min": None, "sigma_max": None, "rho": 7.0}
_DIFFUSERS_VALUES["DPMSolverMultistepInverseScheduler"] = _dpm_values

# EDMDPMSolverMultistepScheduler: edm_dpmpp_2m with EDM's preconditioned network, as diffusers' EDM classes assume
_RULES["EDMDPMSolverMultistepScheduler"] = {
    "sigma_min": _same(),
    "sigma_max": _same(),
    "sigma_data": _same(),
    "sigma_schedule": _same("karras", "exponential"),
    "num_train_timesteps": _same(),
    "prediction_type": _same("epsilon", "v_prediction", why="diffusers' EDM readout refuses 'sample'"),
    "rho": _same(),
    "solver_order": _same(
        1,
        2,
        why="diffusers' EDM sde-dpmsolver++ of order 3 fails (UnboundLocalError); samplers' dpmpp_3m_sde on "
        "schedule='edm' is the consistent one",
        applies=lambda c: c.get("algorithm_type") == "sde-dpmsolver++",
    ),
    "thresholding": _same(),
    "dynamic_thresholding_ratio": _same(),
    "sample_max_value": _same(),
    "algorithm_type": _same("dpmsolver++", "sde-dpmsolver++"),
    "solver_type": _same("midpoint", "heun"),
    "lower_order_final": _same(),
    "euler_at_final": _same(),
    "final_sigmas_type": _same("zero", "sigma_min"),
}
_OURS["EDMDPMSolverMultistepScheduler"] = EDMDPMSolverMultistepScheduler
SUPPORTED_CLASSES["EDMDPMSolverMultistepScheduler"] = EDMDPMSolverMultistepScheduler
_FROM_DIFFUSERS["EDMDPMSolverMultistepScheduler"] = {"edm_preconditioning": True}
_OURS_ONLY["EDMDPMSolverMultistepScheduler"] = {
    **_COMMON,
    "schedule": "edm",
    "schedule_kwargs": None,
    "edm_preconditioning": True,
    "eta": None,
}
_DIFFUSERS_VALUES["EDMDPMSolverMultistepScheduler"] = _dpm_values
# ---- end of the DPM-Solver family block ------------------------------------------------------------


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls).parameters  # the constructor's, without self
    return {k: p for k, p in params.items() if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _diffusers_class(class_name: str) -> type:
    if class_name not in _RULES:
        raise UnsupportedConfigError(
            f"diffusers scheduler class {class_name!r} is not supported; supported: {', '.join(sorted(_RULES))}"
        )
    return getattr(diffusers, class_name)


# --------------------------------------------------------------------------------------------
# Config conversion
# --------------------------------------------------------------------------------------------


def diffusers_config_to_samplers(class_name: str, config: Mapping[str, Any]) -> tuple[type[Scheduler], dict[str, Any]]:
    """Map a diffusers scheduler config to ``(samplers class, its options)``.

    Missing options take the diffusers class's defaults (ours may differ). Raises
    :class:`UnsupportedConfigError` naming every option whose value we cannot reproduce, and every
    option of the class this mapping does not know (a newer diffusers, say).
    """
    init = _init_parameters(_diffusers_class(class_name))
    rules = _RULES[class_name]
    full = {k: p.default for k, p in init.items() if p.default is not inspect.Parameter.empty}
    full.update(config)
    options: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in full.items():
        if key.startswith("_"):
            continue  # diffusers' metadata: _class_name, _diffusers_version, _use_default_values, ...
        rule = rules.get(key)
        if rule is None:
            if key in init:
                problems.append(f"{key}={value!r}: an option of diffusers' {class_name} this mapping does not know")
            # else: kept by diffusers for another scheduler class; this class never reads it
            continue
        problem = rule.problem(key, value, full)
        if problem is not None:
            problems.append(problem)
        elif rule.forward:
            options[key] = value
    for key, value in _OURS_ONLY.get(class_name, {}).items():  # our options at the values that behave as diffusers
        options.setdefault(key, value(options) if callable(value) else value)
    if problems:
        raise UnsupportedConfigError(
            f"cannot reproduce diffusers' {class_name} as samplers.{_OURS[class_name].__name__}; unsupported "
            "option(s):\n  " + "\n  ".join(problems)
        )
    ours_defaults = _OURS[class_name]._signature_defaults()
    for key, value in _OURS_ONLY[class_name].items():  # our options at diffusers' behaviour, where not our default
        if not callable(value) and not _value_in(ours_defaults.get(key), (value,)):
            options.setdefault(key, value)
    pick = _PICK.get(class_name)
    options.update(_FROM_DIFFUSERS.get(class_name, {}))
    return (pick(full) if pick else _OURS[class_name]), options


def samplers_config_to_diffusers(scheduler: Scheduler) -> tuple[str, dict[str, Any]]:
    """``(diffusers class name, config)`` of the diffusers scheduler with the same numerics as ``scheduler``.

    Raises :class:`UnsupportedConfigError` naming each of our options that diffusers' class cannot
    express (for example DDIM's configured ``eta``, Heun's ``s_churn``, a continuous ``schedule``).
    """
    class_name = next((n for n, c in _OURS.items() if type(scheduler) is c), _ALSO_OURS.get(type(scheduler)))
    if class_name is None:
        raise UnsupportedConfigError(
            f"{type(scheduler).__name__} ({scheduler.name!r}) has no diffusers counterpart; mapped: "
            f"{', '.join(c.__name__ for c in _OURS.values())}"
        )
    ours = dict(scheduler.config)
    if class_name in _DIFFUSERS_VALUES:  # options our config leaves at None (the class default), made explicit
        ours.update(_DIFFUSERS_VALUES[class_name](scheduler))
    rules = _RULES[class_name]
    ours_only = {k: (v(ours) if callable(v) else v) for k, v in _OURS_ONLY[class_name].items()}
    init = _init_parameters(getattr(diffusers, class_name))
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in ours.items():
        rule = rules.get(key)
        if rule is not None and rule.forward:
            problem = rule.problem(key, value, ours)
            if problem is not None:
                problems.append(problem)
            out[key] = value
        elif key in ours_only:
            if not _value_in(value, (ours_only[key],)):
                problems.append(
                    f"{key}={value!r}: diffusers' {class_name} has no such option (only {ours_only[key]!r} matches it)"
                )
        else:
            problems.append(f"{key}={value!r}: diffusers' {class_name} has no such option")
    for key, rule in rules.items():
        if not rule.forward and rule.allowed is not None and key in init:
            out[key] = rule.allowed[0]
    if problems:
        raise UnsupportedConfigError(
            f"cannot express samplers.{type(scheduler).__name__} as diffusers' {class_name}; option(s):\n  "
            + "\n  ".join(problems)
        )
    return class_name, out


def from_diffusers(scheduler: Any, *, class_name: str | None = None) -> Scheduler:
    """A samplers scheduler with the numerics of a diffusers one.

    Args:
        scheduler: a diffusers scheduler instance (one of :data:`SUPPORTED_CLASSES`, diffusers' own
            class, not a subclass), a :class:`SamplersScheduler`, or a config mapping (with
            ``_class_name``, as saved by diffusers, or ``class_name=``). A samplers scheduler is
            returned as is.
        class_name: the diffusers class of a config mapping without ``_class_name``.
    Returns:
        A new (stateless: call ``set_timesteps``) samplers scheduler.
    """
    if isinstance(scheduler, Scheduler):
        return scheduler
    if isinstance(scheduler, SamplersScheduler):
        scheduler._sync_config()
        inner = scheduler.scheduler
        return type(inner).from_config(inner.config)
    if isinstance(scheduler, Mapping):
        config = dict(scheduler)
        name = class_name or config.get("_class_name")
        if not isinstance(name, str):
            raise ValueError("a config mapping needs '_class_name' (as diffusers saves it) or class_name=")
    elif isinstance(scheduler, SchedulerMixin):
        cls = type(scheduler)
        name = cls.__name__
        if getattr(diffusers, name, None) is not cls:
            raise UnsupportedConfigError(
                f"{cls.__module__}.{name} is not one of diffusers' own scheduler classes; a subclass may change "
                "the numerics, so map its config explicitly: from_diffusers(dict(s.config), class_name=...)"
            )
        assert isinstance(scheduler, ConfigMixin)  # every diffusers scheduler class is one
        config = dict(scheduler.config)
        if isinstance(scheduler, diffusers.FlowMatchEulerDiscreteScheduler) and float(scheduler.shift) != float(
            config["shift"]
        ):
            # set_shift() changed the live shift but not the grid's lower end (fixed at construction), a
            # combination no config describes
            raise UnsupportedConfigError(
                f"this FlowMatchEulerDiscreteScheduler had set_shift({float(scheduler.shift)}) called after being "
                f"built with shift={config['shift']}; its grid mixes both, which cannot be reproduced: "
                "build it with the shift instead"
            )
    else:
        raise TypeError(f"expected a diffusers scheduler or config mapping, got {type(scheduler).__name__}")
    ours_cls, options = diffusers_config_to_samplers(name, config)
    return ours_cls.from_config(options)


def to_diffusers(scheduler: Any, *, native: bool = False, noise: str = "diffusers") -> SchedulerMixin:
    """An object diffusers pipelines accept as ``scheduler``.

    Args:
        scheduler: a samplers scheduler (or a diffusers one, converted with :func:`from_diffusers`).
        native: return diffusers' own class configured to the same numerics instead of the wrapper
            (raises :class:`UnsupportedConfigError` when diffusers cannot express the config).
        noise: the wrapper's noise source, one of :data:`NOISE_MODES` (see the module docstring).
    Returns:
        A :class:`SamplersScheduler` wrapping ``scheduler`` (not a copy), or with ``native`` a diffusers scheduler.
    """
    if isinstance(scheduler, SamplersScheduler):
        ours = scheduler.scheduler
    elif isinstance(scheduler, Scheduler):
        ours = scheduler
    else:
        ours = from_diffusers(scheduler)
    if native:
        class_name, config = samplers_config_to_diffusers(ours)
        return getattr(diffusers, class_name)(**config)
    return SamplersScheduler(ours, noise=noise)


# --------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------


@dataclass
class SamplersSchedulerOutput(BaseOutput):
    """``step()`` output as diffusers pipelines read it: ``prev_sample`` and ``pred_original_sample`` [B, ...]."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


_NATIVE_STEP_OPTIONS = ("noise", "seeds", "uncond", "guidance_scale", "backend", "check_finite")
_SIGNATURES: dict[tuple[str, ...], inspect.Signature] = {}


@functools.cache
def _per_call_options(scheduler_class: type[Scheduler]) -> tuple[str, ...]:
    """Options a scheduler class takes per ``step()`` call (DDIM: ``eta``, ``use_clipped_model_output``)."""
    params = inspect.signature(scheduler_class._step_overrides).parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(n for n, p in params.items() if n != "self" and p.kind in kinds)


def _step_signature(per_call: tuple[str, ...]) -> inspect.Signature:
    """The ``step`` signature diffusers' matching class has, positional order included.

    With per-call options (DDIM): ``(model_output, timestep, sample, eta, use_clipped_model_output,
    generator, variance_noise, return_dict)``; without (DDPM, Euler, ...): ``(model_output, timestep,
    sample, generator, return_dict)``. Our own step options follow as keyword-only.
    """
    if per_call not in _SIGNATURES:
        P = inspect.Parameter
        pos, kw = P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY
        params = [P("model_output", pos), P("timestep", pos), P("sample", pos)]
        params += [P(name, pos, default=None) for name in per_call]
        params.append(P("generator", pos, default=None))
        if per_call:
            params.append(P("variance_noise", pos, default=None))
        params.append(P("return_dict", pos, default=True))
        if not per_call:
            params.append(P("variance_noise", kw, default=None))
        defaults = {"backend": "auto", "check_finite": False}
        params += [P(name, kw, default=defaults.get(name)) for name in _NATIVE_STEP_OPTIONS]
        _SIGNATURES[per_call] = inspect.Signature(params)
    return _SIGNATURES[per_call]


def _check_local_path(path: str | os.PathLike | None, subfolder: str | None, config_name: str) -> None:
    """Raise FileNotFoundError now for a local path without a config; return for a Hub id.

    diffusers sends every name that is neither a file nor a folder here to the Hub, which offline
    retries for about half a minute. A missing path is local, never a Hub id, when it is an
    ``os.PathLike``, absolute, starts with ``.`` or ``~``, holds a backslash, ends in ``.json``,
    has no ``/`` or more than one (Hub ids are ``owner/name``), or is ``dir/name`` with ``dir``
    present here.
    """
    if path is None or str(path).strip() == "":
        raise ValueError("pretrained_model_name_or_path must name a folder, a config file or a Hub id owner/name")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if os.path.isfile(text):
        return
    if os.path.isdir(text):
        inner = os.path.join(text, subfolder, config_name) if subfolder else None
        if (inner and os.path.isfile(inner)) or os.path.isfile(os.path.join(text, config_name)):
            return
        where = f"{os.path.join(text, subfolder)} or {text}" if subfolder else text
        raise FileNotFoundError(f"no {config_name} in {where}")
    parts = text.split("/")
    hub_like = (
        isinstance(path, str)
        and len(parts) == 2
        and all(parts)
        and not os.path.isabs(text)
        and not text.startswith((".", "~"))
        and "\\" not in text
        and not text.endswith(".json")
        and not os.path.isdir(parts[0])
    )
    if hub_like:
        return
    hint = ""
    if isinstance(path, str) and "/" not in text and text in registry().available():
        hint = f"; to build the registered scheduler use SamplersScheduler({text!r}, ...)"
    raise FileNotFoundError(
        f"no such file or folder {text!r} (looking for {config_name}; a Hub model id has the form owner/name){hint}"
    )


class SamplersScheduler(SchedulerMixin, ConfigMixin):
    """A samplers :class:`~samplers.protocol.Scheduler` behind diffusers' scheduler interface.

    Build it with :func:`to_diffusers`, from a registry name (``SamplersScheduler("ddim", eta=0.0)``),
    or with ``from_config`` / ``from_pretrained`` from either a saved samplers config (``_samplers_name``)
    or a diffusers one (``_class_name`` of a supported class, mapped by :func:`from_diffusers`).

    Args:
        scheduler: the samplers scheduler to wrap (not copied), or a registry name.
        noise: one of :data:`NOISE_MODES` (module docstring).
        **options: the scheduler's options, with a registry name only.
    """

    # diffusers' ConfigMixin declares config_name = None (so typed None); each of its subclasses sets a file name
    config_name = "scheduler_config.json"  # type: ignore[assignment]
    # diffusers classes whose from_config reads this config (the option names are theirs); UIs list these
    _compatibles: list = sorted(_RULES)

    def __init__(self, scheduler: Scheduler | str = "ddim", noise: str = "diffusers", **options: Any) -> None:
        if isinstance(scheduler, str):
            scheduler = registry().get(scheduler, **options)
        elif options:
            raise TypeError(f"options {sorted(options)} go with a scheduler name, not with a scheduler instance")
        if not isinstance(scheduler, Scheduler):
            raise TypeError(
                f"SamplersScheduler wraps a samplers Scheduler, got {type(scheduler).__name__}; "
                "convert a diffusers scheduler with to_diffusers(...) or from_diffusers(...)"
            )
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
        self._scheduler = scheduler
        self._noise = noise
        self.register_to_config(_samplers_name=scheduler.name, _samplers_noise=noise, **dict(scheduler.config))

    # ---- config ---------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any] | str | os.PathLike | None = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ) -> SamplersScheduler | tuple[SamplersScheduler, dict[str, Any]]:
        """From a samplers config (``_samplers_name``) or a diffusers one (``_class_name``); kwargs override options.

        Unknown kwargs are an error unless ``return_unused_kwargs`` (then they come back, as in diffusers).
        """
        if isinstance(config, (str, os.PathLike)):
            # diffusers annotates load_config as returning (config, unused); with its default flags it is the config
            loaded: dict[str, Any] = cls.load_config(config)  # type: ignore[assignment]
            config = loaded
        cfg = dict(config or {})
        noise = kwargs.pop("noise", cfg.get("_samplers_noise", "diffusers"))
        name = cfg.get("_samplers_name")
        if name is not None:
            ours_cls = registry().scheduler_class(name)
            known = set(ours_cls._signature_defaults())
        else:
            class_name = cfg.get("_class_name")
            if class_name not in _RULES:
                raise UnsupportedConfigError(
                    f"config names neither a samplers scheduler ('_samplers_name') nor a supported diffusers class "
                    f"('_class_name' in {sorted(_RULES)}), got _class_name={class_name!r}; for a diffusers scheduler "
                    "instance use to_diffusers(scheduler)"
                )
            known = set(_RULES[class_name])
        changes = {k: kwargs.pop(k) for k in list(kwargs) if k in known}
        if kwargs and not return_unused_kwargs:
            raise TypeError(f"SamplersScheduler.from_config got unexpected argument(s) {sorted(kwargs)}")
        if name is not None:
            inner = ours_cls.from_config(cfg, **changes)
        else:
            inner = from_diffusers({**cfg, **changes})
        model = cls(inner, noise=noise)
        return (model, kwargs) if return_unused_kwargs else model

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ) -> SamplersScheduler | tuple[SamplersScheduler, dict[str, Any]]:
        """diffusers' ``from_pretrained``, except that a local path never reaches the network.

        A local file, or a folder holding ``scheduler_config.json`` (directly or in ``subfolder``),
        loads offline. A path that does not exist here raises FileNotFoundError at once when it
        cannot be a Hub id (see :func:`_check_local_path`); only ``owner/name`` with no local
        ``owner`` folder goes to the Hub, as in diffusers.
        """
        _check_local_path(pretrained_model_name_or_path, subfolder, cls.config_name)
        return super().from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, return_unused_kwargs=return_unused_kwargs, **kwargs
        )

    def _sync_config(self) -> None:
        """Rebuild the wrapped scheduler if ``config`` was edited (pipelines patch ``_internal_dict``)."""
        wanted = {k: v for k, v in self.config.items() if not k.startswith("_")}
        if wanted != dict(self._scheduler.config):
            self._scheduler = type(self._scheduler).from_config(wanted)

    @property
    def scheduler(self) -> Scheduler:
        """The wrapped samplers scheduler."""
        return self._scheduler

    @property
    def noise(self) -> str:
        return self._noise

    # ---- timesteps ------------------------------------------------------------------------

    def _ready(self) -> Scheduler:
        """The wrapped scheduler with a plan: diffusers schedulers start with a full-length grid, so do we."""
        inner = self._scheduler
        if inner.plan is None:
            self._sync_config()
            inner = self._scheduler
            mu = 0.0 if inner.config.get("use_dynamic_shifting") else None  # mu = 0: the unshifted grid
            inner.set_timesteps(len(inner), mu=mu)
        return inner

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Any = None,
        sigmas: Any = None,
        mu: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Choose the grid, with diffusers' meaning of custom ``sigmas``.

        Flow matching: custom ``sigmas`` are shifted (by ``shift``, or by ``mu`` with dynamic shifting)
        as diffusers does; custom ``timesteps`` alone are refused (diffusers would feed them to the
        model unshifted while shifting the sigmas). Sigma-space schedulers (Euler, Heun): custom
        ``sigmas`` list the final level too, which must be 0.
        """
        self._sync_config()
        inner = self._scheduler
        if sigmas is not None:
            levels = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
            if isinstance(inner, FlowMatchEulerDiscreteScheduler):
                if timesteps is not None:
                    raise ValueError("custom sigmas and timesteps together are not supported; give sigmas only")
                levels = inner._shifted(levels, mu)
            elif isinstance(inner, SigmaSpaceScheduler) and (len(levels) == 0 or float(levels[-1]) != 0.0):
                raise ValueError(
                    "custom sigmas must end with the final level 0 (diffusers' convention); a run that stops "
                    "at a nonzero sigma is not supported"
                )
            sigmas = levels
        elif timesteps is not None and isinstance(inner, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                "custom timesteps without sigmas are not supported for flow matching (diffusers shifts the "
                "sigmas derived from them but feeds the model the unshifted timesteps); give sigmas instead"
            )
        inner.set_timesteps(num_inference_steps, device=device, timesteps=timesteps, sigmas=sigmas, mu=mu, **kwargs)

    @property
    def timesteps(self) -> torch.Tensor:
        """[N] model times, one per model call, on the ``set_timesteps`` device."""
        return self._ready().timesteps

    @property
    def init_noise_sigma(self) -> float:
        return self._ready().init_noise_sigma

    @property
    def order(self) -> int:
        """diffusers' ``order`` is the model calls per step (pipelines slice ``timesteps[t_start * order:]``),
        not the convergence order: LMS and DPM-Solver++ 2M are 1 there, Heun and KDPM2 2."""
        return int(self._scheduler.nfe_per_step)

    @property
    def num_inference_steps(self) -> int | None:
        return self._scheduler.num_inference_steps

    @property
    def step_index(self) -> int | None:
        return self._scheduler.step_index

    @property
    def begin_index(self) -> int | None:
        return self._scheduler.begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._ready().set_begin_index(begin_index)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """[B, ...] -> [B, ...]: what the model should see at ``timestep``."""
        return self._ready().scale_model_input(sample, timestep)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise clean samples [B, ...] to ``timesteps`` (scalar or [B]) in the scheduler's working space."""
        return self._scheduler.add_noise(original_samples, noise, timesteps)

    def __len__(self) -> int:
        return len(self._scheduler)

    # ---- step -----------------------------------------------------------------------------

    @property
    def step(self) -> Callable[..., SamplersSchedulerOutput | tuple]:
        """``step(model_output, timestep, sample, ..., generator=None, return_dict=True)``.

        A property so that ``inspect.signature(scheduler.step)`` shows the signature of the diffusers
        class the wrapped scheduler mirrors (``eta`` and ``use_clipped_model_output`` only where it
        takes them): pipelines decide from it which arguments to pass. Shapes: model_output and
        sample [B, ...]; returns :class:`SamplersSchedulerOutput` or ``(prev_sample, pred_original_sample)``.
        """
        # mypy reads type(x) as not Hashable (its object.__hash__ is unbound); a class is hashable
        per_call = _per_call_options(type(self._scheduler))  # type: ignore[arg-type]
        signature = _step_signature(per_call)

        def step(*args: Any, **kwargs: Any) -> SamplersSchedulerOutput | tuple:
            bound = signature.bind(*args, **kwargs)  # a TypeError for unknown arguments, as a plain call gives
            return self._step(per_call, bound.arguments)

        step.__signature__ = signature  # type: ignore[attr-defined]  # read by inspect.signature; no typed slot
        step.__doc__ = SamplersScheduler.step.__doc__
        return step

    def _step(self, per_call: tuple[str, ...], args: dict[str, Any]) -> SamplersSchedulerOutput | tuple:
        inner = self._ready()
        model_output, timestep, sample = args["model_output"], args["timestep"], args["sample"]
        overrides = {name: args[name] for name in per_call if args.get(name) is not None}  # None: as configured
        generator = args.get("generator")
        noise, variance_noise = args.get("noise"), args.get("variance_noise")
        if noise is not None and variance_noise is not None:
            raise ValueError("give noise or variance_noise, not both")
        noise = noise if noise is not None else variance_noise
        native = {k: args[k] for k in _NATIVE_STEP_OPTIONS[1:] if k in args}
        if noise is None and native.get("seeds") is None:
            if self._noise == "diffusers":
                if type(inner) in _DRAWS_EVERY_CALL or self._uses_noise(inner, timestep, sample, overrides):
                    # exactly diffusers' draw, so a shared generator gives the same images
                    draw = _DIFFUSERS_NOISE.get(type(inner))
                    noise = (
                        draw(self, inner, sample)
                        if draw is not None
                        else randn_tensor(
                            tuple(sample.shape),
                            generator=generator,
                            device=model_output.device,
                            dtype=model_output.dtype,
                        )
                    )
                generator = None
            elif isinstance(generator, (list, tuple)):
                raise TypeError("noise='philox' takes one torch.Generator per run, not a list of them")
        out = inner.step(
            model_output, timestep, sample, generator=generator, return_dict=True, noise=noise, **overrides, **native
        )
        result = SamplersSchedulerOutput(prev_sample=out.prev_sample, pred_original_sample=out.pred_original_sample)
        return result if args.get("return_dict", True) else result.to_tuple()

    def _uses_noise(self, inner: Scheduler, timestep: Any, sample: torch.Tensor, overrides: dict[str, Any]) -> bool:
        """Whether this call's update takes noise (so diffusers would draw it)."""
        plan = inner._require_plan()
        if isinstance(timestep, torch.Tensor) and timestep.dim() == 1 and timestep.numel() > 1:
            return any(plan.stochastic_calls)  # per-sample timesteps: one noise tensor for the whole batch
        index = inner._resolve_call(inner._state, timestep)
        if not overrides:
            return plan.stochastic_calls[index]
        # a per-call override (DDIM's eta) rebuilds the row; remember the answer for this plan
        cached_plan, cache = self.__dict__.get("_noise_calls", (None, {}))
        if cached_plan is not plan:
            cache = {}
            self.__dict__["_noise_calls"] = (plan, cache)
        key = (index, tuple(sorted(overrides.items())))
        if key not in cache:
            row = inner._row_for_call(index, inner._step_overrides(**overrides))
            cache[key] = bool(row[COEFF["c"]] != 0) if row is not None else plan.stochastic_calls[index]
        return cache[key]

    # ---- everything else: the wrapped scheduler's attributes (sigmas, alphas_cumprod, scale_noise, ...) ----

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("_scheduler")
        if inner is not None and not name.startswith("__"):
            try:
                return getattr(inner, name)
            except AttributeError:
                pass
        return super().__getattr__(name)  # diffusers' deprecated config-attribute access, or AttributeError
