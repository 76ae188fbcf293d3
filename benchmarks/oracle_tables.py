"""The oracle accuracy tables of docs/choosing_a_sampler.md, printed as markdown.

Every deterministic built-in sampler (its default config; the inversions aside) on the bench's exact-denoiser
problems, at a budget of at most 10 and at most 20 model evaluations (NFE): the largest step count whose
plan makes at most that many calls (a two-call Heun-type sampler gets 5 steps = 9 NFE for 10). The number
is the bench's ODE error, the RMS distance of 1,000 samples to the exact probability-flow ODE endpoint from
the same start noise (closed form on ``gaussian``, a float64 RK4 solve on ``gmm2d``); on ``gaussian``
also the exact KL of the sampler's output distribution to the data. Model schedule: the bench's default
(``linear``, discrete VP, 1,000 training steps), each sampler on its own default grid and prediction type.

    python benchmarks/oracle_tables.py                # the two accuracy tables
    python benchmarks/oracle_tables.py --flow-orders  # and the flow shift-3 order table (tests/test_flow_orders.py)

Same as running, per sampler, ``samplers bench -p gaussian -s NAME -n S10,S20 --samples 1000 -m ode_error,kl_exact``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import samplers  # noqa: E402
from samplers.bench import runner as R  # noqa: E402
from samplers.registry import registry  # noqa: E402

KIND_LABEL = {"ode-single-step": "ODE single-step", "ode-multistep": "ODE multistep"}


def deterministic_builtins() -> list[str]:
    """Built-in samplers whose default run on the bench's default schedule is an ODE solve from noise to data."""
    out = []
    for name, entry in sorted(registry().entries.items()):
        if entry.source.plugin != "builtins" or name.endswith("_inverse"):
            continue
        rs = R.resolve_scheduler(name, R.BenchConfig(schedulers=(name,)))
        s = rs.cls.from_config(rs.config)
        s.set_timesteps(10)
        if not s.is_stochastic:
            out.append(name)
    return out


def calls(name: str, steps: int) -> int:
    rs = R.resolve_scheduler(name, R.BenchConfig(schedulers=(name,)))
    s = rs.cls.from_config(rs.config)
    s.set_timesteps(steps)
    return len(s.timesteps)


def steps_for(name: str, budget: int) -> int | None:
    """The largest step count whose run makes at most ``budget`` model calls (None: not even one step fits)."""
    best = None
    for steps in range(1, budget + 1):
        try:
            n = calls(name, steps)
        except ValueError:  # a sampler that needs more steps than this
            continue
        if n <= budget:
            best = steps
    return best


def schedule_of(name: str, options: dict | None = None) -> str:
    """The model schedule a bench run gives ``name``: the bench's preset, or the sampler's own default."""
    rs = R.resolve_scheduler(name, R.BenchConfig(schedulers=(name,), options=options or {}))
    if rs.schedule_label != "own default":
        return rs.schedule_label
    return f"own: {rs.cls.from_config(rs.config).config.get('schedule')}"


def takes(name: str, options: dict) -> bool:
    """Whether the bench gives ``name`` every one of ``options`` (it applies each where accepted)."""
    rs = R.resolve_scheduler(name, R.BenchConfig(schedulers=(name,), options=options))
    return all(rs.config.get(k) == v for k, v in options.items())


def measure(
    problem: str, names: list[str], budgets: tuple[int, ...], options: dict | None = None
) -> dict[str, dict[int, tuple[int, dict]]]:
    """``{name: {budget: (nfe, metrics)}}``; samplers with the same step counts share one bench run."""
    plan = {name: tuple(steps_for(name, b) for b in budgets) for name in names}
    groups: dict[tuple, list[str]] = {}
    for name, steps in plan.items():
        groups.setdefault(steps, []).append(name)
    metrics = ("ode_error", "kl_exact") if problem == "gaussian" else ("ode_error",)
    out: dict[str, dict[int, tuple[int, dict]]] = {name: {} for name in names}
    for steps, group in groups.items():
        wanted = tuple(sorted({s for s in steps if s is not None}))
        if not wanted:
            continue
        config = R.BenchConfig(
            schedulers=tuple(group),
            steps=wanted,
            problem=problem,
            samples=1000,
            ode_samples=1000,
            metrics=metrics,
            options=options or {},
        )
        result = R.run_benchmark(config)
        for row in result.rows:
            for budget, s in zip(budgets, plan[row.scheduler], strict=True):
                if s == row.steps:
                    out[row.scheduler][budget] = (row.nfe, row.metrics)
    return out


def _num(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.2e}" if v < 1e-3 else f"{v:.4f}"


def accuracy_table(problem: str, names: list[str], budgets: tuple[int, ...], options: dict | None = None) -> str:
    data = measure(problem, names, budgets, options)
    reg = registry()
    head = ["sampler", "kind", "order", "NFE/step", "model schedule"]
    for b in budgets:
        head += [f"NFE (<= {b})", f"ODE err @{b}"] + ([f"KL exact @{b}"] if problem == "gaussian" else [])
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---", "--:", "--:", "---"] + ["--:"] * (len(head) - 5)) + "|",
    ]

    def key(name: str) -> float:
        first = data[name].get(budgets[0])
        return first[1]["ode_error"] if first else math.inf

    for name in sorted(names, key=key):
        cls = reg.scheduler_class(name)
        cells = [f"`{name}`", KIND_LABEL.get(cls.kind, cls.kind), str(cls.order), str(cls.nfe_per_step)]
        cells.append(schedule_of(name, options))
        for b in budgets:
            got = data[name].get(b)
            if got is None:
                cells += ["-", "-"] + (["-"] if problem == "gaussian" else [])
                continue
            nfe, m = got
            cells += [str(nfe), _num(m.get("ode_error"))] + (
                [_num(m.get("kl_exact"))] if problem == "gaussian" else []
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flow_order_table() -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    import test_flow_orders as F  # the test's own grid, cases and expected orders

    import battery

    lines = [
        "| sampler | nominal order | expected on flow from t = 1 | fitted order | steps | error at the most steps |",
        "|---|--:|--:|--:|---|--:|",
    ]
    for name in sorted(F.CASES):
        errors, steps = F.flow_errors(name)
        slope = battery.fitted_order(errors, steps)
        nominal = int(registry().scheduler_class(name).order)
        lines.append(
            f"| `{name}` | {nominal} | {F.expected_order(name)} | {slope:.2f} | {steps[0]}-{steps[-1]} | "
            f"{errors[-1]:.2e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default="gaussian,gmm2d", help="comma-separated bench problems")
    parser.add_argument("--budgets", default="10,20", help="comma-separated NFE budgets")
    parser.add_argument("--flow-orders", action="store_true", help="also the flow shift-3 convergence-order table")
    parser.add_argument("--only-flow-orders", action="store_true", help="only the flow shift-3 order table")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the bench's own default: small problems, a shared machine
    budgets = tuple(int(b) for b in args.budgets.split(","))
    t0 = time.perf_counter()
    print(
        f"<!-- generated by `python benchmarks/oracle_tables.py{' --flow-orders' if args.flow_orders else ''}` on "
        f"{_dt.date.today().isoformat()}: CPU ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}, samplers {samplers.__version__}, float32 samples, seed 0 -->\n"
    )
    if not args.only_flow_orders:
        names = deterministic_builtins()
        for problem in args.problems.split(","):
            print(f"**{problem}** (ODE error, lower is better; sorted by the error at {budgets[0]} NFE)\n")
            print(accuracy_table(problem, names, budgets))
            print()
        # The same samplers on Karras levels (down to sigma_min of the table) instead of diffusers' linspace
        # timesteps, whose last level at 10 steps is sigma ~0.34: the grid, not the order, decides gmm2d.
        karras = [n for n in names if takes(n, {"use_karras_sigmas": True})]
        for problem in args.problems.split(","):
            print(f"**{problem}, `-o use_karras_sigmas=true`** (the samplers that take it)\n")
            print(accuracy_table(problem, karras, budgets, {"use_karras_sigmas": True}))
            print()
    if args.flow_orders or args.only_flow_orders:
        print("**Convergence order on schedule `flow`, shift 3** (exact Gaussian oracle, flow outputs)\n")
        print(flow_order_table())
        print()
    print(f"<!-- {time.perf_counter() - t0:.0f} s -->")


if __name__ == "__main__":
    main()
