"""Accelerators for diffusion transformers: one interface, one engine, one module per method."""
from methods.registry import METHODS, make_method

__all__ = ["METHODS", "make_method"]
