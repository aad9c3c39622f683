"""Accelerators for diffusion transformers: one interface, one engine, one module per method."""
from methods.registry import METHODS, make_method


def accelerate(pipe, method: str, **settings):
    """Attach a method to a supported diffusers pipeline; see methods/api.py."""
    from methods.api import accelerate as _accelerate

    return _accelerate(pipe, method, **settings)


__all__ = ["METHODS", "accelerate", "make_method"]
