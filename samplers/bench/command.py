"""``samplers bench``: the Typer command (registered by ``samplers/cli.py`` as ``app.command("bench")(bench)``).

Runs :func:`samplers.bench.runner.run_benchmark`, prints a rich table, and writes JSON / CSV / PNG.
Under torchrun (``WORLD_SIZE > 1``) it shards the samples across ranks; only rank 0 prints and writes.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from samplers.bench import runner as R
from samplers.bench.distributed import DistContext
from samplers.bench.foreign import split_scheduler_list
from samplers.bench.metrics import METRICS

# Which noise-floor comparisons make sense (exact references have no floor).
_FLOOR_METRICS = ("sw", "sw1", "mmd", "frechet", "kl")


class _RichProgress:
    """Progress bars on stderr: one for the whole run (rows), one for the row's model calls."""

    def __init__(self, total_rows: int | None, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.overall = self.progress.add_task("benchmark", total=total_rows)
        self.row: Any = None

    def __enter__(self) -> _RichProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def row_started(self, label: str, calls: int) -> None:
        self.row = self.progress.add_task(label, total=calls)

    def advanced(self, calls: int) -> None:
        if self.row is not None:
            self.progress.advance(self.row, calls)

    def row_finished(self) -> None:
        if self.row is not None:
            self.progress.remove_task(self.row)
            self.row = None
        self.progress.advance(self.overall, 1)


def _set_threads(threads: int) -> None:
    """Apply ``--threads`` (0 keeps torch's default of one thread per core).

    The default is 1: the oracle problems are small (a 10,000 x 2 sample is 160 k elements per op),
    and on a machine whose cores are busy with anything else torch's OpenMP workers wait on each
    other at every parallel op. Measured on the 2-core CI box with other jobs running: the default
    run took 123 s with 2 threads and 18 s with 1.
    """
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def _split(text: str, flag: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in text.split(",") if p.strip())
    if not items:
        raise R.BenchInputError(f"{flag}: expected a comma-separated list, got {text!r}")
    return items


def _schedulers(suite: str | None, scheduler: str | None, defaults: dict[str, Any]) -> tuple[str, ...]:
    """``--suite`` and ``--scheduler`` together (their union), or the problem's default list."""
    from samplers.bench import suites

    names = split_scheduler_list(scheduler) if scheduler is not None else None
    try:
        chosen = suites.resolve(suite, names)
    except ValueError as exc:
        raise R.BenchInputError(str(exc)) from None
    return chosen if chosen is not None else tuple(defaults["schedulers"])


def _parse_steps(text: str) -> tuple[int, ...]:
    out = []
    for item in _split(text, "--steps"):
        try:
            out.append(int(item))
        except ValueError:
            raise R.BenchInputError(f"--steps: {item!r} is not an integer (expected e.g. 5,10,20,50)") from None
    return tuple(out)


def _parse_options(items: list[str]) -> dict[str, Any]:
    from samplers.bench.problems import _parse_value

    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise R.BenchInputError(f"--option {item!r}: expected KEY=VALUE (e.g. use_karras_sigmas=true)")
        out[key.strip()] = None if value.strip().lower() == "none" else _parse_value(value.strip())
    return out


def _until_search(until: str | None, steps: str | None) -> Any:
    """``--until`` (and ``--steps`` as its bounds) -> an :class:`~samplers.bench.until.UntilSearch`, or None."""
    if until is None:
        return None
    from samplers.bench.until import UntilSearch, UntilSpec, parse_until, search_bounds

    lo, hi = search_bounds(_parse_steps(steps) if steps is not None else None, R.MAX_STEPS)
    return UntilSearch(UntilSpec(parse_until(until), lo, hi))


def _is_main_process(dist: Any) -> bool:
    """Whether this process prints errors: rank 0 of the group, or (before the process group is up,
    e.g. bad input under torchrun) the process whose ``RANK`` is unset or 0."""
    if dist is not None:
        return bool(dist.is_main)
    import os

    return os.environ.get("RANK", "0").strip() in ("", "0")


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 1e-3:
        return f"{v:.2e}"
    return f"{v:.3g}"


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _within_floor(result: R.BenchResult, metric: str, value: float) -> bool:
    floor = result.noise_floor.get(metric)
    if not floor:
        return False
    return math.isfinite(value) and value <= floor["mean"] + 2 * floor["std"]


def render(result: R.BenchResult, console: Console) -> None:
    """Print the result table, the noise floor, the fitted orders and where the time went."""
    _print_header(result, console)
    console.print(_result_table(result))
    for r in result.rows:  # a foreign sampler that failed: its row is blank, the reason here
        if r.error:
            console.print(f"[red]error[/red] {escape(r.scheduler)} x{r.steps}: {escape(r.error)}", soft_wrap=True)
    if result.noise_floor:
        _print_noise_floor(result, console)
    ref = result.problem.get("ode_reference")
    if isinstance(ref, dict):
        _print_ode_reference(ref, console)
    if result.orders:
        _print_orders(result, console)
    attn = result.environment.get("attention")
    if isinstance(attn, dict):  # speed-only runs: what the attention dispatcher did
        picks = [
            f"{key}: {c.get('backend')}" + (f" ({c['kernel']})" if c.get("kernel") else "")
            for key, c in attn.get("choices", {}).items()
        ]
        console.print(
            f"attention: {attn.get('kernel')}" + (f"; dispatch {'; '.join(picks)}" if picks else ""),
            highlight=False,
            soft_wrap=True,
        )
    _print_timing(result, console)


def _print_header(result: R.BenchResult, console: Console) -> None:
    """The run in one line (problem, samples, device, schedule, backend), and a note when the machine is busy."""
    cfg, env, problem = result.config, result.environment, result.problem
    if problem.get("speed_only"):  # a network: say which, and its size
        shape = "x".join(map(str, problem.get("sample_shape", [problem.get("dim")])))
        params = problem.get("params")
        what = f"{problem.get('model', problem.get('name'))}" + (f", {params / 1e6:.2f} M params" if params else "")
        what += f", sample {shape}"
    else:
        what = f"{problem.get('layout', problem.get('name'))}, dim {problem.get('dim')}"
    console.print(
        f"[bold]samplers bench[/bold]: problem [cyan]{problem.get('spec')}[/cyan] "
        f"({what}), {cfg['samples']} samples, "
        f"{cfg['device']} {cfg['dtype']}, seed {cfg['seed']}, model schedule {cfg['schedule']}, "
        f"world size {env.get('world_size', 1)}"
        + (f", {env.get('cpu_threads')} CPU thread(s)" if str(cfg["device"]).startswith("cpu") else "")
        + f"; update backend: {env.get('sampler_update_backend')}",
        highlight=False,
        soft_wrap=True,
    )
    load, cores = env.get("load_avg_1min"), env.get("cpu_count")
    if load is not None and cores and str(cfg["device"]).startswith("cpu") and load >= cores:
        console.print(
            f"[yellow]note:[/yellow] load average {load} on {cores} cores when the run began: timings are noisy",
            soft_wrap=True,
        )


def _result_table(result: R.BenchResult) -> Table:
    """One row per (scheduler, steps), a section per scheduler; ``*`` marks a value within the noise floor."""
    table = Table(show_lines=False, header_style="bold")
    for col in ("scheduler", "steps", "NFE"):
        table.add_column(col, justify="right" if col != "scheduler" else "left", no_wrap=True)
    for m in result.metric_names:
        table.add_column(METRICS[m].label, justify="right", no_wrap=True)
    for col in ("wall s", "samples/s", "step ovh ms", "peak mem"):
        table.add_column(col, justify="right", no_wrap=True)
    marked = False
    previous = None
    for r in result.rows:
        if previous is not None and r.scheduler != previous:
            table.add_section()
        previous = r.scheduler
        cells = [r.scheduler, str(r.steps), str(r.nfe)]
        for m in result.metric_names:
            v = r.metrics.get(m)
            text = _fmt(v)
            if v is not None and m in _FLOOR_METRICS and _within_floor(result, m, v):
                text += "*"
                marked = True
            cells.append(text)
        rate = f"{r.samples_per_s:,.0f}" if r.samples_per_s >= 100 else f"{r.samples_per_s:.3g}"
        cells += [f"{r.wall_s:.3f}", rate, f"{r.step_overhead_ms:.3f}", _fmt_bytes(r.peak_mem_bytes)]
        table.add_row(*cells)
    notes = []
    if result.problem.get("speed_only"):
        notes.append("speed only: a random-weight network has no exact answer, so no accuracy metrics")
    if marked:
        notes.append("* within the sampling noise floor (<= floor mean + 2 sd)")
    kinds = {r.peak_mem_kind for r in result.rows}
    if kinds & {"rss_peak", "ru_maxrss"}:
        notes.append("peak mem: growth of the process's peak RSS during the run")
    elif "cuda_max_allocated" in kinds:
        notes.append("peak mem: CUDA max_memory_allocated above the run's start")
    if notes:
        table.caption = "; ".join(notes)
    return table


def _print_noise_floor(result: R.BenchResult, console: Console) -> None:
    """The sampling noise floor (exact sample sets), or a real-data problem's held-out split."""
    cfg = result.config
    parts = [f"{METRICS[m].label} {_fmt(f['mean'])} ± {_fmt(f['std'])}" for m, f in result.noise_floor.items()]
    first = next(iter(result.noise_floor.values()))
    if first.get("source") == "held-out split":
        held = first.get("samples")
        what = (
            f"noise floor from the held-out split (the metric on {held} held-out samples against the "
            f"training split, mean ± sd over {first['sets']} subset(s)"
            + (f"; {cfg['samples']} samples asked, fewer held-out exist" if held < cfg["samples"] else "")
            + "): "
        )
    else:
        what = (
            f"sampling noise floor (the metric on {cfg['samples']} exact samples, mean ± sd over "
            f"{first['sets']} sets): "
        )
    console.print(what + ", ".join(parts), highlight=False, soft_wrap=True)


def _print_ode_reference(ref: dict[str, Any], console: Console) -> None:
    """A network problem's ODE reference solves, and a warning when they are not 10x below the table."""
    solves = ref.get("solves", [])
    margin = ref.get("margin")
    calls = sum(int(s.get("evaluations", 0)) for s in solves)
    seconds = sum(float(s.get("seconds", 0.0)) for s in solves)
    steps = ", ".join(str(s.get("steps")) for s in solves)
    line = (
        f"ODE reference: {ref.get('method')}; {len(solves)} solve(s) ({steps} steps, {calls} model calls, "
        f"{seconds:.1f} s); its estimated error {_fmt(ref.get('estimated_error'))}"
    )
    if margin is not None and math.isfinite(margin):
        line += f", {margin:,.0f}x below the smallest ODE error in the table ({_fmt(ref.get('smallest_table_error'))})"
    if margin is not None and math.isfinite(margin) and margin < 10:
        line = f"[yellow]warning:[/yellow] {escape(line)} — less than 10x: the smallest errors are not resolved"
    else:
        line = escape(line)
    console.print(line, highlight=False, soft_wrap=True)


def _print_orders(result: R.BenchResult, console: Console) -> None:
    """The fitted convergence order of each scheduler, one line per order metric."""
    for metric in dict.fromkeys(m for fits in result.orders.values() for m in fits):
        parts = [
            f"{name} {fits[metric]['order']:.2f} (R² {fits[metric]['r2']:.3f})"
            for name, fits in result.orders.items()
            if metric in fits
        ]
        console.print(
            f"empirical order ({METRICS[metric].label} vs NFE): " + ", ".join(parts),
            highlight=False,
            soft_wrap=True,
        )


def _print_timing(result: R.BenchResult, console: Console) -> None:
    """Where the time went: sampling, model, metrics or model init, references, warm-up, ranks, bookkeeping."""
    env, timing = result.environment, result.timing
    console.print(
        f"time {timing['total_s']:.2f} s: sampling {timing['sampling_s']:.2f} s (model {timing['model_s']:.2f} s), "
        + (
            f"model init {timing.get('model_init_s', 0.0):.2f} s, "
            if result.problem.get("speed_only")
            else f"metrics {timing['metrics_s']:.2f} s, exact references {timing['reference_s']:.2f} s, "
        )
        + f"warm-up {timing['warmup_s']:.2f} s, "
        + (
            f"gather/sync across ranks {timing['gather_s'] + timing['sync_s']:.2f} s, "
            if env.get("world_size", 1) > 1
            else ""
        )
        + f"runner bookkeeping {timing['harness_s']:.3f} s "
        f"({100 * timing['harness_fraction']:.2f} %)",
        highlight=False,
        soft_wrap=True,
    )


def _schedule_file_run(
    path: str,
    scheduler: str | None,
    steps: str | None,
    schedule: str | None,
    option: list[str],
    model: str | None = None,
    data: str | None = None,
    problem: str | None = None,
) -> tuple[str, str, str | None, list[str], str | None, str | None]:
    """``--schedule-file``: the file's sampler and step count, its schedule, ``sigma_schedule=file:PATH``, and the
    ``--model`` / ``--data`` it was tuned on (``samplers tune --model``) unless ``--model`` or ``-p`` says where
    to score it (a grid tuned on a network scored on an oracle problem runs there on that problem's schedule)."""
    from samplers import grids

    try:
        tuned = grids.load(path)
    except (OSError, ValueError) as exc:
        raise R.BenchInputError(f"--schedule-file: {exc}") from None
    if scheduler is not None and _split(scheduler, "--scheduler") != (tuned.sampler,):
        raise R.BenchInputError(
            f"--schedule-file {path!r} was tuned for {tuned.sampler!r}; give -s {tuned.sampler} (or no -s)"
        )
    n = str(len(tuned.sigmas))
    if steps is not None and _split(steps, "--steps") != (n,):
        raise R.BenchInputError(
            f"--schedule-file {path!r} holds {n} levels ({tuned.nfe} NFE for {tuned.sampler!r}): give --steps {n} "
            "(or no --steps)"
        )
    if any(o.partition("=")[0].strip() in ("sigma_schedule", "sigma_schedule_kwargs") for o in option):
        raise R.BenchInputError("--schedule-file sets sigma_schedule itself; drop -o sigma_schedule=...")
    meta = tuned.meta if isinstance(tuned.meta, dict) else {}
    tuned_schedule = meta.get("schedule")
    if meta.get("model_spec") is not None:
        if model is None and problem is None:  # tuned on a network: bench that network
            model, data = str(meta["model_spec"]), data if data is not None else meta.get("data")
        elif model is None:  # scored on an oracle problem: the network's training schedule is not there
            tuned_schedule = None
    return tuned.sampler, n, schedule or tuned_schedule, [*option, f"sigma_schedule=file:{path}"], model, data


# The signature is the CLI's option list (typer reads it); the body below it is under 80 lines.
def bench(
    scheduler: str | None = typer.Option(
        None,
        "--scheduler",
        "-s",
        help="Comma-separated scheduler names (see `samplers list`; plugins work too), or foreign samplers: "
        "diffusers:CLASS, k-diffusion:FUNCTION, module.path:SchedulerMixinClass or module.path:k_diffusion_style_fn, "
        "each optionally with its own options after a second colon (diffusers:DPMSolverMultistepScheduler:"
        "use_karras_sigmas=true,solver_order=3) "
        f"[default: {','.join(R.DEFAULT_SCHEDULERS)}; "
        f"digits: {','.join(R.PROBLEM_DEFAULTS['digits']['schedulers'])}].",
    ),
    suite: str | None = typer.Option(
        None,
        "--suite",
        help="A named scheduler list: popular (the samplers of diffusers, k-diffusion and ComfyUI that users ask "
        "for; samplers/bench/suites.py). With --scheduler too, their union runs (the suite's names first).",
    ),
    steps: str | None = typer.Option(
        None,
        "--steps",
        "-n",
        help=f"Comma-separated inference step counts (each in [1, {R.MAX_STEPS:,}]) "
        f"[default: {','.join(map(str, R.DEFAULT_STEPS))}; digits: "
        f"{','.join(map(str, R.PROBLEM_DEFAULTS['digits']['steps']))}].",
    ),
    problem: str | None = typer.Option(
        None,
        "--problem",
        "-p",
        help="Oracle problem: gaussian, gaussian_nd, gmm2d, gmm_nd, swissroll; options as NAME:key=value,... "
        "(e.g. gmm2d:layout=ring, gmm_nd:dim=16; each option's range is in the error for a bad one). "
        "Real data (a trained denoiser on scikit-learn's 8x8 digits, scored against the data and a "
        "reference ODE solve): digits. Speed only (random-weight network, no metrics): dit "
        "(dit:preset=dit-s, presets dit-tiny/dit-s/dit-b/dit-l/dit-xl, image_size=N, seed=N) "
        f"[default: {R.DEFAULT_PROBLEM}; not with --model].",
    ),
    samples: int | None = typer.Option(
        None,
        "--samples",
        help=f"Number of samples (split across ranks under torchrun; bounded by the memory available) "
        f"[default: {R.DEFAULT_SAMPLES}; digits: {R.PROBLEM_DEFAULTS['digits']['samples']}].",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (cuda:N)."),
    dtype: str = typer.Option(
        "float32", "--dtype", help="Sample storage dtype: float32, float64, float16 or bfloat16."
    ),
    seed: int = typer.Option(0, "--seed", help="Base seed of the per-sample Philox keys."),
    prediction_type: str | None = typer.Option(
        None,
        "--prediction-type",
        help="Oracle output: epsilon, sample, v_prediction, flow or score (default: each scheduler's own).",
    ),
    metric: str | None = typer.Option(
        None, "--metric", "-m", help=f"Comma-separated metrics: {', '.join(METRICS)} (default depends on the problem)."
    ),
    schedule: str | None = typer.Option(
        None,
        "--schedule",
        help=f"The model's training schedule, given to every scheduler that runs on any schedule "
        f"('default' keeps each one's own): {', '.join(R.SCHEDULE_PRESETS)} "
        f"[default: {R.DEFAULT_SCHEDULE}; digits: {R.PROBLEM_DEFAULTS['digits']['schedule']}].",
    ),
    option: list[str] = typer.Option(
        [],
        "--option",
        "-o",
        help="Scheduler config KEY=VALUE, applied where accepted (repeatable), e.g. use_karras_sigmas=true.",
    ),
    backend: str = typer.Option("auto", "--backend", help="Sampler-update backend: auto, fused or torch."),
    schedule_file: str | None = typer.Option(
        None,
        "--schedule-file",
        help="Score a tuned grid (a `samplers tune` file): runs its sampler at its step count with "
        "sigma_schedule=file:PATH (and the schedule it was tuned with, unless --schedule is given; a file tuned "
        "on a --model network benches that network unless --model is given).",
    ),
    ode_samples: int | None = typer.Option(
        None,
        "--ode-samples",
        help=f"Samples given a PF-ODE reference (ODE error), at most --samples "
        f"[default: {R.DEFAULT_ODE_SAMPLES} or all samples if fewer; digits: "
        f"{R.PROBLEM_DEFAULTS['digits']['ode_samples']}].",
    ),
    threads: int = typer.Option(
        1,
        "--threads",
        help="CPU threads for torch; 0 = torch's default (one per core). The oracle problems are small, "
        "and one thread is the fast, stable choice on a shared machine.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Bench a trained network instead of --problem: a diffusers model folder (with its "
        "scheduler_config.json), module:factory, or a TorchScript / torch.export (.pt2) file with a side-car "
        "JSON (see docs/bench_your_model.md). Scored against a high-accuracy solve of its probability-flow ODE "
        "[defaults: -s ddim,euler,heun,dpmpp_2m, steps 5,10,20,50, 64 samples, 32 ODE samples].",
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="With --model: a data set (.npy / .pt tensor [N, *sample_shape], or a folder of PNG/JPG images) for "
        "SW and MMD in pixel space; its odd rows are held out as the noise floor.",
    ),
    json_path: str | None = typer.Option(None, "--json", help="Write the full result as JSON here."),
    csv_path: str | None = typer.Option(None, "--csv", help="Write one CSV line per run here."),
    plot_path: str | None = typer.Option(
        None, "--plot", help="Write a PNG: accuracy vs NFE and, in 2-D, samples vs truth."
    ),
    until: str | None = typer.Option(
        None,
        "--until",
        help="For each sampler, the fewest NFE that reach the noise floor ('floor') or a target error "
        "(e.g. 0.01: the ODE error, or a distribution metric for stochastic samplers or without one), by a "
        "search over step counts; --steps then gives its bounds (one value: [2, value]; more: [min, max]; "
        "default [2, 1000]).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (the table is still printed)."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Accuracy and speed of samplers on problems with an exact denoiser: a table per (scheduler, steps).

    With no options: five built-in schedulers at 10, 20, 50 and 100 steps on a 2-D Gaussian mixture,
    10,000 samples on the CPU. Metrics compare against the exact distribution and the exact
    probability-flow ODE solution, next to the sampling noise floor of the sample count.
    """
    import torch

    err = Console(stderr=True, highlight=False)
    dist = None
    threads_before = torch.get_num_threads()
    try:
        if schedule_file is not None:
            scheduler, steps, schedule, option, model, data = _schedule_file_run(
                schedule_file, scheduler, steps, schedule, option, model, data, problem
            )
        if model is not None and problem is not None:
            raise R.BenchInputError(
                f"-p/--problem {problem!r} and --model {model!r}: bench an oracle problem or a trained network, "
                "not both"
            )
        problem = problem if problem is not None else R.DEFAULT_PROBLEM
        defaults = R.problem_defaults(problem)
        if model is not None:
            from samplers.bench.network import MODEL_DEFAULTS

            defaults = dict(MODEL_DEFAULTS)
        if samples is None:
            samples = defaults["samples"]
        if ode_samples is None:
            ode_samples = min(defaults["ode_samples"], max(samples, 1))
        elif ode_samples > samples:
            raise R.BenchInputError(f"--ode-samples ({ode_samples:,}) must be at most --samples ({samples:,})")
        search = _until_search(until, steps)
        config = R.BenchConfig(
            schedulers=_schedulers(suite, scheduler, defaults),
            steps=_parse_steps(steps) if steps is not None else tuple(defaults["steps"]),
            problem=problem,
            samples=samples,
            device=device,
            dtype=dtype,
            seed=seed,
            prediction_type=prediction_type,
            metrics=_split(metric, "--metric") if metric is not None else None,
            schedule=schedule if schedule is not None else defaults["schedule"],
            options=_parse_options(option),
            ode_samples=ode_samples,
            backend=backend,
            model=model,
            data=data,
        )
        if search is not None:  # --steps bounds the search: prepare() checks both bounds, warm-up runs the lower
            config = dataclasses.replace(config, steps=(search.spec.lo, search.spec.hi))
        _check_before_running(config, search, threads, json_path, csv_path, plot_path)
        _set_threads(threads)

        from samplers.bench.distributed import init_from_env

        dist = init_from_env(device)
        if dist.active and device.startswith("cuda") and ":" not in device:
            config = dataclasses.replace(config, device=f"cuda:{dist.local_rank}")
        _run_and_report(config, search, dist, quiet, err, json_path, csv_path, plot_path)
    except R.BenchInputError as exc:
        if debug:
            raise
        if _is_main_process(dist):
            err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if debug:
            raise
        if _is_main_process(dist):
            err.print(
                f"[red]error:[/red] {type(exc).__name__}: {escape(str(exc))} (run with --debug for the traceback)",
                soft_wrap=True,
            )
        raise typer.Exit(1) from None
    finally:
        torch.set_num_threads(threads_before)
        if dist is not None:
            dist.close()


def _check_before_running(
    config: R.BenchConfig,
    search: Any,
    threads: int,
    json_path: str | None,
    csv_path: str | None,
    plot_path: str | None,
) -> R.Prepared:
    """Every name, number and output path checked before any process group or sampling."""
    R.check_threads(threads)
    # every output checked (a regular file or a new one in an existing folder, each its own) before any work
    R.check_outputs({"--json": json_path, "--csv": csv_path, "--plot": plot_path})
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise R.BenchInputError("--plot needs matplotlib (pip install 'samplers[bench]')") from None
    prepared = R.prepare(config)
    if plot_path is not None and not prepared.metrics:
        raise R.BenchInputError(f"--plot: problem {config.problem!r} is speed only; there is no accuracy to plot")
    if search is not None:
        from samplers.bench.until import check_metrics

        check_metrics(search.spec, [m.name for m in prepared.metrics])
    return prepared


def _run_and_report(
    config: R.BenchConfig,
    search: Any,
    dist: DistContext,
    quiet: bool,
    err: Console,
    json_path: str | None,
    csv_path: str | None,
    plot_path: str | None,
) -> None:
    """Run the benchmark (with progress bars on a terminal) and, on the main rank, print and write the result."""
    main = dist.is_main
    out = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    show_progress = main and not quiet and err.is_terminal
    total_rows = len(config.schedulers) * len(config.steps) if search is None else None  # --until: unknown
    keep = 2000 if plot_path is not None else 0
    t0 = time.perf_counter()
    if show_progress:
        with _RichProgress(total_rows, err) as progress:
            result = R.run_benchmark(config, progress=progress, dist=dist, keep_samples=keep, search=search)
    else:
        result = R.run_benchmark(config, dist=dist, keep_samples=keep, search=search)
    if not main:
        return
    render(result, out)
    if search is not None:
        from samplers.bench import until as U

        result.until = U.summarize(result, search.spec)
        U.render(result, out)
    if json_path is not None:
        R.write_json(result, json_path)
    if csv_path is not None:
        R.write_csv(result, csv_path)
    if plot_path is not None:
        from samplers.bench.plots import plot_result

        plot_result(result, plot_path)
    written = [p for p in (json_path, csv_path, plot_path) if p is not None]
    if written:
        out.print(f"wrote {', '.join(written)} ({time.perf_counter() - t0:.1f} s in all)")
