"""What the bench's foreign adapter costs: one diffusers scheduler, run by hand and through the adapter.

Issue 15's number: the adapter adds <= 5 % wall time over the same sampler run natively (CPU, gmm2d,
10,000 samples, in one run). The comparison that isolates the adapter: diffusers' ``DDIMScheduler``
with the bench's configuration (linear betas, clipping off), on the same oracle, noise and seed,

* **plain**: the loop a diffusers user writes, ``set_timesteps``, then per timestep
  ``scale_model_input``, the model, ``step(...).prev_sample``, with the model the problem's oracle
  (:class:`samplers.bench.problems.OracleModel`) called at each timestep's (alpha, sigma) from a table
  of python floats made after ``set_timesteps`` (its cheapest call);
* **adapter**: the same class through ``runner.sample_oracle`` on the adapter (:mod:`samplers.bench.foreign`),
  i.e. exactly what a ``samplers bench -s diffusers:DDIMScheduler`` row runs: construction, the counting
  model, the level lookup, peak-memory bookkeeping, end to end (``end_to_end_s``), and the row's own
  ``wall_s`` as the table reports it.

Both are timed interleaved (the order alternates per repeat) in one process with one torch thread;
the medians are compared. The stochasticity probe runs once per sampler in the bench's warm-up, so it is
done before the timed repeats here too. For context it also runs ``samplers bench -s
ddim,diffusers:DDIMScheduler`` once: our fused ``ddim`` next to diffusers' Python ``step`` -- two
implementations, not the adapter's cost.

    PYTHONPATH=. python benchmarks/bench_foreign_overhead.py [--samples 10000] [--steps 50] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch


def _plain_loop(
    cls: type, config: dict[str, Any], model: Any, schedule: Any, noise: torch.Tensor, steps: int, seed: int
) -> torch.Tensor:
    sched = cls(**config)
    gen = torch.Generator().manual_seed(seed)
    sched.set_timesteps(steps, device=noise.device)
    x = noise * sched.init_noise_sigma
    # the oracle at each timestep's level, looked up as python floats (its cheapest call; OracleModel's own
    # t -> level path costs more per call than the adapter's lookup and would flatter the adapter)
    levels = {}
    for t in sched.timesteps.tolist():
        a, s = schedule.alpha_sigma(torch.tensor(int(t)))
        levels[t] = (float(a), float(s))
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        a, s = levels[int(t)]
        out = model.at(x_in, a, s)
        x = sched.step(out, t, x, generator=gen).prev_sample
    return x


def measure(
    samples: int = 10_000, steps: int = 50, repeats: int = 7, problem: str = "gmm2d", context: bool = False
) -> dict[str, Any]:
    """Median seconds of the plain loop and of the adapter, their ratio, and the largest output difference."""
    from samplers.bench import runner as R
    from samplers.bench.foreign import _seed_of
    from samplers.bench.problems import OracleModel
    from samplers.ops.reference import batch_seeds

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = R.BenchConfig(schedulers=("diffusers:DDIMScheduler",), steps=(steps,), problem=problem, samples=samples)
        prepared = R.prepare(cfg)
        rs = prepared.schedulers[0]
        prob = prepared.problem
        seeds = batch_seeds(cfg.seed, samples)
        noise = R._initial_noise(seeds, prob.dim, torch.float32)
        seed = _seed_of(seeds)
        model = OracleModel(prob, rs.schedule, rs.prediction_type)  # type: ignore[attr-defined]

        def plain() -> tuple[float, float, torch.Tensor]:
            t0 = time.perf_counter()
            x = _plain_loop(rs.cls, rs.config, model, rs.schedule, noise, steps, seed)  # type: ignore[attr-defined]
            dt = time.perf_counter() - t0
            return dt, dt, x

        def adapter() -> tuple[float, float, torch.Tensor]:
            t0 = time.perf_counter()
            run = R.sample_oracle(R._build_scheduler(rs), prob, noise, seeds, steps)
            return time.perf_counter() - t0, run.wall_s, run.samples

        # warm-up, as the bench does: lazy imports, allocator, and the adapter's one stochasticity probe
        plain()
        adapter()
        t_plain, t_adapter, t_row = [], [], []
        x_plain = x_adapter = None
        for r in range(repeats):
            order = (plain, adapter) if r % 2 == 0 else (adapter, plain)
            for fn in order:
                total, wall, x = fn()
                if fn is plain:
                    t_plain.append(total)
                    x_plain = x
                else:
                    t_adapter.append(total)
                    t_row.append(wall)
                    x_adapter = x
        assert x_plain is not None and x_adapter is not None
        report: dict[str, Any] = {
            "problem": problem,
            "samples": samples,
            "steps": steps,
            "repeats": repeats,
            "sampler": rs.name,
            "plain_s": statistics.median(t_plain),
            "adapter_end_to_end_s": statistics.median(t_adapter),
            "adapter_row_wall_s": statistics.median(t_row),
            "max_abs_diff": float((x_plain - x_adapter).abs().max()),
            "cpu": platform.processor() or platform.machine(),
            "torch_threads": 1,
        }
        report["plain_min_s"], report["adapter_min_s"] = min(t_plain), min(t_adapter)
        report["ratio"] = report["adapter_end_to_end_s"] / report["plain_s"]
        report["ratio_min"] = report["adapter_min_s"] / report["plain_min_s"]  # the least disturbed repeat of each
        report["ratio_row_wall"] = report["adapter_row_wall_s"] / report["plain_s"]
        if context:
            res = R.run_benchmark(
                R.BenchConfig(
                    schedulers=("ddim", "diffusers:DDIMScheduler"),
                    steps=(steps,),
                    problem=problem,
                    samples=samples,
                    metrics=("ode_error",),
                    ode_samples=min(samples, 1000),
                )
            )
            report["one_bench_run"] = {
                r.scheduler: {"wall_s": r.wall_s, "ode_error": r.metrics.get("ode_error")} for r in res.rows
            }
        return report
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--problem", default="gmm2d")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args()
    rep = measure(args.samples, args.steps, args.repeats, args.problem, context=True)
    if args.json:
        print(json.dumps(rep, indent=2))
        return
    print(
        f"{rep['sampler']} on {rep['problem']}, {rep['samples']:,} samples, {rep['steps']} steps, CPU 1 thread, "
        f"median of {rep['repeats']} interleaved repeats"
    )
    print(f"  plain diffusers loop, same oracle : {rep['plain_s']:.4f} s")
    print(f"  through the bench adapter, e2e    : {rep['adapter_end_to_end_s']:.4f} s")
    print(f"  the adapter row's wall_s (table)  : {rep['adapter_row_wall_s']:.4f} s")
    print(
        f"  ratio adapter / plain            : {rep['ratio']:.4f} end to end "
        f"({100 * (rep['ratio'] - 1):+.2f} %), {rep['ratio_row_wall']:.4f} row wall "
        f"({100 * (rep['ratio_row_wall'] - 1):+.2f} %); target <= 1.05"
    )
    print(f"  ratio of the fastest repeats     : {rep['ratio_min']:.4f} ({100 * (rep['ratio_min'] - 1):+.2f} %)")
    print(f"  largest output difference        : {rep['max_abs_diff']:.3g}")
    print("  context, one `samplers bench -s ddim,diffusers:DDIMScheduler` run (two implementations):")
    for name, row in rep["one_bench_run"].items():
        print(f"    {name:<34} wall {row['wall_s']:.4f} s, ODE error {row['ode_error']:.6g}")


if __name__ == "__main__":
    main()
