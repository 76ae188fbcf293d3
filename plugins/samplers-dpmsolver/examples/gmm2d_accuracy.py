"""Accuracy per model evaluation on ``gmm2d`` with the exact denoiser: DPM-Solver++ / UniPC vs built-ins.

Every sampler starts from the same model-space noise at the top level of the default discrete
linear-beta schedule (``sigma/alpha = 157.4``, training timestep 999) and is scored by the RMS
distance to the exact probability-flow ODE solution from that point (scipy DOP853, rtol 1e-10).
The data is ``samplers.bench``'s ``gmm2d`` (8 components of std 0.1 on a circle of radius 2) when
that module is installed, else the same mixture built here.

Three sampling grids (``--grid``):

* ``default``: each scheduler's own default spacing (diffusers' conventions; DPM-Solver++ and
  UniPC lay ``N + 1`` points over the training range and drop the last, so their final step
  jumps to clean data from timestep ``~1000/N``);
* ``lambda``: the same levels for every scheduler, uniform in log-SNR over the schedule's whole range;
* ``adapted``: one step from the top level down to ``2 x`` the data scale, then uniform in log-SNR
  down to ``0.015 x`` the data scale (where the mixture is still resolved), then to clean data.

    python plugins/samplers-dpmsolver/examples/gmm2d_accuracy.py --grid all
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from gmm_oracle import GMM2D  # noqa: E402

import samplers  # noqa: E402

SCHEDULE = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1000}


def ensure_plugin() -> None:
    """Register the plugin from source when it is not installed (running from a checkout)."""
    if "dpmpp_2m" in samplers.available():
        return
    sys.path.insert(0, str(HERE.parent))
    import samplers_dpmsolver.plugin as plugin

    from samplers.registry import Source

    samplers.registry().register(plugin, "dpmsolver", Source("dpmsolver", "samplers-dpmsolver", "source tree"))


def load_problem():
    """``(denoise(x, alpha, sigma), scale, description)`` of gmm2d: the bench's if installed, else ours."""
    try:
        from samplers.bench.problems import make_gmm2d

        problem = make_gmm2d()
        return problem.denoise, problem.scale(), f"samplers.bench gmm2d {problem.describe()}"
    except ImportError:
        gmm = GMM2D(radius=2.0, std=0.1)
        return gmm.denoise, math.sqrt(2.0 + 0.01), "gmm2d built here (8 x N(., 0.1^2) on a circle of radius 2)"


def ode_reference(denoise, x_ve: torch.Tensor, sigma_ve: float) -> torch.Tensor:
    """Exact PF-ODE endpoint from sigma-space ``x_ve`` at level ``sigma_ve`` (``dx/du = x - D``, ``u = log s``)."""
    from scipy.integrate import solve_ivp

    shape = x_ve.shape

    def rhs(u: float, y: np.ndarray) -> np.ndarray:
        s = math.exp(u)
        alpha = 1 / math.sqrt(1 + s * s)
        x = torch.from_numpy(y).view(shape)
        return (x - denoise(x * alpha, alpha, s * alpha).to(torch.float64)).reshape(-1).numpy()

    sol = solve_ivp(
        rhs, (math.log(sigma_ve), math.log(1e-7)), x_ve.reshape(-1).numpy(), method="DOP853", rtol=1e-10, atol=1e-10
    )
    return torch.from_numpy(sol.y[:, -1].copy()).view(shape)


def grid_levels(kind: str, calls: int, sigma_max: float, sigma_min: float, scale: float) -> torch.Tensor | None:
    """Sigma-space levels [calls] for ``kind`` (None: the scheduler's default spacing)."""
    if kind == "default":
        return None
    if kind == "lambda":
        return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), calls, dtype=torch.float64))
    if calls < 2:
        return torch.tensor([sigma_max], dtype=torch.float64)
    rest = torch.exp(torch.linspace(math.log(2.0 * scale), math.log(0.015 * scale), calls - 1, dtype=torch.float64))
    return torch.cat([torch.tensor([sigma_max], dtype=torch.float64), rest])


def sample(name: str, denoise, z: torch.Tensor, nfe: int, kind: str, scale: float) -> torch.Tensor | None:
    """Run ``name`` at exactly ``nfe`` model calls on grid ``kind`` from model-space noise ``z``; None if it cannot."""
    config = dict(SCHEDULE)
    if name == "ddim":
        config.update(timestep_spacing="linspace", clip_sample=False)
    scheduler = samplers.get(name, **config)
    steps = (nfe + 1) // 2 if name == "heun" else nfe  # Heun: 2 calls per step, 1 for the last
    if name == "heun" and nfe % 2 == 0:
        return None
    table = scheduler.schedule.sigmas
    levels = grid_levels(kind, steps, float(table[-1]), float(table[0]), scale)
    if levels is None:
        scheduler.set_timesteps(steps)
    elif name == "ddim":  # DDIM takes timesteps: the fractional ones at these levels
        scheduler.set_timesteps(timesteps=scheduler.schedule.t_from_sigma(levels))
    else:
        scheduler.set_timesteps(sigmas=levels)
    plan = scheduler.plan
    if len(plan.timesteps) != nfe:
        raise AssertionError(f"{name}: {len(plan.timesteps)} calls, expected {nfe}")
    start = float(plan.model_sigma[0] / plan.model_alpha[0])
    if abs(start - float(table[-1])) > 1e-6 * start:
        return None  # does not start at the common top level (e.g. leading spacing)
    x = (z / float(plan.input_scale[0])).to(torch.float32)
    from samplers.parameterization import model_output_from_x0

    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t).to(torch.float64)
        a, s = float(plan.model_alpha[i]), float(plan.model_sigma[i])
        out = model_output_from_x0(scheduler.prediction_type, denoise(x_in, a, s).to(torch.float64), x_in, a, s)
        x = scheduler.step(out.to(torch.float32), t, x).prev_sample
    return x.to(torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--nfe", default="5,10,15,20,50,100")
    parser.add_argument("--schedulers", default="euler,heun,ddim,dpmpp_2m,dpmpp_3m,unipc")
    parser.add_argument("--grid", default="all", choices=["default", "lambda", "adapted", "all"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # thousands of tiny tensor ops: one thread is fastest and steady on a busy machine
    ensure_plugin()
    denoise, scale, description = load_problem()
    gen = torch.Generator().manual_seed(args.seed)
    z = torch.randn(args.samples, 2, generator=gen, dtype=torch.float64)
    sigma_top = float(samplers.get("euler", **SCHEDULE).schedule.sigmas[-1])
    alpha_top = 1 / math.sqrt(1 + sigma_top**2)
    t0 = time.perf_counter()
    reference = ode_reference(denoise, z / alpha_top, sigma_top)
    print(
        f"problem: {description}; {args.samples} samples; exact denoiser; float32 sampling; "
        f"reference ODE solve {time.perf_counter() - t0:.1f}s"
    )
    print("metric: RMS distance to the exact PF-ODE solution from the same noise (lower is better)")
    nfes = [int(v) for v in args.nfe.split(",")]
    names = args.schedulers.split(",")
    kinds = ["default", "lambda", "adapted"] if args.grid == "all" else [args.grid]
    summary = []
    for kind in kinds:
        print(f"\ngrid: {kind}")
        header = f"{'scheduler':<12}" + "".join(f"{'NFE ' + str(n):>11}" for n in nfes)
        print(header)
        print("-" * len(header))
        errors: dict[str, dict[int, float]] = {}
        for name in names:
            errors[name] = {}
            cells = []
            for nfe in nfes:
                x = sample(name, denoise, z, nfe, kind, scale)
                if x is None:
                    cells.append(f"{'-':>11}")
                    continue
                errors[name][nfe] = float(((x - reference) ** 2).sum(-1).mean().sqrt())
                cells.append(f"{errors[name][nfe]:>11.2e}")
            print(f"{name:<12}" + "".join(cells))
        summary.append((kind, errors))
    euler50 = next((e["euler"].get(50) for k, e in summary if k == "default" and "euler" in e), None)
    if euler50 is not None:
        print(f"\ntarget: DPM-Solver++(2M) at 10 NFE <= Euler (default grid) at 50 NFE = {euler50:.2e}")
        for kind, errors in summary:
            if 10 in errors.get("dpmpp_2m", {}):
                e = errors["dpmpp_2m"][10]
                print(f"  {kind:<8} grid: dpmpp_2m @10 = {e:.2e} -> {'met' if e <= euler50 else 'not met'}")


if __name__ == "__main__":
    main()
