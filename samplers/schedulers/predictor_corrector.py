"""Predictor-corrector sampling (Song et al. 2021, "Score-Based Generative Modeling through SDEs",
Algorithm 2), run in sigma space so it serves VE, VP and flow schedules alike.

Per level ``sigma_{i+1} -> sigma_i``:

* predictor, reverse diffusion (Euler-Maruyama on the reverse VE-SDE, eq. 47)::

    x <- x + (sigma_{i+1}^2 - sigma_i^2) score(x, sigma_{i+1}) + sqrt(sigma_{i+1}^2 - sigma_i^2) z

* ``M`` corrector steps of Langevin MCMC at ``sigma_i`` with the step size set by a target
  signal-to-noise ratio ``r`` (Algorithm 4)::

    eps = 2 (r ||z|| / ||score||)^2;   x <- x + eps score + sqrt(2 eps) z

The corrector's step size depends on the norms of the score and the noise, a per-sample
reduction: those calls compute their rows on the device and pass the noise explicitly. As in the
paper's code, the norms are averaged over the batch by default (``corrector_norm="batch"``): a
per-sample ratio (``"sample"``) is only stable for high-dimensional samples such as images.
"""

from __future__ import annotations

import torch

from samplers import ops
from samplers.ops.reference import COEFF
from samplers.protocol import Plan, SamplerState, StepOutput, coefficient_rows, init_args
from samplers.schedulers._sigma import SigmaSpaceScheduler


class PredictorCorrectorScheduler(SigmaSpaceScheduler):
    name = "predictor_corrector"
    family = "any"
    order = 1
    stochastic = True
    supports_per_sample_timesteps = False
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
        if snr <= 0:
            raise ValueError(f"snr must be > 0, got {snr}")
        if corrector_norm not in ("batch", "sample"):
            raise ValueError(f"corrector_norm must be 'batch' or 'sample', got {corrector_norm!r}")
        super().__init__(**init_args(locals()))
        self.nfe_per_step = 1 + corrector_steps

    def _make_plan(self, num_inference_steps, timesteps, sigmas, mu) -> Plan:
        t, sigma = self._sigma_grid(num_inference_steps, timesteps, sigmas)
        m = self.config.corrector_steps
        times, levels, rows, corrector = [], [], [], []
        for i in range(len(sigma)):
            s, s_next = float(sigma[i]), float(sigma[i + 1]) if i + 1 < len(sigma) else 0.0
            last = i + 1 == len(sigma)
            times.append(float(t[i]))
            levels.append(s)
            if last and self.config.final_denoise:
                rows.append(dict(a=0.0, b=1.0))  # Tweedie denoise at the smallest level
                corrector.append(False)
                continue
            delta = s * s - s_next * s_next
            rows.append(dict(a=1 - delta / (s * s), b=delta / (s * s), c=delta**0.5))  # eq. 47 predictor
            corrector.append(False)
            if last:
                continue
            for _ in range(m):  # rows filled per sample at step time
                times.append(float(t[i + 1]))
                levels.append(s_next)
                rows.append(dict(a=1.0, b=0.0))
                corrector.append(True)
        t_calls = torch.tensor(times, dtype=torch.float64)
        level = torch.tensor(levels, dtype=torch.float64)
        p, q, scale, model_alpha, model_sigma = self._model_space(t_calls, level)
        table = coefficient_rows(len(levels), p=p, q=q)
        for i, r in enumerate(rows):
            for name, value in r.items():
                table[i, COEFF[name]] = value
        self._corrector = corrector
        self._levels = level
        return Plan(
            timesteps=t_calls,
            rows=table,
            input_scale=scale,
            model_alpha=model_alpha,
            model_sigma=model_sigma,
            init_noise_sigma=float(sigma[0]),
        )

    def step_functional(
        self, state: SamplerState, model_output, timestep, sample, **kwargs
    ) -> tuple[StepOutput, SamplerState]:
        if isinstance(timestep, torch.Tensor) and timestep.dim() == 1 and timestep.numel() > 1:
            raise ValueError("predictor_corrector keeps a per-run call sequence and cannot take per-sample timesteps")
        index = self._resolve_call(state, timestep)
        if not self._corrector[index]:
            return super().step_functional(state, model_output, timestep, sample, **kwargs)
        # Langevin corrector (Algorithm 4): step size from per-sample norms of score and noise.
        noise = kwargs.pop("noise", None)
        if noise is None:
            seeds, state = self.resolve_seeds(state, kwargs.pop("seeds", None), kwargs.pop("generator", None), sample)
            noise = ops.philox_normal(seeds, index, sample[0].numel()).view(sample.shape).to(sample.device)
        kwargs.pop("seeds", None)
        kwargs.pop("generator", None)
        row = self._rows_on(sample.device)[index]
        batch = sample.shape[0]
        out = model_output.float()
        if kwargs.get("uncond") is not None:
            w = kwargs.get("guidance_scale") or 1.0
            out = kwargs["uncond"].float() + w * (out - kwargs["uncond"].float())
        x0 = row[COEFF["p"]] * sample.float() + row[COEFF["q"]] * out
        level_sq = float(self._levels[index]) ** 2
        score = (x0 - sample.float()) / level_sq
        noise_norm = noise.float().reshape(batch, -1).norm(dim=1)
        score_norm = score.reshape(batch, -1).norm(dim=1)
        if self.config.corrector_norm == "batch":
            noise_norm, score_norm = noise_norm.mean().expand(batch), score_norm.mean().expand(batch)
        ratio = noise_norm / score_norm.clamp(min=1e-30)
        eps = 2 * (self.config.snr * ratio) ** 2
        rows = row.view(1, -1).repeat(batch, 1)
        rows[:, COEFF["a"]] = 1 - eps / level_sq  # x + eps * (x0 - x) / sigma^2
        rows[:, COEFF["b"]] = eps / level_sq
        rows[:, COEFF["c"]] = torch.sqrt(2 * eps)
        prev, x0_out = ops.sampler_update(
            sample,
            model_output,
            rows,
            uncond=kwargs.get("uncond"),
            noise=noise.to(sample.dtype),
            backend=kwargs.get("backend", "auto"),
        )
        return StepOutput(prev, x0_out), SamplerState(
            step_index=state.step_index + 1, kept=state.kept, seeds=state.seeds
        )
