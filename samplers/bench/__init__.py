"""Benchmarks on oracle problems: exact denoisers, metrics, the runner, plots, ``samplers bench``.

    from samplers.bench import BenchConfig, run_benchmark
    result = run_benchmark(BenchConfig(schedulers=("euler", "heun"), steps=(10, 20, 50)))
    for row in result.rows:
        print(row.scheduler, row.nfe, row.metrics["ode_error"])

Modules: ``problems`` (Gaussian, Gaussian mixtures, swiss roll, the real-data ``digits``;
:class:`OracleModel`), ``digits`` (its data split, networks and shipped weights), ``reference``
(a high-accuracy PF-ODE solve of any x0-denoiser, with an error estimate), ``metrics`` (sliced
Wasserstein, MMD, Frechet, KL, ODE error, feature Frechet, convergence order), ``runner`` (timed
runs, JSON/CSV), ``plots`` (PNG), ``distributed`` (torchrun sharding), ``command`` (the CLI command).
"""

from samplers.bench.problems import (
    PROBLEMS,
    GaussianMixtureProblem,
    GaussianProblem,
    OracleModel,
    Problem,
    get_problem,
)
from samplers.bench.runner import SCHEMA_VERSION, BenchConfig, BenchResult, BenchRow, run_benchmark

__all__ = [
    "PROBLEMS",
    "Problem",
    "GaussianProblem",
    "GaussianMixtureProblem",
    "OracleModel",
    "get_problem",
    "BenchConfig",
    "BenchResult",
    "BenchRow",
    "run_benchmark",
    "SCHEMA_VERSION",
]
