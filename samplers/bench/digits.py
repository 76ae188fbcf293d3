"""The ``digits`` data, networks and shipped weights: a real trained denoiser on real data.

Data: the 1,797 handwritten 8x8 digits that scikit-learn ships in its wheel
(``sklearn.datasets.load_digits``: 16 grey levels 0..16, no download). Pixels map to model space
as ``x = v / 8 - 1`` (``[-1, 1]``, 64 dims). The split is a fixed rule, no random numbers: sample
``i`` is held out when ``i % 5 == 4`` (359 held out, 1,438 for training); the held-out split is the
benchmark's noise floor.

Denoiser (:class:`DigitsDenoiser`): an MLP with the EDM preconditioning of Karras et al. 2022
(sec. 5, table 1), written for a model-space input ``x = alpha x0 + sigma eps`` of any schedule:
with ``s = sigma / alpha`` (the VE noise level) and ``sigma_data = SIGMA_DATA``,

    r = sqrt(sigma^2 + sigma_data^2 alpha^2)
    D(x; alpha, sigma) = (sigma_data^2 alpha / r^2) x + (sigma sigma_data / r) F(x / r, c(s))

which is EDM's ``c_skip y + c_out F(c_in y, c_noise)`` for ``y = x / alpha``, and stays finite at
``alpha = 0`` (pure noise: flow matching's and VP-cosine's first level). The network ``F`` is told
the level through ``c = (2 / pi) atan2(sigma, sigma_data alpha)`` in [0, 1] (the angle of ``s``
against ``sigma_data``): analytic in the level everywhere, including ``s = 0`` and ``s = inf``.
Two properties of the benchmark depend on that choice:

* near the data the ODE's right side is smooth in ``s`` (not in ``log s``), so a sampler's last jump
  from its smallest level ``s_min`` to ``s = 0`` errs by ``O(s_min^2)``, as with an exact denoiser;
  with EDM's ``log(s)`` condition that jump erred by ``O(s_min)`` (0.012 at ``s_min = 0.01``) and
  hid every sampler's order behind it;
* at pure noise it is smooth in the angle ``phi = atan2(sigma, alpha)``, where the reference solver
  (:mod:`samplers.bench.reference`) starts; a condition like ``tanh(log s)`` behaves as
  ``sqrt(pi/2 - phi)`` there and held a fourth-order solver to second order.

So the one network is an x0 (``sample``) predictor for every schedule family; the benchmark
converts its x0 to whatever prediction type a sampler takes.

Training (``benchmarks/train_digits.py``) draws ``log s`` half from EDM's log-normal
``N(-1.2, 1.2^2)`` and half uniform over ``[log 0.002, log 500]``, plus 2 % pure noise, with EDM's
loss weight (the target of ``F`` has unit variance at every level).

Classifier (:class:`DigitsClassifier`): a two-hidden-layer MLP on the same pixels; its second
hidden layer (64 features) is the feature space of the Frechet distance (an FID analogue).

Weights: ``samplers/bench/data/digits.pt``, a plain ``torch.save`` dict
``{"denoiser": state_dict, "classifier": state_dict, "meta": {...}}`` loaded with
``weights_only=True``; ``meta`` records the training command, the seed, the data hash, the split
rule, the final losses, the classifier's held-out accuracy and the torch version.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

F64 = torch.float64
NUM_DIGITS = 1797
PIXELS = 64
SIGMA_DATA = 0.75  # std of the training pixels in model space (0.752), EDM's sigma_data
SPLIT_RULE = "held out: i % 5 == 4 (359 samples); train: the other 1438, in index order"
DATA_HASH_RULE = "sha256 of load_digits().data as uint8 [1797, 64], C order"
WEIGHTS_PATH = Path(__file__).with_name("data") / "digits.pt"
LEVEL_MIN, LEVEL_MAX = 0.002, 500.0  # VE levels the denoiser was trained on (plus s = inf)


class DigitsDataError(RuntimeError):
    """The digits data or the shipped weights cannot be used (missing scikit-learn, hash mismatch)."""


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: ``(pixels [1797, 64] uint8 in 0..16, labels [1797] int64)`` from scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DigitsDataError(
            "the digits problem needs scikit-learn for its data set (pip install 'samplers[bench]')"
        ) from None
    bunch = load_digits()
    pixels = torch.as_tensor(bunch.data).to(torch.uint8)
    labels = torch.as_tensor(bunch.target).to(torch.int64)
    if pixels.shape != (NUM_DIGITS, PIXELS) or not torch.equal(pixels.to(F64), torch.as_tensor(bunch.data)):
        raise DigitsDataError(f"load_digits() returned unexpected data of shape {tuple(bunch.data.shape)}")
    return pixels, labels


def data_sha256(pixels: torch.Tensor) -> str:
    """SHA-256 (hex) of the pixel array as uint8 bytes in C order (see :data:`DATA_HASH_RULE`)."""
    return hashlib.sha256(pixels.to(torch.uint8).contiguous().numpy().tobytes()).hexdigest()


def split_indices(n: int = NUM_DIGITS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train [1438], heldout [359])`` indices by :data:`SPLIT_RULE` (no randomness)."""
    idx = torch.arange(n)
    held = idx % 5 == 4
    return idx[~held], idx[held]


def to_model_space(pixels: torch.Tensor) -> torch.Tensor:
    """Grey levels 0..16 -> ``[-1, 1]`` float64."""
    return pixels.to(F64) / 8.0 - 1.0


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Model space -> grey levels (float, unclipped): the inverse of :func:`to_model_space`."""
    return (x.to(F64) + 1.0) * 8.0


def split_data() -> dict[str, torch.Tensor]:
    """Model-space data and labels of both splits: ``train``, ``train_labels``, ``heldout``, ``heldout_labels``."""
    pixels, labels = load_pixels()
    x = to_model_space(pixels)
    tr, ho = split_indices()
    return {"train": x[tr], "train_labels": labels[tr], "heldout": x[ho], "heldout_labels": labels[ho]}


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


def noise_condition(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``c = (2 / pi) atan2(sigma, sigma_data alpha)`` in [0, 1]: 0 without noise, 1 at pure noise (alpha = 0)."""
    return torch.atan2(sigma, SIGMA_DATA * alpha) * (2.0 / math.pi)


class DigitsDenoiser(nn.Module):
    """x0-denoiser ``D(x, alpha, sigma)`` for 64-pixel digits (EDM preconditioning, see the module doc).

    ``forward(x [B, 64], alpha, sigma) -> x0_hat [B, 64]``; alpha and sigma are scalars or [B] / [B, 1].
    The trunk is an MLP of ``depth`` residual blocks of width ``width`` with the noise embedding
    added before every block.
    """

    freqs: torch.Tensor  # a buffer (register_buffer): nn.Module's attribute type would be Tensor | Module

    def __init__(self, width: int = 160, depth: int = 3, frequencies: int = 6, embedding: int = 96) -> None:
        super().__init__()
        self.width, self.depth, self.frequencies, self.embedding = width, depth, frequencies, embedding
        # phases k pi c, c in [0, 1]: F is a slowly varying (and analytic) function of the level
        freqs = math.pi * torch.arange(1, frequencies + 1, dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)
        self.inp = nn.Linear(PIXELS, width)
        self.emb = nn.Sequential(nn.Linear(2 * frequencies + 1, embedding), nn.SiLU(), nn.Linear(embedding, embedding))
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.cond = nn.ModuleList(nn.Linear(embedding, width) for _ in range(depth))
        self.out = nn.Linear(width, PIXELS)

    def config(self) -> dict[str, int]:
        return {"width": self.width, "depth": self.depth, "frequencies": self.frequencies, "embedding": self.embedding}

    def raw(self, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``F(u, c)``: u [B, 64] unit-scale input, c [B] the level (:func:`noise_condition`)."""
        phase = c[:, None] * self.freqs.to(u.dtype)
        e = self.emb(torch.cat([c[:, None], phase.sin(), phase.cos()], dim=1))
        h = self.inp(u)
        for block, cond in zip(self.blocks, self.cond, strict=True):
            h = h + block(nn.functional.silu(h + cond(e)))
        return self.out(nn.functional.silu(h))

    def forward(self, x: torch.Tensor, alpha: Any, sigma: Any) -> torch.Tensor:
        b = x.shape[0]
        a = torch.as_tensor(alpha, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(b, 1)
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(b, 1)
        r2 = s * s + SIGMA_DATA**2 * a * a
        r = r2.sqrt()
        c = noise_condition(a, s).reshape(b)
        return (SIGMA_DATA**2 * a / r2) * x + (s * SIGMA_DATA / r) * self.raw(x / r, c)


class DigitsClassifier(nn.Module):
    """``logits [B, 10]`` of 64-pixel digits (model space); :meth:`features` is the 64-d second hidden layer."""

    def __init__(self, hidden: int = 256, features: int = 64) -> None:
        super().__init__()
        self.hidden, self.num_features = hidden, features
        self.body = nn.Sequential(
            nn.Linear(PIXELS, hidden), nn.SiLU(), nn.Dropout(0.2), nn.Linear(hidden, features), nn.SiLU()
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(features, 10))

    def config(self) -> dict[str, int]:
        return {"hidden": self.hidden, "features": self.num_features}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# --------------------------------------------------------------------------------------------
# Shipped weights
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def load_weights(path: str | None = None) -> dict[str, Any]:
    """The weights file as a dict (``denoiser``, ``classifier``, ``meta``); cached per path."""
    p = Path(path) if path is not None else WEIGHTS_PATH
    if not p.is_file():
        raise DigitsDataError(f"digits weights not found at {str(p)!r} (run benchmarks/train_digits.py)")
    blob = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("denoiser", "classifier", "meta"):
        if key not in blob:
            raise DigitsDataError(f"digits weights {str(p)!r} have no {key!r} entry")
    return blob


def load_models(
    path: str | None = None, dtype: torch.dtype = F64, check_data: bool = True
) -> tuple[DigitsDenoiser, DigitsClassifier, dict[str, Any]]:
    """The trained denoiser and classifier in ``dtype`` (eval mode, no grad) and the metadata.

    With ``check_data`` the local scikit-learn data must hash to the value the weights were trained
    on (:class:`DigitsDataError` otherwise: a different data set would make every number meaningless).
    """
    blob = load_weights(path)
    meta = dict(blob["meta"])
    if check_data:
        got = data_sha256(load_pixels()[0])
        if got != meta.get("data_sha256"):
            raise DigitsDataError(
                f"scikit-learn's digits data hash {got[:16]}... differs from the one the weights were trained on "
                f"({str(meta.get('data_sha256'))[:16]}...)"
            )
    den = DigitsDenoiser(**meta["denoiser_config"])
    den.load_state_dict(blob["denoiser"])
    cls = DigitsClassifier(**meta["classifier_config"])
    cls.load_state_dict(blob["classifier"])
    for net in (den, cls):
        net.to(dtype).eval().requires_grad_(False)
    return den, cls, meta
