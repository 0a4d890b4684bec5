"""Layers with hand-written forward/backward (see minissd/nn/module.py for the protocol).

One file per layer kind, each opening with its plain NumPy ``*_forward_ref`` / ``*_backward_ref`` twin:
conv.py (Conv2d), pool.py (MaxPool2d), relu.py (ReLU), l2norm.py (L2Norm); im2col.py holds the unrolling
behind Conv2d, threads.py the CPU thread pool, checks.py the input checks, workspace.py the shared
scratch buffers, init.py the weight fillers, cuda_kernels.py the GPU kernels.
"""
from .conv import Conv2d, conv_backward_ref, conv_forward_ref
from .im2col import col2im, col2im_ref, conv_output_size, im2col, im2col_ref
from .init import he_normal, xavier_uniform
from .l2norm import L2Norm, l2norm_backward_ref, l2norm_forward_ref
from .module import Module, Sequential
from .pool import MaxPool2d, maxpool_backward_ref, maxpool_forward_ref, pool_output_size
from .relu import ReLU, relu_backward_ref, relu_forward_ref
from .threads import get_num_threads, set_num_threads
from .workspace import Workspace

__all__ = [
    "Module", "Sequential", "Workspace",
    "Conv2d", "ReLU", "MaxPool2d", "L2Norm",
    "im2col", "col2im", "im2col_ref", "col2im_ref", "conv_output_size", "pool_output_size",
    "xavier_uniform", "he_normal",
    "conv_forward_ref", "conv_backward_ref", "maxpool_forward_ref", "maxpool_backward_ref",
    "relu_forward_ref", "relu_backward_ref", "l2norm_forward_ref", "l2norm_backward_ref",
    "set_num_threads", "get_num_threads",
]
