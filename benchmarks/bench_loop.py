"""Per-step overhead of a whole sampling loop: samplers (eager and CUDA graph) against diffusers.

A loop of ``--steps`` calls of a trivial model (one elementwise kernel) followed by the scheduler
update, at a small latent (default 1x4x64x64 fp16), so the time is almost all loop overhead:
Python, launches, host-device syncs. The model alone, called the same number of times in the same
mode, is timed in the same run and subtracted, so

    overhead per step = (loop time - model-only time) / steps

Rows: ``samplers.sample`` eager; ``samplers.sample(compile=True)`` (the whole loop, model and
scheduler, as one ``torch.compile`` graph; its baseline is the model-only loop compiled the same
way); ``samplers.GraphedSampler`` (the whole loop captured as one CUDA graph, replayed); diffusers'
scheduler in the loop diffusers pipelines run (``scale_model_input``, model, ``step``). Medians of
``--reps`` runs. CUDA times come from events, CPU times from ``time.perf_counter``.

    python benchmarks/bench_loop.py --device cuda --shape 1x4x64x64 --dtype fp16 --json out.json
    python benchmarks/bench_loop.py --device cpu --dtype fp32 --reps 5
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import samplers
from samplers.ops import batch_seeds, update
from samplers.sampling import capture_cuda_graph

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DIFFUSERS_CLASS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",
}


def trivial_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One elementwise kernel: stands in for a network so the loop's own cost shows."""
    return x * 0.5


def timed(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs (after two warm-ups)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_only(noise: torch.Tensor, steps: int, graph: bool) -> Callable[[], object]:
    """``steps`` calls of the model alone, eager or replayed from a CUDA graph."""
    t = torch.zeros((), device=noise.device)

    def run() -> torch.Tensor:
        x = noise
        for _ in range(steps):
            x = trivial_model(x, t)
        return x

    if not graph:
        return run
    return capture_cuda_graph(run)[0].replay


def diffusers_loop(name: str, noise: torch.Tensor, steps: int) -> Callable[[], object] | None:
    try:
        import diffusers
    except ImportError:
        return None
    scheduler = getattr(diffusers, DIFFUSERS_CLASS[name])()
    generator = torch.Generator(device=noise.device).manual_seed(0)
    kwargs = {"generator": generator} if name in ("ddpm", "euler_ancestral") else {}

    def run() -> torch.Tensor:
        scheduler.set_timesteps(steps, device=noise.device)
        x = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # FlowMatch has none (its noise is unit)
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
            x = scheduler.step(trivial_model(x_in, t), t, x, **kwargs).prev_sample
        return x

    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default="1x4x64x64")
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scheduler", default="ddim,ddpm,euler", help="comma-separated: " + ",".join(DIFFUSERS_CLASS))
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (0 = torch's default, one per core). 1 by default: inductor's CPU kernels "
        "open an OpenMP region per kernel, and on a machine whose cores run anything else its workers wait on "
        "each other (a 2-core box under load measured the compiled model-only loop at 479 us/step with 2 "
        "threads, against 6 us/step eager)",
    )
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if device.type == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # half on CPU measures emulation, not the loop
    shape = tuple(int(s) for s in args.shape.lower().split("x"))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    graph = device.type == "cuda"
    seeds = batch_seeds(0, shape[0], device=device)

    base_eager = timed(model_only(noise, args.steps, False), device, args.reps)
    base_graph = timed(model_only(noise, args.steps, True), device, args.reps) if graph else None
    base_compiled = None
    if not args.no_compile:
        base_compiled = timed(torch.compile(model_only(noise, args.steps, False), fullgraph=True), device, args.reps)
    rows = []

    def add(name: str, impl: str, total: float, base: float) -> None:
        rows.append(
            {
                "scheduler": name,
                "impl": impl,
                "loop_us": total * 1e6,
                "overhead_us_per_step": (total - base) * 1e6 / args.steps,
            }
        )

    for name in args.scheduler.split(","):
        scheduler = samplers.get(name)
        add(
            name,
            "samplers eager",
            timed(
                lambda scheduler=scheduler: samplers.sample(
                    trivial_model, scheduler, noise, num_inference_steps=args.steps, seeds=seeds, progress=False
                ),
                device,
                args.reps,
            ),
            base_eager,
        )
        if base_compiled is not None:
            add(
                name,
                "samplers compiled",
                timed(
                    lambda scheduler=scheduler: samplers.sample(
                        trivial_model, scheduler, noise, num_inference_steps=args.steps, seeds=seeds, compile=True
                    ),
                    device,
                    args.reps,
                ),
                base_compiled,
            )
        if graph:
            replay = samplers.GraphedSampler(trivial_model, scheduler, noise, num_inference_steps=args.steps)
            add(
                name,
                "samplers cuda_graph",
                timed(lambda replay=replay: replay(noise, seeds), device, args.reps),
                base_graph,
            )
        loop = diffusers_loop(name, noise, args.steps)
        if loop is not None:
            add(name, "diffusers eager", timed(loop, device, args.reps), base_eager)

    name_dev = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"# loop overhead, {name_dev}, {args.shape} {dtype}, {args.steps} steps, torch {torch.__version__}, "
        + (f"{torch.get_num_threads()} CPU thread(s), " if device.type == "cpu" else "")
        + f"update op: {update.backend_status()['sampler_update']}"
    )
    print(
        f"model alone: {base_eager * 1e6 / args.steps:.1f} us/step eager"
        + (f", {base_graph * 1e6 / args.steps:.1f} us/step graph" if base_graph is not None else "")
        + (f", {base_compiled * 1e6 / args.steps:.1f} us/step compiled" if base_compiled is not None else "")
    )
    print(f"| {'scheduler':<16} | {'impl':<20} | {'loop (us)':>10} | {'overhead (us/step)':>18} |")
    print(f"|{'-' * 18}|{'-' * 22}|{'-' * 11}:|{'-' * 19}:|")
    for r in rows:
        print(
            f"| {r['scheduler']:<16} | {r['impl']:<20} | {r['loop_us']:>10.1f} | {r['overhead_us_per_step']:>18.2f} |"
        )
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": name_dev,
        "shape": list(shape),
        "dtype": str(dtype),
        "steps": args.steps,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "model_us_per_step_eager": base_eager * 1e6 / args.steps,
        "model_us_per_step_graph": None if base_graph is None else base_graph * 1e6 / args.steps,
        "model_us_per_step_compiled": None if base_compiled is None else base_compiled * 1e6 / args.steps,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
