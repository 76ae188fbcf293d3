"""Predictor-corrector sampling (Song et al. 2021, "Score-Based Generative Modeling through SDEs",
Algorithm 2), run in sigma space so it serves VE, VP and flow schedules alike.

Per level ``sigma_{i+1} -> sigma_i``:

* predictor, reverse diffusion (Euler-Maruyama on the reverse VE-SDE, eq. 47)::

    x <- x + (sigma_{i+1}^2 - sigma_i^2) score(x, sigma_{i+1}) + sqrt(sigma_{i+1}^2 - sigma_i^2) z

* ``M`` corrector steps of Langevin MCMC at ``sigma_i`` with the step size set by a target
  signal-to-noise ratio ``r`` (Algorithm 4)::

    eps = 2 (r ||z|| / ||score||)^2;   x <- x + eps score + sqrt(2 eps) z

The corrector's step size depends on the norms of the score and the noise, a per-sample
reduction: those calls draw their noise explicitly and set their rows on the device from the
guided model output (so classifier-free guidance acts exactly as on every other call). As in the
paper's code, the norms are averaged over the batch by default (``corrector_norm="batch"``): a
per-sample ratio (``"sample"``) is only stable for high-dimensional samples such as images.
"""

from __future__ import annotations

import torch

from samplers import ops
from samplers.levels import Levels
from samplers.ops.reference import COEFF
from samplers.plan import Call, Plan, Update
from samplers.protocol import SamplerState, StepOutput
from samplers.schedulers.sigma_space import SigmaSpaceScheduler

CORRECTOR = "corrector"


class PredictorCorrectorScheduler(SigmaSpaceScheduler):
    name = "predictor_corrector"
    kind = "langevin"
    paper = "Song et al. 2021, Score-Based Generative Modeling through SDEs, Alg. 2 and 4"
    order = 1
    stochastic = True
    nfe_per_step = 2  # per noise level with the default config; instances set their own

    def __init__(
        self,
        schedule: str = "ve",
        schedule_kwargs: dict | None = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        corrector_steps: int = 1,
        snr: float = 0.16,
        final_denoise: bool = True,
        corrector_norm: str = "batch",
        use_karras_sigmas: bool = False,
        rho: float = 7.0,
        timestep_spacing: str = "linspace",
        interpolation_type: str = "log_linear",
    ) -> None:
        if corrector_steps < 0:
            raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
        if not snr > 0:
            raise ValueError(f"snr must be > 0, got {snr}")
        if corrector_norm not in ("batch", "sample"):
            raise ValueError(f"corrector_norm must be 'batch' or 'sample', got {corrector_norm!r}")
        if self.config.noise == "brownian":
            raise ValueError("noise='brownian' does not apply to the corrector's Langevin steps; use noise='philox'")
        self.nfe_per_step = 1 + corrector_steps

    def plan_calls(self, levels: Levels) -> list[Call]:
        sigma = levels.level.tolist()
        calls = []
        for i, s in enumerate(sigma):
            s_next = sigma[i + 1] if i + 1 < len(sigma) else 0.0
            last = i + 1 == len(sigma)
            if last and self.config.final_denoise:
                calls.append(self.call_at(levels, i, Update(x0=1.0)))  # Tweedie denoise at the smallest level
                continue
            delta = s * s - s_next * s_next
            predictor = Update(sample=1 - delta / (s * s), x0=delta / (s * s), noise=delta**0.5)  # eq. 47
            calls.append(self.call_at(levels, i, predictor))
            if last:
                continue
            for _ in range(self.config.corrector_steps):  # rows set per sample at step time
                calls.append(self.call_at(levels, i + 1, Update(sample=1.0, noise=1.0), tag=CORRECTOR))
        return calls

    def make_plan(self, levels: Levels, mu: float | None = None) -> Plan:
        plan = super().make_plan(levels, mu)
        # Python floats, so that a compiled loop reads them as constants (a tensor read would be .item()).
        plan.extras["levels"] = plan.call_levels.tolist()
        plan.extras["streams"] = [int(s) for s in plan.rows[:, COEFF["stream"]].tolist()]
        return plan

    def step_functional(
        self, state: SamplerState, model_output, timestep, sample, **kwargs
    ) -> tuple[StepOutput, SamplerState]:
        plan = self._require_plan()
        if isinstance(timestep, torch.Tensor) and timestep.dim() == 1 and timestep.numel() > 1:
            raise ValueError("predictor_corrector keeps a per-run call sequence and cannot take per-sample timesteps")
        index = self._resolve_call(state, timestep)
        if plan.tags[index] == CORRECTOR and kwargs.get("noise") is None:
            # Algorithm 4 needs the noise's norm before the update: draw the call's Philox noise here.
            seeds, state = self.resolve_seeds(state, kwargs.pop("seeds", None), kwargs.pop("generator", None), sample)
            stream = plan.extras["streams"][index]
            kwargs["noise"] = ops.philox_normal(seeds, stream, sample[0].numel()).view(sample.shape).to(sample.dtype)
        return super().step_functional(state, model_output, timestep, sample, **kwargs)

    def _adjust_coeffs(self, coeffs, sample, model_output, uncond, index, state, noise=None):
        plan = self._require_plan()
        if index is None or not plan.tags[index] == CORRECTOR:
            return coeffs
        # Langevin corrector (Algorithm 4): step size from per-sample norms of score and noise, with the
        # guided output uncond + w (cond - uncond) as every other call uses it.
        batch = sample.shape[0]
        view = (-1,) + (1,) * (sample.dim() - 1)
        row = coeffs[:1]
        w = row[:, COEFF["w"]].view(view)
        out = model_output.float()
        if uncond is not None:
            out = uncond.float() + w * (out - uncond.float())
        x0 = row[:, COEFF["p"]].view(view) * sample.float() + row[:, COEFF["q"]].view(view) * out
        level_sq = plan.extras["levels"][index] ** 2
        score = (x0 - sample.float()) / level_sq
        noise_norm = noise.float().reshape(batch, -1).norm(dim=1)
        score_norm = score.reshape(batch, -1).norm(dim=1)
        if self.config.corrector_norm == "batch":
            noise_norm, score_norm = noise_norm.mean().expand(batch), score_norm.mean().expand(batch)
        ratio = noise_norm / score_norm.clamp(min=1e-30)
        # Where the score vanishes (a sample at the mode, or a rounded one) the target-SNR rule asks for an
        # infinite step; no Langevin step at this level should exceed its variance, so cap it there.
        eps = (2 * (self.config.snr * ratio) ** 2).clamp(max=level_sq)
        rows = row.repeat(batch, 1)
        rows[:, COEFF["a"]] = 1 - eps / level_sq  # x + eps * (x0 - x) / sigma^2
        rows[:, COEFF["b"]] = eps / level_sq
        rows[:, COEFF["c"]] = torch.sqrt(2 * eps)
        return rows
