"""Time one sampler step: the fused op against plain PyTorch, torch.compile, a copy, and diffusers.

For one device / latent shape / dtype, in one process (so ratios are taken in one run):

* the fused op ``samplers.ops.sampler_update`` with the coefficients of a DDPM step, a DDIM step
  (eta = 0 and eta = 1) and an Euler step, noise drawn in the kernel for the stochastic ones;
* the same math written in plain PyTorch eager, and the same function under ``torch.compile``
  (compile time reported apart);
* a device-to-device copy moving the same number of bytes (read + written), for GB/s and the
  share of copy bandwidth each step reaches;
* diffusers' ``DDPMScheduler``, ``DDIMScheduler`` (eta = 0 and 1) and ``EulerDiscreteScheduler``
  ``step()`` on the same shape, when diffusers is importable; their output is also compared with
  the fused op's (same noise given as a tensor) to show it is the same rule.

CUDA: each implementation is timed as a loop of eager calls between CUDA events (what a Python
loop costs, launch overhead included) and as replays of a CUDA graph of the same calls (GPU time,
how ``samplers.sample(cuda_graph=True)`` runs); inputs rotate over several buffers so that the
working set exceeds the L2 cache. CPU: ``time.perf_counter`` around single calls. Every number is
the median of ``--reps`` repetitions. Prints a table, writes JSON with ``--json``.

    python benchmarks/bench_update.py --device cuda --shape 16x4x128x128 --dtype fp16 --json out.json
    python benchmarks/bench_update.py --device cpu --shape 4x4x128x128 --dtype fp32
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samplers.ops import update
from samplers.ops.reference import COEFF, NUM_COEFFS, batch_seeds

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
T, T_PREV, STEPS, TRAIN_STEPS = 500, 480, 50, 1000  # a mid-sampling step of a 50-step run


@dataclass
class Row:
    rule: str
    impl: str
    mode: str  # "eager" (loop between events / perf_counter) or "graph" (CUDA graph replay)
    us: float  # median microseconds per step
    bytes_moved: int
    compile_s: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def gbps(self) -> float:
        return self.bytes_moved / (self.us * 1e-6) / 1e9 if self.us > 0 else float("nan")


# ---- the rules: coefficient rows of samplers.ops.reference.COEFF_NAMES -------------------------


def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, TRAIN_STEPS, dtype=torch.float64)  # diffusers "linear"
    return torch.cumprod(1 - betas, 0)


def rule_coeffs() -> dict[str, dict[str, float]]:
    """epsilon prediction, no clipping; DDPM fixed_small variance; x0 = p x + q eps."""
    ab = alphas_cumprod()
    at, ap = float(ab[T]), float(ab[T_PREV])
    base = {"p": 1 / math.sqrt(at), "q": -math.sqrt(1 - at) / math.sqrt(at), "lim": math.inf, "div": 1.0}
    alpha = at / ap
    beta = 1 - alpha
    ddpm = dict(
        base,
        a=math.sqrt(alpha) * (1 - ap) / (1 - at),
        b=math.sqrt(ap) * beta / (1 - at),
        c=math.sqrt(max((1 - ap) / (1 - at) * beta, 1e-20)),
    )
    var = (1 - ap) / (1 - at) * (1 - at / ap)
    rules = {"ddpm": ddpm}
    for eta in (0.0, 1.0):
        std = eta * math.sqrt(var)
        rules[f"ddim_eta{eta:g}"] = dict(base, b=math.sqrt(ap), e=math.sqrt(1 - ap - std**2), c=std)
    # Euler (k-diffusion / diffusers EulerDiscrete) in sigma space at the same step
    sig = ((1 - ab) / ab).sqrt()
    s, s_next = float(sig[T]), float(sig[T_PREV])
    rules["euler"] = {"p": 1.0, "q": -s, "lim": math.inf, "div": 1.0, "a": 1.0, "e": s_next - s}
    return rules


def coeff_row(k: dict[str, float], device) -> torch.Tensor:
    row = torch.zeros(1, NUM_COEFFS, dtype=torch.float64)
    for name, value in k.items():
        row[0, COEFF[name]] = value
    return row.to(torch.float32).to(device)


def torch_step(rule: str, k: dict[str, float]) -> Callable:
    """The same step in plain PyTorch (what one writes by hand); stochastic ones draw randn_like."""
    p, q, a, b, e, c = (k.get(n, 0.0) for n in "pqabec")
    if rule == "ddpm":

        def step(x, eps):
            x0 = p * x + q * eps
            return a * x + b * x0 + c * torch.randn_like(x), x0
    elif rule == "euler":

        def step(x, eps):
            return x + e * eps, x + q * eps
    elif c == 0:

        def step(x, eps):
            x0 = p * x + q * eps
            return b * x0 + e * eps, x0
    else:

        def step(x, eps):
            x0 = p * x + q * eps
            return b * x0 + e * eps + c * torch.randn_like(x), x0

    return step


# ---- timing ----------------------------------------------------------------------------------------


def time_cpu(fn: Callable[[int], object], reps: int, rotate: int) -> float:
    for i in range(5):
        fn(i % rotate)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i % rotate)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def time_cuda_eager(fn: Callable[[int], object], reps: int, inner: int, rotate: int) -> float:
    for i in range(3):
        fn(i % rotate)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        for i in range(inner):
            fn(i % rotate)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / inner)
    return statistics.median(times)


def time_cuda_graph(fn: Callable[[int], object], reps: int, inner: int, rotate: int) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            fn(i % rotate)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(inner):
            fn(i % rotate)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / inner)
    del graph
    return statistics.median(times)


# ---- the benchmark ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    shape = tuple(int(s) for s in args.shape.lower().split("x"))
    cuda = device.type == "cuda"
    numel = math.prod(shape)
    esize = torch.finfo(dtype).bits // 8
    tensor_bytes = numel * esize
    # rotate over enough input sets that one pass over them exceeds the L2 cache (GPU) / LLC (CPU)
    rotate = args.rotate or max(2, math.ceil((256 << 20 if cuda else 64 << 20) / (2 * tensor_bytes)))
    rotate = min(rotate, 64)
    gen = torch.Generator(device="cpu").manual_seed(0)
    xs = [torch.randn(shape, generator=gen).to(device, dtype) for _ in range(rotate)]
    eps = [torch.randn(shape, generator=gen).to(device, dtype) for _ in range(rotate)]
    seeds = batch_seeds(1234, shape[0], device=device)
    rules = rule_coeffs()
    rows: list[Row] = []

    def timed(fn: Callable[[int], object], modes=("eager", "graph")) -> dict[str, float]:
        out = {}
        for mode in modes:
            if not cuda:
                if mode == "eager":
                    out[mode] = time_cpu(fn, args.reps, rotate)
                continue
            try:
                if mode == "eager":
                    out[mode] = time_cuda_eager(fn, args.reps, args.inner, rotate)
                else:
                    out[mode] = time_cuda_graph(fn, args.reps, args.inner, rotate)
            except Exception as exc:  # e.g. a diffusers step that cannot be captured
                print(f"  ({mode} timing failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                torch.cuda.synchronize()
        return out

    # copy baseline: the same bytes per call as a 3-tensor step (read 1.5 tensors, write 1.5)
    half = (3 * numel) // 2
    srcs = [torch.randn(half, generator=gen).to(device, dtype) for _ in range(min(rotate, 32))]
    dsts = [torch.empty_like(s) for s in srcs]
    copy_t = timed(lambda i: dsts[i % len(srcs)].copy_(srcs[i % len(srcs)]))
    for mode, us in copy_t.items():
        rows.append(Row("copy", "torch copy_", mode, us, 2 * half * esize))
    copy_gbps = {m: 2 * half * esize / (us * 1e-6) / 1e9 for m, us in copy_t.items()}

    fused_ok = update._fused_unavailable(device, dtype) is None
    if not fused_ok:
        print("fused op unavailable:", update._fused_unavailable(device, dtype))
    variants = [
        ("ddpm", True),
        ("ddim_eta0", True),
        ("ddim_eta1", True),
        ("euler", True),
        ("ddim_eta0", False),
        ("ddpm", False),
    ]
    for rule, write_x0 in variants:
        k = rules[rule]
        row = coeff_row(k, device)
        stochastic = k.get("c", 0.0) != 0.0
        label = rule + ("" if write_x0 else " (no x0)")
        nbytes = (4 if write_x0 else 3) * tensor_bytes
        if fused_ok:

            def fused(i, row=row, stochastic=stochastic, write_x0=write_x0):
                return update.sampler_update(
                    xs[i],
                    eps[i],
                    row,
                    seeds=seeds if stochastic else None,
                    noise_stream=7,
                    write_x0=write_x0,
                    backend="fused",
                )

            for mode, us in timed(fused).items():
                rows.append(Row(label, "fused op", mode, us, nbytes, note="in-kernel Philox" if stochastic else ""))
        if not write_x0:
            continue
        step = torch_step(rule, k)
        for mode, us in timed(lambda i, step=step: step(xs[i], eps[i])).items():
            rows.append(Row(label, "torch eager", mode, us, nbytes))
        if args.compile and rule in args.compile_rules.split(","):
            torch._dynamo.reset()
            compiled = torch.compile(step, fullgraph=True, dynamic=False)
            t0 = time.perf_counter()
            compiled(xs[0], eps[0])
            if cuda:
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            for mode, us in timed(lambda i, compiled=compiled: compiled(xs[i], eps[i])).items():
                rows.append(Row(label, "torch.compile", mode, us, nbytes, compile_s=compile_s))

    diffusers_info = add_diffusers(rows, args, device, dtype, shape, xs, eps, rules, timed, tensor_bytes)

    # ratios: GB/s over copy GB/s (same mode), speedup of each row over diffusers' same rule and mode
    by_key = {(r.rule, r.impl, r.mode): r for r in rows}
    for r in rows:
        if r.mode in copy_gbps and r.rule != "copy":
            r.extra["pct_copy_bw"] = 100 * r.gbps / copy_gbps[r.mode]
        base = r.rule.split(" ")[0]
        for mode in ("eager", "graph"):
            d = by_key.get((base, "diffusers", mode))
            if d is not None and r.impl != "diffusers":
                r.extra[f"speedup_vs_diffusers_{mode}"] = d.us / r.us
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "device": torch.cuda.get_device_name(device)
        if cuda
        else f"CPU ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "shape": list(shape),
        "dtype": args.dtype,
        "rotate_sets": rotate,
        "reps": args.reps,
        "inner": args.inner if cuda else 1,
        "backend": update.backend_status(),
        "copy_gbps": copy_gbps,
        "diffusers": diffusers_info,
    }
    return {"meta": meta, "rows": [dict(asdict(r), gbps=r.gbps) for r in rows]}


def add_diffusers(rows, args, device, dtype, shape, xs, eps, rules, timed, tensor_bytes) -> dict:
    if not args.diffusers:
        return {"skipped": "--no-diffusers"}
    try:
        import diffusers
        from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
    except Exception as exc:
        print(f"diffusers not importable ({exc}); skipping its rows")
        return {"skipped": f"not importable: {exc}"}
    common = dict(num_train_timesteps=TRAIN_STEPS, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    ddpm = DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small")
    ddpm.set_timesteps(STEPS)
    ddim = DDIMScheduler(**common, clip_sample=False)
    ddim.set_timesteps(STEPS)
    euler = EulerDiscreteScheduler(**common)
    euler.set_timesteps(STEPS, device=device)
    euler.is_scale_input_called = True  # step() only warns about it
    k_euler = int((euler.timesteps.cpu() - T).abs().argmin())
    euler_t = euler.timesteps[k_euler]
    seed_gen = torch.Generator(device=device)

    def euler_step(x, e, generator=None):
        euler._step_index = k_euler
        return euler.step(e, euler_t, x, generator=generator)

    steps = {
        "ddpm": lambda x, e, generator=None: ddpm.step(e, T, x, generator=generator),
        "ddim_eta0": lambda x, e, generator=None: ddim.step(e, T, x, eta=0.0, generator=generator),
        "ddim_eta1": lambda x, e, generator=None: ddim.step(e, T, x, eta=1.0, generator=generator),
        "euler": euler_step,
    }
    check = {}
    for rule, fn in steps.items():
        for mode, us in timed(lambda i, fn=fn: fn(xs[i], eps[i])).items():
            rows.append(Row(rule, "diffusers", mode, us, 4 * tensor_bytes))
        # same rule? diffusers' output vs the fused op given diffusers' own noise as a tensor
        seed_gen.manual_seed(5)
        out = fn(xs[0], eps[0], generator=seed_gen)
        k = rules[rule]
        if rule == "euler":  # diffusers' Euler grid interpolates its own sigmas
            s, s_next = float(euler.sigmas[k_euler]), float(euler.sigmas[k_euler + 1])
            k = dict(k, q=-s, e=s_next - s)
        noise = None
        if k.get("c", 0.0) != 0.0:
            seed_gen.manual_seed(5)
            noise = torch.randn(shape, generator=seed_gen, device=device, dtype=dtype)
        prev, x0 = update.sampler_update(xs[0], eps[0], coeff_row(k, device), noise=noise, backend="auto")
        scale = out.prev_sample.float().abs().max().item()
        check[rule] = {
            "max_abs_diff_prev_over_max": (prev.float() - out.prev_sample.float()).abs().max().item() / scale,
            "max_abs_diff_x0_over_max": (x0.float() - out.pred_original_sample.float()).abs().max().item()
            / out.pred_original_sample.float().abs().max().item(),
        }
    return {"version": diffusers.__version__, "same_rule_check": check}


def print_table(result: dict) -> None:
    meta = result["meta"]
    print(
        f"\n{meta['device']} | torch {meta['torch']} | shape {'x'.join(map(str, meta['shape']))} {meta['dtype']} "
        f"| {meta['date']}"
    )
    print("copy bandwidth: " + ", ".join(f"{m} {v:.0f} GB/s" for m, v in meta["copy_gbps"].items()))
    hdr = f"{'rule':<18}{'impl':<15}{'mode':<7}{'us/step':>10}{'GB/s':>9}{'%copy':>7}{'vs diff.':>9}{'compile s':>10}"
    print(hdr)
    print("-" * len(hdr))
    for r in result["rows"]:
        ex = r["extra"]
        sp = ex.get(f"speedup_vs_diffusers_{r['mode']}")
        speedup = f"{sp:.1f}" if sp else "-"
        compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] else ""
        print(
            f"{r['rule']:<18}{r['impl']:<15}{r['mode']:<7}{r['us']:>10.2f}{r['gbps']:>9.0f}"
            f"{ex.get('pct_copy_bw', float('nan')):>7.1f}{speedup:>9}{compile_s:>10}"
        )
    check = meta["diffusers"].get("same_rule_check")
    if check:
        print(
            "same rule as diffusers (max |fused - diffusers| / max |diffusers|): "
            + ", ".join(
                f"{k} prev {v['max_abs_diff_prev_over_max']:.1e} x0 {v['max_abs_diff_x0_over_max']:.1e}"
                for k, v in check.items()
            )
        )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", default="16x4x128x128")
    ap.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    ap.add_argument("--reps", type=int, default=50, help="timed repetitions (median reported)")
    ap.add_argument("--inner", type=int, default=20, help="CUDA: calls per timed loop / captured graph")
    ap.add_argument("--rotate", type=int, default=0, help="input sets to rotate over (0: enough to exceed L2)")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--compile-rules", default="ddpm,ddim_eta0", help="rules to time under torch.compile")
    ap.add_argument("--no-diffusers", dest="diffusers", action="store_false")
    ap.add_argument("--threads", type=int, default=0, help="CPU: torch.set_num_threads (0: torch's default)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is available")
    result = run(args)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
