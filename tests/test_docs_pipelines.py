"""Every snippet of docs/pipelines.md runs as written, and does what the text says it does.

Snippets are the ```python blocks preceded by ``<!-- snippet: NAME -->``; each runs in a namespace
that already holds what the ``setup`` snippet defined (as a reader who copied it first would have).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "pipelines.md"
_SNIPPET = re.compile(r"<!-- snippet: (\w+) -->\s*```python\n(.*?)```", re.S)


def snippets() -> dict[str, str]:
    return dict(_SNIPPET.findall(DOC.read_text()))


def run_snippet(name: str) -> dict[str, Any]:
    code = snippets()
    namespace: dict[str, Any] = {"__name__": f"docs_pipelines_{name}"}
    exec(compile(code["setup"], f"{DOC.name}:setup", "exec"), namespace)
    if name != "setup":
        exec(compile(code[name], f"{DOC.name}:{name}", "exec"), namespace)
    return namespace


def truth(ns: dict[str, Any], n: int = 2000) -> torch.Tensor:
    return ns["data"].sample(n, seed=123)


def assert_on_the_blobs(ns: dict[str, Any], x: torch.Tensor) -> None:
    """The samples sit on the 8 blobs (std 0.1): nearly all within 4 std of a centre, every blob used
    about equally (2000 samples: 250 each, multinomial std ~15)."""
    _, centres, _ = ns["data"].mixture_components()
    dist, nearest = torch.cdist(x.double(), centres).min(dim=1)
    assert (dist < 0.4).double().mean().item() > 0.99
    counts = torch.bincount(nearest, minlength=len(centres))
    assert counts.min().item() > 150 and counts.max().item() < 350, counts.tolist()


def test_doc_has_every_snippet() -> None:
    assert set(snippets()) == {"setup", "diffusers", "k_diffusion", "plain", "guidance", "training"}


def test_plain_loop_and_samplers_sample_agree_and_reach_the_data() -> None:
    ns = run_snippet("plain")
    x, again = ns["x"], ns["x_again"]
    assert x.shape == (2000, 2)
    assert (x - again).abs().max().item() < 1e-5  # "the same numbers"
    assert_on_the_blobs(ns, x)  # exact model, 30 Euler steps


def test_k_diffusion_snippet_samples_the_data() -> None:
    ns = run_snippet("k_diffusion")
    assert len(ns["steps"]) == 20 and ns["sigmas"].shape == (21,) and float(ns["sigmas"][-1]) == 0.0
    for key in ("x_heun", "x_ancestral"):
        assert ns[key].shape == (2000, 2)
        assert_on_the_blobs(ns, ns[key])


def test_guidance_snippet_moves_samples_toward_the_condition() -> None:
    ns = run_snippet("guidance")
    x = ns["x"]
    assert x.shape == (2000, 2) and bool(torch.isfinite(x).all())
    # The condition moves the data by +0.5 in x; with guidance scale 3 the samples move about 3 times as far.
    base = truth(ns).mean(dim=0)
    shift = x.double().mean(dim=0) - base
    assert 1.2 < shift[0].item() < 1.8 and abs(shift[1].item()) < 0.2
    # the k-diffusion form of the same guidance, in the text below the snippet, is valid code too
    text = DOC.read_text()
    cfg = re.search(r"```python\n(def cfg_denoiser.*?)```", text, re.S).group(1)
    exec(cfg, ns)
    kd = run_snippet("k_diffusion")
    shifted = lambda x_t, t, shift: ns["class_unet"](x_t, t, shift)  # noqa: E731
    from samplers.integrations.k_diffusion import DiscreteVPDenoiser, sample_euler

    ns["denoiser"] = DiscreteVPDenoiser(shifted, ns["schedule"].alphas_cumprod)
    extra = {"cond": ns["cond"], "uncond": ns["uncond"], "scale": 3.0}
    guided = sample_euler(ns["cfg_denoiser"], kd["x"], kd["sigmas"], extra_args=extra, disable=True)
    assert 1.2 < (guided.double().mean(dim=0) - base)[0].item() < 1.8


def test_training_snippet_lowers_the_loss() -> None:
    torch.manual_seed(0)
    ns = run_snippet("training")
    torch.manual_seed(0)
    ns_untrained = run_snippet("setup")
    exec("net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2))", ns_untrained)
    schedule, training = ns["schedule"], ns["training"]
    x0 = ns["data"].sample(4096, seed=999).float()
    t = torch.randint(0, 1000, (4096,), generator=torch.Generator().manual_seed(1))
    x_t, target, weight = training.training_example(
        schedule, x0, t, "v_prediction", weighting="min_snr", generator=torch.Generator().manual_seed(2)
    )

    def held_out(net: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(
                (weight * (net(torch.cat([x_t, t[:, None] / 1000.0], dim=1)) - target).pow(2).mean(dim=1)).mean()
            )

    assert held_out(ns["net"]) < 0.9 * held_out(ns_untrained["net"])


def test_diffusers_snippet() -> None:
    pytest.importorskip("diffusers")
    if importlib.util.find_spec("samplers.integrations.diffusers") is None:
        pytest.skip("samplers.integrations.diffusers is not available")
    ns = run_snippet("diffusers")
    images = ns["images"]
    assert images.shape == (1, 16, 16, 3)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert type(ns["pipe"].scheduler).__module__.startswith("samplers")
