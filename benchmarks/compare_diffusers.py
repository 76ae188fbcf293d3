"""Our deterministic samplers next to diffusers' own, through the bench's foreign adapter: ODE error at ~10, ~20 NFE.

For every deterministic sampler of ours that diffusers also implements, one ``samplers bench`` run per
grid group holds our row and diffusers' row (``-s ours,diffusers:Class``): the same oracle (the bench's
``linear`` DDPM schedule, exact denoiser), the same initial noise, the same exact PF-ODE reference
from each sampler's own start. Each library runs with its own defaults (ours mirror diffusers'), then
on the named grids: Karras sigmas through diffusers' flag (``use_karras_sigmas``, for both), and
log-SNR-uniform (``lu``) / Karras grids through our ``sigma_schedule=`` (exact model times) next to
diffusers' ``use_lu_lambdas`` / ``use_karras_sigmas`` (model timesteps rounded to integers).

NFE is counted at the model. For each sampler the step count is the largest whose NFE is at most the
target (Heun-type samplers: 2 steps - 1 calls; PNDM's Runge-Kutta warm-up costs 9 extra calls), and the
table gives the NFE when it differs from the target.

    PYTHONPATH=. python benchmarks/compare_diffusers.py [--samples 1000] [--problems gmm2d,gaussian]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

TARGETS = (10, 20)


@dataclass(frozen=True)
class Pair:
    """One comparison: our registry name (+ options) and diffusers' class spec (+ inline options)."""

    label: str
    ours: str
    diffusers: str
    ours_options: dict[str, Any] = field(default_factory=dict)


D = "diffusers:"
DEFAULTS = [
    Pair("ddim", "ddim", D + "DDIMScheduler"),
    Pair("euler", "euler", D + "EulerDiscreteScheduler"),
    Pair("heun", "heun", D + "HeunDiscreteScheduler"),
    Pair("dpmpp_2m", "dpmpp_2m", D + "DPMSolverMultistepScheduler"),
    Pair("dpmpp_3m", "dpmpp_3m", D + "DPMSolverMultistepScheduler:solver_order=3"),
    Pair("dpmpp_singlestep", "dpmpp_singlestep", D + "DPMSolverSinglestepScheduler"),
    Pair("deis", "deis", D + "DEISMultistepScheduler"),
    Pair("unipc", "unipc", D + "UniPCMultistepScheduler"),
    Pair("lms", "lms", D + "LMSDiscreteScheduler"),
    Pair("pndm", "pndm", D + "PNDMScheduler"),
    Pair("dpm2", "dpm2", D + "KDPM2DiscreteScheduler"),
    Pair("flow_euler", "flow_euler", D + "FlowMatchEulerDiscreteScheduler"),
    Pair("flow_heun", "flow_heun", D + "FlowMatchHeunDiscreteScheduler"),
]
# grid groups: (title, global -o options for every row, pairs); ours and diffusers get the same flag
GROUPS: list[tuple[str, dict[str, Any], list[Pair]]] = [
    ("defaults", {}, DEFAULTS),
    (
        # diffusers refuses algorithm_type=dpmsolver with a final step to clean data, DEIS always stops at the
        # first training level and PNDM defaults to it (set_alpha_to_one=False); ours end on clean data unless told
        "last level at t = 0 (final_sigmas_type=sigma_min, set_alpha_to_one=false, both)",
        {"final_sigmas_type": "sigma_min", "set_alpha_to_one": False},
        [
            Pair("dpm_multistep", "dpm_multistep", D + "DPMSolverMultistepScheduler:algorithm_type=dpmsolver"),
            Pair("dpm_singlestep", "dpm_singlestep", D + "DPMSolverSinglestepScheduler:algorithm_type=dpmsolver"),
            Pair("dpmpp_2m", "dpmpp_2m", D + "DPMSolverMultistepScheduler"),
            Pair("deis", "deis", D + "DEISMultistepScheduler"),
            Pair("pndm", "pndm", D + "PNDMScheduler"),
        ],
    ),
    (
        "karras (use_karras_sigmas, both)",
        {"use_karras_sigmas": True},
        [
            Pair("euler", "euler", D + "EulerDiscreteScheduler"),
            Pair("heun", "heun", D + "HeunDiscreteScheduler"),
            Pair("dpmpp_2m", "dpmpp_2m", D + "DPMSolverMultistepScheduler"),
            Pair("unipc", "unipc", D + "UniPCMultistepScheduler"),
            Pair("deis", "deis", D + "DEISMultistepScheduler"),
            Pair("lms", "lms", D + "LMSDiscreteScheduler"),
            Pair("dpm2", "dpm2", D + "KDPM2DiscreteScheduler"),
        ],
    ),
    (
        "lu: ours sigma_schedule=lu, diffusers use_lu_lambdas",
        {"sigma_schedule": "lu"},
        [
            Pair("dpmpp_2m", "dpmpp_2m", D + "DPMSolverMultistepScheduler:use_lu_lambdas=true"),
            Pair("unipc", "unipc", D + "UniPCMultistepScheduler:use_karras_sigmas=true"),  # diffusers UniPC has no lu
        ],
    ),
    (
        "karras: ours sigma_schedule=karras, diffusers use_karras_sigmas",
        {"sigma_schedule": "karras"},
        [
            Pair("dpmpp_2m", "dpmpp_2m", D + "DPMSolverMultistepScheduler:use_karras_sigmas=true"),
            Pair("unipc", "unipc", D + "UniPCMultistepScheduler:use_karras_sigmas=true"),
        ],
    ),
]


def _nfe_table(names: list[str], options: dict[str, Any], max_steps: int = 25) -> dict[str, dict[int, int]]:
    """NFE of every sampler at 1..max_steps steps, counted at the model on a two-sample Gaussian run."""
    from samplers.bench import runner as R

    def rows(schedulers: tuple[str, ...], steps: tuple[int, ...]) -> list[Any]:
        cfg = R.BenchConfig(
            schedulers=schedulers,
            steps=steps,
            problem="gaussian",
            samples=2,
            options=options,
            metrics=("ode_error",),
            ode_samples=2,
            warmup=False,
        )
        return R.run_benchmark(cfg).rows

    found = rows(tuple(names), tuple(range(2, max_steps + 1)))
    for name in names:  # one step: some grids need two levels, so each sampler on its own
        try:
            found += rows((name,), (1,))
        except R.BenchInputError:
            pass
    out: dict[str, dict[int, int]] = {}
    for r in found:
        if r.error is None:
            out.setdefault(r.scheduler, {})[r.steps] = r.nfe
    return out


def _steps_for(nfe: dict[int, int], target: int) -> int | None:
    ok = [s for s, n in nfe.items() if n <= target]
    return max(ok) if ok else None


def run(samples: int, problems: list[str]) -> list[dict[str, Any]]:
    from samplers.bench import runner as R

    records = []
    for title, options, pairs in GROUPS:
        names = list(dict.fromkeys([p.ours for p in pairs] + [p.diffusers for p in pairs]))
        prepared = R.prepare(R.BenchConfig(schedulers=tuple(names), steps=(2,), options=options))
        label_of = dict(zip(names, [s.name for s in prepared.schedulers], strict=True))
        nfe = _nfe_table(names, options)
        steps = sorted(
            {s for n in names for t in TARGETS if (s := _steps_for(nfe.get(label_of[n], {}), t)) is not None}
        )
        for problem in problems:
            t0 = time.perf_counter()
            cfg = R.BenchConfig(
                schedulers=tuple(names),
                steps=tuple(steps),
                problem=problem,
                samples=samples,
                ode_samples=samples,
                options=options,
                metrics=("ode_error",),
            )
            result = R.run_benchmark(cfg)
            rows = {(r.scheduler, r.steps): r for r in result.rows}
            for p in pairs:
                rec: dict[str, Any] = {
                    "group": title,
                    "sampler": p.label,
                    "diffusers": p.diffusers,
                    "problem": problem,
                }
                for side, name in (("ours", p.ours), ("theirs", p.diffusers)):
                    label = label_of[name]
                    for t in TARGETS:
                        s = _steps_for(nfe.get(label, {}), t)
                        row = rows.get((label, s)) if s is not None else None
                        rec[f"{side}@{t}"] = (
                            (row.nfe, row.metrics.get("ode_error", math.nan), row.error) if row else None
                        )
                records.append(rec)
            print(f"  [{title}] {problem}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return records


def _cell(v: Any, target: int) -> str:
    if v is None:
        return "n/a"
    nfe, err, error = v
    if error:
        return "error"
    text = f"{err:.3g}" if err is not None and math.isfinite(err) else "-"
    return text + (f" ({nfe})" if nfe != target else "")


def markdown(records: list[dict[str, Any]], problems: list[str]) -> str:
    head = ["grid", "sampler", "diffusers class"]
    for prob in problems:
        for t in TARGETS:
            head += [f"{prob} ~{t}: ours", "diffusers", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keyed: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in records:
        keyed.setdefault((r["group"], r["sampler"], r["diffusers"]), {})[r["problem"]] = r
    for (group, sampler, dspec), by_problem in keyed.items():
        cells = [group, sampler, dspec.removeprefix("diffusers:")]
        for prob in problems:
            r = by_problem.get(prob, {})
            for t in TARGETS:
                ours, theirs = r.get(f"ours@{t}"), r.get(f"theirs@{t}")
                ratio = "-"
                if ours and theirs and not ours[2] and not theirs[2] and theirs[1] and math.isfinite(theirs[1]):
                    ratio = f"{ours[1] / theirs[1]:.3f}"
                cells += [_cell(ours, t), _cell(theirs, t), ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1000, help="samples per row, all with an exact ODE reference")
    ap.add_argument("--problems", default="gmm2d,gaussian")
    args = ap.parse_args()
    torch.set_num_threads(1)
    problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    records = run(args.samples, problems)
    print(
        f"ODE error (RMS distance to the exact PF-ODE endpoint, {args.samples} samples) at the largest step count "
        f"with NFE <= target; (n) = the NFE where it differs; ratio = ours / diffusers; model: linear DDPM betas, "
        f"exact denoiser; diffusers through samplers.bench.foreign\n"
    )
    print(markdown(records, problems))


if __name__ == "__main__":
    main()
