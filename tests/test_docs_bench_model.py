"""docs/bench_your_model.md runs as printed: its Python blocks are written to files and run, its
``samplers bench`` lines are run through the CLI, and what the page says they print is checked."""

from __future__ import annotations

import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "bench_your_model.md").read_text()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _python_blocks() -> dict[str, str]:
    return dict(re.findall(r"```python\n# (\w+\.py)\n(.*?)```", PAGE, flags=re.S))


def _bench_lines() -> list[list[str]]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", PAGE, flags=re.S):
        lines += [shlex.split(line)[2:] for line in block.splitlines() if line.startswith("samplers bench ")]
    return lines


@pytest.fixture()
def page_dir(tmp_path, monkeypatch):
    """The page's Python files in a fresh folder, which is the working directory and on sys.path."""
    for name, body in _python_blocks().items():
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_models", None)


def _run(bench_app, args: list[str], path: Path) -> dict:
    result = CliRunner().invoke(bench_app, ["bench", *args, "--quiet", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert "ODE reference:" in result.output and "below the smallest ODE error" in result.output, result.output
    return json.loads(path.read_text())


def test_page_lists_what_the_test_runs():
    assert set(_python_blocks()) == {"make_model.py", "make_data.py", "my_models.py"}
    specs = [line[line.index("--model") + 1] for line in _bench_lines()]
    assert specs == ["tiny_unet", "tiny_unet", "my_models:make"]


def test_factory_example(bench_app, page_dir):
    line = next(line for line in _bench_lines() if "my_models:make" in line)
    doc = _run(bench_app, line, page_dir / "factory.json")
    ref = doc["problem"]["ode_reference"]
    assert ref["margin"] >= 10 and doc["problem"]["prediction_type"] == "v_prediction"
    assert {r["scheduler"] for r in doc["rows"]} == {"euler", "dpmpp_2m"}


@pytest.mark.slow
def test_diffusers_folder_example(bench_app, page_dir, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["make_model.py", "tiny_unet"])
    runpy.run_path(str(page_dir / "make_model.py"), run_name="__main__")
    assert (page_dir / "tiny_unet" / "scheduler_config.json").is_file()
    runpy.run_path(str(page_dir / "make_data.py"), run_name="__main__")
    folder_line, data_line = [line for line in _bench_lines() if "tiny_unet" in line]
    doc = _run(bench_app, folder_line, page_dir / "folder.json")
    assert doc["problem"]["class"] == "UNet2DModel" and doc["problem"]["training_schedule"] == "linear, 1000 timesteps"
    assert {r["scheduler"] for r in doc["rows"]} == {"ddim", "euler", "dpmpp_2m"}
    doc = _run(bench_app, data_line, page_dir / "data.json")
    assert set(doc["noise_floor"]) == {"sw", "mmd"}
    assert doc["problem"]["train_samples"] == 899 and doc["problem"]["heldout_samples"] == 898
