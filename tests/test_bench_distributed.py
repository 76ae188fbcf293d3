"""Scale-out: sharded runs on 2 CPU processes (gloo) equal one process, bit for bit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from samplers.bench import runner as R
from samplers.bench.distributed import DistContext, init_from_env, launched_distributed, shard

CONFIG = dict(
    schedulers=("ddim", "euler_ancestral", "heun"),  # deterministic, stochastic (in-step noise), 2 NFE/step
    steps=(4, 7),
    problem="gmm2d:layout=random",
    samples=301,  # odd: the shards differ in size
    metrics=("sw", "sw1", "mmd", "frechet", "ode_error"),
    ode_samples=64,
    seed=5,
)
REPO = Path(__file__).resolve().parents[1]


def test_shard_partitions_the_indices():
    for n in (0, 1, 7, 301, 1000):
        for world in (1, 2, 3, 8):
            pieces = [shard(n, r, world) for r in range(world)]
            covered = [i for n_local, off in pieces for i in range(off, off + n_local)]
            assert covered == list(range(n))
            assert max(p[0] for p in pieces) - min(p[0] for p in pieces) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard(10, 2, 2)


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched_distributed()
    ctx = init_from_env("cpu")
    assert (ctx.rank, ctx.world_size, ctx.active, ctx.is_main) == (0, 1, False, True)
    x = torch.arange(6.0).view(3, 2)
    assert torch.equal(ctx.gather_rows(x, 3), x.double()) and ctx.reduce_max(2.5) == 2.5


def _nan_as_none(rows: list[dict]) -> list[dict]:
    return [{k: (None if v != v else v) for k, v in r.items()} for r in rows]


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ctx = DistContext(rank=rank, world_size=world, backend="gloo")
        res = R.run_benchmark(R.BenchConfig(**CONFIG), dist=ctx, keep_samples=10**6)
        if rank == 0:
            torch.save(
                {
                    "samples": res.samples,
                    "metrics": [r.metrics for r in res.rows],
                    "nfe": [r.nfe for r in res.rows],
                    "world": res.environment["world_size"],
                },
                os.path.join(out_dir, "rank0.pt"),
            )
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    sharded = torch.load(tmp_path / "rank0.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: a parallel reduction's order depends on the thread count
    try:
        single = R.run_benchmark(R.BenchConfig(**CONFIG), keep_samples=10**6)
    finally:
        torch.set_num_threads(threads)
    assert sharded["world"] == 2
    assert set(sharded["samples"]) == set(single.samples)
    for key, x in single.samples.items():
        assert x.shape == (301, 2)
        assert torch.equal(sharded["samples"][key], x), key  # bit for bit, stochastic samplers included
    assert _nan_as_none(sharded["metrics"]) == _nan_as_none([r.metrics for r in single.rows])
    assert sharded["nfe"] == [r.nfe for r in single.rows]


def _cli_args(json_path: Path) -> list[str]:
    return [
        "bench",
        "--scheduler",
        "ddim,euler_ancestral",
        "--steps",
        "4,8",
        "--problem",
        "gmm2d",
        "--samples",
        "257",
        "--seed",
        "3",
        "--metric",
        "sw,mmd,ode_error",
        "--ode-samples",
        "64",
        "--quiet",
        "--json",
        str(json_path),
    ]


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path):
    """``torchrun --nproc-per-node 2 -m samplers bench`` writes the same metrics as one process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, "-m", "samplers", *_cli_args(one)], check=True, cwd=tmp_path, env=env, timeout=300)
    with socket.socket() as sock:  # a free port, so parallel test runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    done = subprocess.run(
        [*launcher, "-m", "samplers", *_cli_args(two)],
        cwd=tmp_path,
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("samplers bench:") == 1  # only rank 0 prints
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["environment"]["world_size"] == 2 and b["environment"]["dist_backend"] == "gloo"
    assert [r["metrics"] for r in a["rows"]] == [r["metrics"] for r in b["rows"]]
    assert a["noise_floor"] == b["noise_floor"]
