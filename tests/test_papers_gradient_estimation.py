"""Gradient estimation (Permenter & Yuan 2024): the update (G1)-(G2) row by row, gamma = 1 is DDIM, first
order on the exact Gaussian oracle, and the edges (pure noise, clean data)."""

from __future__ import annotations

import pytest
import torch

import samplers
from samplers.ops.reference import COEFF

import battery

F64 = torch.float64
FLOW = {**battery.FAMILIES["flow_shift3"], "prediction_type": "flow"}
# gamma = 2 over-corrects on a grid whose steps shrink (it matches the exact step only when each step is
# twice the previous), so the error first grows with N; from 32 steps it is in its first-order regime
# (consecutive slopes 0.72, 0.87, 0.94 on EDM).
STEPS = (32, 64, 128, 256)


def _plan(gamma: float = 2.0, **config):
    s = samplers.get("gradient_estimation", schedule="edm", sigma_schedule="karras", gamma=gamma, **config)
    s.set_timesteps(10)
    return s.plan


def test_rows_are_G1_G2() -> None:
    """Sigma space (EDM): x' = x - (sigma - sigma') (gamma eps_k + (1 - gamma) eps_{k-1}); the first step has
    no previous estimate and the step into clean data is DDIM."""
    gamma = 2.0
    plan = _plan(gamma, prediction_type="v_prediction")
    level = plan.model_sigma.tolist() + [0.0]
    for k in range(1, len(level) - 2):
        step = level[k] - level[k + 1]
        row = plan.rows[k]
        assert float(row[COEFF["a"]]) == pytest.approx(1.0)
        assert float(row[COEFF["b"]]) == pytest.approx(-step * gamma)  # on this call's eps estimate
        assert float(row[COEFF["h0"]]) == pytest.approx(-step * (1 - gamma))  # on the previous call's
    assert plan.use[0] == () and plan.use[1] == ("m0",)
    assert plan.use[-1] == ()  # first order into clean data
    assert float(plan.rows[0, COEFF["b"]]) == pytest.approx(-(level[0] - level[1]))


def test_gamma_1_is_ddim() -> None:
    """gamma = 1 removes the previous estimate: the same run as DDIM (eta = 0) on the same timesteps."""
    t = torch.tensor([999.0, 800.0, 601.0, 402.0, 250.0, 120.0, 40.0, 5.0], dtype=F64)
    ge = samplers.get("gradient_estimation", gamma=1.0, prediction_type="v_prediction")
    ge.set_timesteps(timesteps=t)
    ddim = samplers.get("ddim", clip_sample=False, prediction_type="v_prediction")
    ddim.set_timesteps(timesteps=t)
    assert not any(ge.plan.use)
    z = torch.randn(512, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    a, _ = battery.run(ge, z)
    b, _ = battery.run(ddim, z)
    assert float((a - b).abs().max()) < 1e-5 * float(b.abs().max())


@pytest.mark.parametrize("family", [None, FLOW], ids=["edm", "flow_shift3"])
def test_first_order(family) -> None:
    battery.assert_order("gradient_estimation", {}, 1, steps=STEPS, family=family)


def test_runs_from_pure_noise_and_refuses_eps_there() -> None:
    """A flow's t = 1 (alpha = 0): the first step is DDIM from the x0 estimate; an epsilon (or score) model
    cannot give x0 there, which is a clear error naming the prediction type."""
    s = samplers.get("gradient_estimation", **FLOW)
    s.set_timesteps(12)
    assert float(s.plan.model_alpha[0]) == 0.0
    x, _ = battery.run(s, torch.randn(32, 4, generator=torch.Generator().manual_seed(0), dtype=F64))
    assert bool(torch.isfinite(x).all())
    for prediction_type in ("epsilon", "score"):
        bad = samplers.get("gradient_estimation", **{**FLOW, "prediction_type": prediction_type})
        with pytest.raises(ValueError, match=f"prediction_type='{prediction_type}'"):
            bad.set_timesteps(12)


def test_config_errors() -> None:
    for gamma in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="gamma"):
            samplers.get("gradient_estimation", gamma=gamma)
