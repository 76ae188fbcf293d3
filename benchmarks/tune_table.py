"""The `samplers tune` table: tuned grids against the best named grid, on held-out seeds, with transfer.

For each (sampler, problem): tune at ``--nfe`` on the tuning seeds (1), score the tuned grid and every
named grid on the held-out seeds (0, the bench's own), and print

    sampler, problem, best named grid (held out) and its error, tuned error, ratio, tuning seconds,

then the transfer of each tuned grid: interpolated in log sigma to NFE - 2 and NFE + 2, and scored on
another problem (gmm2d -> gaussian, digits -> gmm2d). ``--plot PATH`` also draws error vs NFE of tuned
against named grids (tuning at every NFE of ``--plot-nfe``) for the first problem.

    PYTHONPATH=. python benchmarks/tune_table.py                      # euler, dpmpp_2m, unipc on gmm2d, digits
    PYTHONPATH=. python benchmarks/tune_table.py -p gmm2d --plot tune_curves.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from samplers import grids
from samplers import tune as T

TRANSFER_PROBLEM = {"gmm2d": "gaussian", "gaussian": "gmm2d", "digits": "gmm2d"}


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _f(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"


def run_row(sampler: str, problem: str, nfe: int, max_evals: int, out_dir: Path | None) -> dict[str, Any]:
    load_before = _load()
    r = T.tune(sampler, nfe, problem, max_evals=max_evals)
    h = r.heldout
    row: dict[str, Any] = {
        "sampler": sampler,
        "problem": problem,
        "nfe": nfe,
        "start": r.start,
        "best_named": h["best_named"],
        "best_named_error": h["best_named_error"],
        "tuned_error": h["tuned"],
        "ratio": h["ratio"],
        "tuning_s": r.seconds,
        "evaluations": r.evaluations,
        "tuning_error_before": r.schedule.objective_before,
        "tuning_error_after": r.schedule.objective_after,
        "reference_error": h.get("reference_error"),
        "load_avg": load_before,
        "sigmas": list(r.schedule.sigmas),
    }
    if out_dir is not None:
        grids.save(r.schedule, out_dir / f"tuned-{sampler}-{nfe}nfe-{problem}.json")
    transfers = []
    for target in (nfe - 2, nfe + 2):
        try:
            transfers.append({"kind": f"NFE {target}", **T.transfer(r.schedule, nfe=target)})
        except T.TuneError as exc:
            transfers.append({"kind": f"NFE {target}", "error": str(exc)})
    other = TRANSFER_PROBLEM.get(problem.split(":")[0], "gmm2d")
    transfers.append({"kind": f"on {other}", **T.transfer(r.schedule, problem=other)})
    row["transfer"] = transfers
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'sampler':10} {'problem':8} {'best named (held out)':22} {'error':>9} {'tuned':>9} {'ratio':>6}"
    head += f" {'tune s':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['sampler']:10} {r['problem']:8} {r['best_named']:22} {_f(r['best_named_error']):>9} "
            f"{_f(r['tuned_error']):>9} {r['ratio']:>5.2f}x {r['tuning_s']:>7.1f}"
        )
    print()
    print("transfer (held-out seeds; tuned grid interpolated in log sigma / scored on another problem):")
    for r in rows:
        for t in r["transfer"]:
            what = f"{r['sampler']:10} {r['problem']:8} -> {t['kind']:12}"
            if "error" in t:
                print(f"{what} not applicable: {t['error'][:100]}")
            else:
                print(
                    f"{what} tuned {_f(t['tuned']):>9} vs {t['best_named']:14} {_f(t['best_named_error']):>9}: "
                    f"{t['ratio']:.2f}x"
                )


def plot_curves(samplers: list[str], problem: str, nfes: list[int], max_evals: int, path: str) -> None:
    """Held-out ODE error vs NFE, tuned (one tuning per NFE) against every named grid, one panel per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samplers), figsize=(5.5 * len(samplers), 4.2), squeeze=False)
    for ax, sampler in zip(axes[0], samplers, strict=True):
        named: dict[str, list[tuple[int, float]]] = {}
        tuned: list[tuple[int, float]] = []
        for nfe in nfes:
            r = T.tune(sampler, nfe, problem, max_evals=max_evals)
            for name, err in r.heldout["named"].items():
                named.setdefault(name, []).append((nfe, err))
            tuned.append((nfe, r.heldout["tuned"]))
            print(
                f"  {sampler} {nfe} NFE: tuned {r.heldout['tuned']:.4g}, best named {r.heldout['best_named']} "
                f"{r.heldout['best_named_error']:.4g}",
                file=sys.stderr,
            )
        colours = plt.get_cmap("tab20").colors
        for k, (name, pts) in enumerate(sorted(named.items())):
            x, y = zip(*pts, strict=True)
            ax.plot(x, y, "-", lw=1.2, alpha=0.8, color=colours[k % len(colours)], label=name)
        x, y = zip(*tuned, strict=True)
        ax.plot(x, y, "k-o", lw=2.2, label="tuned")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="NFE",
            ylabel="ODE error (held-out seeds)",
            title=f"{sampler} on {problem}",
        )
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-s", "--samplers", default="euler,dpmpp_2m,unipc")
    ap.add_argument("-p", "--problems", default="gmm2d,digits")
    ap.add_argument("-n", "--nfe", type=int, default=10)
    ap.add_argument("--max-evals", type=int, default=T.MAX_EVALS)
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--out-dir", help="save each tuned schedule file in this folder")
    ap.add_argument("--plot", help="PNG of error vs NFE (tuned vs named) on the first problem")
    ap.add_argument("--plot-nfe", default="6,8,10,12,16")
    ap.add_argument("--plot-samplers", default="euler,dpmpp_2m")
    ap.add_argument("--no-table", action="store_true", help="only the plot")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out_dir = Path(args.out_dir) if args.out_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {_load()} on {os.cpu_count()} cores; torch threads 1", file=sys.stderr)
    rows = []
    t0 = time.perf_counter()
    for problem in [] if args.no_table else args.problems.split(","):
        for sampler in args.samplers.split(","):
            rows.append(run_row(sampler, problem, args.nfe, args.max_evals, out_dir))
            r = rows[-1]
            print(
                f"  {sampler} on {problem}: {r['ratio']:.2f}x in {r['tuning_s']:.1f} s (load {r['load_avg']})",
                file=sys.stderr,
            )
    if rows:
        print_table(rows)
    print(f"\n(total {time.perf_counter() - t0:.0f} s; load average at end: {_load()})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.plot:
        plot_curves(
            args.plot_samplers.split(","),
            args.problems.split(",")[0],
            [int(n) for n in args.plot_nfe.split(",")],
            args.max_evals,
            args.plot,
        )


if __name__ == "__main__":
    main()
