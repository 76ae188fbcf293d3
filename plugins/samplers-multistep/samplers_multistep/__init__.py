"""Exact third-order multistep exponential integrators for samplers (an example third-party plugin)."""

from samplers_multistep.exact import Exact3MScheduler, Exact3MSDEScheduler

__all__ = ["Exact3MSDEScheduler", "Exact3MScheduler"]
