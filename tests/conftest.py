"""Shared test setup: the ``cuda`` marker skip and an exact Gaussian "model" for driving schedulers.

The Gaussian oracle: data ``x0 ~ N(mu, diag(std^2))`` noised as ``x_t = alpha x0 + sigma eps`` has the
closed-form denoiser ``E[x0 | x_t] = mu + alpha std^2 / (alpha^2 std^2 + sigma^2) (x_t - alpha mu)``,
so a scheduler driven by it makes no model error: whatever error remains is the sampler's own.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from samplers import parameterization

F64 = torch.float64


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``@pytest.mark.cuda`` skip cleanly on machines without a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def gaussian_denoise(x: torch.Tensor, alpha: float, sigma: float, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``E[x0 | x_t = x]`` in float64 for data N(mu, diag(std^2)); x [B, D], mu/std [D]."""
    var = alpha * alpha * std * std + sigma * sigma
    return mu + alpha * std * std / var * (x.to(F64) - alpha * mu)


def exact_output(scheduler, call: int, x_in: torch.Tensor, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The exact network output (in the scheduler's prediction type) for call ``call`` of its plan."""
    plan = scheduler.plan
    alpha, sigma = float(plan.model_alpha[call]), float(plan.model_sigma[call])
    x0 = gaussian_denoise(x_in, alpha, sigma, mu, std)
    # E[eps | x_t] in closed form: finite at clean data (sigma = 0, where an inversion starts)
    eps = sigma * (x_in.to(F64) - alpha * mu) / (alpha * alpha * std * std + sigma * sigma)
    out = parameterization.training_target(scheduler.prediction_type, x0, eps, alpha, sigma)
    return out.to(x_in.dtype)


def run_exact(
    scheduler,
    x_start: torch.Tensor,
    mu: torch.Tensor,
    std: torch.Tensor,
    noise_generator: torch.Generator | None = None,
    **step_kwargs,
) -> torch.Tensor:
    """Run a whole planned chain from ``x_start`` (already scaled by init_noise_sigma) with the exact model.

    ``noise_generator`` passes explicit torch noise to every call (cheaper than in-op Philox for big
    Monte Carlo batches); otherwise ``step_kwargs`` (``seeds=``, ``generator=``) decide the noise.
    """
    x = x_start
    for i, t in enumerate(scheduler.timesteps):
        out = exact_output(scheduler, i, scheduler.scale_model_input(x, t), mu, std)
        if noise_generator is not None:
            step_kwargs["noise"] = torch.randn(x.shape, generator=noise_generator, dtype=x.dtype)
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x


@pytest.fixture(scope="module")
def bench_app():
    """A typer app with ``samplers bench`` as a subcommand (a second command keeps it one, as in samplers/cli.py),
    for CliRunner tests of the bench's command line."""
    import typer

    from samplers.bench.command import bench

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("bench")(bench)

    @app.command("noop")
    def noop() -> None:
        """Nothing."""

    return app


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: tests that check numbers on a busy 2-core CI box, where
    OpenMP workers waiting on each other make small ops orders of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def oracle() -> SimpleNamespace:
    """Helpers for the exact Gaussian model (session scope, so hypothesis tests may use it)."""
    return SimpleNamespace(denoise=gaussian_denoise, output=exact_output, run=run_exact)
