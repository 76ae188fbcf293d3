"""k-diffusion-style samplers and denoiser wrappers (samplers.integrations.k_diffusion).

Parity tests run against the real ``k-diffusion`` package when it is installed (CI installs it
with ``pip install --no-deps k-diffusion==0.1.1.post1 torchsde==0.2.6 torchdiffeq==0.2.5
trampoline==0.1.2``). Importing ``k_diffusion`` itself pulls torchvision (for image helpers the
samplers never touch), so :func:`_load_k_diffusion` loads its unmodified ``sampling`` and
``external`` modules with the bench's loader (:func:`samplers.bench.foreign.import_k_diffusion`: the
installed files under a private package name, with empty stand-ins for the absent image-only imports,
removed again right after loading).
The other tests need nothing beyond samplers.
"""

from __future__ import annotations

import importlib
import importlib.util
import types

import pytest
import torch

from samplers import get
from samplers.bench.foreign import import_k_diffusion
from samplers.bench.problems import OracleModel, make_gaussian, make_gmm2d
from samplers.integrations import k_diffusion as kd
from samplers.schedules import DiscreteVPSchedule, EDMSchedule, RectifiedFlowSchedule, VPCosineSchedule, make_betas

F64 = torch.float64
TOL = 1e-5  # max abs difference to k-diffusion, float32


def _load_k_diffusion() -> types.SimpleNamespace:
    """k-diffusion's unmodified ``sampling`` and ``external`` modules, through the bench's loader (the one
    ``samplers bench -s k-diffusion:...`` uses: no torchvision / PIL needed)."""
    if importlib.util.find_spec("k_diffusion") is None:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)")
    for dep in ("torchsde", "torchdiffeq", "scipy"):  # k_diffusion.sampling imports these at module level
        pytest.importorskip(dep)
    return types.SimpleNamespace(sampling=import_k_diffusion("sampling"), external=import_k_diffusion("external"))


@pytest.fixture(scope="module")
def K() -> types.SimpleNamespace:
    return _load_k_diffusion()


PROBLEM = make_gaussian(dim=2, seed=3)


def exact_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``E[x0 | x0 + sigma eps = x]`` for a 2-D Gaussian (float64 math, x's dtype out)."""
    return PROBLEM.denoise(x, 1.0, sigma.to(F64).view(-1, 1))


class FixedNoise:
    """A noise sampler replaying one pre-drawn list, so two runs see identical noise."""

    def __init__(self, shape: tuple[int, ...], count: int = 64, seed: int = 5) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.noise = [torch.randn(shape, generator=gen) for _ in range(count)]
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self.calls.append((float(sigma), float(sigma_next)))
        return self.noise[len(self.calls) - 1]


def start(sigmas: torch.Tensor, batch: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 2, generator=torch.Generator().manual_seed(seed)) * sigmas[0]


GRIDS = {
    "karras80": lambda: kd.get_sigmas_karras(12, 0.002, 80.0),
    "exp10": lambda: kd.get_sigmas_exponential(9, 0.01, 10.0),
    "partial": lambda: kd.get_sigmas_karras(12, 0.002, 80.0)[:-4],  # img2img-style: ends above 0
}


# ---- sigma grids -----------------------------------------------------------------------------


def test_sigma_grids_match_k_diffusion(K) -> None:
    s = K.sampling
    pairs = {
        "karras": (s.get_sigmas_karras(20, 0.0292, 14.6146), kd.get_sigmas_karras(20, 0.0292, 14.6146)),
        "karras80": (s.get_sigmas_karras(30, 0.002, 80.0, rho=7.0), kd.get_sigmas_karras(30, 0.002, 80.0, rho=7.0)),
        "exponential": (s.get_sigmas_exponential(15, 0.01, 50.0), kd.get_sigmas_exponential(15, 0.01, 50.0)),
        "polyexponential": (
            s.get_sigmas_polyexponential(15, 0.01, 50.0, 2.0),
            kd.get_sigmas_polyexponential(15, 0.01, 50.0, 2.0),
        ),
    }
    for name, (theirs, ours) in pairs.items():
        assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == theirs.shape, name
        assert float(ours[-1]) == 0.0
        rel = ((ours - theirs).abs() / theirs.clamp(min=1e-30)).max().item()
        # k-diffusion rounds every float32 operation (x ** 7 amplifies it); ours rounds float64 once
        assert rel < 2e-6, (name, rel)
    small = pairs["karras"]
    assert (small[0] - small[1]).abs().max().item() < TOL


def test_vp_grid_matches_k_diffusion_and_the_float64_formula(K) -> None:
    """k-diffusion evaluates ``sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` in float32, which cancels
    near ``t = eps_s`` (2e-4 relative); ours comes from the VP-SDE's alpha without cancellation."""
    theirs, ours = K.sampling.get_sigmas_vp(25), kd.get_sigmas_vp(25)
    t = torch.linspace(1, 1e-3, 25, dtype=F64)
    exact = torch.sqrt(torch.expm1(19.9 * t**2 / 2 + 0.1 * t))
    assert ((ours[:-1].double() - exact).abs() / exact).max().item() < 1e-6
    assert ((theirs[:-1] - ours[:-1]).abs() / ours[:-1]).max().item() < 1e-3


def test_karras_grid_is_correctly_rounded() -> None:
    sigmas = kd.get_sigmas_karras(30, 0.002, 80.0)
    ramp = torch.linspace(0, 1, 30, dtype=F64)
    exact = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert torch.equal(sigmas[:-1], exact.float())
    assert sigmas[0] == torch.tensor(80.0) and sigmas[-2] == torch.tensor(0.002)


# ---- samplers against k-diffusion ---------------------------------------------------------------


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_deterministic_samplers_match_k_diffusion(K, sampler: str, grid: str) -> None:
    sigmas = GRIDS[grid]()
    x = start(sigmas)
    theirs = getattr(K.sampling, f"sample_{sampler}")(exact_denoiser, x, sigmas, disable=True)
    ours = getattr(kd, f"sample_{sampler}")(exact_denoiser, x, sigmas, disable=True)
    assert (ours - theirs).abs().max().item() < TOL


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_churn_matches_k_diffusion(K, sampler: str, grid: str) -> None:
    """EDM churn: same torch RNG draws in the same order, inside and outside [s_tmin, s_tmax]."""
    sigmas = GRIDS[grid]()
    x = start(sigmas)
    options = dict(s_churn=8.0, s_tmin=0.05, s_tmax=30.0, s_noise=1.003)
    torch.manual_seed(11)
    theirs = getattr(K.sampling, f"sample_{sampler}")(exact_denoiser, x, sigmas, disable=True, **options)
    torch.manual_seed(11)
    ours = getattr(kd, f"sample_{sampler}")(exact_denoiser, x, sigmas, disable=True, **options)
    assert (ours - theirs).abs().max().item() < TOL
    torch.manual_seed(12)
    other = getattr(kd, f"sample_{sampler}")(exact_denoiser, x, sigmas, disable=True, **options)
    assert (other - ours).abs().max().item() > 1e-3  # the churn really is stochastic


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.6, 0.95), (0.0, 1.0)])
def test_euler_ancestral_matches_k_diffusion(K, grid: str, eta: float, s_noise: float) -> None:
    sigmas = GRIDS[grid]()
    x = start(sigmas)
    theirs_noise, our_noise = FixedNoise(x.shape), FixedNoise(x.shape)
    theirs = K.sampling.sample_euler_ancestral(
        exact_denoiser, x, sigmas, disable=True, eta=eta, s_noise=s_noise, noise_sampler=theirs_noise
    )
    ours = kd.sample_euler_ancestral(
        exact_denoiser, x, sigmas, disable=True, eta=eta, s_noise=s_noise, noise_sampler=our_noise
    )
    assert (ours - theirs).abs().max().item() < TOL
    if eta > 0:  # the same noise, asked for with the same (sigma, sigma_next) pairs
        flat = lambda calls: [s for pair in calls for s in pair]  # noqa: E731
        assert flat(our_noise.calls) == pytest.approx(flat(theirs_noise.calls), rel=1e-6)
        assert all(s_next > 0 for _, s_next in our_noise.calls)  # none on the step into 0


def test_euler_ancestral_with_brownian_tree_noise_matches(K) -> None:
    sigmas = kd.get_sigmas_karras(10, 0.01, 20.0)
    x = start(sigmas, batch=64)
    # the tree spans a little more than the grid: float32 sigma_min sits just below 0.01
    make = lambda: K.sampling.BrownianTreeNoiseSampler(x, 0.0099, 20.0, seed=7)  # noqa: E731
    theirs = K.sampling.sample_euler_ancestral(exact_denoiser, x, sigmas, disable=True, noise_sampler=make())
    ours = kd.sample_euler_ancestral(exact_denoiser, x, sigmas, disable=True, noise_sampler=make())
    assert (ours - theirs).abs().max().item() < TOL


@pytest.mark.parametrize("sampler", ["euler", "heun", "euler_ancestral"])
def test_callback_matches_k_diffusion(K, sampler: str) -> None:
    sigmas = kd.get_sigmas_karras(6, 0.01, 20.0)
    x = start(sigmas, batch=16)
    options = {"noise_sampler": None} if sampler == "euler_ancestral" else {"s_churn": 3.0}
    seen: dict[str, list[dict]] = {"theirs": [], "ours": []}
    for who, module in (("theirs", K.sampling), ("ours", kd)):
        if sampler == "euler_ancestral":
            options["noise_sampler"] = FixedNoise(x.shape)
        torch.manual_seed(3)
        getattr(module, f"sample_{sampler}")(
            exact_denoiser, x, sigmas, disable=True, callback=seen[who].append, **options
        )
    assert len(seen["ours"]) == len(seen["theirs"]) == len(sigmas) - 1
    for mine, ref in zip(seen["ours"], seen["theirs"], strict=True):
        assert set(mine) == set(ref) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert mine["i"] == ref["i"]
        assert float(mine["sigma"]) == pytest.approx(float(ref["sigma"]), rel=1e-6)
        assert float(mine["sigma_hat"]) == pytest.approx(float(ref["sigma_hat"]), rel=1e-6)
        for key in ("x", "denoised"):
            assert mine[key].shape == x.shape and (mine[key] - ref[key]).abs().max().item() < TOL
    if sampler != "euler_ancestral":  # churn raised some levels: sigma_hat > sigma there
        assert any(float(c["sigma_hat"]) > float(c["sigma"]) * 1.01 for c in seen["ours"])


# ---- denoiser wrappers against k-diffusion -----------------------------------------------------


def smooth_net(x: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
    """A fixed smooth "network" of input and time, to compare wrappers on."""
    return torch.tanh(0.8 * x + 0.002 * t.to(x.dtype).view(-1, 1)) + 0.1 * x


ALPHAS_CUMPROD = torch.cumprod(1 - make_betas("scaled_linear", 1000, 0.00085, 0.012), 0)


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize(
    "prediction_type, reference", [("epsilon", "DiscreteEpsDDPMDenoiser"), ("v_prediction", "DiscreteVDDPMDenoiser")]
)
def test_discrete_wrappers_match_k_diffusion(K, prediction_type: str, reference: str, quantize: bool) -> None:
    table = ALPHAS_CUMPROD.float()  # k-diffusion keeps float32 tables: give both the same numbers
    theirs = getattr(K.external, reference)(smooth_net, table, quantize=quantize)
    ours = kd.DiscreteVPDenoiser(smooth_net, table, prediction_type, quantize=quantize)
    assert ours.sigma_min == pytest.approx(float(theirs.sigma_min), rel=1e-6)
    assert ours.sigma_max == pytest.approx(float(theirs.sigma_max), rel=1e-6)
    assert (ours.get_sigmas(7) - theirs.get_sigmas(7)).abs().max().item() < TOL
    sigma = torch.tensor([0.03, 0.3, 1.0, 2.5, 7.0, 14.0])
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1)) * (1 + sigma.view(-1, 1))
    assert torch.allclose(ours.sigma_to_t(sigma).float(), theirs.sigma_to_t(sigma).float(), rtol=1e-5, atol=1e-3)
    assert (ours(x, sigma) - theirs(x, sigma)).abs().max().item() < TOL


def test_continuous_v_wrapper_matches_k_diffusion_vdenoiser(K) -> None:
    """k-diffusion's VDenoiser is the cosine schedule alpha = cos(pi t / 2) with t = atan(sigma) 2 / pi."""
    theirs = K.external.VDenoiser(smooth_net)
    ours = kd.Denoiser(smooth_net, VPCosineSchedule(s=0.0), "v_prediction")
    sigma = torch.tensor([0.05, 0.5, 1.0, 4.0, 40.0])
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(2)) * (1 + sigma.view(-1, 1))
    assert torch.allclose(ours.sigma_to_t(sigma).float(), theirs.sigma_to_t(sigma), rtol=1e-5)
    assert (ours(x, sigma) - theirs(x, sigma)).abs().max().item() < TOL


# ---- denoiser wrappers against the closed form -------------------------------------------------

DISCRETE = DiscreteVPSchedule(alphas_cumprod=ALPHAS_CUMPROD)
WRAPPED = {
    "eps_discrete": lambda m: kd.DiscreteVPDenoiser(m("epsilon", DISCRETE), ALPHAS_CUMPROD),
    "v_discrete": lambda m: kd.DiscreteVPDenoiser(m("v_prediction", DISCRETE), ALPHAS_CUMPROD, "v_prediction"),
    "x0_discrete": lambda m: kd.DiscreteVPDenoiser(m("sample", DISCRETE), ALPHAS_CUMPROD, "sample"),
    "flow": lambda m: kd.FlowDenoiser(m("flow", RectifiedFlowSchedule(1000.0)), timestep_scale=1000.0),
    "v_cosine": lambda m: kd.Denoiser(m("v_prediction", VPCosineSchedule()), VPCosineSchedule(), "v_prediction"),
    "x0_edm": lambda m: kd.Denoiser(m("sample", EDMSchedule()), EDMSchedule(), "sample"),
}


@pytest.mark.parametrize("kind", sorted(WRAPPED))
def test_wrappers_give_the_exact_posterior_mean(kind: str) -> None:
    """A perfect network of any prediction type, wrapped, is exactly E[x0 | x0 + sigma eps = x]."""
    problem = make_gmm2d("8gaussians")
    denoiser = WRAPPED[kind](lambda pred, schedule: OracleModel(problem, schedule, pred))
    sigma = torch.tensor([0.05, 0.4, 1.0, 3.0, 9.0], dtype=F64)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(4), dtype=F64) * (2 + sigma.view(-1, 1))
    expected = problem.denoise(x, 1.0, sigma.view(-1, 1))
    assert (denoiser(x, sigma) - expected).abs().max().item() < 1e-9
    assert denoiser(x, sigma[2]).shape == x.shape  # a scalar level broadcasts over the batch


def test_flow_denoiser_sigma_t_mapping_and_grid() -> None:
    flow = kd.FlowDenoiser(smooth_net, timestep_scale=1000.0)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    assert torch.allclose(flow.sigma_to_t(t / (1 - t)), 1000 * t)
    assert torch.allclose(flow.t_to_sigma(1000 * t), t / (1 - t))
    sigmas = flow.get_sigmas(8, shift=3.0)
    times = sigmas[:-1].double() / (1 + sigmas[:-1].double())
    assert float(sigmas[-1]) == 0 and bool((sigmas[1:] < sigmas[:-1]).all())
    assert float(times[0]) == pytest.approx(3 * 0.999 / (1 + 2 * 0.999), rel=1e-6)  # SD3's shift of t_max


# ---- our samplers among themselves ---------------------------------------------------------------


def test_ddim_and_ddpm_are_euler_ancestral_in_sigma_space() -> None:
    sigmas = kd.get_sigmas_karras(10, 0.01, 20.0)
    x = start(sigmas)
    for eta in (0.0, 0.5, 1.0):
        ancestral = kd.sample_euler_ancestral(
            exact_denoiser, x, sigmas, disable=True, eta=eta, noise_sampler=FixedNoise(x.shape)
        )
        ddim = kd.sample_ddim(exact_denoiser, x, sigmas, disable=True, eta=eta, noise_sampler=FixedNoise(x.shape))
        assert (ddim - ancestral).abs().max().item() < 1e-5
    ddpm = kd.sample_ddpm(exact_denoiser, x, sigmas, disable=True, noise_sampler=FixedNoise(x.shape))
    assert (ddpm - ancestral).abs().max().item() < 1e-5
    large = kd.sample_ddpm(
        exact_denoiser, x, sigmas, disable=True, noise_sampler=FixedNoise(x.shape), variance_type="fixed_large"
    )
    assert (large - ddpm).abs().max().item() > 1e-2  # a different variance really changes the draw


def test_euler_scheduler_and_heun_predictor_agree() -> None:
    """sample_euler (Heun plan's predictor rows) equals running our Euler scheduler itself."""
    sigmas = kd.get_sigmas_karras(15, 0.002, 80.0)
    x = start(sigmas)
    direct = kd.sample_scheduler(exact_denoiser, x, sigmas, "euler", disable=True)
    assert (direct - kd.sample_euler(exact_denoiser, x, sigmas, disable=True)).abs().max().item() < 1e-5


def test_heun_converges_at_second_order_to_the_exact_ode_solution() -> None:
    """Exact denoiser of a Gaussian: the PF-ODE endpoint is closed form, so the error is the solver's."""
    x = None
    errors = {}
    for n in (8, 16, 32):
        sigmas = kd.get_sigmas_karras(n, 0.002, 80.0)
        x = start(sigmas, batch=128) if x is None else x
        exact = PROBLEM.ode_solution(x.double(), 1.0, 80.0)
        for name in ("euler", "heun"):
            out = getattr(kd, f"sample_{name}")(exact_denoiser, x, sigmas, disable=True)
            errors[name, n] = (out.double() - exact).pow(2).mean().sqrt().item()
    assert errors["heun", 32] < errors["euler", 32] / 4
    assert errors["heun", 16] / errors["heun", 32] > 3.0  # ~4x per doubling: second order
    assert errors["euler", 16] / errors["euler", 32] > 1.6  # ~2x per doubling: first order


def test_wrapped_eps_model_reproduces_our_euler_scheduler() -> None:
    """The same eps-network run k-diffusion style and diffusers style gives the same numbers."""
    problem = make_gmm2d("8gaussians")
    schedule = DiscreteVPSchedule(alphas_cumprod=ALPHAS_CUMPROD)
    model = OracleModel(problem, schedule, "epsilon")
    denoiser = kd.DiscreteVPDenoiser(model, ALPHAS_CUMPROD)
    sigmas = kd.get_sigmas_karras(12, denoiser.sigma_min, denoiser.sigma_max)
    x = start(sigmas, batch=128)
    ours = kd.sample_euler(denoiser, x, sigmas, disable=True)

    scheduler = get("euler", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(sigmas=sigmas)
    y = x.clone()
    for t in scheduler.timesteps:
        y = scheduler.step(model(scheduler.scale_model_input(y, t), t), t, y).prev_sample
    assert (ours - y).abs().max().item() < 1e-4


def test_flow_denoiser_with_euler_is_flow_matching_euler() -> None:
    """Euler in sigma space and Euler on the flow velocity are the same DDIM step, so a wrapped flow
    model under sample_euler lands where our flow_euler scheduler does on the same t grid."""
    problem = make_gmm2d("8gaussians")
    model = OracleModel(problem, RectifiedFlowSchedule(1000.0), "flow")
    t_grid = torch.linspace(0.98, 0.05, 10, dtype=F64)
    sigmas = kd.append_zero((t_grid / (1 - t_grid)).float())
    z = torch.randn(128, 2, generator=torch.Generator().manual_seed(9))
    x_flow = z * float(t_grid[0])  # x_t = (1 - t) x0 + t eps, started without data
    ours = kd.sample_euler(kd.FlowDenoiser(model, 1000.0), x_flow / (1 - float(t_grid[0])), sigmas, disable=True)

    scheduler = get("flow_euler")
    scheduler.set_timesteps(sigmas=t_grid)
    y = x_flow.clone()
    for t in scheduler.timesteps:
        y = scheduler.step(model(y, t), t, y).prev_sample
    assert (ours - y).abs().max().item() < 1e-4


def test_sample_scheduler_runs_stochastic_plugins_style_schedulers() -> None:
    """Any registered scheduler that takes schedule="edm" runs; noise comes only from noise_sampler."""
    sigmas = kd.get_sigmas_exponential(6, 0.05, 10.0)
    x = start(sigmas, batch=64)
    noise = FixedNoise(x.shape, count=64)
    options = dict(disable=True, steps_per_level=3, step_ratio=0.5)
    out = kd.sample_scheduler(exact_denoiser, x, sigmas, "langevin", noise_sampler=noise, **options)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    assert len(noise.calls) == 6 * 3 - 1  # every Langevin call but the final denoise draws noise
    again = kd.sample_scheduler(
        exact_denoiser, x, sigmas, "langevin", noise_sampler=FixedNoise(x.shape, count=64), **options
    )
    assert torch.equal(out, again)


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sigmas, match",
    [
        (torch.tensor([1.0, 2.0, 0.0]), "sigmas must be descending"),
        (torch.ones(2, 3), "sigmas must be a 1-D tensor"),
        (torch.tensor([5.0]), "sigmas must be a 1-D tensor of at least 2"),
        (torch.tensor([5.0, 0.0, 0.0]), "sigmas may reach 0 only at its last entry"),
        (torch.tensor([5.0, float("nan"), 0.0]), "sigmas must be finite"),
    ],
)
@pytest.mark.parametrize("sampler", ["euler", "heun", "euler_ancestral", "ddim"])
def test_bad_sigmas_raise_naming_the_argument(sampler: str, sigmas: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        getattr(kd, f"sample_{sampler}")(exact_denoiser, torch.zeros(4, 2), sigmas, disable=True)


def test_bad_model_and_x_raise() -> None:
    sigmas = kd.get_sigmas_karras(4, 0.1, 10.0)
    with pytest.raises(ValueError, match="denoiser must return x0_hat shaped like x"):
        kd.sample_euler(lambda x, s: x[:, :1], torch.zeros(4, 2), sigmas, disable=True)
    with pytest.raises(TypeError, match="x must be a floating"):
        kd.sample_heun(exact_denoiser, torch.zeros(4, 2, dtype=torch.long), sigmas, disable=True)
    with pytest.raises(ValueError, match="eta must be in"):
        kd.sample_euler_ancestral(exact_denoiser, torch.zeros(4, 2), sigmas, disable=True, eta=1.5)
    with pytest.raises(ValueError, match=r"sigma must be a scalar or have shape \[batch=4\]"):
        kd.DiscreteVPDenoiser(smooth_net, ALPHAS_CUMPROD)(torch.zeros(4, 2), torch.ones(3))
