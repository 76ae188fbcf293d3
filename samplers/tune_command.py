"""``samplers tune``: the Typer command (registered by ``samplers/cli.py`` as ``app.command("tune")(tune)``).

Runs :func:`samplers.tune.tune`, prints the named grids and the tuned one on the tuning and the held-out
seeds, the transfer to neighbouring budgets and another problem, and writes the schedule file.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4g}"


def _load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# The signature is the CLI's option list (typer reads it); the body below it is under 80 lines.
def tune(
    sampler: str = typer.Option(
        ..., "--sampler", "-s", help="The (deterministic) scheduler to tune (`samplers list`)."
    ),
    nfe: int = typer.Option(..., "--nfe", "-n", help="Model-evaluation budget (counted at the model)."),
    problem: str | None = typer.Option(
        None,
        "--problem",
        "-p",
        help="Bench problem to tune on: gmm2d, gaussian, ... (oracles) or digits [default: gmm2d, without --model].",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Tune on a trained network instead of --problem, as `samplers bench --model` takes it: a diffusers "
        "model folder, module:factory, or a TorchScript / .pt2 file with a side-car JSON (docs/bench_your_model.md). "
        "Scored against the bench's high-accuracy solve of its probability-flow ODE, on its own training schedule.",
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="With --model: its data set, checked and recorded in the file (`samplers bench --schedule-file` then "
        "scores SW / MMD against it); the tuning objective stays the ODE error.",
    ),
    out: str | None = typer.Option(
        None, "--out", "-O", help="Schedule file to write [default: tuned-SAMPLER-NFEnfe-PROBLEM_OR_MODEL.json]."
    ),
    schedule: str | None = typer.Option(
        None,
        "--schedule",
        help="The model's training schedule (a bench preset) [default: the problem's, as bench; with --model the "
        "network's own, 'model', and no other].",
    ),
    option: list[str] = typer.Option([], "--option", "-o", help="Scheduler config KEY=VALUE (repeatable)."),
    seed: int = typer.Option(1, "--seed", help="Base seed of the tuning noise (the bench's default 0 is held out)."),
    samples: int | None = typer.Option(
        None, "--samples", help="Tuning samples [default: 1000; digits 128; --model 32]."
    ),
    heldout_seed: int = typer.Option(0, "--heldout-seed", help="Base seed of the held-out noise."),
    heldout_samples: int | None = typer.Option(
        None,
        "--heldout-samples",
        help="Held-out samples [default: the bench's ODE samples, 1000; digits 256; --model 64].",
    ),
    max_evals: int | None = typer.Option(
        None,
        "--max-evals",
        help="Search budget in sampler runs, all stages (a quarter compass search, the rest Powell) [default: 4000; "
        "against a distribution metric 800].",
    ),
    time_limit: float | None = typer.Option(None, "--time-limit", help="Search budget in seconds."),
    start: str | None = typer.Option(None, "--start", help="Named grid to start from [default: the best one]."),
    metric: str | None = typer.Option(
        None,
        "--metric",
        "-m",
        help="Tune a distribution metric (sw, sw1, mmd, frechet; oracle problems) instead of the ODE error "
        "[default: ODE error; sw for a sampler that draws noise].",
    ),
    transfer: bool = typer.Option(
        True, "--transfer/--no-transfer", help="Also score the grid at NFE +-2 and on another problem."
    ),
    transfer_problem: str | None = typer.Option(
        None, "--transfer-problem", help="Problem for the transfer score [default: gaussian; from gaussian: gmm2d]."
    ),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch (0: torch's default)."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Find the grid of noise levels that minimises SAMPLER's ODE error (stochastic samplers: SW) at NFE calls.

    Derivative-free search over log sigma (compass search, then Powell's method), started from the best named
    grid; the error is measured against the exact ODE endpoint (oracles) or a high-accuracy solve (digits,
    --model) from the same noise. Scored on held-out seeds; the file it writes is read by every scheduler as
    sigma_schedule="file:PATH" and by `samplers bench --schedule-file PATH`.
    """
    import torch

    from samplers import grids
    from samplers import tune as T
    from samplers.bench.command import _parse_options

    err = Console(stderr=True, highlight=False)
    con = Console(highlight=False)
    threads_before = torch.get_num_threads()
    try:
        if threads < 0:
            raise T.TuneError(f"--threads must be >= 0, got {threads}")
        if threads > 0:
            torch.set_num_threads(threads)
        path = _out_path(out, sampler, nfe, problem, model)
        load = _load_average()
        result = T.tune(
            sampler,
            nfe,
            problem,
            model=model,
            data=data,
            schedule=schedule,
            options=_parse_options(option),
            seed=seed,
            samples=samples,
            heldout_seed=heldout_seed,
            heldout_samples=heldout_samples,
            max_evals=max_evals,
            max_seconds=time_limit,
            start=start,
            metric=metric,
        )
        grids.save(result.schedule, path)
        where = f"--model {model}" if model is not None else (problem or "gmm2d")
        _print_result(con, result, sampler, nfe, where, seed, heldout_seed, load)
        if transfer:
            other = transfer_problem or ("gmm2d" if (problem or "").startswith("gaussian") else "gaussian")
            _print_transfer(con, result, nfe, other)
        con.print(
            f"wrote {escape(str(path))} (use: sigma_schedule='file:{escape(str(path))}', or "
            f"{escape(_bench_command(problem, model, data, str(path), result.heldout.get('samples')))})",
            soft_wrap=True,
        )
    except (T.TuneError, ValueError) as exc:
        if debug:
            raise
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        torch.set_num_threads(threads_before)


def _out_path(out: str | None, sampler: str, nfe: int, problem: str | None, model: str | None) -> Path:
    """``--out`` (default ``tuned-SAMPLER-NFEnfe-TARGET.json``), refused before tuning when it cannot be written."""
    from samplers.tune import TuneError

    path = Path(out or f"tuned-{sampler}-{nfe}nfe-{_target_name(problem, model)}.json")
    if path.exists() and path.is_dir():
        raise TuneError(f"--out {str(path)!r} is a folder; give a file name")
    if not path.parent.exists():
        raise TuneError(f"--out {str(path)!r}: the folder {str(path.parent)!r} does not exist")
    return path


def _print_result(
    con: Console, result: Any, sampler: str, nfe: int, where: str, seed: int, heldout_seed: int, load: str
) -> None:
    """The header, the named-vs-tuned table, the held-out verdict and the method line."""
    import torch

    from samplers import tune as T

    held = result.heldout
    meta = result.schedule.meta
    con.print(
        f"[bold]samplers tune[/bold]: {escape(sampler)} at {nfe} NFE ({meta['steps']} steps) on "
        f"{escape(where)}, schedule {meta['schedule']}; tuning seeds {seed} x "
        f"{meta['tuning_seeds']['samples']}, held-out seeds {heldout_seed} x {held.get('samples')}",
        soft_wrap=True,
    )
    con.print(_grid_table(result))
    tuned = result.schedule.sigmas
    con.print(f"tuned levels: {', '.join(f'{v:.4g}' for v in tuned)}", soft_wrap=True)
    skipped = [f"{k} ({v.note.split(':', 1)[-1].strip()[:60]})" for k, v in result.named.items() if not v.usable]
    if skipped:
        con.print(f"not applicable here: {escape('; '.join(skipped))}", soft_wrap=True)
    if held:
        con.print(
            f"held out: tuned {_fmt(held['tuned'])} vs best named {held['best_named']} "
            f"{_fmt(held['best_named_error'])}: [bold]{held['ratio']:.2f}x[/bold] lower error",
            soft_wrap=True,
        )
        if held["tuned"] > held["named"].get(result.start, math.inf):
            con.print(
                f"[yellow]warning:[/yellow] on the held-out seeds the tuned grid does worse than its start "
                f"{result.start} ({_fmt(held['named'][result.start])}): it fits the tuning seeds only; "
                "tune with more --samples",
                soft_wrap=True,
            )
    reference = meta.get("reference_error")
    con.print(
        f"method: {T.METHOD}; {result.evaluations} runs in {result.seconds:.1f} s "
        f"(load average at start: {load}; {torch.get_num_threads()} thread(s)); each search's best (tuning): "
        + ", ".join(f"{name} {_fmt(value)}" for name, value in result.search.stages.items())
        + (
            f"; the tuned grid's ODE reference: float64 RK4, estimated error {_fmt(reference)} (tuning seeds), "
            f"{_fmt(held.get('reference_error'))} (held out)"
            if reference is not None
            else ""
        ),
        soft_wrap=True,
    )


def _grid_table(result: Any) -> Table:
    """Every named grid that runs here and the tuned one: first and last level, error on both seed sets."""
    held = result.heldout
    table = Table(header_style="bold")
    objective = result.schedule.meta["objective"]
    what = "ODE error" if objective == "ode_error" else objective
    for col in ("grid", "first level", "last level", f"{what} (tuning)", f"{what} (held-out)"):
        table.add_column(col, justify="left" if col == "grid" else "right")
    for name, score in result.named.items():
        if not score.usable:
            continue
        mark = " (start)" if name == result.start else ""
        assert score.levels is not None
        first, last = _fmt(float(score.levels[0])), _fmt(float(score.levels[-1]))
        table.add_row(name + mark, first, last, _fmt(score.error), _fmt(held.get("named", {}).get(name)))
    table.add_section()
    tuned = result.schedule.sigmas
    table.add_row(
        "[bold]tuned[/bold]", _fmt(tuned[0]), _fmt(tuned[-1]), _fmt(result.search.value), _fmt(held.get("tuned"))
    )
    return table


def _print_transfer(con: Console, result: Any, nfe: int, other: str) -> None:
    """The tuned grid interpolated to NFE - 2 and NFE + 2, and scored on ``other`` problem."""
    from samplers import tune as T

    for target in (nfe - 2, nfe + 2):
        if target < 1:
            continue
        try:
            row = T.transfer(result.schedule, nfe=target)
        except T.TuneError as exc:
            con.print(f"transfer to {target} NFE: {escape(str(exc))}", soft_wrap=True)
            continue
        con.print(_transfer_line(f"interpolated to {target} NFE", row), soft_wrap=True)
    try:
        row = T.transfer(result.schedule, problem=other)
        con.print(_transfer_line(f"on {other}", row), soft_wrap=True)
    except T.TuneError as exc:
        con.print(f"transfer to {escape(other)}: {escape(str(exc))}", soft_wrap=True)


def _target_name(problem: str | None, model: str | None) -> str:
    """The default file name's last part: the problem spec, or the model folder's / factory's name."""
    if model is None:
        return (problem or "gmm2d").replace(":", "_")
    name = Path(model.rstrip("/\\")).name or model
    return "model-" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "model")


def _bench_command(problem: str | None, model: str | None, data: str | None, path: str, held: int | None) -> str:
    """The `samplers bench` line that scores the file on the held-out seeds (the bench's seed 0)."""
    from samplers.bench import runner as R

    if model is not None:
        from samplers.bench.network import MODEL_DEFAULTS

        defaults: dict[str, Any] = dict(MODEL_DEFAULTS)
        where = f"--model {shlex.quote(model)}" + (f" --data {shlex.quote(data)}" if data is not None else "")
    else:
        defaults = R.problem_defaults(problem or "gmm2d")
        where = f"-p {shlex.quote(problem or 'gmm2d')}"
    extra = ""
    if held is not None and held != min(defaults["ode_samples"], defaults["samples"]):
        extra = (f" --samples {held}" if held > defaults["samples"] else "") + f" --ode-samples {held}"
    return f"samplers bench {where} --schedule-file {shlex.quote(path)}{extra}"


def _transfer_line(label: str, row: dict[str, Any]) -> str:
    if "error" in row:
        return f"transfer {label}: not applicable ({escape(row['error'])})"
    return (
        f"transfer {label} (held-out): tuned {_fmt(row['tuned'])} vs best named {row['best_named']} "
        f"{_fmt(row['best_named_error'])}: {row['ratio']:.2f}x"
    )
