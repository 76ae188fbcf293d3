"""The ``digits`` problem (issue 15): real data, a shipped trained denoiser, a reference ODE solve with
an honest error estimate, and ``samplers bench -p digits`` end to end."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from samplers.bench import digits as D
from samplers.bench import metrics as M
from samplers.bench import runner as R
from samplers.bench.problems import DigitsProblem, get_problem
from samplers.bench.reference import reference_solution, solve_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")
F64 = torch.float64


@pytest.fixture(scope="module")
def problem() -> DigitsProblem:
    return get_problem("digits")


# --------------------------------------------------------------------------------------------
# Data, split and the shipped file
# --------------------------------------------------------------------------------------------


def test_split_is_the_documented_rule_and_covers_the_data():
    train, held = D.split_indices()
    assert (len(train), len(held)) == (1438, 359)
    assert bool((held % 5 == 4).all()) and not bool((train % 5 == 4).any())
    assert torch.equal(torch.sort(torch.cat([train, held])).values, torch.arange(D.NUM_DIGITS))
    pixels, labels = D.load_pixels()
    assert pixels.shape == (1797, 64) and int(pixels.max()) == 16 and int(pixels.min()) == 0
    x = D.to_model_space(pixels)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    torch.testing.assert_close(D.to_pixels(x), pixels.to(F64))


def test_shipped_weights_match_the_data_and_record_their_provenance():
    blob = D.load_weights()
    meta = blob["meta"]
    pixels, _ = D.load_pixels()
    assert meta["data_sha256"] == D.data_sha256(pixels)
    assert meta["data_sha256"] == hashlib.sha256(pixels.numpy().astype("uint8").tobytes()).hexdigest()
    assert meta["split_rule"] == D.SPLIT_RULE and meta["data_hash_rule"] == D.DATA_HASH_RULE
    assert meta["training_command"].startswith("python benchmarks/train_digits.py")
    assert isinstance(meta["seed"], int) and meta["torch_version"]
    assert math.isfinite(meta["denoiser_final_loss"]) and 0 < meta["denoiser_final_loss"] < 1
    assert D.WEIGHTS_PATH.stat().st_size < 2 * 1024 * 1024  # the whole package data: both networks and metadata
    assert sum(t.numel() for t in blob["denoiser"].values()) > 50_000  # a real network, not a stub


def test_a_different_data_set_is_refused(monkeypatch):
    """Weights trained on other data would make every number meaningless: the hash check catches it."""
    pixels, labels = D.load_pixels()
    changed = pixels.clone()
    changed[0, 0] = 16 - changed[0, 0]
    monkeypatch.setattr(D, "load_pixels", lambda: (changed, labels))
    with pytest.raises(D.DigitsDataError, match="hash"):
        D.load_models()


def test_classifier_held_out_accuracy_is_the_recorded_one(problem):
    logits = problem.classifier(problem.heldout)
    acc = float((logits.argmax(1) == problem.heldout_labels).to(F64).mean())
    assert acc == pytest.approx(problem.meta["classifier_heldout_accuracy"], abs=1.5 / 359)
    assert acc >= 0.9
    assert problem.features(problem.heldout[:5]).shape == (5, 64)


def _heldout_denoising_error(net, data: torch.Tensor, s: float, seed: int = 0) -> float:
    """RMS x0 error of ``net`` on ``data`` noised to VE level ``s`` (fixed noise)."""
    eps = torch.randn(data.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    alpha = 1.0 / math.sqrt(1.0 + s * s)
    with torch.no_grad():
        x0 = net(alpha * data + alpha * s * eps, alpha, alpha * s)
    return float((x0 - data).pow(2).sum(1).mean().sqrt())


def test_trained_denoiser_beats_an_untrained_one_by_a_large_factor(problem):
    """Samples of the PF-ODE of each network: the untrained one's are far from the digits on both
    real metrics, the trained one's as close as held-out digits. (The untrained network is not
    useless: EDM's preconditioning alone makes it a linear shrinkage denoiser, so on plain x0 error
    it loses by 1.3-1.9x only.)"""
    torch.manual_seed(0)
    untrained = D.DigitsDenoiser(**problem.meta["denoiser_config"]).to(F64).eval().requires_grad_(False)
    z = torch.randn(128, 64, generator=torch.Generator().manual_seed(5), dtype=F64)
    reference = M.gaussian_fit(problem.features(problem.train))

    def scores(x: torch.Tensor) -> tuple[float, float]:
        fd = M.frechet_distance(*M.gaussian_fit(problem.features(x)), *reference)
        return fd, M.sliced_wasserstein(x, problem.train)

    with torch.inference_mode():
        trained = scores(solve_reference(problem.denoiser, z, 0.0, 1.0, tol=1e-2, steps_per_unit=2).x0)
        baseline = scores(solve_reference(untrained, z, 0.0, 1.0, tol=1e-2, steps_per_unit=2).x0)
    held = scores(problem.heldout[:128])
    assert baseline[0] > 5 * trained[0] and baseline[1] > 5 * trained[1], (trained, baseline)
    assert trained[0] < 1.5 * held[0] and trained[1] < 1.5 * held[1], (trained, held)
    for s in (0.1, 0.5, 1.5):
        assert _heldout_denoising_error(problem.denoiser, problem.heldout, s) * 1.2 < _heldout_denoising_error(
            untrained, problem.heldout, s
        )


def test_denoiser_is_finite_at_every_schedule_end(problem):
    x = torch.randn(4, 64, dtype=F64)
    for alpha, sigma in [(0.0, 1.0), (1.0, 0.0), (1.0, 80.0), (0.0064, 0.99998), (1.0, 1e-4)]:
        out = problem.denoise(x, alpha, sigma)
        assert torch.isfinite(out).all(), (alpha, sigma)
    torch.testing.assert_close(problem.denoise(x, 1.0, 0.0), x)  # no noise: the input itself
    # pure noise: the posterior mean is the data mean, whatever the noise
    pure = problem.denoise(torch.randn(256, 64, dtype=F64), 0.0, 1.0)
    assert float((pure.mean(0) - problem.mean()).norm()) < 0.5
    assert float(pure.std(0).mean()) < 0.05


# --------------------------------------------------------------------------------------------
# The reference ODE solve
# --------------------------------------------------------------------------------------------


def test_reference_estimate_is_honest_against_a_closed_form():
    """On a Gaussian the PF-ODE endpoint is known exactly: the estimate must bound the true error."""
    problem = get_problem("gaussian_nd:dim=8")
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    alpha, sigma = 0.0064, math.sqrt(1 - 0.0064**2)
    exact = problem.ode_solution(z, alpha, sigma)
    for tol in (1e-5, 1e-7):
        sol = solve_reference(problem._denoise64, z, alpha, sigma, tol=tol)
        actual = M.ode_error(sol.x0, exact)
        assert sol.converged and sol.error <= tol
        assert actual <= 2 * sol.error + 1e-12, (actual, sol.error)
        assert actual >= sol.error / 20, (actual, sol.error)  # and not a wild overestimate


def _kinked_linear_denoiser(q: int, mu: torch.Tensor, std: float = 0.5, k: float = 0.1):
    """A linear denoiser ``D(y; s) = mu + c(s) (y - mu)`` (VE coordinates) with a closed-form PF-ODE and a
    derivative jump at ``s = 1``, the mechanism that holds RK4 below its fourth order on a network (a cubic
    spline of the model time: q = 3, order 3; a piecewise-linear one: q = 2, order 2).

    ``y - mu`` follows ``r(s) = sqrt(std^2 + s^2) exp(k max(0, log s)^q)`` (``c = 1 - s r'/r``), so the
    endpoint from ``y0`` at level ``s0`` is ``mu + std / r(s0) (y0 - mu)``. Returns (denoiser, endpoint)."""

    def denoiser(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        s, u = sigma / alpha, max(0.0, math.log(sigma / alpha))
        c = std**2 / (std**2 + s**2) - k * q * u ** (q - 1)
        return mu + c * (x / alpha - mu)

    def endpoint(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        s = sigma / alpha
        r = math.sqrt(std**2 + s**2) * math.exp(k * max(0.0, math.log(s)) ** q)
        return mu + std / r * (x / alpha - mu)

    return denoiser, endpoint


@pytest.mark.parametrize("q, steps_per_unit", [(3, 2), (2, 8)])
def test_reference_estimate_does_not_undershoot_below_fourth_order(q, steps_per_unit):
    """Where RK4 runs below fourth order, ``|x_2N - x_N| / 15`` undershot the true error (1.7x and 3.3x
    here): the estimate at the observed order must bound it."""
    mu = torch.linspace(-0.5, 0.5, 4, dtype=F64)
    denoiser, endpoint = _kinked_linear_denoiser(q, mu)
    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    alpha, sigma = 0.3, math.sqrt(1 - 0.09)
    sol = solve_reference(denoiser, z, alpha, sigma, tol=1e-3, steps_per_unit=steps_per_unit)
    actual = M.ode_error(sol.x0, endpoint(z, alpha, sigma))
    assert sol.converged
    assert sol.error >= actual, (actual, sol.error)
    assert sol.error <= 5 * actual, (actual, sol.error)  # and honest, not a blanket overestimate
    assert 1.0 <= sol.order < 4.0 and len(sol.orders) >= 1  # two differences at least, the order observed


def test_reference_resumed_is_the_uninterrupted_solve():
    """The runner tightens a solve by resuming it: the observed orders carry over, so the result (endpoint,
    estimate, order, steps) is the one a single solve to the tighter tolerance gives."""
    mu = torch.linspace(-0.5, 0.5, 4, dtype=F64)
    denoiser, _ = _kinked_linear_denoiser(3, mu)
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    alpha, sigma = 0.3, math.sqrt(1 - 0.09)
    loose = solve_reference(denoiser, z, alpha, sigma, tol=1e-3, steps_per_unit=2)
    resumed = solve_reference(denoiser, z, alpha, sigma, tol=1e-6, steps_per_unit=2, resume=loose)
    direct = solve_reference(denoiser, z, alpha, sigma, tol=1e-6, steps_per_unit=2)
    assert resumed.steps == direct.steps > loose.steps and resumed.converged
    assert resumed.orders == direct.orders and resumed.error == direct.error
    assert torch.equal(resumed.x0, direct.x0) and resumed.evaluations == direct.evaluations


def test_reference_resumed_keeps_to_max_steps():
    """A solve its step budget stopped, resumed at a tighter tolerance with the same budget, stays within the
    budget: it returns what the budget reached, not converged, under the tolerance asked (it ran 2x over)."""
    mu = torch.linspace(-0.5, 0.5, 4, dtype=F64)
    denoiser, _ = _kinked_linear_denoiser(3, mu)
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    alpha, sigma = 0.3, math.sqrt(1 - 0.09)
    capped = solve_reference(denoiser, z, alpha, sigma, tol=1e-12, steps_per_unit=2, max_steps=64)
    assert capped.steps <= 64 < 2 * capped.steps and not capped.converged  # one more doubling would overrun
    again = solve_reference(denoiser, z, alpha, sigma, tol=1e-13, steps_per_unit=2, max_steps=64, resume=capped)
    assert again.steps <= 64 and not again.converged and again.tol == 1e-13
    assert torch.equal(again.x0, capped.x0) and again.error == capped.error
    # a looser solve resumed under a budget it can still use goes on to that budget
    loose = solve_reference(denoiser, z, alpha, sigma, tol=1e-3, steps_per_unit=2)
    tighter = solve_reference(denoiser, z, alpha, sigma, tol=1e-12, steps_per_unit=2, max_steps=512, resume=loose)
    assert loose.steps < tighter.steps <= 512 < 2 * tighter.steps and not tighter.converged


def test_reference_from_pure_noise_and_from_any_scale():
    """alpha = 0 (flow matching's start) is allowed, and (alpha, sigma) scaled together is the same point."""
    problem = get_problem("gaussian_nd:dim=4")
    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    x0, err = reference_solution(problem._denoise64, z, 0.0, 1.0, tol=1e-8)
    torch.testing.assert_close(x0, problem.ode_solution(z, 0.0, 1.0), atol=1e-7, rtol=0)
    assert err <= 1e-8
    a, s = 0.3, math.sqrt(1 - 0.09)
    x_vp, _ = reference_solution(problem._denoise64, z, a, s, tol=1e-8)
    x_ve, _ = reference_solution(problem._denoise64, z * 10, 10 * a, 10 * s, tol=1e-8)
    torch.testing.assert_close(x_vp, x_ve, atol=1e-9, rtol=0)


def test_reference_rejects_bad_levels():
    f = lambda x, a, s: x  # noqa: E731
    for alpha, sigma in [(-0.1, 1.0), (0.0, 0.0), (math.nan, 1.0)]:
        with pytest.raises(ValueError, match="alpha"):
            solve_reference(f, torch.zeros(2, 3), alpha, sigma)
    with pytest.raises(ValueError, match="tol"):
        solve_reference(f, torch.zeros(2, 3), 0.5, 0.5, tol=0.0)


@pytest.mark.slow
def test_digits_reference_estimate_is_honest_against_a_much_tighter_solve(problem):
    z = torch.randn(64, 64, generator=torch.Generator().manual_seed(3), dtype=F64)
    alpha, sigma = 0.006352818087570017, 0.9999798206475701  # DDPM-linear t = 999
    sol = problem.ode_reference(z, alpha, sigma)
    # both stop at the same s_end: their truncation error is common, the tight one's discretization is 30x less
    tight = solve_reference(problem._denoise64, z, alpha, sigma, tol=sol.truncation + sol.error / 30, max_steps=8192)
    actual = M.ode_error(sol.x0, tight.x0)
    assert tight.error - tight.truncation < sol.error / 20
    assert actual <= 2 * sol.error, (actual, sol.error)
    assert sol.error <= problem.reference_tol


# --------------------------------------------------------------------------------------------
# samplers bench -p digits
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run() -> R.BenchResult:
    cfg = R.BenchConfig(
        schedulers=("euler", "heun", "ddim", "ddpm"),
        steps=(5, 20),
        problem="digits",
        samples=48,
        ode_samples=24,
        schedule="edm",
    )
    return R.run_benchmark(cfg, keep_samples=48)


def test_bench_digits_scores_every_row_against_data_and_reference(small_run):
    res = small_run
    assert res.metric_names == list(R.DATA_METRICS)
    assert len(res.rows) == 8
    for row in res.rows:
        for name in ("sw", "mmd", "fd_features"):
            assert math.isfinite(row.metrics[name]), (row.scheduler, name)
        assert math.isfinite(row.metrics["ode_error"]) != row.stochastic  # deterministic rows only
    err = {(r.scheduler, r.steps): r.metrics["ode_error"] for r in res.rows}
    assert err[("euler", 20)] < err[("euler", 5)] / 2  # converging to the reference
    assert err[("heun", 20)] < err[("euler", 20)]
    floor = res.noise_floor["sw"]
    assert floor["source"] == "held-out split" and floor["samples"] == 48 and floor["sets"] == R.FLOOR_SETS
    assert set(res.noise_floor) == {"sw", "mmd", "fd_features"}


def test_bench_digits_reference_is_ten_times_tighter_than_the_best_row(small_run):
    ref = small_run.problem["ode_reference"]
    best = min(r.metrics["ode_error"] for r in small_run.rows if not r.stochastic)
    assert ref["smallest_table_error"] == best
    assert ref["estimated_error"] * 10 <= best, ref
    assert ref["margin"] >= 10
    # euler and heun start from the same point (80 z at VE level 80): one solve serves both; ddim
    # starts from unit-variance noise at that level (80.006 z in VE terms), another point
    assert len(ref["solves"]) == 2


def test_bench_digits_samples_look_like_digits(small_run, problem):
    """A 20-step Heun run's samples are classified confidently, and score near the held-out floor."""
    x = small_run.samples["heun@20"]
    probs = problem.classifier(x.to(F64)).softmax(1)
    assert float(probs.max(1).values.mean()) > 0.7
    row = next(r for r in small_run.rows if (r.scheduler, r.steps) == ("heun", 20))
    floor = small_run.noise_floor["sw"]
    assert row.metrics["sw"] < 2 * floor["mean"]


def test_bench_digits_command_writes_table_json_and_sample_grid(tmp_path):
    from typer.testing import CliRunner

    from samplers.cli import app

    js, png = tmp_path / "d.json", tmp_path / "d.png"
    args = ["bench", "-p", "digits", "-s", "euler,ddpm", "-n", "4,8", "--samples", "24", "--quiet"]
    result = CliRunner().invoke(app, [*args, "--json", str(js), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("FD feat", "ODE err", "noise floor from the held-out split", "ODE reference", "below the smallest"):
        assert text in out, out
    doc = json.loads(js.read_text())
    assert doc["problem"]["name"] == "digits" and doc["problem"]["ode_reference"]["margin"] >= 10
    assert doc["config"]["samples"] == 24 and doc["config"]["ode_samples"] == 24
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_digits_takes_no_options():
    with pytest.raises(ValueError, match="no option"):
        get_problem("digits:components=3")


def test_train_script_is_deterministic(tmp_path):
    """Two short runs of the training script write the same bytes (the shipped file's reproducibility)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    blobs = []
    for name in ("a.pt", "b.pt"):
        out = tmp_path / name
        mod.main(["--steps", "30", "--classifier-epochs", "1", "--threads", "1", "--out", str(out)])
        blobs.append(torch.load(out, weights_only=True))
    torch.set_num_threads(threads)
    a, b = blobs  # (the files' bytes differ: torch.save writes a random serialization id into each)
    assert a["meta"] == b["meta"]
    for net in ("denoiser", "classifier"):
        assert a[net].keys() == b[net].keys()
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
    assert a["meta"]["training_command"] == (
        "python benchmarks/train_digits.py --steps 30 --classifier-epochs 1 --threads 1"
    )


@pytest.mark.slow
def test_default_digits_run_meets_its_numbers():
    """``samplers bench -p digits`` with its defaults: the reference is >= 10x tighter than every row."""
    d = R.problem_defaults("digits")
    cfg = R.BenchConfig(
        schedulers=tuple(d["schedulers"]),
        steps=tuple(d["steps"]),
        problem="digits",
        samples=d["samples"],
        ode_samples=d["ode_samples"],
        schedule=d["schedule"],
    )
    res = R.run_benchmark(cfg)
    assert res.problem["ode_reference"]["margin"] >= 10
