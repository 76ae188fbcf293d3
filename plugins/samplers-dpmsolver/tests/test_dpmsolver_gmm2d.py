"""Accuracy per model evaluation on gmm2d with the exact denoiser (the numbers of the README table).

Error: RMS distance to the exact probability-flow ODE solution from the same starting noise
(``examples/gmm2d_accuracy.py`` prints the full table).
"""

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("scipy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import gmm2d_accuracy as table


@pytest.fixture(scope="module")
def problem():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny ops: one thread is fastest, and immune to a busy machine
    yield _problem()
    torch.set_num_threads(threads)


def _problem():
    denoise, scale, _ = table.load_problem()
    z = torch.randn(1500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma_top = 157.40689  # sigma / alpha at training timestep 999 of the linear-beta schedule
    reference = table.ode_reference(denoise, z / (1 / math.sqrt(1 + sigma_top**2)), sigma_top)

    def error(name: str, nfe: int, grid: str) -> float:
        x = table.sample(name, denoise, z, nfe, grid, scale)
        return float(((x - reference) ** 2).sum(-1).mean().sqrt())

    return error


def test_reference_starts_where_the_samplers_start(problem):
    import samplers

    euler = samplers.get("euler", **table.SCHEDULE)
    assert abs(float(euler.schedule.sigmas[-1]) - 157.40689) < 1e-3


def test_multistep_beats_euler_at_equal_nfe(problem):
    for grid in ("default", "lambda", "adapted"):
        assert problem("dpmpp_2m", 10, grid) < problem("euler", 10, grid), grid
        assert problem("unipc", 10, grid) < problem("euler", 10, grid), grid


def test_matches_euler_at_50_nfe_with_fewer_evaluations(problem):
    euler50 = problem("euler", 50, "default")
    assert problem("dpmpp_2m", 20, "lambda") <= euler50  # 2.5x fewer model calls
    assert problem("unipc", 15, "lambda") <= euler50  # 3.3x fewer
    assert problem("dpmpp_2m", 10, "adapted") <= euler50  # 5x fewer, on a grid fitted to the data scale


def test_error_falls_with_nfe_on_lambda_grid(problem):
    errors = [problem("dpmpp_2m", n, "lambda") for n in (10, 20, 50)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 10
