"""Train the ``digits`` benchmark's denoiser and classifier, and write ``samplers/bench/data/digits.pt``.

    python benchmarks/train_digits.py                   # the shipped file: 2 CPU threads, about 2.5 minutes
    python benchmarks/train_digits.py --out /tmp/d.pt   # the same bytes elsewhere (same machine and torch)

Data: scikit-learn's 1,797 real 8x8 digits, split by a fixed rule (``i % 5 == 4`` held out), pixels
scaled to [-1, 1] (:mod:`samplers.bench.digits`).

Denoiser: an MLP x0-predictor with EDM preconditioning (Karras et al. 2022, "Elucidating the design
space", sec. 5): prediction type ``sample`` (x0), valid on every schedule because it is told the
noise level ``s = sigma / alpha`` itself (see :class:`~samplers.bench.digits.DigitsDenoiser`). The
training levels: ``log s`` half from EDM's log-normal ``N(-1.2, 1.2^2)``, half uniform on
``[log 0.002, log 500]`` (so the high levels that a DDPM-linear schedule starts from, ``s = 157``,
are trained on), and 2 % pure noise (``alpha = 0``, flow matching's first level); EDM's loss weight
``1 / c_out^2``. Adam, cosine learning-rate decay, and an exponential moving average of the weights
(the shipped weights are the average).

Classifier: a small MLP trained with cross-entropy on the training split (dropout, weight decay,
one-pixel random shifts as augmentation); its held-out accuracy goes into the metadata.

Determinism: a fixed number of optimizer steps (not a time budget), every random draw from seeded
``torch.Generator`` objects, 2 threads; the same machine and torch build write the same bytes.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import sys
import time
from pathlib import Path

import torch

from samplers.bench import digits as D

TRAIN_COMMAND = "python benchmarks/train_digits.py"


def _levels(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) [n, 1] float32 with alpha^2 + sigma^2 = 1, drawn from the training level mix."""
    pick = torch.rand(n, generator=gen)
    lognormal = -1.2 + 1.2 * torch.randn(n, generator=gen)
    lo, hi = math.log(D.LEVEL_MIN), math.log(D.LEVEL_MAX)
    uniform = lo + (hi - lo) * torch.rand(n, generator=gen)
    log_s = torch.where(pick < 0.5, lognormal, uniform)
    s = log_s.exp()
    alpha = 1.0 / torch.sqrt(1.0 + s * s)
    sigma = s * alpha
    pure = torch.rand(n, generator=gen) < 0.02
    alpha = torch.where(pure, torch.zeros_like(alpha), alpha)
    sigma = torch.where(pure, torch.ones_like(sigma), sigma)
    return alpha[:, None], sigma[:, None]


def train_denoiser(
    data: torch.Tensor, steps: int, seed: int, batch: int = 256, lr: float = 2e-3, ema_decay: float = 0.999
) -> tuple[D.DigitsDenoiser, float, list[float]]:
    """EDM-weighted denoising on ``data`` [N, 64]; returns (EMA network, final loss, loss per 1/20 of the run)."""
    torch.manual_seed(seed)  # the initial weights
    gen = torch.Generator().manual_seed(seed + 1)
    net = D.DigitsDenoiser()
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    warmup = max(1, steps // 50)
    window, history = [], []
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        x0 = data[torch.randint(0, len(data), (batch,), generator=gen)]
        alpha, sigma = _levels(batch, gen)
        x = alpha * x0 + sigma * torch.randn(x0.shape, generator=gen)
        c_out = sigma * D.SIGMA_DATA / torch.sqrt(sigma * sigma + D.SIGMA_DATA**2 * alpha * alpha)
        loss = (((net(x, alpha, sigma) - x0) / c_out) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        window.append(loss.item())
        if len(window) == max(1, steps // 20):
            history.append(sum(window) / len(window))
            window = []
    if window:
        history.append(sum(window) / len(window))
    return ema, eval_denoiser(ema, data, seed + 2), history


@torch.no_grad()
def eval_denoiser(net: torch.nn.Module, data: torch.Tensor, seed: int, repeats: int = 8) -> float:
    """The training loss of ``net`` on ``data``, averaged over ``repeats`` fixed draws of levels and noise."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(repeats):
        alpha, sigma = _levels(len(data), gen)
        x = alpha * data + sigma * torch.randn(data.shape, generator=gen)
        c_out = sigma * D.SIGMA_DATA / torch.sqrt(sigma * sigma + D.SIGMA_DATA**2 * alpha * alpha)
        total += float((((net(x, alpha, sigma) - data) / c_out) ** 2).mean())
    return total / repeats


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each 8x8 image by -1, 0 or +1 pixel in each direction (background -1 fills in)."""
    img = x.view(-1, 8, 8)
    pad = torch.nn.functional.pad(img, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (len(x),), generator=gen)
    dy = torch.randint(0, 3, (len(x),), generator=gen)
    rows = (dy[:, None] + torch.arange(8)[None, :])[:, :, None].expand(-1, 8, 8)
    cols = (dx[:, None] + torch.arange(8)[None, :])[:, None, :].expand(-1, 8, 8)
    return pad[torch.arange(len(x))[:, None, None], rows, cols].reshape(-1, 64)


def train_classifier(
    data: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int, batch: int = 64
) -> tuple[D.DigitsClassifier, float]:
    """Cross-entropy with shifts as augmentation; returns (network in eval mode, final epoch's mean loss)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    net = D.DigitsClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-3)
    last = 0.0
    steps_per_epoch = math.ceil(len(data) / batch)
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        order = torch.randperm(len(data), generator=gen)
        total = 0.0
        net.train()
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            logits = net(_shift(data[idx], gen))
            loss = torch.nn.functional.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        last = total / steps_per_epoch
    return net.eval(), last


@torch.no_grad()
def accuracy(net: D.DigitsClassifier, data: torch.Tensor, labels: torch.Tensor) -> float:
    return float((net.eval()(data).argmax(1) == labels).to(torch.float64).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(D.WEIGHTS_PATH), help="where to write the weights (.pt)")
    parser.add_argument("--steps", type=int, default=12000, help="denoiser optimizer steps")
    parser.add_argument("--classifier-epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the shipped file used 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    began = time.perf_counter()
    pixels, _ = D.load_pixels()
    split = D.split_data()
    train = split["train"].to(torch.float32)
    held = split["heldout"].to(torch.float32)

    t0 = time.perf_counter()
    classifier, cls_loss = train_classifier(train, split["train_labels"], args.classifier_epochs, args.seed + 100)
    acc_train = accuracy(classifier, train, split["train_labels"])
    acc_held = accuracy(classifier, held, split["heldout_labels"])
    t_cls = time.perf_counter() - t0
    print(f"classifier: {t_cls:.1f} s, loss {cls_loss:.4f}, accuracy train {acc_train:.4f}, held out {acc_held:.4f}")

    t0 = time.perf_counter()
    denoiser, final_loss, history = train_denoiser(train, args.steps, args.seed)
    t_den = time.perf_counter() - t0
    held_loss = eval_denoiser(denoiser, held, args.seed + 2)
    print(f"denoiser: {t_den:.1f} s, {args.steps} steps, loss by twentieths {[round(v, 4) for v in history]}")
    print(f"denoiser EMA loss: train split {final_loss:.4f}, held out {held_loss:.4f}")

    command = TRAIN_COMMAND + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v != parser.get_default(k)
    )
    meta = {
        "format": 1,
        "training_command": command,
        "seed": args.seed,
        "threads": args.threads,
        "torch_version": str(torch.__version__),
        "data": "sklearn.datasets.load_digits (1,797 real 8x8 digits, 16 grey levels)",
        "data_sha256": D.data_sha256(pixels),
        "data_hash_rule": D.DATA_HASH_RULE,
        "split_rule": D.SPLIT_RULE,
        "scaling": "x = pixel / 8 - 1",
        "parameterization": "EDM preconditioning, x0 (sample) prediction, level c = (2/pi) atan2(sigma, 0.75 alpha)",
        "sigma_data": D.SIGMA_DATA,
        "train_levels": [D.LEVEL_MIN, D.LEVEL_MAX],
        "denoiser_config": denoiser.config(),
        "denoiser_steps": args.steps,
        "denoiser_final_loss": final_loss,
        "denoiser_heldout_loss": held_loss,
        "denoiser_loss_history": history,
        "classifier_config": classifier.config(),
        "classifier_epochs": args.classifier_epochs,
        "classifier_final_loss": cls_loss,
        "classifier_train_accuracy": acc_train,
        "classifier_heldout_accuracy": acc_held,
    }
    blob = {
        "denoiser": {k: v.detach().clone().contiguous() for k, v in denoiser.state_dict().items()},
        "classifier": {k: v.detach().clone().contiguous() for k, v in classifier.state_dict().items()},
        "meta": meta,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    size = out.stat().st_size / 1024
    print(f"wrote {out} ({size:.0f} KiB, sha256 {digest[:16]}...) in {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
