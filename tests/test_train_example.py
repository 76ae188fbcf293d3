"""benchmarks/train_swiss_roll.py: a few seconds of training must already learn the swiss roll."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from samplers.bench.metrics import sliced_wasserstein
from samplers.bench.problems import DATA_STREAM, make_swissroll

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_swiss_roll.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("train_swiss_roll", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _moment_matched_gaussian_sw(n: int) -> float:
    """SW2 of the Gaussian with the swiss roll's exact mean and covariance: what a model that learned
    only the first two moments would score (about 0.38)."""
    problem = make_swissroll()
    gen = torch.Generator().manual_seed(0)
    fit = (
        problem.mean()
        + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(problem.covariance()).T
    )
    return sliced_wasserstein(fit, problem.sample(n, stream=DATA_STREAM, seed=1))


def test_trained_mlp_beats_untrained_and_learns_more_than_two_moments(capsys) -> None:
    script = _load_script()
    # a step budget (not a time budget) keeps the test deterministic on a busy machine
    result = script.run(
        ["--steps", "600", "--seconds", "120", "--samples", "1000", "--samplers", "ddim,euler", "--dataset", "20000"]
    )
    printed = capsys.readouterr().out
    report, rows = result["report"], result["rows"]
    assert report.steps == 600 and report.losses[-1] < report.losses[0]  # the loss went down
    assert [r["sampler"] for r in rows] == ["ddim", "euler"] and all(r["nfe"] == 20 for r in rows)
    gaussian = _moment_matched_gaussian_sw(1000)
    for row in rows:
        assert row["trained"] < row["untrained"] / 10, row
        assert row["trained"] < gaussian, (row["trained"], gaussian)  # it learned the roll's shape
        assert row["oracle"] < row["trained"]  # a perfect network does better still
        assert row["oracle"] > result["noise_floor"] * 0.5
    assert "SW2 trained" in printed and "ddim" in printed and "euler" in printed
