"""Adapters to other libraries, one submodule each, imported only when used.

* :mod:`samplers.integrations.diffusers`: ``from_diffusers`` / ``to_diffusers`` and the
  ``SamplersScheduler`` that HuggingFace diffusers pipelines accept as their ``scheduler``.
* :mod:`samplers.integrations.k_diffusion`: k-diffusion-style ``sample_<name>(model, x, sigmas)`` loops
  over a denoiser ``D(x, sigma)``.
* :mod:`samplers.integrations.attention_processor`: a diffusers attention processor backed by
  :func:`samplers.ops.attention`.

Nothing is imported here: ``import samplers.integrations`` must not pull in diffusers (or any other
optional dependency); importing a submodule does, and fails with that library's ImportError if it is
missing.
"""
