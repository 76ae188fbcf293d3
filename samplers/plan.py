"""How a sampler declares its model calls, and the plan the protocol builds from them.

A sampler (built-in or plugin) states, for every model evaluation of a run, one :class:`Call`:
the model time and the schedule there, and the :class:`Update` that follows in named terms::

    prev = sample * x + x0 * x0_hat + eps * eps_hat + out * model_output + uncond * uncond_output
           + noise * z + sum(history[name] * kept[name])

where ``kept[name]`` is a tensor an earlier call of the same run kept (``Call.keep``): its input
sample, or its estimate (the ``x0_hat`` the op writes, or ``eps_hat`` with ``estimate="eps"``).
:func:`build_plan` turns the list into a :class:`Plan` once, in ``set_timesteps``: float64 rows of
the fused op's coefficients (``samplers.ops.reference.COEFF_NAMES``), history slots and the
lifetime of every kept tensor. ``step()`` is then a table lookup plus one fused op.

Spaces: the model sees ``input_scale * x`` and the schedule there is ``(alpha, sigma)`` (model
space, ``x_t = alpha x0 + sigma eps``). The sample ``x`` itself lives in the sampler's working
space, where ``x = alpha_w x0 + sigma_w eps`` with ``alpha_w = alpha / input_scale`` and
``sigma_w = sigma / input_scale``: model space when ``input_scale = 1``, k-diffusion's sigma space
(``alpha_w = 1``, ``sigma_w = sigma / alpha``) when ``input_scale = alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from samplers import parameterization
from samplers.ops.reference import COEFF, COEFF_NAMES, HISTORY_COLUMNS, MAX_HISTORY, MAX_STREAM, NUM_COEFFS

F64 = torch.float64
SAMPLE = "sample"  # Call.keep: keep the call's input sample
ESTIMATE = "estimate"  # Call.keep: keep the call's estimate (x0_hat, or eps_hat with estimate="eps")
ESTIMATES = ("x0", "eps")
# The noise columns never checked for finiteness of a *plan* (lim = inf means "no clamp").
_FINITE_COLUMNS = [COEFF[k] for k in COEFF_NAMES if k != "lim"]


@dataclass(frozen=True)
class Update:
    """The update after one model call, as named weights of the tensors it combines.

    ``eps`` is the noise estimate implied by the call (``(x - alpha_w x0_hat) / sigma_w``), taken from
    the clamped ``x0_hat``, or with ``eps_from_raw`` from the unclamped ``p x + q out`` (DDIM's eq. 12
    with clipping, as diffusers does). ``history`` maps names kept by earlier calls to their weights.
    """

    sample: float = 0.0
    x0: float = 0.0
    eps: float = 0.0
    out: float = 0.0
    uncond: float = 0.0
    noise: float = 0.0
    history: Mapping[str, float] = field(default_factory=dict)
    eps_from_raw: bool = False


@dataclass(frozen=True)
class Call:
    """One model evaluation of a run and the update that follows it.

    Attributes:
        t: the model time fed to the model.
        alpha, sigma: the schedule at the call in model space (what the model output is read with).
        update: the :class:`Update` producing the next sample.
        input_scale: the model sees ``input_scale * x`` (``alpha`` for sigma-space samplers).
        estimate: what the op writes and ``keep`` can keep: ``"x0"`` (default) or ``"eps"``.
        clip: clamp ``x0_hat`` to ``[-clip, clip]`` (``estimate="x0"`` only).
        keep: ``{name: SAMPLE or ESTIMATE}``: tensors later calls use by name (a later keep of the
            same name replaces the earlier one).
        brownian: ``(level_from, level_to)``, sigma-space levels of the Brownian increment this call's
            noise stands for (needed by ``noise="brownian"``); ``None`` for calls without noise.
        tag: a label the sampler reads back at step time (``Plan.tags``), e.g. for data-dependent calls.
    """

    t: float
    alpha: float
    sigma: float
    update: Update
    input_scale: float = 1.0
    estimate: str = "x0"
    clip: float | None = None
    keep: Mapping[str, str] = field(default_factory=dict)
    brownian: tuple[float, float] | None = None
    tag: str = ""


def brownian_time(level: float) -> float:
    """Brownian time in [0, 1) of a sigma-space level: ``level / (1 + level)`` (flow time on a flow schedule).

    Fixed for every run, so a seed's path is one function of the noise level at any step count.
    """
    if math.isinf(level):
        return 1.0
    return level / (1.0 + level)


@dataclass
class Plan:
    """What ``set_timesteps`` computes: one entry per model call.

    Attributes:
        timesteps: [N] model times fed to the model, in call order.
        rows: [N, NUM_COEFFS] float64 coefficients of the fused op per call.
        input_scale: [N] float64, the model sees ``input_scale * sample``.
        model_alpha, model_sigma: [N] float64, the schedule at each call in the model's space.
        use: per call, names of kept tensors fed as history (slot j weighed by column h_j).
        keep: per call, ``(name, SAMPLE or ESTIMATE)`` pairs kept for later calls.
        drop: per call, names no later call needs (released after the call).
        x0_from_estimate: per call, ``(p, q)`` with ``x0_hat = p * x + q * out`` (out guided) where the
            estimate is not x0 (``None`` where it is): ``pred_original_sample`` of such calls.
        init_noise_sigma: std of the initial sample.
        tags: per call, the sampler's label (``Call.tag``).
        noise_intervals: per call, the ``(level_from, level_to)`` its noise stands for (``Call.brownian``),
            or None; what a k-diffusion ``noise_sampler(sigma, sigma_next)`` is asked for.
        sigmas: sigma-space levels of the run (diffusers' ``scheduler.sigmas``), or None.
        extras: per-sampler data built with the plan (swapped in with it, never half-updated).
    """

    timesteps: torch.Tensor
    rows: torch.Tensor
    input_scale: torch.Tensor
    model_alpha: torch.Tensor
    model_sigma: torch.Tensor
    use: list[tuple[str, ...]] = field(default_factory=list)
    keep: list[tuple[tuple[str, str], ...]] = field(default_factory=list)
    drop: list[tuple[str, ...]] = field(default_factory=list)
    x0_from_estimate: list[tuple[float, float] | None] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    noise_intervals: list[tuple[float, float] | None] = field(default_factory=list)
    init_noise_sigma: float = 1.0
    sigmas: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.timesteps)
        if self.rows.shape != (n, NUM_COEFFS):
            raise ValueError(f"plan rows must be [{n}, {NUM_COEFFS}], got {tuple(self.rows.shape)}")
        bad = ~torch.isfinite(self.rows[:, _FINITE_COLUMNS])
        if bool(bad.any()):
            call = int(bad.any(dim=1).nonzero()[0])
            values = dict(zip(COEFF_NAMES, self.rows[call].tolist(), strict=True))
            raise ValueError(
                f"non-finite update coefficient at call {call} (timestep {float(self.timesteps[call])}): "
                f"{values}; the schedule reaches alpha=0 or sigma=0 where this prediction type cannot be inverted"
            )
        self.use = self.use or [()] * n
        self.keep = self.keep or [()] * n
        self.drop = self.drop or [()] * n
        self.x0_from_estimate = self.x0_from_estimate or [None] * n
        self.tags = self.tags or [""] * n
        self.noise_intervals = self.noise_intervals or [None] * n
        self.stochastic_calls = [bool(r != 0) for r in self.rows[:, COEFF["c"]]]
        # Host copies as Python numbers: what a step reads per call (constants to torch.compile, no sync)
        self.times: list[float] = self.timesteps.tolist()
        self.scales: list[float] = self.input_scale.tolist()
        self.unit_scale = all(v == 1.0 for v in self.scales)
        # A timestep names its call only when no other call's time lies within the lookup tolerance
        # (callers hand back float32 timesteps; two calls 1e-5 apart look the same then).
        ordered = sorted(self.times)
        distinct = all(b - a > 2e-4 * max(1.0, abs(b)) for a, b in zip(ordered, ordered[1:], strict=False))
        self._memoryless = not any(self.use) and distinct

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def stochastic(self) -> bool:
        """Whether any call of this run draws noise."""
        return any(self.stochastic_calls)

    @property
    def memoryless(self) -> bool:
        """Whether every call depends on that call alone (no history) and the timesteps name the calls
        (no repeats): then calls may come in any order, and a timestep says which call it is."""
        return self._memoryless

    @property
    def call_levels(self) -> torch.Tensor:
        """[N] float64: the sigma-space noise level ``sigma / alpha`` the model sees at each call."""
        return self.model_sigma / self.model_alpha

    @property
    def inverts(self) -> bool:
        """Whether this run goes from data to noise (an inversion such as ``ddim_inverse``): its noise level
        ``sigma / alpha`` at the last call is above the first call's. False for a run of fewer than two calls
        (no direction to read)."""
        if len(self.model_sigma) < 2:
            return False
        levels = self.call_levels
        return float(levels[-1]) > float(levels[0])


def estimate_coefficients(
    prediction_type: str, alpha: torch.Tensor, sigma: torch.Tensor, input_scale: torch.Tensor, estimate: str = "x0"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, q)`` with ``estimate = p * x + q * out`` for a model that saw ``input_scale * x`` (float64 [N]).

    ``x0_hat`` from the parameterization's inverse; ``eps_hat = (x - alpha_w x0_hat) / sigma_w`` in the
    working space (``alpha_w = alpha / input_scale``, ``sigma_w = sigma / input_scale``).
    """
    p, q = parameterization.x0_coefficients(prediction_type, alpha, sigma)
    p = torch.as_tensor(p, dtype=F64) * input_scale
    q = torch.as_tensor(q, dtype=F64) + 0 * input_scale
    if estimate == "x0":
        return p, q
    alpha_w, sigma_w = alpha / input_scale, sigma / input_scale
    return (1 - alpha_w * p) / sigma_w, -alpha_w * q / sigma_w


def coefficient_rows(n: int, **columns: object) -> torch.Tensor:
    """[n, NUM_COEFFS] float64 rows; unnamed columns get identity defaults (x0 unclamped, w = 1)."""
    rows = torch.zeros(n, NUM_COEFFS, dtype=F64)
    rows[:, COEFF["lim"]] = math.inf
    rows[:, COEFF["div"]] = 1.0
    rows[:, COEFF["w"]] = 1.0
    for name, value in columns.items():
        rows[:, COEFF[name]] = torch.as_tensor(value, dtype=F64)
    return rows


def _check_call(index: int, call: Call) -> None:
    if call.estimate not in ESTIMATES:
        raise ValueError(f"call {index}: estimate must be one of {ESTIMATES}, got {call.estimate!r}")
    if call.clip is not None and call.estimate != "x0":
        raise ValueError(f"call {index}: clip applies to an x0 estimate, not to estimate={call.estimate!r}")
    for name, what in call.keep.items():
        if what not in (SAMPLE, ESTIMATE):
            raise ValueError(f"call {index}: keep[{name!r}] must be {SAMPLE!r} or {ESTIMATE!r}, got {what!r}")
    if len(call.update.history) > MAX_HISTORY:
        raise ValueError(
            f"call {index} uses {len(call.update.history)} kept tensors; the fused update takes at most {MAX_HISTORY}"
        )


def _columns(
    update: Update, estimate: str, p: float, q: float, x0_p: float, x0_q: float, alpha_w: float, sigma_w: float
) -> dict[str, float]:
    """The op's (a, b, e, u, c) for one call: every named term folded onto (x, estimate, out, uncond, z).

    ``(p, q)`` give the call's estimate and ``(x0_p, x0_q)`` its ``x0_hat = x0_p x + x0_q out``.
    """
    a, b, e = update.sample, update.x0, update.out
    if estimate == "x0":
        if update.eps:
            if update.eps_from_raw:  # eps from p x + q out, before any clamp
                a += update.eps * (1 - alpha_w * p) / sigma_w
                e -= update.eps * alpha_w * q / sigma_w
            else:
                a += update.eps / sigma_w
                b -= update.eps * alpha_w / sigma_w
    else:  # the estimate is eps; x0_hat is read from (x, out) directly (valid at alpha = 0 too)
        b = update.eps
        a += update.x0 * x0_p
        e += update.x0 * x0_q
    return {"a": a, "b": b, "e": e, "u": update.uncond, "c": update.noise}


def build_plan(
    calls: Sequence[Call],
    prediction_type: str,
    *,
    init_noise_sigma: float,
    brownian: bool = False,
    sigmas: torch.Tensor | None = None,
    extras: dict | None = None,
) -> Plan:
    """The plan for a list of calls: coefficient rows, history slots and lifetimes, all checked.

    Raises ``ValueError`` naming the call for an unknown kept name, too many history tensors, an
    estimate that cannot be read at a level (alpha or sigma zero where the prediction type needs
    it), or, with ``brownian``, a noisy call that declares no Brownian interval.
    """
    n = len(calls)
    if n == 0:
        raise ValueError("a plan needs at least one call")
    if n >= MAX_STREAM:
        raise ValueError(f"a plan holds at most {MAX_STREAM - 1} calls, got {n}")
    for i, call in enumerate(calls):
        _check_call(i, call)
    alpha = torch.tensor([c.alpha for c in calls], dtype=F64)
    sigma = torch.tensor([c.sigma for c in calls], dtype=F64)
    scale = torch.tensor([c.input_scale for c in calls], dtype=F64)
    rows, x0_p, x0_q = _estimate_rows(calls, prediction_type, alpha, sigma, scale)
    use, last_use = _update_rows(rows, calls, x0_p.tolist(), x0_q.tolist(), brownian)
    # A kept tensor lives until its last use; a keep no later call reads is not stored at all.
    drop: list[list[str]] = [[] for _ in range(n)]
    for name, i in last_use.items():
        drop[i].append(name)
    keep = [tuple((k, v) for k, v in c.keep.items() if last_use.get(k, -1) > i) for i, c in enumerate(calls)]
    x0_from = [None if c.estimate == "x0" else (float(x0_p[i]), float(x0_q[i])) for i, c in enumerate(calls)]
    return Plan(
        timesteps=torch.tensor([c.t for c in calls], dtype=F64),
        rows=rows,
        input_scale=scale,
        model_alpha=alpha,
        model_sigma=sigma,
        use=use,
        keep=keep,
        drop=[tuple(d) for d in drop],
        x0_from_estimate=x0_from,
        tags=[c.tag for c in calls],
        noise_intervals=[c.brownian if c.update.noise else None for c in calls],
        init_noise_sigma=float(init_noise_sigma),
        sigmas=sigmas,
        extras=dict(extras or {}),
    )


def _estimate_rows(
    calls: Sequence[Call], prediction_type: str, alpha: torch.Tensor, sigma: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identity rows with each call's estimate ``(p, q)``, and every call's ``x0_hat = x0_p x + x0_q out``."""
    rows = coefficient_rows(len(calls))
    with torch.no_grad():
        x0_p, x0_q = estimate_coefficients(prediction_type, alpha, sigma, scale, "x0")
        for kind in ESTIMATES:
            idx = [i for i, c in enumerate(calls) if c.estimate == kind]
            if idx:
                p, q = estimate_coefficients(prediction_type, alpha[idx], sigma[idx], scale[idx], kind)
                rows[idx, COEFF["p"]] = p
                rows[idx, COEFF["q"]] = q
    return rows, x0_p, x0_q


def _update_rows(
    rows: torch.Tensor, calls: Sequence[Call], x0_p: list[float], x0_q: list[float], brownian: bool
) -> tuple[list[tuple[str, ...]], dict[str, int]]:
    """Fill each call's update columns, history slots, clamp and noise key; returns the history names per
    call and the last call that uses each kept name."""
    kept: set[str] = set()
    last_use: dict[str, int] = {}
    use: list[tuple[str, ...]] = []
    for i, call in enumerate(calls):
        alpha_w, sigma_w = call.alpha / call.input_scale, call.sigma / call.input_scale
        p, q = float(rows[i, COEFF["p"]]), float(rows[i, COEFF["q"]])
        for name, value in _columns(call.update, call.estimate, p, q, x0_p[i], x0_q[i], alpha_w, sigma_w).items():
            rows[i, COEFF[name]] = value
        names = tuple(call.update.history)
        missing = [k for k in names if k not in kept]
        if missing:
            raise ValueError(f"call {i} uses {missing}, which no earlier call keeps (kept so far: {sorted(kept)})")
        for slot, name in zip(HISTORY_COLUMNS, names, strict=False):
            rows[i, COEFF[slot]] = call.update.history[name]
            last_use[name] = i
        use.append(names)
        kept.update(call.keep)
        if call.clip is not None:
            rows[i, COEFF["lim"]] = call.clip
        rows[i, COEFF["stream"]] = 0 if brownian else i
        if call.update.noise and brownian:
            if call.brownian is None:
                raise ValueError(f"call {i} draws noise but declares no Brownian interval (Call.brownian)")
            rows[i, COEFF["bt0"]] = brownian_time(call.brownian[0])
            rows[i, COEFF["bt1"]] = brownian_time(call.brownian[1])
    return use, last_use


def dynamic_threshold_coeffs(
    coeffs: torch.Tensor,
    sample: torch.Tensor,
    model_output: torch.Tensor,
    uncond: torch.Tensor | None,
    ratio: float,
    max_value: float,
) -> torch.Tensor:
    """Per-sample rows that clamp x0 to ``[-s, s]`` and divide by ``s`` (Imagen's dynamic thresholding).

    ``s = clamp(quantile(|x0|, ratio), 1, max_value)`` per sample (Saharia et al. 2022, sec. 2.3); x0 is
    computed once here on the device (a reduction the single-pass update cannot do), no host sync.
    """
    batch = sample.shape[0]
    view = (-1,) + (1,) * (sample.dim() - 1)

    def col(name: str) -> torch.Tensor:
        return coeffs[:, COEFF[name]].view(view)

    out = model_output.float()
    if uncond is not None:
        out = uncond.float() + col("w") * (out - uncond.float())
    x0 = col("p") * sample.float() + col("q") * out
    s = torch.quantile(x0.abs().reshape(batch, -1), ratio, dim=1).clamp(1.0, max_value)
    rows = coeffs.expand(batch, -1).clone()
    rows[:, COEFF["lim"]] = s
    rows[:, COEFF["div"]] = s
    return rows
