"""samplers.grids: every named grid against its paper's formula (written again here, float64), against
k-diffusion's ``get_sigmas_*`` and diffusers 0.42.1's scheduler flags, plus the name table, the flag
mapping, the argument checks and the schedule file."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from samplers import grids
from samplers.schedules import DiscreteVPSchedule, VPLinearSchedule

F64 = torch.float64
EXACT = 1e-12  # our grid vs the formula written independently, both float64
REF = 1e-6  # vs diffusers / k-diffusion

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SD = DiscreteVPSchedule.from_config(**SD_BETAS)
SD_TABLE = SD.sigmas  # ascending sigma-space levels per training timestep, float64
LO, HI = float(SD_TABLE[0]), float(SD_TABLE[-1])


def rel(ours: torch.Tensor, ref: torch.Tensor | np.ndarray) -> float:
    ref = torch.as_tensor(np.asarray(ref, dtype=np.float64))
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(((ours.double() - ref).abs() / ref.abs()).max())


def assert_descending(grid: torch.Tensor) -> None:
    assert grid.dtype == F64 and grid.dim() == 1
    assert bool((grid[1:] < grid[:-1]).all()), grid
    assert bool((grid > 0).all()) and bool(torch.isfinite(grid).all())


# ---- each grid against its formula -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_range_grids_match_their_formulas(n: int) -> None:
    lo, hi = 0.002, 80.0
    r = np.linspace(0.0, 1.0, n)  # i / (n - 1)
    formulas = {
        # Karras et al. 2022 eq. 5
        "karras": (hi ** (1 / 7) + r * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7,
        "exponential": hi * (lo / hi) ** r,
        "polyexponential": lo * (hi / lo) ** ((1 - r) ** 2.5),
        # even in lambda = log(alpha / sigma) = -log sigma_ve
        "lu": np.exp(-(-math.log(hi) + r * (math.log(hi) - math.log(lo)))),
        # AYS Theorem 3.1
        "kl_optimal": np.tan(np.arctan(hi) * (1 - r) + np.arctan(lo) * r),
    }
    params = {"polyexponential": {"rho": 2.5}}
    for name, formula in formulas.items():
        grid = grids.make(name, n, sigma_min=lo, sigma_max=hi, **params.get(name, {}))
        assert rel(grid, formula) < EXACT, name
        assert_descending(grid)
        assert abs(float(grid[0]) / hi - 1) < EXACT, name  # starts at sigma_max
        if n > 1:
            assert abs(float(grid[-1]) / lo - 1) < EXACT, name  # ends at sigma_min
    assert rel(grids.lu(n, sigma_min=lo, sigma_max=hi), grids.exponential(n, sigma_min=lo, sigma_max=hi)) < EXACT


def test_kl_optimal_is_even_in_arctan_sigma() -> None:
    grid = grids.kl_optimal(9, sigma_min=0.03, sigma_max=14.6)
    gaps = torch.diff(torch.atan(grid))
    assert float((gaps - gaps.mean()).abs().max()) < 1e-14
    assert abs(float(gaps.sum()) - (math.atan(0.03) - math.atan(14.6))) < 1e-14


def test_polyexponential_with_rho_one_is_exponential() -> None:
    a = grids.polyexponential(12, sigma_min=0.1, sigma_max=20.0)
    b = grids.exponential(12, sigma_min=0.1, sigma_max=20.0)
    assert rel(a, b) < EXACT


def test_vp_matches_the_vp_sde_alpha() -> None:
    """k-diffusion's closed form against the VP-SDE's alpha(t) (schedules.VPLinearSchedule, beta_max = beta_d +
    beta_min): sigma_ve = sigma / alpha at t evenly from 1 to eps_s."""
    grid = grids.vp(25)
    t = torch.linspace(1.0, 1e-3, 25, dtype=F64)
    ref = VPLinearSchedule(beta_min=0.1, beta_max=20.0).ve_sigma(t)
    assert rel(grid, ref) < EXACT
    assert_descending(grid)
    grid = grids.vp(6, beta_d=10.0, beta_min=0.5, eps_s=1e-2)
    t = np.linspace(1.0, 1e-2, 6)
    assert rel(grid, np.sqrt(np.expm1(10.0 * t**2 / 2 + 0.5 * t))) < EXACT


@pytest.mark.parametrize(
    ("a", "b"), [(0.6, 0.6), (0.5, 2.0), (2.0, 5.0), (1.0, 1.0), (3.0, 0.7), (10.0, 0.3), (0.06, 40.0)]
)
def test_beta_ppf_matches_scipy(a: float, b: float) -> None:
    stats = pytest.importorskip("scipy.stats")
    p = np.array([1e-8, 1e-4, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1 - 1e-4, 1 - 1e-8])
    ours = np.array([grids.beta_ppf(float(q), a, b) for q in p])
    ref = stats.beta.ppf(p, a, b)
    assert float(np.max(np.abs(ours - ref) / ref)) <= 1e-10
    assert grids.beta_ppf(0.0, a, b) == 0.0 and grids.beta_ppf(1.0, a, b) == 1.0


def test_beta_grid_matches_its_formula() -> None:
    """Lee et al. 2024 as diffusers implements it: sigma_min + F^-1(1 - i/(n-1)) (sigma_max - sigma_min)."""
    stats = pytest.importorskip("scipy.stats")
    for n, (a, b) in [(10, (0.6, 0.6)), (17, (0.5, 0.8)), (1, (0.6, 0.6))]:
        grid = grids.beta(n, sigma_min=LO, sigma_max=HI, alpha=a, beta=b)
        ref = LO + stats.beta.ppf(1 - np.linspace(0, 1, n), a, b) * (HI - LO)
        assert rel(grid, ref) < 1e-10
        assert_descending(grid)
        assert float(grid[0]) == pytest.approx(HI, rel=EXACT)
        if n > 1:
            assert float(grid[-1]) == pytest.approx(LO, rel=EXACT)


# ---- Align Your Steps --------------------------------------------------------------------------------

# Sabour et al. 2024, Table 3, typed again from the paper
PAPER_AYS = {
    "sd15": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
    "svd": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}


@pytest.mark.parametrize("model", sorted(PAPER_AYS))
def test_ays_ten_steps_is_the_published_table(model: str) -> None:
    grid = grids.ays(10, model=model)
    assert grid.tolist() == PAPER_AYS[model][:10]  # bit for bit; the 11th level is where the run ends
    assert list(grids.AYS_TABLES[model]) == PAPER_AYS[model]


@pytest.mark.parametrize("n", [1, 4, 5, 7, 15, 20, 32])
def test_ays_other_step_counts_interpolate_log_linearly(n: int) -> None:
    for model, table in PAPER_AYS.items():
        # n + 1 evenly spaced positions over the table's 11, log sigma interpolated linearly, the end dropped
        full = np.exp(np.interp(np.linspace(0, 1, n + 1), np.linspace(0, 1, 11), np.log(table)))
        grid = grids.ays(n, model=model)
        assert rel(grid, full[:-1]) < EXACT, model
        assert float(grid[0]) == table[0]  # keeps the top level exactly
        assert full[-1] == pytest.approx(table[-1], rel=1e-15)  # the implied end is the table's last level
        assert_descending(grid)
    # where the positions hit table nodes, the nodes come back exactly
    assert grids.ays(5, model="sd15").tolist() == PAPER_AYS["sd15"][0:10:2]
    assert grids.ays(20, model="sdxl").tolist()[::2] == PAPER_AYS["sdxl"][:10]


# ---- strides over the training table ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 10, 17, 1000])
def test_simple_strides_the_table_from_the_top(n: int) -> None:
    T = len(SD_TABLE)
    grid = grids.make("simple", n, table=SD_TABLE)
    index = [T - 1 - math.floor(i * T / n) for i in range(n)]
    assert torch.equal(grid, SD_TABLE[index])
    assert float(grid[0]) == HI
    assert_descending(grid)


@pytest.mark.parametrize("n", [1, 4, 10, 23])
def test_normal_and_sgm_uniform_are_even_in_model_time(n: int) -> None:
    T = len(SD_TABLE)
    normal = grids.make("normal", n, table=SD_TABLE)
    # DiscreteVPSchedule.sigma_at: log-linear interpolation of the same table, an independent implementation
    assert rel(normal, SD.sigma_at(torch.linspace(T - 1, 0, n, dtype=F64))) < EXACT
    assert float(normal[0]) == HI and (n == 1 or float(normal[-1]) == LO)
    sgm = grids.make("sgm_uniform", n, table=SD_TABLE)
    assert rel(sgm, SD.sigma_at(torch.linspace(T - 1, 0, n + 1, dtype=F64)[:-1])) < EXACT
    assert float(sgm[0]) == HI and float(sgm[-1]) > LO
    assert_descending(normal)
    assert_descending(sgm)


def test_normal_with_a_range_spans_model_time_between_its_ends() -> None:
    lo, hi = 0.1, 10.0
    grid = grids.normal(8, table=SD_TABLE, sigma_min=lo, sigma_max=hi)
    t_hi, t_lo = SD.t_from_sigma(torch.tensor([hi, lo], dtype=F64)).tolist()
    t = torch.linspace(t_hi, t_lo, 8, dtype=F64)
    assert rel(grid, SD.sigma_at(t)) < EXACT
    assert float(grid[0]) == pytest.approx(hi, rel=EXACT) and float(grid[-1]) == pytest.approx(lo, rel=EXACT)


@pytest.mark.parametrize(("n", "offset"), [(10, 1), (7, 1), (50, 0), (1, 1)])
def test_ddim_uniform_is_ddims_stride(n: int, offset: int) -> None:
    T = len(SD_TABLE)
    c = T // n  # DDIM sec. 4.2: tau_k = k c (+ offset)
    grid = grids.ddim_uniform(n, table=SD_TABLE, steps_offset=offset)
    assert torch.equal(grid, SD_TABLE[[k * c + offset for k in reversed(range(n))]])
    assert_descending(grid)


# ---- rectified flow -----------------------------------------------------------------------------------


def test_flow_shifts_match_their_formulas() -> None:
    t = torch.linspace(1.0, 0.0, 11, dtype=F64)
    s, mu = 3.0, 0.7
    assert rel(grids.flow_shift(t[:-1], s), s * t[:-1] / (1 + (s - 1) * t[:-1])) < EXACT  # SD3 eq. 23
    assert float(grids.flow_shift(t, s)[-1]) == 0.0 and float(grids.flow_shift(t, s)[0]) == 1.0
    ref = math.exp(mu) / (math.exp(mu) + (1 / t[:-1] - 1) ** 1.5)
    assert rel(grids.time_shift(t[:-1], mu, sigma=1.5), ref) < EXACT
    assert rel(grids.time_shift(t[:-1], mu, kind="linear"), mu / (mu + (1 / t[:-1] - 1))) < EXACT
    # exponential time shift with sigma = 1 is the static shift by e^mu
    assert rel(grids.time_shift(t[:-1], mu), grids.flow_shift(t[:-1], math.exp(mu))) < EXACT


def test_stretch_to_terminal_ends_at_the_terminal_and_scales_one_minus_t() -> None:
    t = grids.flow(12, shift=3.0)
    out = grids.stretch_to_terminal(t, 0.1)
    assert float(out[-1]) == pytest.approx(0.1, rel=1e-15) and float(out[0]) == 1.0
    ratio = (1 - out[1:]) / (1 - t[1:])
    assert float((ratio / ratio[0] - 1).abs().max()) < 1e-13


def mochi_schedule():
    """diffusers' copy of Genmo's ``linear_quadratic_schedule``, read from its source file: importing the Mochi
    pipeline module would pull transformers, which the function does not use."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("diffusers")
    if spec is None or spec.origin is None:
        pytest.skip("diffusers is not installed")
    source = (Path(spec.origin).parent / "pipelines" / "mochi" / "pipeline_mochi.py").read_text()
    (node,) = [n for n in ast.parse(source).body if getattr(n, "name", None) == "linear_quadratic_schedule"]
    namespace: dict = {}
    exec(compile(ast.Module(body=[node], type_ignores=[]), "pipeline_mochi.py", "exec"), namespace)
    return namespace["linear_quadratic_schedule"]


def test_linear_quadratic_matches_mochi() -> None:
    reference = mochi_schedule()
    for n, theta, steps in [(64, 0.025, None), (10, 0.025, None), (30, 0.1, 10), (7, 0.025, 3)]:
        grid = grids.linear_quadratic(n, threshold_noise=theta, linear_steps=steps)
        assert rel(grid, reference(n, theta, steps)) < EXACT
        assert_descending(grid)
        assert float(grid[0]) == 1.0


def test_linear_quadratic_is_linear_then_a_c1_quadratic_reaching_zero() -> None:
    n, theta = 20, 0.025
    tau = 1 - grids.linear_quadratic(n, threshold_noise=theta).numpy()
    L = n // 2
    assert np.allclose(np.diff(tau[: L + 1]), theta / L, rtol=0, atol=1e-15)  # linear up to tau_L = theta
    assert tau[L] == pytest.approx(theta, abs=1e-15)
    # the quadratic through (L, theta) with slope theta / L that reaches 1 at i = n, fitted from the points
    i = np.arange(L, n)
    coef = np.polyfit(i - L, tau[L:], 2)
    assert coef[1] == pytest.approx(theta / L, rel=1e-9) and coef[2] == pytest.approx(theta, abs=1e-12)
    assert np.polyval(coef, n - L) == pytest.approx(1.0, rel=1e-12)


# ---- against k-diffusion --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def K():
    from test_integrations_k_diffusion import _load_k_diffusion  # one loader for the k-diffusion reference

    return _load_k_diffusion().sampling


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def test_k_diffusion_get_sigmas(K) -> None:
    n, lo, hi = 20, 0.0292, 14.6146
    cases = {
        "karras": (K.get_sigmas_karras, (n, lo, hi, 7.0), grids.karras(n, sigma_min=lo, sigma_max=hi)),
        "exponential": (K.get_sigmas_exponential, (n, lo, hi), grids.exponential(n, sigma_min=lo, sigma_max=hi)),
        "polyexponential": (
            K.get_sigmas_polyexponential,
            (n, lo, hi, 2.0),
            grids.polyexponential(n, sigma_min=lo, sigma_max=hi, rho=2.0),
        ),
        "vp": (K.get_sigmas_vp, (n, 19.9, 0.1, 1e-3), grids.vp(n)),
    }
    for name, (fn, args, ours) in cases.items():
        theirs = fn(*args)
        assert float(theirs[-1]) == 0.0
        if name != "vp":  # k-diffusion's float32 exp(.) - 1 cancels near eps_s (2e-4); see the float64 run below
            assert rel(ours, theirs[:-1]) <= REF, name
        with default_dtype(F64):  # the same code evaluated in float64: the formulas agree to rounding
            assert rel(ours, fn(*args)[:-1]) <= 1e-10, name


# ---- against diffusers 0.42.1 ----------------------------------------------------------------------------


def diffusers_table(scheduler) -> torch.Tensor:
    """The training table diffusers' scheduler samples from (its float32 alphas_cumprod, in float64)."""
    abar = scheduler.alphas_cumprod.double()
    return ((1 - abar) / abar).sqrt()


@pytest.mark.parametrize(
    ("cls", "flag"),
    [
        ("EulerDiscreteScheduler", "use_karras_sigmas"),
        ("EulerDiscreteScheduler", "use_exponential_sigmas"),
        ("EulerDiscreteScheduler", "use_beta_sigmas"),
        ("DPMSolverMultistepScheduler", "use_karras_sigmas"),
        ("DPMSolverMultistepScheduler", "use_exponential_sigmas"),
        ("DPMSolverMultistepScheduler", "use_beta_sigmas"),
        ("DPMSolverMultistepScheduler", "use_lu_lambdas"),
    ],
)
@pytest.mark.parametrize("n", [4, 12, 25])
def test_diffusers_sigma_flags_round_trip(cls: str, flag: str, n: int) -> None:
    """config -> from_diffusers_flags -> make over diffusers' own table ends == diffusers' sigmas."""
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("scipy")
    scheduler = getattr(diffusers, cls)(**SD_BETAS, **{flag: True})
    scheduler.set_timesteps(n)
    name, params = grids.from_diffusers_flags(scheduler.config)
    assert name == {"use_karras_sigmas": "karras", "use_lu_lambdas": "lu"}.get(flag, flag[4:-7]) and params == {}
    ours = grids.make(name, n, table=diffusers_table(scheduler), **params)
    assert float(scheduler.sigmas[-1]) == 0.0
    assert rel(ours, scheduler.sigmas[:-1]) <= REF


FLOW_CASES = {
    "static shift": ({"shift": 3.0}, {}),
    "dynamic exponential": ({"use_dynamic_shifting": True}, {"mu": 0.8}),
    "dynamic linear": ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 1.3}),
    "shift_terminal": ({"shift": 3.0, "shift_terminal": 0.1}, {}),
    "dynamic + terminal": ({"use_dynamic_shifting": True, "shift_terminal": 0.02}, {"mu": 1.15}),
}


@pytest.mark.parametrize(
    ("case", "n"),
    # one level cannot be stretched to end at shift_terminal (diffusers divides by zero there)
    [(case, n) for case in sorted(FLOW_CASES) for n in (1, 8, 28) if n > 1 or "terminal" not in case],
)
def test_flow_match_euler_round_trip(case: str, n: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    config, call = FLOW_CASES[case]
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    scheduler.set_timesteps(n, **call)
    name, params = grids.from_diffusers_flags(scheduler.config)
    ours = grids.make(name, n, **params, **call)
    assert name == "flow"
    assert rel(ours, scheduler.sigmas[:-1]) <= REF
    if n > 1:
        assert_descending(ours)


@pytest.mark.parametrize("cls", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
@pytest.mark.parametrize("n", [5, 20])
def test_use_flow_sigmas_round_trip(cls: str, n: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    scheduler = getattr(diffusers, cls)(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    scheduler.set_timesteps(n)
    name, params = grids.from_diffusers_flags(scheduler.config)
    assert (name, params["shift"]) == ("flow", 3.0)
    ours = grids.make(name, n, **params)
    theirs = scheduler.sigmas[:-1]
    if cls.startswith("UniPC"):
        # UniPC lowers a first level of 1 by 1e-6 to keep log(alpha) finite; the grid keeps the level itself
        assert float(ours[0]) == 1.0 and float(theirs[0]) == pytest.approx(1 - 1e-6, abs=1e-7)
        ours, theirs = ours[1:], theirs[1:]
    assert rel(ours, theirs) <= REF


def test_unipc_dynamic_flow_round_trip() -> None:
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.UniPCMultistepScheduler(
        use_flow_sigmas=True, use_dynamic_shifting=True, shift_terminal=0.05, prediction_type="flow_prediction"
    )
    scheduler.set_timesteps(10, mu=1.1)
    name, params = grids.from_diffusers_flags(scheduler.config)
    assert params["shift"] is None and params["spacing"] == "unipc"
    assert rel(grids.make(name, 10, mu=1.1, **params)[1:], scheduler.sigmas[1:-1]) <= REF


# ---- from_diffusers_flags --------------------------------------------------------------------------------


def test_from_diffusers_flags_maps_and_refuses() -> None:
    assert grids.from_diffusers_flags({"use_karras_sigmas": False, "num_train_timesteps": 1000}) == (None, {})
    assert grids.from_diffusers_flags({"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": None}) == (
        "karras",
        {"sigma_min": 0.1},
    )
    name, params = grids.from_diffusers_flags({"use_flow_sigmas": True, "flow_shift": 5.0})
    assert (name, params) == ("flow", {"spacing": "dpm", "num_train_timesteps": 1000, "shift": 5.0})
    name, params = grids.from_diffusers_flags({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True})
    assert params["spacing"] == "unipc"
    with pytest.raises(ValueError, match="contradictory.*use_karras_sigmas.*use_beta_sigmas"):
        grids.from_diffusers_flags({"use_karras_sigmas": True, "use_beta_sigmas": True})
    with pytest.raises(ValueError, match="contradictory.*use_karras_sigmas.*use_lu_lambdas"):
        grids.from_diffusers_flags({"use_karras_sigmas": True, "use_lu_lambdas": True})
    with pytest.raises(ValueError, match="contradictory.*use_exponential_sigmas.*use_flow_sigmas"):
        grids.from_diffusers_flags({"use_exponential_sigmas": True, "use_flow_sigmas": True})
    with pytest.raises(ValueError, match="contradictory.*FlowMatch shift"):
        grids.from_diffusers_flags({"shift": 3.0, "use_karras_sigmas": True})
    with pytest.raises(ValueError, match="invert_sigmas=True"):
        grids.from_diffusers_flags({"shift": 1.0, "invert_sigmas": True})
    with pytest.raises(ValueError, match="config must be a mapping"):
        grids.from_diffusers_flags([("use_karras_sigmas", True)])  # type: ignore[arg-type]


def test_dynamic_flow_params_need_mu() -> None:
    name, params = grids.from_diffusers_flags({"shift": 3.0, "use_dynamic_shifting": True})
    with pytest.raises(ValueError, match="mu is required"):
        grids.make(name, 10, **params)


# ---- the name table and make() ---------------------------------------------------------------------------


def test_grids_table_lists_every_grid_with_a_description_and_source() -> None:
    expected = {
        "karras",
        "exponential",
        "polyexponential",
        "lu",
        "beta",
        "kl_optimal",
        "vp",
        "ays",
        "simple",
        "normal",
        "sgm_uniform",
        "ddim_uniform",
        "linear_quadratic",
        "flow",
    }
    assert set(grids.GRIDS) == expected
    for name, info in grids.GRIDS.items():
        assert info.name == name and info.description and info.source and info.fn.__doc__
        assert info.space in ("sigma", "table", "flow")
        assert (info.space == "table") == ("table" in info.required_inputs), name
    assert grids.GRIDS["karras"].params == {"rho": 7.0}
    assert grids.GRIDS["karras"].required_inputs == ("sigma_min", "sigma_max")
    assert grids.GRIDS["ays"].params == {"model": grids.REQUIRED}
    assert grids.GRIDS["normal"].inputs == ("table", "sigma_min", "sigma_max")


def test_make_builds_every_grid_by_name() -> None:
    params = {"ays": {"model": "sdxl"}}
    for name, info in grids.GRIDS.items():
        grid = grids.make(name, 9, table=SD_TABLE, **params.get(name, {}))
        context: dict = {}
        if "table" in info.inputs:
            context["table"] = SD_TABLE
        if info.required_inputs == ("sigma_min", "sigma_max"):  # the range defaults to the table's ends
            context.update(sigma_min=LO, sigma_max=HI)
        assert torch.equal(grid, info.fn(9, **params.get(name, {}), **context)), name
        assert_descending(grid)
        if info.space == "flow":
            assert float(grid.max()) <= 1.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: grids.make("karas", 5, sigma_min=0.1, sigma_max=1.0), "unknown grid 'karas'.*did you mean 'karras'"),
        (lambda: grids.make("karras", 5, sigma_min=0.1, sigma_max=1.0, rh=7), "did you mean 'rho'"),
        (lambda: grids.make("karras", 5), "needs sigma_min and sigma_max"),
        (lambda: grids.make("simple", 5), "pass table="),
        (lambda: grids.make("vp", 5, sigma_min=0.1), "takes no sigma_min"),
        (lambda: grids.karras(0, sigma_min=0.1, sigma_max=1.0), "n must be an int >= 1"),
        (lambda: grids.karras(True, sigma_min=0.1, sigma_max=1.0), "n must be an int >= 1"),
        (lambda: grids.karras(4.0, sigma_min=0.1, sigma_max=1.0), "n must be an int >= 1"),
        (lambda: grids.karras(4, sigma_min=-0.1, sigma_max=1.0), "sigma_min must be"),
        (lambda: grids.karras(4, sigma_min=0.1, sigma_max=math.inf), "sigma_max must be"),
        (lambda: grids.karras(4, sigma_min=2.0, sigma_max=1.0), "sigma_min < sigma_max"),
        (lambda: grids.karras(4, sigma_min=0.1, sigma_max=1.0, rho=0.0), "rho must be"),
        (lambda: grids.polyexponential(4, sigma_min=0.1, sigma_max=1.0, rho=-1.0), "rho must be"),
        (lambda: grids.beta(4, sigma_min=0.1, sigma_max=1.0, alpha=0.0), "alpha must be"),
        (lambda: grids.beta(4, sigma_min=0.1, sigma_max=1.0, beta=math.nan), "beta must be"),
        (lambda: grids.vp(4, eps_s=0.0), "eps_s must be"),
        (lambda: grids.vp(4, beta_d=-1.0), "beta_d must be"),
        (lambda: grids.ays(4, model="sdx1"), "unknown ays model 'sdx1'.*did you mean 'sdxl'"),
        (lambda: grids.simple(5, table=SD_TABLE.flip(0)), "table must be strictly ascending"),
        (lambda: grids.simple(5, table=torch.tensor([0.1, math.inf])), "table must hold finite"),
        (lambda: grids.simple(1001, table=SD_TABLE), "n=1001 cannot exceed"),
        (lambda: grids.normal(5, table=SD_TABLE, sigma_max=100.0), "sigma_max=100.0 lies outside"),
        (lambda: grids.ddim_uniform(1000, table=SD_TABLE), "steps_offset=1 puts the top timestep at 1000"),
        (lambda: grids.ddim_uniform(10, table=SD_TABLE, steps_offset=-1), "steps_offset must be"),
        (lambda: grids.flow(5, shift=None), "mu is required"),
        (lambda: grids.flow(5, shift=2.0, mu=0.5), "give shift or mu, not both"),
        (lambda: grids.flow(5, kind="linear"), "kind='linear'.*pass mu"),
        (lambda: grids.flow(5, mu=0.5, kind="quadratic"), "unknown kind 'quadratic'"),
        (lambda: grids.flow(5, spacing="dmp"), "unknown spacing 'dmp'.*did you mean 'dpm'"),
        (lambda: grids.flow(5, shift=-1.0), "shift must be"),
        (lambda: grids.flow(5, shift_terminal=1.0), "shift_terminal must be"),
        (lambda: grids.time_shift([0.5], mu=-1.0, kind="linear"), "mu must be"),
        (lambda: grids.flow_shift([1.5], 3.0), "flow times t must lie in"),
        (lambda: grids.linear_quadratic(10, threshold_noise=1.5), "threshold_noise must be"),
        (lambda: grids.linear_quadratic(10, linear_steps=11), "linear_steps must be <= n=10"),
        (lambda: grids.linear_quadratic(10, threshold_noise=0.9, linear_steps=1), "gives no descending grid"),
    ],
)
def test_bad_input_names_the_argument(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ---- schedule files --------------------------------------------------------------------------------------


def test_schedule_file_round_trip(tmp_path) -> None:
    tuned = grids.ScheduleFile(
        sampler="dpmpp_2m",
        nfe=10,
        sigmas=grids.ays(10, model="sd15").tolist(),
        timesteps=[999.0, 850.0, 736.0, 645.0, 545.0, 455.0, 343.0, 233.0, 124.0, 24.0],
        problem="gmm2d",
        model="sd15",
        objective_before=0.25,
        objective_after=0.125,
        meta={"seed": 3, "optimizer": "adam"},
    )
    path = grids.save(tuned, tmp_path / "tuned.json")
    back = grids.load(path)
    assert back == tuned
    assert back.sigmas[0] == 14.615 and back.timesteps is not None and back.timesteps[-1] == 24.0
    assert torch.equal(grids.make(f"file:{path}", 10), grids.ays(10, model="sd15"))
    with pytest.raises(ValueError, match="has 10 levels, asked for n=9"):
        grids.make(f"file:{path}", 9)
    flow_file = grids.ScheduleFile(sampler="flow_euler", nfe=3, sigmas=[1.0, 0.6, 0.2], space="flow")
    assert grids.load(grids.save(flow_file, tmp_path / "flow.json")).grid.tolist() == [1.0, 0.6, 0.2]


GOOD = {"version": 1, "sampler": "euler", "nfe": 3, "sigmas": [10.0, 1.0, 0.1]}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"version": 2}, "version must be 1, got 2"),
        ({"version": None}, "version must be 1"),
        ({"version": True}, "version must be 1, got True"),
        ({"colour": "red"}, r"unknown schedule file field\(s\) \['colour'\]"),
        ({"sigmas": [1.0, 10.0, 0.1]}, "strictly descending"),
        ({"sigmas": [10.0, 1.0, 1.0]}, "strictly descending"),
        ({"sigmas": [10.0, 1.0, 0.0]}, "must not end in 0"),
        ({"sigmas": [10.0, -1.0, -2.0]}, "sigmas must lie in > 0"),
        ({"sigmas": [10.0, float("nan"), 0.1]}, "sigmas must be a finite number"),
        ({"sigmas": []}, "at least one level"),
        ({"sigmas": "10, 1"}, "sigmas must be a list of numbers"),
        ({"sigmas": [2.0, 0.5], "space": "flow"}, r"sigmas must lie in \(0, 1\]"),
        ({"space": "edm"}, "unknown space 'edm'"),
        ({"timesteps": [999.0, 500.0]}, "timesteps has 2 entries, sigmas 3"),
        ({"nfe": 0}, "nfe must be an int >= 1"),
        ({"sampler": ""}, "sampler must be a non-empty string"),
        ({"objective_after": "low"}, "objective_after must be a real number"),
        ({"meta": [1, 2]}, "meta must be a mapping"),
    ],
)
def test_schedule_file_rejects_malformed(tmp_path, change: dict, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(ValueError, match=match):
        grids.load(path)


def test_schedule_file_rejects_missing_fields_and_bad_json(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"version": 1, "sampler": "euler", "nfe": 3}))
    with pytest.raises(ValueError, match=r"lacks required field\(s\) \['sigmas'\]"):
        grids.load(path)
    path.write_text(json.dumps({"sampler": "euler", "nfe": 3, "sigmas": [1.0]}))
    with pytest.raises(ValueError, match="must state its version"):
        grids.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        grids.load(path)
    with pytest.raises(ValueError, match="meta must be JSON-serialisable"):
        grids.ScheduleFile(sampler="euler", nfe=1, sigmas=[1.0], meta={"x": object()})


# ---- docs/grids.md --------------------------------------------------------------------------------------


def test_docs_usage_snippet_runs() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "grids.md").read_text()
    (code,) = re.findall(r"<!-- snippet: usage -->\s*```python\n(.*?)```", doc, re.S)
    ns: dict = {}
    exec(compile(code, "grids.md:usage", "exec"), ns)
    assert ns["sigmas"].tolist() == PAPER_AYS["sd15"][:10] + [0.0]
    assert ns["beta_levels"].shape == (12,) and ns["strided"].shape == (12,)
    assert float(ns["flux"][0]) == 1.0 and ns["flux"].shape == (28,)
    # every grid the page names has a paragraph
    for name in grids.GRIDS:
        assert f"**{name}**" in doc, name
