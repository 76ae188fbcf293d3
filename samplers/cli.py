"""The ``samplers`` command: ``list``, ``info``, ``bench`` and ``tune`` (``samplers --help``)."""

from __future__ import annotations

import json
import platform
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    name="samplers",
    help="Diffusion samplers and noise schedulers: list them, inspect the install, benchmark them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (CI logs, `| less`) has no terminal width; rich would assume 80 columns and cut headers.
console = Console(width=None if sys.stdout.isatty() else 140)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow", "score")


def _text(value: object) -> str:
    """Any value as literal rich text: plugin names, versions, errors and build messages may hold
    ``[...]`` that rich would read as markup (and raise on, e.g. a stray ``[/red]``)."""
    return escape(str(value))


KIND_TITLES = {
    "ode-single-step": "ODE, single-step",
    "ode-multistep": "ODE, multistep",
    "sde": "SDE (stochastic)",
    "consistency": "consistency",
    "langevin": "Langevin / predictor-corrector",
}


@app.command("list")
def list_schedulers(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    schedules: bool = typer.Option(
        False, "--schedules", help="List the named noise-level schedules (sigma_schedule=) instead."
    ),
) -> None:
    """Every registered scheduler (built-in and plugins), grouped by kind, with its order, NFE per step,
    paper and source; with --schedules, every named noise-level schedule."""
    from samplers.registry import registry

    if schedules:
        _list_grids(as_json)
        return
    reg = registry()
    rows = []
    for _, entry in sorted(reg.entries.items()):
        meta = entry.cls.metadata()
        meta.update(distribution=entry.source.distribution, version=entry.source.version, plugin=entry.source.plugin)
        rows.append(meta)
    if as_json:
        typer.echo(json.dumps({"schedulers": rows, "load_errors": [e.__dict__ for e in reg.load_errors]}, indent=2))
        return
    kinds = list(KIND_TITLES) + sorted({str(m.get("kind")) for m in rows} - set(KIND_TITLES))
    for kind in kinds:
        group = [m for m in rows if m.get("kind") == kind]
        if not group:
            continue
        table = Table(title=f"{KIND_TITLES.get(kind, kind)}: {len(group)} sampler(s)", title_justify="left")
        for col in ("name", "order", "NFE/step", "stochastic", "family", "paper", "source"):
            table.add_column(col, no_wrap=col in ("name", "source"))
        for m in group:
            table.add_row(
                *map(
                    _text,
                    (
                        m["name"],
                        m["order"],
                        m["nfe_per_step"],
                        _stochastic_cell(m),
                        m["family"],
                        m.get("paper") or "",
                        f"{m['distribution']} {m['version']}",
                    ),
                )
            )
        console.print(table)
    partial = [m["name"] for m in rows if not set(m["prediction_types"]) >= set(PREDICTION_TYPES)]
    note = f"; except {', '.join(partial)}" if partial else ""
    console.print(f"{len(rows)} samplers; every one takes the prediction types {', '.join(PREDICTION_TYPES)}{note}")
    _print_load_errors(reg.load_errors)


def _list_grids(as_json: bool) -> None:
    from samplers import grids

    rows = [
        {
            "name": info.name,
            "description": info.description,
            "source": info.source,
            "space": info.space,
            "params": {k: repr(v) for k, v in info.params.items()},
        }
        for info in grids.GRIDS.values()
    ]
    if as_json:
        typer.echo(json.dumps({"schedules": rows}, indent=2))
        return
    table = Table(
        title="named noise-level schedules: samplers.get(NAME, sigma_schedule=..., sigma_schedule_kwargs={...})"
    )
    for col in ("name", "description", "parameters", "space", "source"):
        table.add_column(col, no_wrap=col == "name")
    for info in grids.GRIDS.values():
        params = ", ".join(f"{k}={v!r}" for k, v in info.params.items())
        table.add_row(*map(_text, (info.name, info.description, params, info.space, info.source)))
    console.print(table)
    console.print("Also: sigma_schedule='file:PATH' reads a schedule file (samplers tune writes them).")


def _stochastic_cell(meta: dict) -> str:
    """'yes' / 'no', or the config under which the scheduler draws noise (DDIM: 'if eta > 0')."""
    when = meta.get("stochastic_when")
    return f"if {when}" if when else ("yes" if meta["stochastic"] else "no")


def _print_load_errors(errors: list) -> None:
    for err in errors:
        console.print(
            f"[red]plugin {_text(repr(err.plugin))} from {_text(err.distribution)} failed to load:[/red] "
            f"{_text(err.error)}",
            highlight=False,
        )


@app.command("info")
def info(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text.")) -> None:
    """Versions, the live kernel backends (and why), plugins and their load errors."""
    import torch

    import samplers
    from samplers.registry import registry

    reg = registry()
    report: dict = {
        "samplers": samplers.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "plugin_autoload": reg.autoload,
        "plugins": sorted(
            {
                e.source.plugin + " (" + e.source.distribution + " " + e.source.version + ")"
                for e in reg.entries.values()
            }
        ),
        "load_errors": [e.__dict__ for e in reg.load_errors],
        "kernels": _kernel_status(),
    }
    try:  # the dispatcher's cached per-shape choices (measured timings), beside the one-line summary
        report["attention_dispatch"] = _attention_report()
    except Exception as exc:  # info must always print
        report["attention_dispatch"] = {"error": str(exc)}
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    for key, value in report.items():
        if key in ("load_errors", "kernels", "attention_dispatch"):
            continue
        console.print(f"[bold]{_text(key)}[/bold]: {_text(value)}", highlight=False)
    console.print("[bold]kernels[/bold]:")
    for name, status in report["kernels"].items():
        console.print(f"  {_text(name)}: {_text(status)}", highlight=False)
    for key, choice in report["attention_dispatch"].get("choices", {}).items():
        picked = choice.get("backend", "?") + (f" ({choice['kernel']})" if choice.get("kernel") else "")
        times = ", ".join(
            f"{n} {t:.4f} ms" for n, t in sorted(choice.get("times_ms", {}).items(), key=lambda kv: kv[1])
        )
        console.print(_text(f"    {key}: {picked}" + (f" [{times}]" if times else "")), highlight=False)
    _print_load_errors(reg.load_errors)


def _kernel_status() -> dict[str, str]:
    """Which backend each op uses, building/loading the extension if needed (that is the question asked)."""
    status: dict[str, str] = {}
    try:
        from samplers.ops import update

        status.update({k: str(v) for k, v in update.backend_status().items()})
    except Exception as exc:  # info must always print
        status["sampler_update"] = f"error: {exc}"
    try:
        status["attention"] = _attention_summary(_attention_report())
    except Exception as exc:
        status["attention"] = f"error: {exc}"
    return status


def _attention_report() -> dict:
    """The attention dispatcher's report; on a CUDA machine the kernel is loaded (built) first, so
    the report says whether it is live rather than "not loaded yet"."""
    import torch

    from samplers.ops import attention

    if torch.cuda.is_available():
        attention._load_kernel()
    return attention.attention_dispatch_report()


def _attention_summary(report: dict) -> str:
    """One line: the kernel's state and how many shape buckets the dispatcher has measured."""
    kernel = report.get("kernel", "unknown")
    if report.get("kernel_impl"):
        kernel += f" [{report['kernel_impl']}]"
    if "SDPA" not in kernel:  # the dispatcher sends CPU tensors to SDPA whatever the kernel's state
        kernel += "; CPU tensors run on PyTorch SDPA"
    n = len(report.get("choices", {}))
    measured = f"{n} measured choice(s) cached in this process" if n else "no choices measured yet in this process"
    return f"{kernel}; dispatcher (backend='auto'): {measured}"


def _register_optional_commands() -> None:
    """Commands that live beside their capability (bench/, testing.py) and register here."""
    try:
        from samplers.bench.command import bench
    except ImportError:
        pass
    else:
        app.command("bench")(bench)
    try:
        from samplers.tune_command import tune
    except ImportError:
        pass
    else:
        app.command("tune")(tune)
    try:
        from samplers.testing import check
    except ImportError:
        pass
    else:
        app.command("check")(check)


_register_optional_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    import os

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="samplers")
    except SystemExit:
        raise
    except Exception as exc:  # one clear line on stderr, no traceback unless --debug
        if "--debug" in args:
            raise
        if os.environ.get("RANK", "0").strip() in ("", "0"):  # under torchrun, once rather than per rank
            from rich.markup import escape

            Console(stderr=True, highlight=False).print(
                f"[red]error:[/red] {type(exc).__name__}: {escape(str(exc))} (run with --debug for the traceback)",
                soft_wrap=True,
            )
        sys.exit(2)


if __name__ == "__main__":
    main()
