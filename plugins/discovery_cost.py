"""What plugin discovery costs: ``import samplers; samplers.available()`` with entry points on and off.

Runs fresh interpreters (``--python``, default this one) with ``-X importtime`` several times in each
mode, alternating, and reports medians of (a) the wall time of ``samplers.available()`` (where the
registry is built: entry-point scan, plugin imports, hook calls), (b) the wall time of the whole
statement and (c) the import time ``-X importtime`` attributes to the top-level imports. The
difference between ``autoload`` and ``SAMPLERS_DISABLE_PLUGIN_AUTOLOAD=1`` is the cost of
discovering and importing the installed plugins; (a) is the least noisy estimate of it, since
``import samplers`` itself (torch) is the same in both modes.

    python plugins/discovery_cost.py --python /path/to/venv/bin/python --runs 7 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

STATEMENT = (
    "import time; t0 = time.perf_counter(); import samplers; t1 = time.perf_counter(); names = samplers.available(); "
    "t2 = time.perf_counter(); import json; "
    "print(json.dumps({'seconds': t2 - t0, 'registry_seconds': t2 - t1, 'names': names, "
    "'loaded': sorted(n for n, _ in samplers.registry().pm.list_name_plugin()), "
    "'plugins': sorted({e.source.distribution for e in samplers.registry().entries.values()})}))"
)


def measure(python: str, disable: bool) -> dict:
    """One fresh interpreter: wall seconds of the statement, importtime total (s), names and sources."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SAMPLERS_DISABLE_PLUGIN_AUTOLOAD")}
    if disable:
        env["SAMPLERS_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    proc = subprocess.run(
        [python, "-X", "importtime", "-c", STATEMENT], capture_output=True, text=True, env=env, check=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    total_us = 0
    plugin_us = 0
    for line in proc.stderr.splitlines():
        # "import time:   self [us] | cumulative | imported package"; top-level imports have no indent
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part for part in line[len("import time:") :].split("|"))
        if not name.startswith("  ") and name.strip():
            total_us += int(cumulative)
        if not name.startswith("  ") and name.strip().split(".")[0] in ("samplers_multistep", "samplers_extras"):
            plugin_us += int(cumulative)
    result["importtime_seconds"] = total_us / 1e6
    result["plugin_import_seconds"] = plugin_us / 1e6
    return result


def compare(python: str, runs: int = 7) -> dict:
    """Medians over ``runs`` alternating runs of each mode, and their difference."""
    on, off = [], []
    for _ in range(runs):
        on.append(measure(python, False))
        off.append(measure(python, True))

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    return {
        "python": python,
        "runs": runs,
        "autoload": {
            "wall_s": med(on, "seconds"),
            "registry_s": med(on, "registry_seconds"),
            "importtime_s": med(on, "importtime_seconds"),
            "plugin_imports_s": med(on, "plugin_import_seconds"),
            "plugins": on[0]["plugins"],
            "loaded": on[0]["loaded"],
            "schedulers": len(on[0]["names"]),
        },
        "disabled": {
            "wall_s": med(off, "seconds"),
            "registry_s": med(off, "registry_seconds"),
            "importtime_s": med(off, "importtime_seconds"),
            "plugins": off[0]["plugins"],
            "loaded": off[0]["loaded"],
            "schedulers": len(off[0]["names"]),
        },
        "overhead_wall_s": med(on, "seconds") - med(off, "seconds"),
        "overhead_registry_s": med(on, "registry_seconds") - med(off, "registry_seconds"),
        "overhead_importtime_s": med(on, "importtime_seconds") - med(off, "importtime_seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = compare(args.python, args.runs)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    a, d = r["autoload"], r["disabled"]
    print(f"{args.python}: median of {args.runs} fresh interpreters each")
    print(
        f"  autoload  : {1e3 * a['wall_s']:7.1f} ms wall (registry {1e3 * a['registry_s']:.1f} ms), "
        f"{1e3 * a['importtime_s']:7.1f} ms importtime, "
        f"{a['schedulers']} schedulers, plugins loaded: {', '.join(a['loaded'])} "
        f"(their modules: {1e3 * a['plugin_imports_s']:.1f} ms)"
    )
    print(
        f"  disabled  : {1e3 * d['wall_s']:7.1f} ms wall (registry {1e3 * d['registry_s']:.1f} ms), "
        f"{1e3 * d['importtime_s']:7.1f} ms importtime, "
        f"{d['schedulers']} schedulers, plugins loaded: {', '.join(d['loaded'])}"
    )
    print(
        f"  discovery : +{1e3 * r['overhead_registry_s']:.1f} ms in samplers.available() (the registry build), "
        f"+{1e3 * r['overhead_wall_s']:.1f} ms wall for the whole statement, "
        f"+{1e3 * r['overhead_importtime_s']:.1f} ms importtime"
    )


if __name__ == "__main__":
    main()
