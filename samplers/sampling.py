"""A complete sampling loop with no host-device sync per step, optionally captured as one CUDA graph.

    x = samplers.sample(model, samplers.get("ddim"), torch.randn(4, 4, 64, 64, device="cuda"),
                        num_inference_steps=50, cuda_graph=True)

``model(x_in, t, **model_kwargs)`` gets the scaled input and the model time ``t`` as a 0-d tensor
on the sample's device. Noise inside stochastic steps is keyed per sample (``seeds``), so the
result does not depend on the batch split or on whether the graph is used.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

import torch

from samplers import ops
from samplers.protocol import Scheduler

Model = Callable[..., torch.Tensor]


def sample(
    model: Model,
    scheduler: Scheduler,
    noise: torch.Tensor,
    *,
    num_inference_steps: int | None = None,
    generator: torch.Generator | None = None,
    seeds: torch.Tensor | None = None,
    model_kwargs: dict[str, Any] | None = None,
    cuda_graph: bool = False,
    progress: bool = True,
    backend: ops.update.Backend = "auto",
    callback: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor | None], None] | None = None,
    compile: bool | Mapping[str, Any] = False,
) -> torch.Tensor:
    """Run ``scheduler`` from standard-normal ``noise`` [B, ...] to a sample [B, ...].

    Args:
        model: the network; called once per entry of ``scheduler.timesteps``.
        scheduler: a configured scheduler; ``num_inference_steps`` (if given) calls its ``set_timesteps``.
        noise: standard normal initial noise; it is scaled by ``init_noise_sigma`` here.
        generator / seeds: where the in-step noise keys come from (per-sample int64 ``seeds`` [B] win).
        cuda_graph: capture the whole loop once and replay it (CUDA only; the model must be capturable).
        progress: show a progress bar (ignored under ``cuda_graph``).
        callback: ``callback(i, t, x, x0_hat)`` after each call (not with ``cuda_graph``).
        compile: run the whole loop (model and scheduler) as one ``torch.compile(fullgraph=True)`` graph;
            a dict gives ``torch.compile`` options (e.g. ``{"mode": "reduce-overhead"}``). The compiled loop
            is kept on the scheduler per model and backend and reused: it compiles once per (plan, shape,
            dtype), and ``set_timesteps`` with the same arguments keeps the plan, so later runs reuse it.
    """
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise TypeError("noise must be a floating torch.Tensor [B, ...]")
    device = noise.device
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps, device=device)
    plan = scheduler._require_plan()
    if seeds is None:
        seeds = ops.batch_seeds(ops.seed_from_generator(generator), noise.shape[0], device=device)
    elif seeds.shape != (noise.shape[0],) or seeds.dtype != torch.int64:
        raise ValueError(f"seeds must be int64 of shape [{noise.shape[0]}], got {seeds.dtype} {tuple(seeds.shape)}")
    seeds = seeds.to(device)
    times = scheduler.timesteps.to(device)  # one host-to-device copy per run; indexing it below does not sync
    kwargs = model_kwargs or {}

    def run(x: torch.Tensor, state: Any, show: bool) -> torch.Tensor:
        steps = range(len(plan.timesteps))
        if show:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=scheduler.name or type(scheduler).__name__, leave=False)
        for i in steps:
            t = times[i]
            scale = plan.scales[i]
            out = model(x * scale if scale != 1.0 else x, t, **kwargs)
            result, state = scheduler.step_functional(state, out, t, x, seeds=seeds, backend=backend)
            x = result.prev_sample
            if callback is not None:
                callback(i, t, x, result.pred_original_sample)
        return x

    x0 = noise * plan.init_noise_sigma
    if compile:
        if callback is not None:
            raise ValueError("callback is not supported with compile=True (it would break the compiled graph)")
        options = dict(compile) if isinstance(compile, Mapping) else {}
        compiled = _compiled_loop(model, scheduler, backend, options)
        return compiled(x0, seeds, times, kwargs)
    if not cuda_graph:
        return run(x0, scheduler.init_state(), progress)
    if device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs the sample on a CUDA device, got {device}")
    if callback is not None:
        raise ValueError("callback is not supported with cuda_graph=True (nothing runs on the host per step)")
    static_in = x0.clone()
    graph, static_out = capture_cuda_graph(lambda: run(static_in, scheduler.init_state(), False))
    graph.replay()
    return static_out.clone()


_LOOP_CODES: list[types.CodeType] = []  # code objects of the compiled loops made so far (names stay unique)


def _compiled_loop(
    model: Model, scheduler: Scheduler, backend: ops.update.Backend, options: dict[str, Any]
) -> Callable:
    """``torch.compile(fullgraph=True)`` of the whole sampling loop, cached on the scheduler per (model, backend,
    options): dynamo's guards recompile it only for a new plan, shape or dtype."""
    cache = scheduler.__dict__.setdefault("_compiled_loops", {})
    key = (id(model), backend, tuple(sorted(options.items())))
    entry = cache.get(key)
    if entry is not None and entry[0] is model:
        return entry[1]

    def loop(x: torch.Tensor, seeds: torch.Tensor, times: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        plan = scheduler._require_plan()
        state = scheduler.init_state()
        for i in range(len(plan.times)):
            scale = plan.scales[i]
            out = model(x * scale if scale != 1.0 else x, times[i], **kwargs)
            result, state = scheduler.step_functional(state, out, times[i], x, seeds=seeds, backend=backend)
            x = result.prev_sample
        return x

    # dynamo keeps its compiled graphs per code object, at most 8 (recompile_limit): one code object shared by
    # every scheduler would hit that limit after 8 plans. A copy of the code per cached loop keeps each
    # (scheduler, model) to its own plans, shapes and dtypes.
    code = loop.__code__.replace(co_name=f"sample_loop_{len(_LOOP_CODES)}")
    _LOOP_CODES.append(code)
    own_loop = types.FunctionType(code, loop.__globals__, code.co_name, loop.__defaults__, loop.__closure__)
    compiled = torch.compile(own_loop, fullgraph=True, **options)
    cache[key] = (model, compiled)
    return compiled


def capture_cuda_graph(fn: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Capture ``fn()`` as a CUDA graph after one warm-up run on a side stream (so lazy inits and
    kernel loads stay out of the graph); returns the graph and its static output tensor."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


class GraphedSampler:
    """A captured sampling loop to replay for new noise/seeds at fixed shape (serving many requests).

    ``sampler = GraphedSampler(model, scheduler, example_noise, num_inference_steps=50)``, then
    ``x = sampler(noise, seeds)``: two copies into static buffers and one graph launch.
    """

    def __init__(
        self,
        model: Model,
        scheduler: Scheduler,
        example_noise: torch.Tensor,
        *,
        num_inference_steps: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        backend: ops.update.Backend = "auto",
    ) -> None:
        if example_noise.device.type != "cuda":
            raise ValueError(f"GraphedSampler needs a CUDA tensor, got {example_noise.device}")
        if num_inference_steps is not None:
            scheduler.set_timesteps(num_inference_steps, device=example_noise.device)
        self.scheduler = scheduler
        plan = scheduler._require_plan()
        self._noise = example_noise.clone()
        self._seeds = ops.batch_seeds(0, example_noise.shape[0], device=example_noise.device)
        times = scheduler.timesteps.to(example_noise.device)
        kwargs = model_kwargs or {}

        def run() -> torch.Tensor:
            x = self._noise * plan.init_noise_sigma
            state = scheduler.init_state()
            for i in range(len(plan.timesteps)):
                scale = plan.scales[i]
                out = model(x * scale if scale != 1.0 else x, times[i], **kwargs)
                result, state = scheduler.step_functional(state, out, times[i], x, seeds=self._seeds, backend=backend)
                x = result.prev_sample
            return x

        self.graph, self._out = capture_cuda_graph(run)

    def __call__(self, noise: torch.Tensor, seeds: torch.Tensor | None = None) -> torch.Tensor:
        if noise.shape != self._noise.shape:
            raise ValueError(
                f"noise must have the captured shape {tuple(self._noise.shape)}, got {tuple(noise.shape)}"
            )
        self._noise.copy_(noise)
        if seeds is not None:
            self._seeds.copy_(seeds)
        self.graph.replay()
        return self._out.clone()
