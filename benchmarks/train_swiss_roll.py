"""Train a tiny MLP denoiser on the 2-D swiss roll, then sample it with several schedulers.

Everything a training script needs comes from samplers: the noise schedule
(``schedules.DiscreteVPSchedule``), timestep sampling (``schedules.sample_timesteps_uniform``),
noising, targets and Min-SNR-gamma loss weights (``training.training_example``); sampling runs
each scheduler through ``samplers.sample``. Accuracy is the sliced Wasserstein distance (SW2) to
fresh samples of the true swiss roll (``samplers.bench``), next to three references: the same
network untrained, the exact denoiser of the data (``OracleModel``: what a perfect network would
reach with that sampler) and two independent true sample sets (the metric's noise floor).

    python benchmarks/train_swiss_roll.py                      # about a minute on one CPU
    python benchmarks/train_swiss_roll.py --seconds 10 --plot swiss.png
    python benchmarks/train_swiss_roll.py --steps 2000 --prediction-type v_prediction

The table's ``SW2 trained`` should sit between the oracle's and the untrained network's; with the
defaults it comes within a few hundredths of the oracle.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import samplers
from samplers import schedules, training
from samplers.bench.metrics import sliced_wasserstein
from samplers.bench.problems import DATA_STREAM, REFERENCE_STREAM, OracleModel, make_swissroll

NUM_TRAIN_TIMESTEPS = 1000
BETAS = dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
# Sampler name -> extra config (and its step count for about the same NFE).
SAMPLERS: dict[str, dict[str, Any]] = {
    "ddim": dict(clip_sample=False, timestep_spacing="trailing"),  # the swiss roll exceeds [-1, 1]
    "euler": dict(),
    "heun": dict(),
    "dpmpp_2m": dict(),  # only when a DPM-Solver++ scheduler is registered
}


class MLPDenoiser(torch.nn.Module):
    """``model(x [B, 2], t) -> [B, 2]``: an MLP on the sample and sinusoidal features of ``t / T``.

    ``t`` may be a scalar (the sampling loop's shared timestep) or one per sample [B] (training).
    """

    def __init__(
        self, hidden: int = 128, depth: int = 3, frequencies: int = 16, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    ) -> None:
        super().__init__()
        self.num_train_timesteps = num_train_timesteps
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), frequencies)), persistent=False)
        layers: list[torch.nn.Module] = []
        width = 2 + 2 * frequencies
        for _ in range(depth):
            layers += [torch.nn.Linear(width, hidden), torch.nn.SiLU()]
            width = hidden
        layers.append(torch.nn.Linear(width, 2))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        phase = (t / self.num_train_timesteps)[:, None] * self.freqs[None, :]
        return self.net(torch.cat([x, phase.sin(), phase.cos()], dim=1))


@dataclass
class TrainReport:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean loss per logged window


def train(
    model: torch.nn.Module,
    schedule: schedules.DiscreteVPSchedule,
    data: torch.Tensor,
    *,
    prediction_type: str = "epsilon",
    weighting: str = "min_snr",
    seconds: float = 60.0,
    steps: int | None = None,
    batch_size: int = 1024,
    lr: float = 2e-3,
    seed: int = 0,
    log_every: int = 200,
) -> TrainReport:
    """Denoising score matching on ``data`` [N, 2] until ``steps`` or ``seconds`` runs out.

    Per step: uniform integer timesteps, ``x_t = alpha_t x0 + sigma_t eps``, the target of
    ``prediction_type``, and a per-sample Min-SNR-gamma weight (Hang et al. 2023); the learning
    rate follows a cosine decay over whichever budget (steps or time) ends first.
    """
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    report = TrainReport(steps=0, seconds=0.0)
    window: list[float] = []
    began = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - began
        progress = max(elapsed / seconds if seconds > 0 else 0.0, report.steps / steps if steps else 0.0)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * progress))
        x0 = data[torch.randint(0, len(data), (batch_size,), generator=gen)]
        t = schedules.sample_timesteps_uniform(batch_size, schedule.num_train_timesteps, generator=gen)
        x_t, target, weight = training.training_example(
            schedule, x0, t, prediction_type, weighting=weighting, generator=gen
        )
        loss = (weight * (model(x_t, t) - target).pow(2).mean(dim=1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(loss.item())
        report.steps += 1
        if len(window) == log_every:
            report.losses.append(sum(window) / len(window))
            window.clear()
    if window:
        report.losses.append(sum(window) / len(window))
    report.seconds = time.perf_counter() - began
    return report


def make_scheduler(name: str, prediction_type: str) -> samplers.Scheduler:
    """A registered scheduler on the training schedule (raises KeyError/ValueError if not available)."""
    extra = SAMPLERS.get(name, {})
    return samplers.get(
        name, num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type=prediction_type, **BETAS, **extra
    )


@torch.no_grad()
def draw(model: Any, scheduler: samplers.Scheduler, n: int, steps: int, seed: int = 0) -> torch.Tensor:
    """``n`` samples [n, 2] float32 from ``model`` with ``scheduler`` over ``steps`` steps."""
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    seeds = samplers.ops.batch_seeds(seed, n)  # in-step noise keyed per sample: same draws for every model
    return samplers.sample(model, scheduler, noise, num_inference_steps=steps, seeds=seeds, progress=False)


def evaluate(
    models: dict[str, Any], names: Sequence[str], prediction_type: str, steps: int, n: int, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per available sampler: NFE and SW2 to true samples for every model in ``models``."""
    problem = make_swissroll()
    truth = problem.sample(n, stream=DATA_STREAM, seed=seed + 1)
    rows = []
    for name in names:
        try:
            scheduler = make_scheduler(name, prediction_type)
        except (KeyError, ValueError, TypeError) as exc:
            print(f"  (skipping {name}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:80]})")
            continue
        # About the same number of network evaluations for every sampler.
        sampler_steps = max(1, round(steps / scheduler.nfe_per_step))
        row: dict[str, Any] = {"sampler": name, "steps": sampler_steps}
        for label, model in models.items():
            out = draw(model, scheduler, n, sampler_steps, seed)
            row[label] = sliced_wasserstein(out, truth)
            row[f"{label}_samples"] = out
        row["nfe"] = len(scheduler.timesteps)
        rows.append(row)
    return rows


def noise_floor(n: int, seed: int = 0) -> float:
    """SW2 between two independent true sample sets of size ``n`` (no sampler can do better on average)."""
    problem = make_swissroll()
    first = problem.sample(n, stream=DATA_STREAM, seed=seed + 1)
    return sliced_wasserstein(first, problem.sample(n, stream=REFERENCE_STREAM, seed=seed + 1))


def plot(rows: list[dict[str, Any]], truth: torch.Tensor, path: str) -> None:
    """Scatter of each sampler's trained samples over the true swiss roll (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        ax.scatter(truth[:, 0], truth[:, 1], s=1, c="0.8")
        ax.scatter(row["trained_samples"][:, 0], row["trained_samples"][:, 1], s=1, c="C0")
        ax.set_title(f"{row['sampler']} (NFE {row['nfe']}): SW2 {row['trained']:.3f}", fontsize=9)
        ax.set_xlim(-3.2, 3.2)
        ax.set_ylim(-3.2, 3.2)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, train, sample, print the table; returns the numbers (for tests and notebooks)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="training time budget (default 60)")
    parser.add_argument("--steps", type=int, default=None, help="training step budget (whichever ends first)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction", "sample"])
    parser.add_argument("--weighting", default="min_snr", choices=list(training.WEIGHTINGS))
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated scheduler names")
    parser.add_argument("--sample-nfe", type=int, default=20, help="network evaluations per sample (default 20)")
    parser.add_argument("--samples", type=int, default=2000, help="samples per sampler for the metric")
    parser.add_argument("--dataset", type=int, default=50_000, help="training set size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: a net this small only loses to thread hand-offs)",
    )
    parser.add_argument("--plot", default=None, help="write a scatter PNG here")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # run() may be called inside a larger process (tests, notebooks)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    problem = make_swissroll()
    schedule = schedules.DiscreteVPSchedule.from_config(num_train_timesteps=NUM_TRAIN_TIMESTEPS, **BETAS)
    data = problem.sample(args.dataset, seed=args.seed + 100).float()
    untrained = MLPDenoiser(args.hidden, args.depth).eval()
    model = MLPDenoiser(args.hidden, args.depth)
    model.load_state_dict(untrained.state_dict())  # same initial weights: the baseline is this net before training
    report = train(
        model,
        schedule,
        data,
        prediction_type=args.prediction_type,
        weighting=args.weighting,
        seconds=args.seconds,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    model.eval()
    first, last = (report.losses[0], report.losses[-1]) if report.losses else (float("nan"), float("nan"))
    print(
        f"trained {report.steps} steps in {report.seconds:.1f} s ({args.prediction_type}, {args.weighting}); "
        f"loss {first:.4f} -> {last:.4f}"
    )

    models = {"trained": model, "untrained": untrained, "oracle": OracleModel(problem, schedule, args.prediction_type)}
    names = [n.strip() for n in args.samplers.split(",") if n.strip()]
    rows = evaluate(models, names, args.prediction_type, args.sample_nfe, args.samples, args.seed)
    floor = noise_floor(args.samples, args.seed)
    print(f"\nSW2 to {args.samples} true swiss-roll samples (noise floor between two true sets: {floor:.4f})")
    print(f"{'sampler':<12}{'NFE':>5}{'SW2 trained':>14}{'SW2 untrained':>16}{'SW2 oracle':>13}")
    for row in rows:
        print(
            f"{row['sampler']:<12}{row['nfe']:>5}{row['trained']:>14.4f}{row['untrained']:>16.4f}{row['oracle']:>13.4f}"
        )
    if args.plot:
        plot(rows, problem.sample(args.samples, stream=DATA_STREAM, seed=args.seed + 1), args.plot)
        print(f"wrote {args.plot}")
    return {"report": report, "rows": rows, "noise_floor": floor}


def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
