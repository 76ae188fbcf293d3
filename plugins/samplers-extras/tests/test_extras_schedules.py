"""The plugin's noise schedules: their math, and every built-in scheduler running on them by name."""

import math

import pytest
import torch
from samplers_extras import LaplaceSchedule, ShiftedCosineSchedule

import samplers
from samplers import schedules
from samplers.testing import KitSettings, assert_conforms

F64 = torch.float64
NAMES = ("laplace", "shifted_cosine")


def test_registered_through_the_schedule_hook():
    table = samplers.registry().schedules()
    assert table["laplace"] is LaplaceSchedule and table["shifted_cosine"] is ShiftedCosineSchedule
    assert isinstance(schedules.get_schedule("laplace", mu=1.0), LaplaceSchedule)
    with pytest.raises(ValueError, match="laplace"):
        schedules.get_schedule("laplase")


@pytest.mark.parametrize("name", NAMES)
def test_variance_preserving_and_monotone(name):
    s = schedules.get_schedule(name)
    t = torch.linspace(0, 1, 1001, dtype=F64)
    alpha, sigma = s.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), rtol=0, atol=1e-12)
    lam = s.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must decrease with t"
    assert abs(float(lam[0]) - s.logsnr_max) < 1e-6 and abs(float(lam[-1]) - s.logsnr_min) < 1e-6
    torch.testing.assert_close(schedules.log_snr_of(alpha, sigma), lam, rtol=1e-9, atol=1e-9)


def test_laplace_curve_and_density():
    s = LaplaceSchedule(mu=0.5, b=0.75)
    # lambda(tau) = mu - b sgn(1/2 - tau) log(1 - 2|tau - 1/2|)
    for tau in (0.01, 0.2, 0.5, 0.7, 0.99):
        expected = 0.5 - 0.75 * math.copysign(1.0, 0.5 - tau) * math.log(1 - 2 * abs(tau - 0.5)) if tau != 0.5 else 0.5
        assert abs(float(s._logsnr_of(torch.tensor(tau, dtype=F64))) - expected) < 1e-12
    # uniform tau puts a Laplace(mu, b) density on lambda: P(lambda > mu + x) = exp(-x / b) / 2
    for x in (0.1, 1.0, 3.0):
        assert abs(s._tau_of(0.5 + x) - 0.5 * math.exp(-x / 0.75)) < 1e-12
        assert abs((1 - s._tau_of(0.5 - x)) - 0.5 * math.exp(-x / 0.75)) < 1e-12


def test_laplace_default_grid_is_even_in_log_snr():
    s = LaplaceSchedule()
    lam = s.log_snr(s.default_times(9))
    torch.testing.assert_close(lam, torch.linspace(s.logsnr_min, s.logsnr_max, 9, dtype=F64), rtol=0, atol=1e-6)


def test_shifted_cosine():
    base = ShiftedCosineSchedule()
    tau = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    torch.testing.assert_close(base._logsnr_of(tau), -2 * torch.log(torch.tan(math.pi * tau / 2)))
    big = ShiftedCosineSchedule(image_size=256, base_size=64)
    # 4x the resolution: 2 log(64/256) less log-SNR at every raw time (simple diffusion's shift)
    torch.testing.assert_close(big._logsnr_of(tau) - base._logsnr_of(tau), torch.full_like(tau, 2 * math.log(0.25)))
    assert abs(float(base.log_snr(torch.tensor(0.5, dtype=F64)))) < 1e-9  # symmetric range: lambda(1/2) = 0


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (LaplaceSchedule, {"b": 0.0}, "b must be"),
        (LaplaceSchedule, {"mu": 20.0}, "mu must lie"),
        (ShiftedCosineSchedule, {"logsnr_min": 5.0, "logsnr_max": 5.0}, "logsnr_min < logsnr_max"),
        (ShiftedCosineSchedule, {"image_size": 0}, "image_size"),
    ],
)
def test_bad_parameters(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_times_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        LaplaceSchedule().alpha_sigma(torch.tensor([1.5]))


def _schedulers_for(schedule: str) -> list[str]:
    """Every registered scheduler that runs on VP schedules (flow-only ones are excluded by their family)."""
    return [n for n, e in samplers.registry().entries.items() if e.cls.family in ("any", "vp")]


ALL_CHECKS = ["protocol", "config_roundtrip", "determinism", "marginals", "accuracy"]
# The posterior sampler always spaces its steps evenly in t (its t_max option); on the Laplace curve
# that leaves one step for each tail, so only its protocol-level behaviour is checked there.
GRID_BOUND = {("posterior", "laplace")}


@pytest.mark.parametrize("schedule", NAMES)
def test_every_scheduler_runs_on_the_schedule(schedule):
    settings = KitSettings.quick(backend="torch")
    names = _schedulers_for(schedule)
    assert {"ddim", "ddpm", "euler", "heun", "langevin"} <= set(names)
    for name in names:
        checks = ALL_CHECKS[:3] if (name, schedule) in GRID_BOUND else ALL_CHECKS
        assert_conforms(name, checks=checks, settings=settings, schedule=schedule)


def test_schedule_kwargs_flow_through_config():
    s = samplers.get("ddim", schedule="laplace", schedule_kwargs={"mu": 1.0, "b": 1.0})
    assert isinstance(s.schedule, LaplaceSchedule) and s.schedule.mu == 1.0 and s.schedule.b == 1.0
    s.set_timesteps(10)
    assert bool(torch.isfinite(s.plan.rows).all())
