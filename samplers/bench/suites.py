"""Named scheduler suites for ``samplers bench --suite NAME``.

``popular``: the samplers people ask for by name (issue 13's coverage table: diffusers' continuous-time
schedulers, k-diffusion's samplers and ComfyUI's most used names), under our registered names. The
default ``samplers bench`` (five classics, under a minute on a CPU) does not change; a suite is asked for.

Left out on purpose: the inversion samplers ``ddim_inverse`` and ``dpmpp_2m_inverse`` (issue 13 lists them
for editing pipelines). They run from data to noise, while every bench metric scores a noise-to-data run
against the data distribution, so a row for them would be a number without a meaning. Their own tests
(tests/test_ddim_inverse.py, tests/test_dpmsolver_inverse.py) check them by reconstruction instead.
"""

from __future__ import annotations

from collections.abc import Sequence

# Grouped as in issue 13's table; each line names the sampler(s) asked for.
POPULAR: tuple[str, ...] = (
    # DPM-Solver++ 2M and 3M, DPM-Solver (non-++) multistep, UniPC (bh1 / bh2 are its solver_type option)
    "dpmpp_2m",
    "dpmpp_3m",
    "dpm_multistep",
    "unipc",
    # LMS (order up to 4)
    "lms",
    # DPM2 and DPM2 ancestral
    "dpm2",
    "dpm2_ancestral",
    # DPM++ 2S ancestral, DPM++ SDE, DPM++ 2M SDE (midpoint / heun: its solver_type option), DPM++ 3M SDE
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    # DPM-Solver and DPM-Solver++ singlestep (orders 1-3: solver_order), DPM-Solver fast
    "dpm_singlestep",
    "dpmpp_singlestep",
    "dpm_fast",
    # DEIS, PNDM / PLMS, iPNDM, SA-Solver
    "deis",
    "pndm",
    "ipndm",
    "sa_solver",
    # consistency: LCM, TCD
    "lcm",
    "tcd",
    # EDM Euler, EDM DPM-Solver++
    "edm_euler",
    "edm_dpmpp_2m",
    # flow Heun, flow Euler (stochastic_sampling=True is its option)
    "flow_heun",
    "flow_euler",
    # from papers: RES multistep (+ ancestral), ER-SDE, SEEDS-2/3, gradient estimation, CFG++, Restart
    "res_multistep",
    "res_multistep_ancestral",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "gradient_estimation",
    "euler_cfgpp",
    "dpmpp_2m_cfgpp",
    "restart",
)

# Issue 13's samplers that no suite runs, and why (see the module docstring).
NOT_BENCHED: dict[str, str] = {
    "ddim_inverse": "an inversion (data to noise): the bench scores noise-to-data runs",
    "dpmpp_2m_inverse": "an inversion (data to noise): the bench scores noise-to-data runs",
}

SUITES: dict[str, tuple[str, ...]] = {"popular": POPULAR}


def resolve(suite: str | None, schedulers: Sequence[str] | None) -> tuple[str, ...] | None:
    """The scheduler names of ``--suite`` and ``--scheduler`` together.

    Both given: their union, the suite's names first, then the ``--scheduler`` names it lacks (so
    ``--suite popular -s ddim,euler`` adds the classics to the suite; a name in both runs once).
    Neither: ``None`` (the problem's default list applies). An unknown suite raises ``ValueError`` naming
    the known ones.
    """
    if suite is None:
        return tuple(schedulers) if schedulers is not None else None
    key = suite.strip().lower()
    if key not in SUITES:
        raise ValueError(f"--suite: unknown suite {suite!r} (known suites: {', '.join(SUITES)})")
    names = list(SUITES[key])
    for name in schedulers or ():
        if name not in names:
            names.append(name)
    return tuple(names)
