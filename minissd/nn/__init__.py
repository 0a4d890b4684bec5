"""Layers with hand-written forward/backward (see minissd/nn/module.py for the protocol)."""
from .module import Module, Sequential

__all__ = ["Module", "Sequential"]
