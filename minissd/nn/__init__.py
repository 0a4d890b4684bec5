"""Layers with hand-written forward/backward (see minissd/nn/module.py for the protocol)."""
from .conv import Conv2d, col2im, col2im_ref, conv_output_size, im2col, im2col_ref
from .init import he_normal, xavier_uniform
from .layers import L2Norm, MaxPool2d, ReLU, pool_output_size
from .module import Module, Sequential

__all__ = [
    "Module", "Sequential",
    "Conv2d", "ReLU", "MaxPool2d", "L2Norm",
    "im2col", "col2im", "im2col_ref", "col2im_ref", "conv_output_size", "pool_output_size",
    "xavier_uniform", "he_normal",
]
