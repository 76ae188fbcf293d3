"""Memoryless schedulers are functions of ``t`` as diffusers' are (issue 14, part 2).

diffusers' DDPM, DDIM and FlowMatch-Euler ``step()`` compute everything from the timestep they are given, so
calling a step again at the same ``t`` (resampling / time-travel guidance: step, re-noise back to ``t``, step
again), jumping back up the schedule and down again (RePaint), or skipping ahead is valid, and pipelines rely
on it. Ours resolve such calls from the host timestep. Each test drives ours and diffusers' own class in
lockstep through the same call pattern, feeding both the same sample and model output at every call, and
compares the outputs; the same holds through ``to_diffusers`` (the drop-in) and ``from_diffusers``.
diffusers' FlowMatchEulerDiscreteScheduler (0.42.1) is not in fact a function of ``t``: after its first call it
reads its own step counter, so a repeated call silently uses the next level and a long pattern runs off its
table (IndexError). Its reference for a call at the i-th timestep is therefore a fresh instance started
there (``set_begin_index(i)``): what diffusers computes for that ``t``.
Schedulers with history (multistep, Heun's two calls) refuse an out-of-order call with an error that says
why and how to start over.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import samplers  # noqa: E402
from samplers.integrations.diffusers import from_diffusers, to_diffusers  # noqa: E402

SHAPE = (2, 3, 4, 4)
STEPS = 10
# indices into the 10 timesteps: in order, a time-travel repeat at each step, RePaint jumps back up by 2
# and down again, a skip ahead, and a return to an earlier step.
TIME_TRAVEL = [0, 0, 1, 1, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 9]
REPAINT = [0, 1, 2, 1, 2, 3, 4, 3, 2, 3, 4, 5, 6, 5, 6, 7, 8, 9]
SKIPS = [0, 2, 5, 3, 9, 1, 8]

CASES = [
    ("ddpm", "DDPMScheduler", {}),
    ("ddpm", "DDPMScheduler", {"prediction_type": "v_prediction", "variance_type": "fixed_large"}),
    ("ddim", "DDIMScheduler", {}),
    ("ddim", "DDIMScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}),
    ("flow_euler", "FlowMatchEulerDiscreteScheduler", {"shift": 3.0}),
]


def _model(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """A fixed smooth function of (x, t): the same model output for both libraries."""
    return 0.3 * torch.tanh(x) + 0.01 * float(t) ** 0.5


def _lockstep(ours, theirs, pattern: list[int], use_generator: bool, ours_takes_generator: bool) -> float:
    """Largest |ours - theirs| / max|theirs| over the calls of ``pattern`` (indices into the timesteps)."""
    ours.set_timesteps(STEPS)
    theirs.set_timesteps(STEPS)
    # the same schedule (flow times agree to float32 rounding); ours is given diffusers' timestep values
    ours_t = torch.as_tensor(ours.timesteps, dtype=torch.float64)
    assert torch.allclose(ours_t, theirs.timesteps.to(torch.float64), rtol=1e-6, atol=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=gen) * float(getattr(theirs, "init_noise_sigma", 1.0))  # flow: the noise
    worst = 0.0
    for k, i in enumerate(pattern):
        t = theirs.timesteps[i]
        scale = getattr(theirs, "scale_model_input", None)  # flow matching classes have none
        out = _model(scale(x, t) if scale is not None else x, t)
        extra_theirs, extra_ours = {}, {}
        if use_generator:  # diffusers' DDPM draws randn(shape, generator) once per noisy step
            extra_theirs["generator"] = torch.Generator().manual_seed(100 + k)
            if ours_takes_generator:
                extra_ours["generator"] = torch.Generator().manual_seed(100 + k)
            else:
                extra_ours["noise"] = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + k))
        if isinstance(theirs, diffusers.FlowMatchEulerDiscreteScheduler):  # index-based: start a fresh one at i
            theirs = type(theirs).from_config(theirs.config)
            theirs.set_timesteps(STEPS)
            theirs.set_begin_index(i)
        ref = theirs.step(out, t, x, **extra_theirs).prev_sample
        got = ours.step(out, t, x, **extra_ours).prev_sample
        worst = max(worst, float((got - ref).abs().max() / ref.abs().max()))
        x = ref  # both libraries continue from the same sample
    return worst


@pytest.mark.parametrize("pattern", [TIME_TRAVEL, REPAINT, SKIPS], ids=["time_travel", "repaint", "skips"])
@pytest.mark.parametrize(("name", "class_name", "config"), CASES, ids=lambda v: str(v) if isinstance(v, str) else "")
def test_memoryless_steps_follow_diffusers_in_any_call_order(name, class_name, config, pattern):
    # x0 clipping off in both: the model output here is no trained eps, clipping would hide the update
    clip = {} if name == "flow_euler" else {"clip_sample": False}
    ours = samplers.get(name, **config, **clip)
    theirs = getattr(diffusers, class_name)(**config, **clip)
    stochastic = name == "ddpm"
    assert _lockstep(ours, theirs, pattern, stochastic, ours_takes_generator=False) <= 1e-5


@pytest.mark.parametrize("pattern", [TIME_TRAVEL, REPAINT], ids=["time_travel", "repaint"])
@pytest.mark.parametrize(("name", "class_name", "config"), CASES, ids=lambda v: str(v) if isinstance(v, str) else "")
def test_drop_in_and_converted_schedulers_follow_diffusers_in_any_call_order(name, class_name, config, pattern):
    """The same patterns through ``to_diffusers`` (a pipeline's view, noise from its generator) and
    ``from_diffusers`` (a diffusers config converted to ours)."""
    theirs = getattr(diffusers, class_name)(**config)
    stochastic = name == "ddpm"
    drop_in = to_diffusers(from_diffusers(theirs))
    assert _lockstep(drop_in, theirs, pattern, stochastic, ours_takes_generator=True) <= 1e-5
    converted = from_diffusers(getattr(diffusers, class_name)(**config))
    fresh = getattr(diffusers, class_name)(**config)
    assert _lockstep(converted, fresh, pattern, stochastic, ours_takes_generator=False) <= 1e-5


@pytest.mark.parametrize("name", ["dpmpp_2m", "heun", "unipc", "lms"])
def test_schedulers_with_history_refuse_out_of_order_calls_and_say_how_to_start_over(name):
    s = samplers.get(name)
    s.set_timesteps(STEPS)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
    t0 = s.timesteps[0]
    x1 = s.step(_model(s.scale_model_input(x, t0), t0), t0, x).prev_sample
    with pytest.raises(ValueError, match="in order") as info:
        s.step(_model(x1, t0), t0, x1)  # the same timestep again
    assert "set_timesteps" in str(info.value) and "set_begin_index" in str(info.value)
    # starting over works
    s.set_timesteps(STEPS)
    assert torch.isfinite(s.step(_model(x, t0), t0, x).prev_sample).all()
