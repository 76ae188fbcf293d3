"""Whole-loop torch.compile (issue 14): every registered scheduler, both backends, one graph, no recompiles.

A diffusers-style loop (``for t in scheduler.timesteps: ... scheduler.step(...)``) and ``samplers.sample``
are compiled with ``fullgraph=True`` (a graph break would raise). A counting backend records how many
graphs dynamo hands over: exactly one per (plan, shape, dtype), none more on a second run. The compiled
output equals the eager one to float rounding. Checks that read host values in eager mode become
device asserts while compiling: an off-plan timestep still fails loudly.
"""

from __future__ import annotations

import pytest
import torch

import samplers
from samplers import ops
from samplers.ops import update as update_ops

NAMES = samplers.available()
STEPS = 4
BACKENDS = ["torch", "fused"]
# One scheduler per kind of plan for the slow-to-trace reference backend (Philox unrolled in Python ops)
# and for explain(); every registered scheduler runs on the fused backend, a single op per call.
REPRESENTATIVE = ["ddpm", "ddim", "euler_ancestral", "heun", "flow_euler", "predictor_corrector", "dpmpp_2m_sde"]
CASES = [(name, "fused") for name in NAMES] + [(name, "torch") for name in REPRESENTATIVE]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: the test loops share code objects, whose caches would otherwise fill."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class CountingBackend:
    """A torch.compile backend that runs the captured graph as is and counts the graphs it was given."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return gm.forward


def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in network (any prediction type reads it as a finite output)."""
    return 0.6 * x + 0.001 * torch.as_tensor(t, dtype=x.dtype) + 0.05


def _skip_unavailable(backend: str) -> None:
    if backend == "fused" and update_ops._fused_unavailable(torch.device("cpu"), torch.float32) is not None:
        pytest.skip("the compiled update op is not built here")


def diffusers_loop(scheduler: samplers.Scheduler, seeds: torch.Tensor, backend: str):
    def loop(x: torch.Tensor) -> torch.Tensor:
        for t in scheduler.timesteps:
            out = model(scheduler.scale_model_input(x, t), t)
            x = scheduler.step(out, t, x, seeds=seeds, backend=backend).prev_sample
        return x

    return loop


@pytest.mark.parametrize("name,backend", CASES)
def test_diffusers_style_loop_compiles_to_one_graph_and_matches_eager(name, backend):
    _skip_unavailable(backend)
    s = samplers.get(name)
    seeds = ops.batch_seeds(7, 2)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    s.set_timesteps(STEPS)
    eager = diffusers_loop(s, seeds, backend)(x * s.init_noise_sigma)
    counter = CountingBackend()
    compiled = torch.compile(diffusers_loop(s, seeds, backend), backend=counter, fullgraph=True)
    s.set_timesteps(STEPS)
    first = compiled(x * s.init_noise_sigma)
    assert counter.graphs == 1
    torch.testing.assert_close(first, eager, rtol=1e-5, atol=1e-5)
    s.set_timesteps(STEPS)  # a second run with the same shapes: no recompilation
    second = compiled(x * s.init_noise_sigma)
    assert counter.graphs == 1, f"{name}: recompiled for a second run of the same plan and shapes"
    torch.testing.assert_close(second, first, rtol=0, atol=0)


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_explain_reports_no_graph_break(name):
    s = samplers.get(name)
    s.set_timesteps(STEPS)
    x = torch.randn(2, 4) * s.init_noise_sigma
    report = torch._dynamo.explain(diffusers_loop(s, ops.batch_seeds(1, 2), "torch"))(x)
    assert report.graph_break_count == 0 and report.graph_count == 1, [
        str(b.reason)[:200] for b in report.break_reasons
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["ddim", "euler_ancestral", "heun", "dpmpp_2m", "predictor_corrector"])
def test_sample_compile_reuses_one_compiled_loop(name, backend, monkeypatch):
    _skip_unavailable(backend)
    counter = CountingBackend()
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": counter}))
    s = samplers.get(name)
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    seeds = ops.batch_seeds(5, 3)
    eager = samplers.sample(model, s, noise, num_inference_steps=STEPS, seeds=seeds, progress=False, backend=backend)
    first = samplers.sample(model, s, noise, num_inference_steps=STEPS, seeds=seeds, backend=backend, compile=True)
    again = samplers.sample(model, s, noise, num_inference_steps=STEPS, seeds=seeds, backend=backend, compile=True)
    assert counter.graphs == 1, "compiled once per (plan, shape, dtype)"
    torch.testing.assert_close(first, eager, rtol=1e-5, atol=1e-5)
    assert torch.equal(first, again)
    other_dtype = torch.float64 if backend == "torch" else torch.float16  # the fused op has no float64
    samplers.sample(
        model, s, noise.to(other_dtype), num_inference_steps=STEPS, seeds=seeds, backend=backend, compile=True
    )
    assert counter.graphs == 2, "a new dtype compiles once more"


def test_sample_compile_keeps_each_scheduler_to_its_own_cache():
    """More schedulers than dynamo's recompile limit (8) compile without hitting it: each has its own loop."""
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(6))
    for name in ["ddim", "ddpm", "euler", "euler_ancestral", "heun", "dpmpp_2m", "unipc", "lms", "deis", "pndm"]:
        s = samplers.get(name)
        out = samplers.sample(model, s, noise, num_inference_steps=3, compile={"backend": CountingBackend()})
        assert out.shape == noise.shape and bool(torch.isfinite(out).all()), name


@pytest.mark.parametrize("name", ["ddim", "heun"])
def test_off_plan_timestep_fails_loudly_when_compiled(name):
    s = samplers.get(name)
    s.set_timesteps(STEPS)
    seeds = ops.batch_seeds(0, 2)

    def bad_loop(x: torch.Tensor) -> torch.Tensor:
        for t in s.timesteps:
            x = s.step(model(x, t), t + 0.5, x, seeds=seeds, backend="torch").prev_sample  # off the plan
        return x

    with pytest.raises(RuntimeError, match="timestep"):
        torch.compile(bad_loop, backend=CountingBackend(), fullgraph=True)(torch.randn(2, 4))


def test_memoryless_scheduler_is_a_function_of_t_when_compiled():
    """Compiled DDIM stepping the same t twice gives what eager gives (the call is found from t)."""
    s = samplers.get("ddim")
    s.set_timesteps(STEPS)
    t = s.timesteps[2]

    def twice(x: torch.Tensor) -> torch.Tensor:
        x = s.step(model(x, t), t, x, backend="torch").prev_sample
        return s.step(model(x, t), t, x, backend="torch").prev_sample

    x = torch.randn(2, 4)
    eager = twice(x)
    s.set_timesteps(STEPS)
    compiled = torch.compile(twice, backend=CountingBackend(), fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m"])
def test_inductor_compiles_the_loop(name):
    """The default backend (inductor, generating C++ on the CPU) gives the eager numbers."""
    s = samplers.get(name)
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(4))
    seeds = ops.batch_seeds(3, 2)
    eager = samplers.sample(model, s, noise, num_inference_steps=STEPS, seeds=seeds, progress=False)
    compiled = samplers.sample(model, s, noise, num_inference_steps=STEPS, seeds=seeds, compile=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
