"""Plugins installed for real: a fresh virtual environment, ``pip install`` of samplers and the example
plugin distributions, and the ``samplers`` command run as a user would run it.

The fresh venv is made without pip or site packages; a ``.pth`` file adds this interpreter's
site-packages *after* the venv's own, so torch, pluggy, pip and setuptools are importable without a
download while ``samplers`` and the plugins come from what is installed into the venv (copies of
the sources, built with ``--no-deps --no-build-isolation --no-index``: no network, when the host's
setuptools can build wheels by itself; an older setuptools without ``wheel`` falls back to pip's isolated
build environment). One installation serves the whole module; the broken plugins are installed last,
after the tests that expect none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import types
from pathlib import Path

import pytest

from samplers import hookspecs
from samplers.registry import Registry, Source

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
PLUGIN_NAMES = ("dpmpp_3m_exact", "dpmpp_3m_sde_exact")


# --------------------------------------------------------------------------------------------
# In-process: API version handling (fast, no install)
# --------------------------------------------------------------------------------------------


def test_api_version_mismatch_is_a_load_error_not_a_crash():
    reg = Registry(autoload=False)
    old = types.ModuleType("old_plugin")
    old.SAMPLERS_API_VERSION = hookspecs.API_VERSION + 1

    def samplers_register_schedulers() -> list:
        return []

    old.samplers_register_schedulers = hookspecs.hookimpl(samplers_register_schedulers)
    reg.register(old, "old_plugin", Source("old_plugin", "old-samplers-plugin", "1.0"))
    assert [(e.plugin, e.distribution) for e in reg.load_errors] == [("old_plugin", "old-samplers-plugin")]
    assert f"targets samplers plugin API {hookspecs.API_VERSION + 1}" in reg.load_errors[0].error
    assert "ddim" in reg.available()  # the built-ins are unaffected
    current = types.ModuleType("current_plugin")
    current.SAMPLERS_API_VERSION = hookspecs.API_VERSION
    reg.register(current, "current_plugin")
    assert len(reg.load_errors) == 1


# --------------------------------------------------------------------------------------------
# The fresh environment
# --------------------------------------------------------------------------------------------


class Venv:
    def __init__(self, root: Path, work: Path) -> None:
        self.root = root
        self.work = work  # cwd for commands: nothing importable there
        self.python = str(root / "bin" / "python")
        self.samplers = str(root / "bin" / "samplers")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SAMPLERS_", "VIRTUAL_ENV"))}
        env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", NO_COLOR="1", COLUMNS="200", **extra)
        return env

    def can_build_offline(self) -> bool:
        """setuptools >= 70.1 (bdist_wheel built in) or the wheel package: then no build environment is needed."""
        code = (
            "import importlib.util, setuptools; v = tuple(int(p) for p in setuptools.__version__.split('.')[:2]); "
            "print(v >= (70, 1) or importlib.util.find_spec('wheel') is not None)"
        )
        return self.run(self.python, "-c", code, check=False).stdout.strip() == "True"

    def run(self, *args: str, check: bool = True, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            list(args), cwd=self.work, env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{args} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                f"--- stderr\n{proc.stderr[-4000:]}"
            )
        return proc

    def pip_install(self, *paths: Path) -> None:
        """``pip install --no-deps`` of source folders: offline with the host's setuptools when it can build
        wheels by itself, else in pip's isolated build environment (which fetches setuptools from the index)."""
        offline = ["--no-build-isolation", "--no-index"] if self.can_build_offline() else []
        self.run(self.python, "-m", "pip", "install", "--no-deps", "-q", *offline, *map(str, paths), timeout=600)

    def cli(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        return self.run(self.samplers, *args, check=check, **env)

    def list_json(self, **env: str) -> dict:
        return json.loads(self.cli("list", "--json", **env).stdout)


def _copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(
        src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".pytest_cache")
    )
    return dst


def _project_copy(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    _copy_tree(ROOT / "samplers", dst / "samplers")
    return dst


def _docs_plugin(dst: Path) -> Path:
    """The minimal plugin exactly as docs/plugins.md prints it (its ``# file`` code blocks)."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    blocks = dict(re.findall(r"```(?:toml|python)\n# (pyproject\.toml|my_samplers\.py)\n(.*?)```", text, flags=re.S))
    assert set(blocks) == {"pyproject.toml", "my_samplers.py"}, "docs/plugins.md lost its minimal plugin blocks"
    dst.mkdir(parents=True)
    for name, body in blocks.items():
        (dst / name).write_text(body)
    return dst


def _broken_plugins(dst: Path) -> tuple[Path, Path]:
    broken = dst / "broken"
    broken.mkdir(parents=True)
    (broken / "pyproject.toml").write_text(
        textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "broken-samplers-plugin"
        version = "0.0.1"
        [project.entry-points.samplers]
        broken = "broken_samplers_plugin"
        [tool.setuptools]
        py-modules = ["broken_samplers_plugin"]
    """)
    )
    (broken / "broken_samplers_plugin.py").write_text('raise ImportError("this plugin is broken on purpose")\n')
    old = dst / "old"
    old.mkdir(parents=True)
    (old / "pyproject.toml").write_text(
        textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "old-samplers-plugin"
        version = "0.0.1"
        [project.entry-points.samplers]
        old_plugin = "old_samplers_plugin"
        [tool.setuptools]
        py-modules = ["old_samplers_plugin"]
    """)
    )
    (old / "old_samplers_plugin.py").write_text(
        textwrap.dedent("""\
        from samplers.hookspecs import hookimpl
        SAMPLERS_API_VERSION = 99  # a future API this samplers does not speak
        @hookimpl
        def samplers_register_schedulers():
            return []
    """)
    )
    return broken, old


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Venv:
    base = tmp_path_factory.mktemp("plugin-venv")
    root = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    site = Path(
        subprocess.run(
            [str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # This interpreter's packages (torch, pluggy, pip, setuptools, pytest...) after the venv's own.
    (site / "zz_host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = base / "work"
    work.mkdir()
    env = Venv(root, work)
    src = base / "src"
    env.pip_install(
        _project_copy(src / "samplers"),
        _copy_tree(PLUGINS / "samplers-multistep", src / "samplers-multistep"),
        _copy_tree(PLUGINS / "samplers-extras", src / "samplers-extras"),
        _docs_plugin(src / "my-samplers"),
    )
    env.src = src
    return env


# --------------------------------------------------------------------------------------------
# What a user sees
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_installed_copies_are_used(venv):
    out = venv.run(
        venv.python,
        "-c",
        "import samplers, samplers_multistep, samplers_extras; "
        "print(samplers.__file__); print(samplers_multistep.__file__); print(samplers_extras.__file__)",
    ).stdout
    for line in out.split():
        assert line.startswith(str(venv.root)), f"{line} is not inside the fresh venv"


@pytest.mark.slow
def test_list_shows_plugin_schedulers_with_their_distribution(venv):
    listing = venv.list_json()
    by_name = {row["name"]: row for row in listing["schedulers"]}
    for name in PLUGIN_NAMES:
        assert by_name[name]["distribution"] == "samplers-multistep" and by_name[name]["version"] == "0.1.0"
        assert by_name[name]["plugin"] == "multistep"
    assert by_name["ddim_trailing"]["distribution"] == "my-samplers"  # the docs' minimal plugin
    assert by_name["ddim"]["distribution"] == "samplers"
    assert by_name["dpmpp_3m_sde_exact"]["stochastic"] is True and by_name["dpmpp_3m_exact"]["order"] == 3
    assert listing["load_errors"] == []
    table = venv.cli("list").stdout
    assert re.search(r"dpmpp_3m_exact\s.*samplers-multistep 0\.1\.0", table), table


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpmpp_3m_exact", "dpmpp_3m_sde_exact", "ddim_trailing"])
def test_check_passes_for_installed_plugins(venv, name):
    proc = venv.cli("check", name, "--quick")
    assert "FAIL" not in proc.stdout and "all 8 checks passed" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_schedule_plugin_is_usable_by_name(venv):
    proc = venv.cli(
        "check", "euler", "--quick", "-o", "schedule=laplace", "--only", "accuracy,config_roundtrip", "--json"
    )
    report = json.loads(proc.stdout)
    assert report["passed"] and report["config"] == {"schedule": "laplace"}
    code = (
        "import samplers; "
        "s = samplers.get('dpmpp_2m', schedule='shifted_cosine', schedule_kwargs={'image_size': 128}); "
        "print(type(s.schedule).__module__, s.schedule.image_size)"
    )
    assert venv.run(venv.python, "-c", code).stdout.split() == ["samplers_extras.schedules", "128"]


@pytest.mark.slow
def test_plugin_test_suites_run_against_the_installed_distributions(venv):
    proc = venv.run(
        venv.python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(venv.src / "samplers-multistep" / "tests" / "test_exact_multistep.py"),
        str(venv.src / "samplers-extras" / "tests" / "test_extras_schedules.py"),
        "-k",
        "registered or conforms or variance_preserving",
        check=False,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", proc.stdout) and "failed" not in proc.stdout


@pytest.mark.slow
def test_bench_runs_a_plugin_scheduler(venv):
    if "bench" not in venv.cli("--help").stdout:
        pytest.skip("this checkout of samplers has no `samplers bench` command yet")
    proc = venv.cli(
        "bench",
        "--scheduler",
        "dpmpp_2m,dpmpp_3m_exact",
        "--steps",
        "5",
        "--samples",
        "256",
        "--ode-samples",
        "64",
        "--quiet",
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"dpmpp_2m\s*│\s*5\s*│\s*5", proc.stdout) and "dpmpp_3m_exact" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_discovery_cost_is_small(venv):
    sys.path.insert(0, str(PLUGINS))
    try:
        import discovery_cost
    finally:
        sys.path.remove(str(PLUGINS))
    result = discovery_cost.compare(venv.python, runs=3)
    assert {"multistep", "extras", "my_samplers", "builtins"} <= set(result["autoload"]["loaded"])
    assert result["disabled"]["loaded"] == ["builtins"]
    # The registry build (entry-point scan + plugin imports + hooks) is what autoload adds.
    assert result["overhead_registry_s"] < 0.1, result


# --------------------------------------------------------------------------------------------
# Broken plugins and the kill switch (installed last)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def venv_with_broken(venv):
    broken, old = _broken_plugins(venv.src / "bad")
    venv.pip_install(broken, old)
    return venv


@pytest.mark.slow
def test_broken_plugin_is_reported_and_the_rest_works(venv_with_broken):
    v = venv_with_broken
    listing = v.list_json()
    errors = {e["plugin"]: e for e in listing["load_errors"]}
    assert errors["broken"]["distribution"] == "broken-samplers-plugin"
    assert "ImportError: this plugin is broken on purpose" in errors["broken"]["error"]
    assert (
        errors["old_plugin"]["error"] == f"targets samplers plugin API 99, this samplers has {hookspecs.API_VERSION}"
    )
    names = {row["name"] for row in listing["schedulers"]}
    assert {"ddim", "euler", "heun"} <= names and set(PLUGIN_NAMES) <= names
    text = v.cli("list")
    assert (
        "plugin 'broken' from broken-samplers-plugin failed to load: ImportError: this plugin is broken on purpose"
        in text.stdout
    )
    info = json.loads(v.cli("info", "--json").stdout)
    assert {e["plugin"] for e in info["load_errors"]} == {"broken", "old_plugin"}
    assert "plugin 'old_plugin' from old-samplers-plugin failed to load" in v.cli("info").stdout
    # built-ins and good plugins still sample
    code = "import samplers, torch; s = samplers.get('dpmpp_3m_exact'); s.set_timesteps(3); print(len(s.timesteps))"
    assert v.run(v.python, "-c", code).stdout.strip() == "3"


@pytest.mark.slow
def test_disable_autoload_hides_third_party_plugins(venv_with_broken):
    v = venv_with_broken
    listing = v.list_json(SAMPLERS_DISABLE_PLUGIN_AUTOLOAD="1")
    names = {row["name"] for row in listing["schedulers"]}
    assert {"ddim", "euler", "langevin"} <= names
    assert not names & set(PLUGIN_NAMES) and "ddim_trailing" not in names
    assert {row["distribution"] for row in listing["schedulers"]} == {"samplers"}
    assert listing["load_errors"] == []
    info = json.loads(v.cli("info", "--json", SAMPLERS_DISABLE_PLUGIN_AUTOLOAD="1").stdout)
    assert info["plugin_autoload"] is False
    proc = v.cli("check", "dpmpp_3m_exact", check=False, SAMPLERS_DISABLE_PLUGIN_AUTOLOAD="1")
    assert proc.returncode == 2 and "unknown scheduler 'dpmpp_3m_exact'" in proc.stderr
    code = "import samplers; samplers.get('ddim', schedule='laplace')"
    proc = v.run(v.python, "-c", code, check=False, SAMPLERS_DISABLE_PLUGIN_AUTOLOAD="1")
    assert proc.returncode != 0 and "unknown schedule 'laplace'" in proc.stderr
