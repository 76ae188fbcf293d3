"""PNG plots of a benchmark (matplotlib, Agg backend: no display needed).

Top row: accuracy vs NFE on log-log axes, one line per scheduler (a distribution metric with the
sampling noise floor as a band, and the ODE error with reference slopes). Bottom row, for 2-D
problems: samples of each scheduler at its smallest step count over the true samples. For image
problems (``digits``): a grid of samples below, one row per scheduler and one column per step count,
next to the training data.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from samplers.bench.metrics import METRICS
from samplers.bench.runner import BenchResult

SCATTER_POINTS = 2000
GRID_COLUMNS = 5  # sample mosaics per sampler in an image problem's --until figure
_PRIMARY_ORDER = ("sw1", "sw", "mmd", "frechet", "kl", "kl_exact")  # SW1: least noisy on multimodal data


def _wrap(label: str, width: int = 40) -> str:
    """A row label on lines of at most ``width`` characters (foreign rows carry library, version and options)."""
    import textwrap

    return "\n".join(textwrap.wrap(label, width, break_long_words=False, break_on_hyphens=False)) or label


def _series(result: BenchResult, metric: str) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in result.rows:
        v = r.metrics.get(metric)
        if v is None or not math.isfinite(v) or v <= 0:
            continue
        xs, ys = out.setdefault(r.scheduler, ([], []))
        xs.append(r.nfe)
        ys.append(v)
    for name, (xs, ys) in out.items():
        order = sorted(range(len(xs)), key=xs.__getitem__)
        out[name] = ([xs[i] for i in order], [ys[i] for i in order])
    return out


def plot_result(result: BenchResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the benchmark figure to ``path`` (PNG); returns the path.

    The scatter row needs the samples: run the benchmark with ``keep_samples`` (the CLI does when
    ``--plot`` is given). Raises ``ValueError`` when there is nothing to plot.
    """
    return _save(figure(result, title), path)


def figure(result: BenchResult, title: str | None = None) -> Any:
    """The benchmark figure (a matplotlib ``Figure``, Agg backend) that :func:`plot_result` saves.

    Top row: each accuracy panel (:func:`accuracy_panels`) on log-log axes against NFE counted at the
    model, one line per scheduler, the noise floor as a grey band where the metric has one. Below,
    for 2-D problems, samples over the truth; for image problems, a grid of samples.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = accuracy_panels(result)
    if result.problem.get("image_shape") and result.samples:
        if "fd_features" in result.metric_names and _series(result, "fd_features") and "fd_features" not in panels:
            panels.insert(1, "fd_features")
        return _image_figure(result, panels, title)
    scatter_runs = _scatter_runs(result)
    ncols = max(len(panels), len(scatter_runs), 1)
    nrows = 2 if scatter_runs else 1
    fig = plt.figure(figsize=(4.2 * ncols, 3.8 * nrows), dpi=110)
    colors = _colors(result)
    for i, metric in enumerate(panels):
        _accuracy_panel(fig.add_subplot(nrows, ncols, i + 1), result, metric, colors)
    if scatter_runs:
        _scatter_row(fig, result, scatter_runs, ncols, colors)
    fig.suptitle(title or _default_title(result), fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_panels(result: BenchResult) -> list[str]:
    """The metrics drawn against NFE: the primary distribution metric and the ODE error (those with a
    finite positive value); else the first metric that has one. Raises ``ValueError`` when none has."""
    metric_names = [m for m in result.metric_names if m in METRICS]
    primary = next((m for m in _PRIMARY_ORDER if m in metric_names and _series(result, m)), None)
    panels = [
        m
        for m in (primary, "ode_error" if "ode_error" in metric_names and _series(result, "ode_error") else None)
        if m
    ]
    if not panels:
        panels = [m for m in metric_names if _series(result, m)][:1]
    if not panels:
        raise ValueError("no finite positive metric values to plot")
    return panels


def _colors(result: BenchResult) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(r.scheduler for r in result.rows))}


def _default_title(result: BenchResult) -> str:
    cfg = result.config
    return (
        f"samplers bench: {result.problem.get('spec', result.problem.get('name'))}, n={cfg['samples']}, "
        f"{cfg['device']} {cfg['dtype']}, seed {cfg['seed']}"
    )


def _shown_row(result: BenchResult, name: str) -> Any:
    """The row of ``name`` whose samples are shown: its ``--until`` answer (or best run), else its fewest steps."""
    rows = sorted((r for r in result.rows if r.scheduler == name), key=lambda r: r.steps)
    entry = ((result.until or {}).get("samplers") or {}).get(name) or {}
    pick = entry.get("steps") if entry.get("reached") else (entry.get("best") or {}).get("steps")
    return next((r for r in rows if r.steps == pick), rows[0])


def _scatter_runs(result: BenchResult) -> list[tuple[str, str, Any]]:
    """(row name, label, samples) per scheduler for the 2-D scatter row (empty unless the problem is 2-D)."""
    runs: list[tuple[str, str, Any]] = []
    if int(result.problem.get("dim", 0)) != 2 or not result.samples or result.truth is None:
        return runs
    for name in dict.fromkeys(r.scheduler for r in result.rows):
        row = _shown_row(result, name)
        key = f"{name}@{row.steps}"
        if key in result.samples:
            runs.append((name, f"{name}, {row.steps} steps (NFE {row.nfe})", result.samples[key]))
    return runs


def _accuracy_panel(ax: Any, result: BenchResult, metric: str, colors: dict[str, str]) -> None:
    """One metric vs NFE on log-log axes: a line per scheduler, the noise-floor band, reference slopes for
    the ODE error and the ``--until`` target where it was searched on this metric."""
    series = _series(result, metric)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", ms=4, lw=1.5, color=colors[name], label=_wrap(name))
    floor = result.noise_floor.get(metric)
    all_x = [x for xs, _ in series.values() for x in xs]
    if floor and floor.get("mean", 0) > 0 and all_x:
        lo, hi = max(floor["mean"] - floor["std"], floor["mean"] * 0.1), floor["mean"] + floor["std"]
        ax.axhspan(lo, hi, color="0.85", zorder=0, label="noise floor")
        ax.axhline(floor["mean"], color="0.5", lw=1, ls="--", zorder=0)
    if metric == "ode_error" and all_x:
        x0, x1 = min(all_x), max(all_x)
        y0 = max(ys[0] for _, ys in series.values())
        for order, style in ((1, ":"), (2, "-.")):
            ax.plot([x0, x1], [y0, y0 * (x0 / x1) ** order], color="0.4", ls=style, lw=1, label=f"order {order}")
    _until_marks(ax, result, metric, colors)
    _log_axes(ax)
    ax.set_xlabel("NFE (model evaluations)")
    ax.set_ylabel(METRICS[metric].label)
    ax.set_title(METRICS[metric].description, fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _log_axes(ax: Any) -> None:
    """Log-log axes. Over more than a decade of NFE only the decades are labelled: matplotlib would also
    label the minor ticks, and those labels overlap."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    lo, hi = ax.dataLim.intervalx  # the NFE plotted (the floor band and target lines span the axes, not data)
    if lo > 0 and hi > 10 * lo:
        ax.xaxis.set_minor_formatter(NullFormatter())


def _until_marks(ax: Any, result: BenchResult, metric: str, colors: dict[str, str]) -> None:
    """The ``--until`` target (a red dotted line) and each scheduler's answer (a ringed point), on the
    panel of the metric they were searched on; nothing without ``--until``."""
    entries = ((result.until or {}).get("samplers") or {}).items()
    searched = [(name, e) for name, e in entries if e.get("metric") == metric and e.get("target") is not None]
    if not searched:
        return
    targets = sorted({float(e["target"]) for _, e in searched})
    for target in targets:
        if math.isfinite(target) and target > 0:
            ax.axhline(target, color="C3", lw=1, ls=":", label="--until target" if target == targets[0] else None)
    for name, e in searched:
        if e.get("reached") and e.get("error") and e["error"] > 0:
            ax.plot([e["nfe"]], [e["error"]], marker="o", ms=10, mfc="none", mec=colors.get(name, "k"), mew=1.5)


def _scatter_row(
    fig: Any, result: BenchResult, scatter_runs: list[tuple[str, str, Any]], ncols: int, colors: dict[str, str]
) -> None:
    """Bottom row of a 2-D problem: each scheduler's samples over the truth, in one shared frame."""
    assert result.truth is not None
    truth = result.truth[:SCATTER_POINTS].cpu().numpy()
    # one frame for all panels: the truth, widened for samples that overshoot (99th percentile)
    spread = max(
        [float(abs(truth).max()) * 1.15]
        + [float(s[:SCATTER_POINTS].abs().quantile(0.99)) * 1.1 for _, _, s in scatter_runs]
    )
    lim = min(spread, float(abs(truth).max()) * 3) + 1e-9
    for j, (name, label, samples) in enumerate(scatter_runs[:ncols]):
        ax = fig.add_subplot(2, ncols, ncols + j + 1)
        pts = samples[:SCATTER_POINTS].cpu().numpy()
        ax.scatter(truth[:, 0], truth[:, 1], s=2, color="0.75", label="truth", rasterized=True)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, color=colors.get(name, "C0"), label="samples", rasterized=True)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(_wrap(label, 48), fontsize=8)
        ax.tick_params(labelsize=7)
        if j == 0:
            ax.legend(fontsize=7, markerscale=4, loc="upper right")


def _metric_panel(ax: Any, result: BenchResult, metric: str, colors: dict[str, str]) -> None:
    series = _series(result, metric)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", ms=4, lw=1.5, color=colors[name], label=_wrap(name))
    floor = result.noise_floor.get(metric)
    if floor and floor.get("mean", 0) > 0 and series:
        lo, hi = max(floor["mean"] - floor["std"], floor["mean"] * 0.1), floor["mean"] + floor["std"]
        ax.axhspan(lo, hi, color="0.85", zorder=0, label="noise floor")
        ax.axhline(floor["mean"], color="0.5", lw=1, ls="--", zorder=0)
    ref = result.problem.get("ode_reference")
    if metric == "ode_error" and isinstance(ref, dict) and ref.get("estimated_error"):
        ax.axhline(ref["estimated_error"], color="C3", lw=1, ls=":", label="reference's own error")
    _until_marks(ax, result, metric, colors)
    _log_axes(ax)
    ax.set_xlabel("NFE (model evaluations)")
    ax.set_ylabel(METRICS[metric].label)
    ax.set_title(f"{METRICS[metric].label} vs NFE", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def tile(images: Any, shape: tuple[int, int], per_side: int) -> Any:
    """``per_side^2`` images [k, h*w] (model space, [-1, 1]) as one numpy mosaic with 1-pixel gaps (NaN)."""
    import numpy as np

    h, w = shape
    out = np.full((per_side * (h + 1) - 1, per_side * (w + 1) - 1), np.nan)
    arr = images.detach().cpu().double().numpy().reshape(-1, h, w)
    for i in range(min(len(arr), per_side * per_side)):
        r, c = divmod(i, per_side)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = arr[i]
    return out


def _image_figure(result: BenchResult, panels: list[str], title: str | None) -> Any:
    """Accuracy vs NFE on top; below, a grid of samples: one row per sampler, one column per step count."""
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.scheduler for r in result.rows))
    columns = _grid_columns(result, names)
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    ncols = max(len(panels), max(len(c) for c in columns.values()) + 1)
    fig = plt.figure(figsize=(2.6 * ncols, 3.6 + 2.2 * len(names)), dpi=100)
    grid = fig.add_gridspec(1 + len(names), ncols, height_ratios=[1.5] + [1.0] * len(names))
    for i, metric in enumerate(panels):
        span = ncols // len(panels)
        _metric_panel(fig.add_subplot(grid[0, i * span : (i + 1) * span]), result, metric, colors)
    _sample_grid(fig, grid, result, columns, colors)
    fig.suptitle(title or _default_title(result), fontsize=10)
    fig.tight_layout()
    return fig


def _grid_columns(result: BenchResult, names: list[str]) -> dict[str, list[int]]:
    """Step counts shown per sampler in the image grid: every step count of the run (one column each); with
    ``--until``, each sampler's own runs instead, at most :data:`GRID_COLUMNS` of them spread over its
    range and ending at its answer (or its best run)."""
    if result.until is None:
        steps = sorted({r.steps for r in result.rows})
        return dict.fromkeys(names, steps)
    out: dict[str, list[int]] = {}
    for name in names:
        last = _shown_row(result, name).steps
        own = sorted(r.steps for r in result.rows if r.scheduler == name and r.steps <= last)
        k = min(GRID_COLUMNS, len(own))
        out[name] = sorted({own[round(i * (len(own) - 1) / max(k - 1, 1))] for i in range(k)})
    return out


def _sample_grid(fig: Any, grid: Any, result: BenchResult, columns: dict[str, list[int]], colors: dict) -> None:
    """One row of sample mosaics per sampler (its ``columns``), the training data after the first row."""
    import matplotlib.pyplot as plt

    h, w = (int(v) for v in result.problem["image_shape"])
    shape = (h, w)
    nfe = {(r.scheduler, r.steps): r.nfe for r in result.rows}
    per_side = 6
    cmap = plt.get_cmap("gray_r").with_extremes(bad="white")  # the gaps between digits
    for row, (name, steps) in enumerate(columns.items(), start=1):
        for col, n in enumerate(steps):
            ax = fig.add_subplot(grid[row, col])
            ax.set_xticks([])
            ax.set_yticks([])
            key = f"{name}@{n}"
            if key in result.samples:
                ax.imshow(tile(result.samples[key], shape, per_side), cmap=cmap, vmin=-1, vmax=1)
                ax.set_title(
                    _wrap(f"{name}, {n} steps (NFE {nfe.get((name, n))})", 32), fontsize=7, color=colors[name]
                )
            else:
                ax.axis("off")
    if result.truth is not None:
        ax = fig.add_subplot(grid[1, max(len(c) for c in columns.values())])
        ax.imshow(tile(result.truth, shape, per_side), cmap=cmap, vmin=-1, vmax=1)
        ax.set_title("training data", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])


def _save(fig: Any, path: str | os.PathLike) -> Path:
    """Render ``fig`` as PNG in memory, then write it atomically (a failed write leaves the old file)."""
    import io

    import matplotlib.pyplot as plt

    from samplers.bench.runner import write_text_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return write_text_atomic(path, buf.getvalue())
