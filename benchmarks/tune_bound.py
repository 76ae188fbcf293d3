"""How far can *any* grid go? Independent optimisers on the `samplers tune` objective, from the same start level.

`samplers tune` searches the grid with compass search, holding the first level at the best named grid's start
(a lower start shortens the ODE path and "wins" without sampling the same ODE). Where the tuned grid falls short of
a target, this asks whether the search or the sampler is the limit: it minimises the same objective (the ODE error
on the tuning seeds, :class:`samplers.tune.Objective`) with

* ``compass``: ``samplers.tune.pattern_search`` with a larger budget (``--max-evals``);
* ``nelder-mead`` and ``powell``: scipy's derivative-free optimisers, from the best named grid and from the
  compass result, over the log-gaps of the grid (``samplers.tune.LogGapCoordinates``: softmax of free weights,
  descending and above the lower end by construction);
* ``lbfgs-autograd`` (Euler only): L-BFGS with exact gradients through an independent Euler loop written here in
  a few lines (sigma-space Euler, Karras et al. 2022 eq. 4 with ``D`` the problem's denoiser, differentiable on
  the oracles and on the digits network), from the best named grid. The loop is first checked against the
  objective (same grid, same number);
* from ``--restarts`` random grids over the same range (the same start level, the same lower end): L-BFGS
  with gradients for Euler, Nelder-Mead for the other samplers, so a better basin elsewhere would show.

It prints, per (sampler, problem), the best named grid's error, each optimiser's result, the best ratio any of
them reaches on the tuning seeds (the bound for this start), and the held-out ratio of that best grid.

    PYTHONPATH=. python benchmarks/tune_bound.py                       # euler gmm2d, euler digits, dpmpp_2m digits
    PYTHONPATH=. python benchmarks/tune_bound.py -r unipc:gmm2d --json bound.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize

from samplers import tune as T

F64 = torch.float64
DEFAULT_ROWS = ("euler:gmm2d", "euler:digits", "dpmpp_2m:digits")


def euler_loop(obj: T.Objective) -> Callable[[torch.Tensor], torch.Tensor]:
    """A differentiable sigma-space Euler run of ``obj``'s noise over ``levels`` [N] (then 0): its samples [m, d].

    ``dy/dl = (y - D(y; l)) / l`` (Karras et al. 2022, eq. 4 with s = 1), ``D`` called at the VP-normalised
    ``(alpha, sigma) = (1, l) / sqrt(1 + l^2)`` on ``alpha * y`` (the same posterior mean)."""
    problem = obj.problem
    denoiser = getattr(problem, "denoiser", None)  # the digits network: call it outside its inference_mode

    def denoise(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        a, s = alpha.reshape(1, 1).expand(len(x), 1), sigma.reshape(1, 1).expand(len(x), 1)
        return denoiser(x, a, s) if denoiser is not None else problem._denoise64(x, a, s)

    def run(levels: torch.Tensor) -> torch.Tensor:
        y = obj.noise.to(F64) * levels[0]
        grid = torch.cat([levels, levels.new_zeros(1)])
        for i in range(len(levels)):
            level = grid[i]
            alpha = 1 / torch.sqrt(1 + level * level)
            x0 = denoise(y * alpha, alpha, level * alpha)
            y = y + (grid[i + 1] - level) * (y - x0) / level
        return y

    return run


def lbfgs(loss: Callable[[torch.Tensor], torch.Tensor], w0: torch.Tensor) -> torch.Tensor:
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w], lr=1, max_iter=300, line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-14
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss(w)
        value.backward()
        return value

    for _ in range(3):
        opt.step(closure)
    return w.detach()


def bound_row(
    sampler: str, problem: str, nfe: int, max_evals: int, restarts: int, samples: int | None = None
) -> dict[str, Any]:
    """Every optimiser on ``sampler``'s tuning objective on ``problem`` at ``nfe`` (``samples`` tuning noises,
    default as `samplers tune`); the held-out score of the best grid found."""
    t_row = time.perf_counter()
    obj = T.Objective(sampler, problem, samples=samples)
    steps = T.steps_for_nfe(obj.scheduler, nfe)
    named = obj.named(steps)
    obj.settle(T._runs(named))
    named = obj.rescore(named)
    best = T.best_named(named)
    assert best.levels is not None
    gaps = T.LogGapCoordinates(float(best.levels[0]), T._lower_end(obj))
    results: dict[str, tuple[float, torch.Tensor]] = {}

    def keep(name: str, levels: torch.Tensor) -> None:
        results[name] = (obj(levels), levels)

    compass = T.pattern_search(obj, best.levels, lower=gaps.lower, max_evals=max_evals)
    keep("compass", compass.levels)

    def derivative_free(method: str, start: torch.Tensor | np.ndarray) -> torch.Tensor:
        w0 = start if isinstance(start, np.ndarray) else gaps.weights(start).numpy()
        options = {"maxfev": max_evals, "xatol": 1e-6, "fatol": 1e-10} if method == "Nelder-Mead" else {}
        r = minimize(
            lambda w: obj(gaps.levels(torch.as_tensor(w))), w0, method=method, options={"maxfev": max_evals, **options}
        )
        return gaps.levels(torch.as_tensor(r.x))

    for method in ("Nelder-Mead", "Powell"):
        for start_name, start in (("named", best.levels), ("compass", compass.levels)):
            keep(f"{method.lower()} from {start_name}", derivative_free(method, start))
    generator = torch.Generator().manual_seed(0)
    random_starts = [torch.randn(len(best.levels), dtype=F64, generator=generator) for _ in range(restarts)]
    if sampler == "euler":
        run = euler_loop(obj)
        with torch.no_grad():
            check = T._Run(run(best.levels.to(F64)).to(obj.dtype), obj.run(best.levels).start, 0, best.levels)
        agree = abs(obj.error(check) - best.error) / best.error
        if agree > 1e-3:
            raise RuntimeError(f"the autograd Euler loop disagrees with the objective by {agree:.2e} (relative)")
        reference = obj.reference(check.start)

        def loss(w: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(((run(gaps.levels(w)) - reference) ** 2).sum(1).mean())

        keep("lbfgs-autograd from named", gaps.levels(lbfgs(loss, gaps.weights(best.levels))))
        from_random = [gaps.levels(lbfgs(loss, w0)) for w0 in random_starts]
        label = "lbfgs-autograd"
    else:  # no gradient through the sampler's plan: Nelder-Mead from each random grid
        from_random = [derivative_free("Nelder-Mead", w0.numpy()) for w0 in random_starts]
        label = "nelder-mead"
    if from_random:  # random grids over the same range: a different basin would show here
        scored = [(obj(levels), levels) for levels in from_random]
        results[f"{label}, best of {restarts} random starts"] = min(scored, key=lambda v: v[0])
    top_name = min(results, key=lambda k: results[k][0])
    top_value, top_levels = results[top_name]
    heldout = T.score_heldout(obj, top_levels, steps, T.HELDOUT_SEED, samples)
    return {
        "sampler": sampler,
        "problem": problem,
        "nfe": nfe,
        "start_level": gaps.top,
        "lower": gaps.lower,
        "best_named": best.name,
        "best_named_error": best.error,
        "optimisers": {k: v[0] for k, v in results.items()},
        "best_optimiser": top_name,
        "bound_ratio": best.error / top_value,
        "compass_ratio": best.error / results["compass"][0],
        "heldout_ratio": heldout["ratio"],
        "heldout_best_named": heldout["best_named"],
        "levels": [float(v) for v in top_levels],
        "seconds": time.perf_counter() - t_row,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-r", "--rows", default=",".join(DEFAULT_ROWS), help="sampler:problem,... (%(default)s)")
    parser.add_argument("-n", "--nfe", type=int, default=10)
    parser.add_argument("--max-evals", type=int, default=3000, help="per derivative-free optimiser run")
    parser.add_argument("--restarts", type=int, default=20, help="random starts of the autograd L-BFGS (Euler)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    np.seterr(all="ignore")
    t0 = time.perf_counter()
    rows = []
    for spec in args.rows.split(","):
        sampler, _, problem = spec.partition(":")
        row = bound_row(sampler, problem, args.nfe, args.max_evals, args.restarts)
        rows.append(row)
        print(f"\n{sampler} on {problem}, {args.nfe} NFE, start level {row['start_level']:.4g} (tuning seeds)")
        print(f"  best named grid {row['best_named']}: {row['best_named_error']:.5g}")
        for name, value in row["optimisers"].items():
            print(f"  {name:<44} {value:.5g}  ({row['best_named_error'] / value:.3f}x)")
        print(
            f"  bound on the tuning seeds: {row['bound_ratio']:.3f}x ({row['best_optimiser']}); compass "
            f"{row['compass_ratio']:.3f}x; that grid held out: {row['heldout_ratio']:.3f}x vs "
            f"{row['heldout_best_named']}  [{row['seconds']:.0f} s]",
            flush=True,
        )
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, load average {load}, torch {torch.__version__}, 1 thread")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
