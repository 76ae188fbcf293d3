"""The plugin's schedulers pass samplers' conformance kit, through the public registry."""

import pytest
import torch

import samplers
from samplers.testing import KitSettings, assert_conforms

NAMES = ["dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc"]
QUICK = KitSettings.quick(backend="torch")


def test_registered_with_plugin_source():
    entries = samplers.registry().entries
    for name in NAMES:
        assert name in entries, f"{name} not registered"
        assert entries[name].source.distribution == "samplers-dpmsolver"
        assert entries[name].source.plugin == "dpmsolver"


@pytest.mark.parametrize("name", NAMES)
def test_conforms_default(name):
    results = assert_conforms(name, settings=QUICK)
    stochastic = name == "dpmpp_2m_sde"
    marginals = next(r for r in results if r.name == "marginals")
    assert marginals.skipped is (not stochastic)


@pytest.mark.parametrize(
    "name, config",
    [
        ("dpmpp_2m", {"solver_type": "heun", "prediction_type": "v_prediction"}),
        ("dpmpp_2m", {"use_karras_sigmas": True, "timestep_spacing": "trailing"}),
        ("dpmpp_3m", {"use_lu_lambdas": True, "lower_order_final": False}),
        (
            "dpmpp_3m",
            {
                "final_sigmas_type": "sigma_min",
                "euler_at_final": True,
                "steps_offset": 1,
                "timestep_spacing": "leading",
            },
        ),
        ("dpmpp_2m_sde", {"solver_order": 3, "prediction_type": "sample"}),
        ("unipc", {"solver_order": 1, "solver_type": "bh1"}),
        ("unipc", {"disable_corrector": [0, 2], "schedule": "vp_cosine"}),
        ("dpmpp_2m", {"schedule": "edm", "prediction_type": "epsilon"}),
        ("unipc", {"schedule": "flow", "prediction_type": "flow"}),
    ],
)
def test_conforms_configured(name, config):
    assert_conforms(
        name, settings=QUICK, checks=["protocol", "config_roundtrip", "determinism", "marginals", "accuracy"], **config
    )


@pytest.mark.parametrize(
    "name, config, match",
    [
        ("dpmpp_2m", {"solver_order": 4}, "solver_order"),
        ("unipc", {"solver_order": 3}, "solver_order"),
        ("dpmpp_2m", {"solver_type": "rk4"}, "solver_type"),
        ("unipc", {"solver_type": "bh3"}, "solver_type"),
        ("dpmpp_2m", {"final_sigmas_type": "one"}, "final_sigmas_type"),
        ("dpmpp_2m", {"timestep_spacing": "log"}, "timestep_spacing"),
        ("dpmpp_2m", {"prediction_type": "eps_v"}, "prediction_type"),
    ],
)
def test_bad_config_is_a_clear_error(name, config, match):
    with pytest.raises(ValueError, match=match):
        samplers.get(name, **config)


def test_grid_errors_name_the_problem():
    s = samplers.get("dpmpp_2m", use_karras_sigmas=True, use_lu_lambdas=True)
    with pytest.raises(ValueError, match="exclusive"):
        s.set_timesteps(10)
    s = samplers.get("dpmpp_2m", schedule="vp_cosine", final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="discrete schedule"):
        s.set_timesteps(10)
    s = samplers.get("unipc")
    with pytest.raises(ValueError, match="strictly decrease"):
        s.set_timesteps(timesteps=[900, 500, 500, 100])
    s = samplers.get("dpmpp_2m", use_lu_lambdas=True, final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="repeats it"):
        s.set_timesteps(10)
    with pytest.raises(ValueError, match="mu"):
        s.set_timesteps(10, mu=1.0)


def test_per_sample_timesteps_rejected_clearly():
    s = samplers.get("dpmpp_2m")
    s.set_timesteps(5)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="per-sample"):
        s.step(x, torch.tensor([999, 799]), x)
