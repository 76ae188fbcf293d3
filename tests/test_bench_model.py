"""``samplers bench --model SPEC [--data PATH]`` (issue 15, item 2): real networks, scored against their own ODE.

Each SPEC form loads and benches a tiny network; the reference ODE solve's estimated error is reported
and is at least 10x below the smallest error of the table; ``--data`` adds SW / MMD with a held-out
noise floor; every bad input ends in one clear error before any sampling, with no output file written.
"""

from __future__ import annotations

import json
import math

import bench_models
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from samplers.bench import network as N
from samplers.bench import runner as R

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHORT = dict(schedulers=("euler", "dpmpp_2m"), steps=(4, 8), samples=12, ode_samples=4, schedule="model")


def _run(model: str, keep_samples: int = 0, **kw) -> R.BenchResult:
    return R.run_benchmark(R.BenchConfig(model=model, **{**SHORT, **kw}), keep_samples=keep_samples)


def _check_reference(result: R.BenchResult) -> None:
    """The reference's own estimate is reported and is >= 10x below the best ODE error of the table."""
    ref = result.problem["ode_reference"]
    errors = [r.metrics["ode_error"] for r in result.rows if math.isfinite(r.metrics.get("ode_error", math.nan))]
    assert errors and min(errors) > 0
    assert ref["smallest_table_error"] == pytest.approx(min(errors))
    assert 0 < ref["estimated_error"] <= min(errors) / 10, ref
    assert ref["margin"] >= 10


def test_factory_dataclass_benches_against_its_reference():
    result = _run("bench_models:make_tiny")
    assert [(r.scheduler, r.steps) for r in result.rows] == [
        ("euler", 4),
        ("euler", 8),
        ("dpmpp_2m", 4),
        ("dpmpp_2m", 8),
    ]
    assert all(r.schedule == "model" for r in result.rows)
    assert result.metric_names == ["ode_error"]
    _check_reference(result)
    # more steps, closer to the ODE solution: the errors are the samplers', not noise
    by = {(r.scheduler, r.steps): r.metrics["ode_error"] for r in result.rows}
    assert by[("euler", 8)] < by[("euler", 4)] and by[("dpmpp_2m", 8)] < by[("dpmpp_2m", 4)]
    p = result.problem
    assert p["spec"] == "bench_models:make_tiny" and p["sample_shape"] == [1, 4, 4]
    assert p["prediction_type"] == "v_prediction" and p["network_dtype"] == "float64"
    assert p["training_schedule"] == "linear, 1000 timesteps"


def test_factory_mapping_with_a_diffusers_config():
    result = _run("bench_models:make_mapping", schedulers=("ddim",), steps=(5, 10))
    assert result.problem["training_schedule"] == "squaredcos_cap_v2, 1000 timesteps"
    _check_reference(result)


def test_samplers_get_the_model_schedule():
    problem = N.load_model_problem("bench_models:make_mapping")
    rs = R.resolve_scheduler("ddim", R.BenchConfig(model="bench_models:make_mapping", schedule="model"), problem)
    assert rs.config["beta_schedule"] == "squaredcos_cap_v2" and rs.schedule_label == "model"


def test_denoiser_matches_the_network_at_a_training_timestep():
    """At a training timestep's own level the network is called at exactly that timestep, and its
    v-prediction is turned into x0 by the public conversion."""
    from samplers.parameterization import to_x0_eps
    from samplers.schedules import DiscreteVPSchedule

    problem = N.load_model_problem("bench_models:make_tiny")
    sched = DiscreteVPSchedule.from_config()
    t = 437
    a, s = (float(v) for v in sched.alpha_sigma(torch.tensor(t)))
    x = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net = bench_models.TinyDenoiser().double()
    out = net(x.reshape(3, 1, 4, 4), torch.full((3,), float(t), dtype=torch.float64)).reshape(3, -1)
    expected = to_x0_eps("v_prediction", out, x, a, s)[0]
    torch.testing.assert_close(problem.denoise(x, a, s), expected, rtol=1e-10, atol=1e-12)
    # any rescaling of the same level (VE coordinates: alpha = 1) is the same point
    torch.testing.assert_close(problem.denoise(x / a, 1.0, s / a), expected, rtol=1e-9, atol=1e-11)


def test_torchscript_and_export_files_with_a_sidecar(tmp_path):
    net = bench_models.TinyDenoiser()
    x, t = torch.randn(2, *bench_models.SHAPE), torch.full((2,), 10.0)
    meta = {"prediction_type": "v_prediction", "sample_shape": list(bench_models.SHAPE), "schedule": "linear"}
    ts = tmp_path / "net.ts"
    torch.jit.save(torch.jit.trace(net, (x, t)), str(ts))
    (tmp_path / "net.ts.json").write_text(json.dumps(meta))
    result = _run(str(ts), schedulers=("euler",), steps=(4, 8))
    assert result.problem["format"] == "TorchScript"
    _check_reference(result)
    pt2 = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (x, t)), str(pt2))
    (tmp_path / "net.json").write_text(json.dumps(meta))  # the other side-car name
    problem = N.load_model_problem(str(pt2))
    assert problem.describe()["format"] == "torch.export"
    y = torch.randn(2, 16, dtype=torch.float64)
    ref = N.load_model_problem(str(ts)).denoise(y, 0.6, 0.8)
    torch.testing.assert_close(problem.denoise(y, 0.6, 0.8), ref, rtol=1e-5, atol=1e-6)


def test_data_metrics_with_a_heldout_floor(tmp_path):
    data = np.random.default_rng(0).standard_normal((40, *bench_models.SHAPE))
    path = tmp_path / "data.npy"
    np.save(path, data)
    result = _run("bench_models:make_tiny", data=str(path), schedulers=("euler",), steps=(4,), samples=20)
    assert result.metric_names == ["sw", "mmd", "ode_error"]
    row = result.rows[0]
    assert all(math.isfinite(row.metrics[m]) for m in ("sw", "mmd", "ode_error"))
    for m in ("sw", "mmd"):
        floor = result.noise_floor[m]
        assert floor["source"] == "held-out split" and math.isfinite(floor["mean"])
    assert result.problem["train_samples"] == 20 and result.problem["heldout_samples"] == 20
    # with as many samples as held-out rows, the floor is the whole held-out half scored against the other
    from samplers.bench import metrics as M

    train = torch.as_tensor(data[0::2]).reshape(20, -1)
    held = torch.as_tensor(data[1::2]).reshape(20, -1)
    assert result.noise_floor["sw"]["mean"] == pytest.approx(M.sliced_wasserstein(held, train), rel=1e-9)


def test_image_folder_data(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 4, 4), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p, mode="L").save(tmp_path / f"{i:02d}.png")
    data = N.load_data(tmp_path, bench_models.SHAPE)
    assert data.shape == (6, 1, 4, 4)
    torch.testing.assert_close(data[:, 0], torch.as_tensor(pixels, dtype=torch.float64) / 127.5 - 1)
    with pytest.raises(N.ModelInputError, match="model's samples are 8x8"):
        N.load_data(tmp_path, (1, 8, 8))


def _refused(bench_app, tmp_path, monkeypatch, args: list[str], *needles: str) -> None:
    """One error line, exit code 2, no sampling, no output file."""

    def no_sampling(*a, **k):
        raise AssertionError("sampling ran before the input was refused")

    monkeypatch.setattr(R, "sample_oracle", no_sampling)
    out = {flag: tmp_path / f"out{flag.strip('-')}" for flag in ("--json", "--csv")}
    cli = [*args, "--quiet", *(v for f, p in out.items() for v in (f, str(p)))]
    result = CliRunner().invoke(bench_app, ["bench", *cli])
    err = getattr(result, "stderr", "") or result.output
    assert result.exit_code == 2, result.output
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert not any(p.exists() for p in out.values())


def test_folder_without_a_schedule(bench_app, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 8}))
    _refused(bench_app, tmp_path, monkeypatch, ["--model", str(folder)], "no scheduler_config.json")


def test_wrong_output_shape(bench_app, tmp_path, monkeypatch):
    _refused(
        bench_app,
        tmp_path,
        monkeypatch,
        ["--model", "bench_models:make_wrong_shape"],
        "returned shape (2, 1, 3, 4)",
        "(1, 4, 4)",
    )


def test_data_of_another_shape(bench_app, tmp_path, monkeypatch):
    path = tmp_path / "data.pt"
    torch.save(torch.zeros(10, 3, 4, 4), path)
    _refused(
        bench_app,
        tmp_path,
        monkeypatch,
        ["--model", "bench_models:make_tiny", "--data", str(path)],
        "[10, 3, 4, 4]",
        "[1, 4, 4]",
    )


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
        ("bench_models:make_nothing", "has no attribute 'make_nothing'"),
        ("bench_models:NOT_CALLABLE", "not a callable factory"),
        ("no/such/folder", "no such file or folder"),
    ],
)
def test_import_paths_that_do_not_resolve(bench_app, tmp_path, monkeypatch, spec, needle):
    _refused(bench_app, tmp_path, monkeypatch, ["--model", spec], needle)


def test_factory_that_returns_no_model(bench_app, tmp_path, monkeypatch):
    _refused(
        bench_app,
        tmp_path,
        monkeypatch,
        ["--model", "bench_models:make_not_a_model"],
        "returned a TinyDenoiser without model, prediction_type, schedule, sample_shape",
    )


def test_data_without_model_and_sidecar_missing(bench_app, tmp_path, monkeypatch):
    _refused(bench_app, tmp_path, monkeypatch, ["--data", str(tmp_path)], "--data", "give --model")
    ts = tmp_path / "net.ts"
    net = bench_models.TinyDenoiser()
    torch.jit.save(torch.jit.trace(net, (torch.randn(2, 1, 4, 4), torch.ones(2))), str(ts))
    _refused(bench_app, tmp_path, monkeypatch, ["--model", str(ts)], "side-car JSON")


def test_cli_table_reports_the_reference(bench_app, tmp_path):
    path = tmp_path / "r.json"
    args = ["bench", "--model", "bench_models:make_tiny", "-s", "dpmpp_2m", "-n", "4,8", "--samples", "8"]
    result = CliRunner().invoke(bench_app, [*args, "--ode-samples", "4", "--quiet", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert "ODE reference" in result.output and "below the smallest ODE error" in result.output
    doc = json.loads(path.read_text())
    assert doc["problem"]["ode_reference"]["margin"] >= 10 and doc["config"]["model"] == "bench_models:make_tiny"


def test_diffusers_folder(tmp_path):
    """A saved UNet2DModel with its DDPMScheduler config (output layer scaled down: a tame untrained net)."""
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=4,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    )
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.05)
    unet.save_pretrained(tmp_path)
    diffusers.DDPMScheduler(prediction_type="v_prediction").save_pretrained(tmp_path / "scheduler")
    result = _run(str(tmp_path), schedulers=("euler",), steps=(3, 6), samples=4, ode_samples=2)
    assert result.problem["class"] == "UNet2DModel" and result.problem["sample_shape"] == [1, 4, 4]
    assert result.problem["scheduler_config"].endswith("scheduler/scheduler_config.json")
    _check_reference(result)


def test_foreign_samplers_drive_the_model_on_its_schedule():
    """Issue 15's two halves together: diffusers' DDIM and k-diffusion's Euler on a --model network (its
    linear training schedule given to both) give our own DDIM's and Euler's samples and ODE errors, and a
    class that cannot take the model's schedule is refused before sampling."""
    result = _run(
        "bench_models:make_tiny",
        schedulers=("ddim", "diffusers:DDIMScheduler", "euler", "k-diffusion:sample_euler"),
        steps=(4, 10),  # linspace(999, 0, n) on integers: k-diffusion's log-sigma interpolation is exact there
        samples=8,
        keep_samples=8,
    )
    by = {(r.scheduler.split(": ")[-1], r.steps): r for r in result.rows}
    for ours, theirs in (("ddim", "DDIMScheduler"), ("euler", "sample_euler")):
        for steps in (4, 10):
            mine, foreign = by[(ours, steps)], by[(theirs, steps)]
            assert foreign.error is None and foreign.nfe == mine.nfe == steps
            assert foreign.metrics["ode_error"] == pytest.approx(mine.metrics["ode_error"], rel=1e-5)
            a, b = result.samples[f"{mine.scheduler}@{steps}"], result.samples[f"{foreign.scheduler}@{steps}"]
            assert float((a - b).abs().max()) < 1e-4
    assert sum("model: linear" in str(v.get("schedule")) for v in result.schedulers.values()) == 2
    problem = N.load_model_problem("bench_models:make_tiny")
    config = R.BenchConfig(model="bench_models:make_tiny", schedule="model")
    with pytest.raises(R.BenchInputError, match="takes neither a beta schedule nor a flow shift"):
        R.resolve_scheduler("diffusers:EDMEulerScheduler", config, problem)
