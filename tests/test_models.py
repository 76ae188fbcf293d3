"""The reference DiT: shapes, seeds, embeddings, adaLN-Zero, its attention path, sampling and bench wiring."""

from __future__ import annotations

import json
import math

import pytest
import torch
import typer
from typer.testing import CliRunner

import samplers
from samplers.bench import runner as R
from samplers.bench.problems import ModelProblem, get_problem
from samplers.guidance import GuidedModel
from samplers.models import DIT_PRESETS, DiT, DiTConfig, build_dit, sincos_pos_embed_2d, timestep_embedding
from samplers.ops import attention as A

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# dit-tiny at a quarter of its tokens where the test is about behaviour, not size.
SMALL = dict(input_size=8, hidden_size=64, depth=2, num_heads=4)


@pytest.fixture(scope="module")
def model() -> DiT:
    return build_dit("dit-tiny", seed=0, **SMALL)


def _x(batch: int = 2, size: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))


# ---- shapes and dtypes --------------------------------------------------------------------------


@torch.no_grad()
def test_output_has_the_input_shape_for_per_sample_and_scalar_t(model):
    x = _x(3)
    out = model(x, torch.tensor([0.0, 500.0, 999.0]))
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    # a scalar t is the same as that t for every sample
    torch.testing.assert_close(model(x, 250), model(x, torch.full((3,), 250.0)))
    torch.testing.assert_close(model(x, torch.tensor(250.0)), model(x, torch.full((3,), 250.0)))


@torch.no_grad()
def test_other_image_sizes_work_and_keep_their_shape(model):
    x = torch.randn(2, 4, 12, 6)  # not the configured 8 x 8: the position embedding is computed
    assert model(x, 10).shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@torch.no_grad()
def test_low_and_high_precision_models_agree_with_float32(model, dtype):
    x = _x(2)
    ref = model(x, 300).double()
    other = build_dit("dit-tiny", seed=0, dtype=dtype, **SMALL)
    out = other(x, 300)
    assert out.dtype == x.dtype  # computed in the model's dtype, returned in the input's
    err = ((out.double() - ref).norm() / ref.norm()).item()
    tol = 1e-6 if dtype == torch.float64 else 3e-2
    assert err < tol, f"{dtype}: relative error {err:.2e}"


def test_presets_are_the_paper_sizes():
    sizes = {k: (c.depth, c.hidden_size, c.num_heads) for k, c in DIT_PRESETS.items()}
    assert sizes["dit-s"] == (12, 384, 6) and sizes["dit-b"] == (12, 768, 12)
    assert sizes["dit-l"] == (24, 1024, 16) and sizes["dit-xl"] == (28, 1152, 16)
    assert all(c.num_tokens == 256 for k, c in DIT_PRESETS.items() if k != "dit-tiny")
    # parameter count of DiT-S/2 without the learned-sigma channels: 32.9 M (the paper's 33 M)
    assert build_dit("dit-s").num_parameters == pytest.approx(32.9e6, rel=0.01)


# ---- seeds ----------------------------------------------------------------------------------------


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (build_dit("dit-tiny", seed=s, **SMALL) for s in (7, 7, 8))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        if pa.std() > 0:
            assert not torch.equal(pa, pc), name
    x = _x()
    with torch.no_grad():
        assert torch.equal(a(x, 10), b(x, 10)) and not torch.allclose(a(x, 10), c(x, 10))


def test_building_a_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_dit("dit-tiny", seed=5, **SMALL)
    assert torch.equal(torch.rand(4), expected)


def test_weights_do_not_depend_on_the_dtype_built_in():
    f32 = build_dit("dit-tiny", seed=3, **SMALL)
    f64 = build_dit("dit-tiny", seed=3, dtype=torch.float64, **SMALL)
    f64.reset_parameters()  # drawn again into float64 tensors: the float32 draw, upcast
    assert all(torch.equal(p.double(), q) for p, q in zip(f32.parameters(), f64.parameters(), strict=True))


# ---- embeddings -----------------------------------------------------------------------------------


def test_timestep_embedding_properties():
    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    e = timestep_embedding(t, 64)
    assert e.shape == (4, 64) and e.dtype == torch.float32
    torch.testing.assert_close(e[0], torch.cat([torch.ones(32), torch.zeros(32)]))  # t = 0: cos 1, sin 0
    pair_norm = e[:, :32] ** 2 + e[:, 32:] ** 2  # each (cos, sin) pair lies on the unit circle
    torch.testing.assert_close(pair_norm, torch.ones(4, 32))
    # inner products depend only on the time difference (shift invariance)
    s = torch.tensor([3.0, 40.0])
    d = 123.25
    g1 = timestep_embedding(s, 64) @ timestep_embedding(s + 10.0, 64).T
    g2 = timestep_embedding(s + d, 64) @ timestep_embedding(s + d + 10.0, 64).T
    torch.testing.assert_close(g1, g2, atol=2e-4, rtol=0)
    # distinct timesteps give distinct embeddings; an odd width is padded with one zero
    assert torch.cdist(e, e).fill_diagonal_(1.0).min() > 0.1
    odd = timestep_embedding(t, 7)
    assert odd.shape == (4, 7) and torch.equal(odd[:, -1], torch.zeros(4))


def test_position_embedding_tells_every_patch_apart():
    pe = sincos_pos_embed_2d(32, 4, 6)
    assert pe.shape == (24, 32)
    assert torch.cdist(pe, pe).fill_diagonal_(1.0).min() > 0.1
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(30, 2, 2)


def test_unpatchify_puts_token_ij_at_patch_row_i_column_j(model):
    """Token (i, j) of a gh x gw grid holds the p x p x C pixels of patch (i, j), ordered (row, column, channel)."""
    p, C = model.config.patch_size, model.config.in_channels
    x = torch.randn(2, C, 3 * p, 5 * p)
    tokens = x.reshape(2, C, 3, p, 5, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 15, p * p * C)
    assert torch.equal(model._unpatchify(tokens, 3, 5), x)


# ---- adaLN-Zero and conditioning ------------------------------------------------------------------


@torch.no_grad()
def test_adaln_zero_init_gives_zero_output_and_identity_blocks():
    m = build_dit("dit-tiny", seed=0, init="adaln_zero", **SMALL)
    x = _x(2)
    assert torch.equal(m(x, torch.tensor([5.0, 900.0]), y=torch.tensor([1, 2])), torch.zeros_like(x))
    h, c = torch.randn(2, 16, 64), torch.randn(2, 64)
    for block in m.blocks:  # every gate is zero: each block is the identity on the token stream
        assert torch.equal(block(h, c), h)
    # the random init is a non-trivial function of x, t and the label, at order-one scale
    r = build_dit("dit-tiny", seed=0, **SMALL)
    out = r(x, 5.0)
    assert 0.1 < out.std().item() < 10
    assert not torch.allclose(out, r(x, 900.0)) and not torch.allclose(out, r(x * 0.5, 5.0))
    assert not torch.allclose(r(x, 5.0, y=torch.tensor([1, 2])), r(x, 5.0, y=torch.tensor([3, 4])))


@torch.no_grad()
def test_no_label_is_the_null_class_and_batched_cfg_matches_separate_calls(model):
    x, t = _x(2), torch.tensor([100.0, 700.0])
    null = torch.full((2,), model.null_class)
    torch.testing.assert_close(model(x, t), model(x, t, y=null))
    labels = torch.tensor([3, 7])
    cond, uncond = GuidedModel(model, {"y": labels}, {"y": null})(x, t)  # one 2B batch
    torch.testing.assert_close(cond, model(x, t, y=labels), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(uncond, model(x, t), atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        model(torch.randn(2, 3, 8, 8), 1)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        model(torch.randn(2, 4, 7, 8), 1)
    with pytest.raises(ValueError, match="scalar or"):
        model(torch.randn(2, 4, 8, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="unconditional"):
        build_dit("dit-tiny", num_classes=0, **SMALL)(torch.randn(1, 4, 8, 8), 1, y=torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="did you mean 'dit-s'"):
        build_dit("dit-ss")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DiTConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="unknown DiTConfig field"):
        build_dit("dit-tiny", hiden_size=8)


# ---- the attention path ---------------------------------------------------------------------------


@torch.no_grad()
def test_attention_runs_through_samplers_ops_attention(model, monkeypatch):
    seen = []
    original = A.attention

    def spy(q, k, v, **kwargs):
        seen.append((tuple(q.shape), tuple(k.shape), kwargs.get("backend")))
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(A, "attention", spy)
    x = _x(3)
    model(x, 10)
    cfg = model.config
    shape = (3, cfg.num_heads, cfg.num_tokens, cfg.head_dim)  # [B, heads, L, head_dim]
    assert seen == [(shape, shape, "auto")] * cfg.depth


@torch.no_grad()
def test_self_attention_matches_torch_multihead_attention(model):
    """Head split and projections agree with torch's MultiheadAttention given the same weights."""
    attn = model.blocks[0].attn
    n = attn.qkv.in_features
    mha = torch.nn.MultiheadAttention(n, attn.num_heads, batch_first=True)
    mha.in_proj_weight.copy_(attn.qkv.weight)
    mha.in_proj_bias.copy_(attn.qkv.bias)
    mha.out_proj.weight.copy_(attn.proj.weight)
    mha.out_proj.bias.copy_(attn.proj.bias)
    h = torch.randn(2, 10, n)
    expected, _ = mha(h, h, h, need_weights=False)
    torch.testing.assert_close(attn(h), expected, atol=1e-5, rtol=1e-5)


# ---- sampling with the model ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "flow_euler"])
@torch.no_grad()
def test_model_drives_samplers_sample(model, name):
    calls = []

    def counted(x, t):
        calls.append(t)
        return model(x, t)

    noise = _x(2, seed=4)
    seeds = torch.tensor([11, 12])
    sched = samplers.get(name)
    out = samplers.sample(counted, sched, noise, num_inference_steps=4, seeds=seeds, progress=False)
    assert out.shape == noise.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, noise * sched.init_noise_sigma)  # the network's output moved it
    assert len(calls) == len(sched.timesteps) >= 4  # one network call per planned model evaluation
    again = samplers.sample(model, samplers.get(name), noise, num_inference_steps=4, seeds=seeds, progress=False)
    assert torch.equal(out, again)


# ---- bench wiring ---------------------------------------------------------------------------------


def test_dit_problem_is_speed_only_and_builds_on_demand():
    p = get_problem("dit:image_size=8")
    assert isinstance(p, ModelProblem) and p.dim == 4 * 8 * 8 and p.sample_shape == (4, 8, 8)
    net = p.make_model(torch.device("cpu"), torch.float32)
    x = torch.randn(2, p.dim)
    with torch.no_grad():
        assert net(x, 5).shape == (2, p.dim) and net.calls == 1
    assert p.describe()["params"] == net.net.num_parameters
    with pytest.raises(ValueError, match="did you mean"):
        get_problem("dit:preset=dit-q")
    with pytest.raises(ValueError, match="divisible"):
        get_problem("dit:image_size=9")


def test_bench_runs_the_dit_end_to_end_with_timings_and_no_metrics():
    cfg = R.BenchConfig(schedulers=("ddim", "heun"), steps=(3,), problem="dit:image_size=8", samples=2)
    result = R.run_benchmark(cfg)
    assert result.metric_names == [] and not result.noise_floor and not result.orders
    assert [(r.scheduler, r.nfe) for r in result.rows] == [("ddim", 3), ("heun", 5)]
    for r in result.rows:
        assert r.metrics == {} and r.wall_s >= r.model_s > 0
        assert r.samples_per_s == pytest.approx(2 / r.wall_s)
        assert r.step_overhead_ms == pytest.approx(1000 * (r.wall_s - r.model_s) / r.steps)
    assert result.problem["speed_only"] and result.problem["model"] == "dit-tiny"
    assert "kernel" in result.environment["attention"]
    assert result.timing["model_init_s"] > 0
    csv_row = R.to_csv(result).splitlines()[1].split(",")
    header = R.to_csv(result).splitlines()[0].split(",")
    assert all(csv_row[header.index(m)] == "" for m in R.ALL_METRICS)  # blank, not made-up numbers
    with pytest.raises(R.BenchInputError, match="speed only"):
        R.prepare(R.BenchConfig(schedulers=("ddim",), steps=(3,), problem="dit", metrics=("sw",)))


def test_bench_cli_prints_the_speed_table_for_the_dit(tmp_path):
    from samplers.bench.command import bench

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("bench")(bench)
    app.command("noop")(lambda: None)
    args = [
        "bench",
        "--problem",
        "dit:image_size=8",
        "--scheduler",
        "ddim,euler",
        "--steps",
        "2",
        "--samples",
        "2",
        "--quiet",
        "--json",
        str(tmp_path / "r.json"),
    ]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "dit-tiny" in out and "wall s" in out and "samples/s" in out and "step ovh ms" in out
    assert "speed only" in out and "SW" not in out and "ODE" not in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [r["scheduler"] for r in doc["rows"]] == ["ddim", "euler"] and all(r["metrics"] == {} for r in doc["rows"])
    bad = CliRunner().invoke(app, ["bench", "--problem", "dit", "--metric", "sw", "--quiet"])
    assert bad.exit_code == 2 and "speed only" in bad.output


# ---- GPU ------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_cuda_half_precision_dit_matches_float32_cpu(dtype):
    """dit-s shapes (head dim 64: the fused kernel is a candidate) in half precision on the GPU."""
    cpu = build_dit("dit-s", seed=0, depth=2)
    gpu = build_dit("dit-s", seed=0, depth=2, device="cuda", dtype=dtype)
    x = torch.randn(4, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10.0, 200.0, 500.0, 990.0])
    ref = cpu(x, t)
    out = gpu(x.cuda(), t.cuda()).float().cpu()
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 3e-2, f"relative error {err:.2e}"
    report = A.attention_dispatch_report()
    assert any(k.startswith("cuda") for k in report["choices"])  # the dispatcher measured these shapes
    for backend in ("fused", "sdpa"):
        forced = build_dit("dit-s", seed=0, depth=2, device="cuda", dtype=dtype, attention_backend=backend)
        err = ((forced(x.cuda(), t.cuda()).float().cpu() - ref).norm() / ref.norm()).item()
        assert err < 3e-2, f"{backend}: relative error {err:.2e}"


@pytest.mark.cuda
def test_cuda_bench_dit_runs():
    cfg = R.BenchConfig(
        schedulers=("ddim",), steps=(4,), problem="dit:preset=dit-s", samples=8, device="cuda", dtype="float16"
    )
    result = R.run_benchmark(cfg)
    row = result.rows[0]
    assert row.nfe == 4 and row.wall_s > row.model_s > 0 and row.peak_mem_kind == "cuda_max_allocated"
    assert math.isfinite(row.samples_per_s)


@pytest.mark.cuda
@torch.no_grad()
def test_cuda_graph_sampling_with_the_dit_matches_eager():
    """The whole loop, DiT included, captured as one CUDA graph gives the eager result."""
    model = build_dit("dit-s", seed=0, depth=2, device="cuda", dtype=torch.float16)
    noise = torch.randn(
        2, 4, 32, 32, device="cuda", dtype=torch.float16, generator=torch.Generator("cuda").manual_seed(0)
    )
    seeds = torch.tensor([1, 2], device="cuda")
    kw = dict(num_inference_steps=5, seeds=seeds)
    eager = samplers.sample(model, samplers.get("ddim"), noise, progress=False, **kw)
    graphed = samplers.sample(model, samplers.get("ddim"), noise, cuda_graph=True, **kw)
    torch.testing.assert_close(graphed, eager, atol=2e-3, rtol=2e-3)
