"""``samplers bench`` under hostile input (issue 11): output files, size bounds, problem options.

Every case must end in one clear error line before any sampling, or in a correct result; never
a truncated file, a hang, a crash or a silently substituted value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from typer.testing import CliRunner

from samplers.bench import problems as P
from samplers.bench import runner as R

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--scheduler", "ddim", "--steps", "2", "--samples", "20", "--ode-samples", "4", "--quiet"]


@pytest.fixture()
def no_sampling(monkeypatch):
    """Any call of the benchmark itself fails the test: the error must come before it."""

    def no_run(*a, **k):
        raise AssertionError("sampling ran before the input was refused")

    monkeypatch.setattr(R, "run_benchmark", no_run)


def _err(result) -> str:
    return getattr(result, "stderr", "") or result.output


def _one_line_error(result, *needles: str) -> str:
    err = _err(result)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# --------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------

_WRITE_UNDER_FSIZE_LIMIT = textwrap.dedent(
    """
    import resource, signal, sys
    from samplers.bench import runner as R
    cfg = {"pad": "x" * 50000, "samples": 1, "device": "cpu", "dtype": "float32", "seed": 0}
    res = R.BenchResult(config=cfg, problem={}, environment={}, metric_names=[], rows=[],
                        noise_floor={}, orders={}, timing={})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    try:
        getattr(R, sys.argv[1])(res, sys.argv[2])
    except OSError as exc:
        print("write failed:", exc.errno)
    """
)


@pytest.mark.parametrize("writer", ["write_json", "write_csv"])
def test_a_failed_write_keeps_the_previous_file(tmp_path, writer):
    """A write that fails half-way (here: the file-size limit, as a full disk would) leaves the old file whole."""
    if writer == "write_csv":  # a CSV row per run: make the result big through many rows instead
        script = _WRITE_UNDER_FSIZE_LIMIT.replace(
            "rows=[],", "rows=[R.BenchRow('s' * 500, 1, 1, 'epsilon', 'x', False, 1, {}, 1, 1, 1, 1, 1, 'x', 0)] * 50,"
        )
    else:
        script = _WRITE_UNDER_FSIZE_LIMIT
    target = tmp_path / "out.json"
    old = json.dumps({"previous": "run", "rows": list(range(10))})
    target.write_text(old)
    proc = subprocess.run(
        [sys.executable, "-c", script, writer, str(target)], capture_output=True, text=True, timeout=120
    )
    assert "write failed: 27" in proc.stdout, (proc.returncode, proc.stdout, proc.stderr)  # EFBIG
    assert target.read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary file left behind


def test_writes_replace_the_file_atomically(tmp_path, monkeypatch):
    """The new content goes to a temporary file in the same folder and replaces the target in one rename."""
    target = tmp_path / "r.csv"
    target.write_text("old")
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((os.path.dirname(os.fspath(src)), os.fspath(dst)))
        assert target.read_text() == "old"  # untouched until the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    res = R.BenchResult(
        config={"samples": 1, "device": "cpu", "dtype": "float32", "seed": 0},
        problem={"name": "p"},
        environment={},
        metric_names=[],
        rows=[],
        noise_floor={},
        orders={},
        timing={},
    )
    R.write_csv(res, target)
    assert renames == [(str(tmp_path), str(target))]
    assert target.read_text().startswith("schema_version,")


def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def check() -> None:
        try:
            R.check_writable(fifo, "--json")
            outcome.append(None)
        except BaseException as exc:  # whatever it was, the main thread reports it
            outcome.append(exc)

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # the old code blocks in open(): let it go before failing
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        worker.join(timeout=10)
        os.close(fd)
        pytest.fail("check_writable hung on a FIFO")
    assert isinstance(outcome[0], R.BenchInputError)
    assert "--json" in str(outcome[0]) and "not a regular file" in str(outcome[0])


def test_a_fifo_path_fails_the_command_before_sampling(bench_app, tmp_path, no_sampling):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    holder: list = []
    worker = threading.Thread(
        target=lambda: holder.append(CliRunner().invoke(bench_app, ["bench", *TINY, "--csv", str(fifo)])), daemon=True
    )
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        worker.join(timeout=10)
        os.close(fd)
        pytest.fail("samplers bench hung on a FIFO --csv path")
    _one_line_error(holder[0], "--csv", "not a regular file")


@pytest.mark.parametrize("via_symlink", [False, True])
def test_one_path_for_two_outputs_is_an_error(bench_app, tmp_path, no_sampling, via_symlink):
    target = tmp_path / "out.txt"
    other = target
    if via_symlink:
        target.write_text("x")
        other = tmp_path / "link.txt"
        other.symlink_to(target)
    result = CliRunner().invoke(bench_app, ["bench", *TINY, "--json", str(target), "--csv", str(other)])
    _one_line_error(result, "--json", "--csv", "same file")
    assert not via_symlink or target.read_text() == "x"


def test_no_output_file_when_the_run_fails(bench_app, tmp_path, monkeypatch):
    """An error during sampling writes nothing (no partial files), and earlier files stay as they were."""
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    cs.write_text("old csv")

    def broken(*a, **k):
        raise RuntimeError("the model blew up")

    monkeypatch.setattr(R, "run_benchmark", broken)
    result = CliRunner().invoke(bench_app, ["bench", *TINY, "--json", str(js), "--csv", str(cs)])
    assert result.exit_code == 1 and "the model blew up" in _err(result)
    assert not js.exists() and cs.read_text() == "old csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


# --------------------------------------------------------------------------------------------
# Size bounds
# --------------------------------------------------------------------------------------------


def test_threads_are_bounded(bench_app, monkeypatch, no_sampling):
    import torch

    asked: list[int] = []
    real = torch.set_num_threads

    def guarded(n: int) -> None:  # libgomp segfaults near 100,000 threads: never let the test get there
        asked.append(n)
        if n > 4096:
            raise AssertionError(f"set_num_threads({n}) was called")
        real(n)

    monkeypatch.setattr(torch, "set_num_threads", guarded)
    result = CliRunner().invoke(bench_app, ["bench", *TINY, "--threads", "100000"])
    limit = R.max_threads()
    _one_line_error(result, "--threads", f"at most {limit}")
    assert all(n <= limit for n in asked)
    assert 1 <= limit <= 4 * (os.cpu_count() or 1)


def test_too_many_components_is_refused_before_allocating():
    with pytest.raises(ValueError, match=r"option 'components' must be in \[1, 4096\], got 100000"):
        P.get_problem("gmm2d:layout=ring,components=100000")
    with pytest.raises(ValueError, match=r"option 'components' must be in \[1, 4096\], got 100000000"):
        P.get_problem("gmm2d:components=100000000")
    with pytest.raises(ValueError, match=r"option 'components' must be in \[1, 4096\]"):
        P.get_problem("swissroll:components=1000000")


def test_huge_component_count_fails_the_command_with_the_limit(bench_app, no_sampling):
    result = CliRunner().invoke(bench_app, ["bench", *TINY, "-p", "gmm2d:components=100000000"])
    _one_line_error(result, "option 'components' must be in [1, 4096]")


def test_dimension_times_components_is_bounded_by_memory():
    # each option in range, together too big: the estimate names the bytes and the limit
    with pytest.raises(ValueError, match=r"gmm_nd.*GiB.*limit"):
        P.get_problem("gmm_nd:dim=1024,components=4096")


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--samples", "100000000000"], ["--samples", "GiB", "limit"]),
        (["--samples", "300000000", "-p", "gmm_nd:dim=64"], ["--samples", "GiB"]),
        (["--steps", "100000000"], ["--steps", "at most"]),
        (["--ode-samples", "100000000000"], ["--ode-samples"]),
    ],
)
def test_sample_counts_and_steps_are_bounded(bench_app, no_sampling, args, needles):
    result = CliRunner().invoke(bench_app, ["bench", "--scheduler", "ddim", "--quiet", *args])
    _one_line_error(result, *needles)


def test_memory_estimate_accepts_the_defaults():
    parts = R.estimate_bytes(R.prepare(R.BenchConfig()))
    assert set(parts) == {"samples", "references", "mixture", "ode"}
    assert 0 < sum(parts.values()) < 2**30
    big = R.estimate_bytes(R.prepare(R.BenchConfig(samples=20000)))  # twice the samples: about twice the memory
    assert 1.9 < big["samples"] / parts["samples"] < 2.1


# --------------------------------------------------------------------------------------------
# Problem options: validated, never substituted
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gmm2d:components=0", r"option 'components' must be in \[1, 4096\], got 0"),
        ("gmm2d:layout=ring,components=-3", r"option 'components' must be in \[1, 4096\], got -3"),
        ("gmm2d:std=0", r"option 'std' must be in \(0, 1000\], got 0"),
        ("gmm2d:std=nan", r"option 'std' must be a finite number, got nan"),
        ("gmm2d:radius=inf", r"option 'radius' must be a finite number, got inf"),
        ("gmm2d:radius=-1", r"option 'radius' must be in \(0, 1000\], got -1"),
        ("gmm_nd:dim=0", r"option 'dim' must be in \[1, 1024\], got 0"),
        ("gmm_nd:layout=axes,components=5", r"option 'components' has no effect with layout 'axes'"),
        ("gmm2d:layout=8gaussians,seed=3", r"option 'seed' has no effect with layout '8gaussians'"),
        ("gaussian:anisotropy=0.5", r"option 'anisotropy' must be in \[1, 1e\+06\], got 0.5"),
        ("gaussian:seed=-1", r"option 'seed' must be in \[0, 2\*\*63 - 1\], got -1"),
        ("swissroll:turns=0", r"option 'turns' must be in \(0, 100\], got 0"),
        ("dit:image_size=100000", r"option 'image_size' must be in \[1, 512\], got 100000"),
        ("gmm_nd:name=x", r"problem 'gmm_nd' has no option\(s\) \['name'\]; it takes"),
    ],
)
def test_problem_options_are_validated_not_replaced(spec, message):
    with pytest.raises(ValueError, match=message):
        P.get_problem(spec)


def test_unknown_option_names_the_problems_options():
    with pytest.raises(ValueError) as info:
        P.get_problem("gmm2d:colour=red")
    text = str(info.value)
    assert "colour" in text and all(k in text for k in ("components", "layout", "radius", "seed", "std"))


def test_every_builtin_option_has_a_documented_range():
    import inspect

    for name, factory in P.problem_factories().items():
        specs = P.option_specs(name)
        assert set(specs) == set(inspect.signature(factory).parameters), name
        for key, spec in specs.items():
            assert spec.describe() and key in (factory.__doc__ or ""), (name, key)


def test_valid_edge_values_are_accepted_as_given():
    assert P.get_problem("gmm2d:layout=ring,components=1").num_components == 1
    assert P.get_problem("gmm2d:layout=ring,components=4096").num_components == 4096
    assert P.get_problem("gmm2d:std=1000").lam.max().item() == pytest.approx(1e6)
    assert P.get_problem("gmm2d:components=3").num_components == 3
