"""The layer protocol: forward caches what backward needs; backward returns dL/dx.

A `Module` keeps

* ``params``: dict name -> array (its own parameters, e.g. ``{"W": ..., "b": ...}``),
* ``grads``: dict with the same keys and shapes, accumulated by ``backward`` until ``zero_grad``,
* ``children``: ordered dict name -> Module (sub-layers), which gives parameters stable dotted names
  such as ``trunk.conv4_3.W`` that checkpoints and optimiser groups use.

Rules every layer follows (docs/ARCHITECTURE.md):

* ``forward(x)`` returns ``y`` and stores in ``self`` exactly what ``backward`` needs;
* ``backward(dy)`` returns ``dx``, adds parameter gradients into ``self.grads`` (``+=``, never ``=``)
  and never writes into ``dy``;
* the array module comes from the input (``get_array_module``): parameters and input must be on the
  same device, which ``to(device)`` arranges.

Buffers: what a layer keeps between calls (its forward cache, Conv2d's column buffer, MaxPool2d's
argmax) is released by its ``clear_own_cache``; per-call scratch comes from ``self.workspace``
(minissd/nn/workspace.py), one Workspace shared by the whole tree (``add_child`` hands the parent's to
the child's subtree). ``clear_cache()`` on any module releases both, for it and everything below it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

import numpy as np

from ..backend import get_array_module, to_cpu, to_device
from .workspace import Workspace


class Module:
    """Base class of every layer and container."""

    def __init__(self):
        self.params: dict = OrderedDict()
        self.grads: dict = OrderedDict()
        self.children: "OrderedDict[str, Module]" = OrderedDict()
        self.training = True
        self.workspace = Workspace()    # scratch buffers, shared with the tree this module joins

    # -- the two passes ------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # -- structure -------------------------------------------------------------------------
    def add_param(self, name: str, value) -> None:
        """Register a parameter and a zero gradient of the same shape and dtype."""
        xp = get_array_module(value)
        self.params[name] = value
        self.grads[name] = xp.zeros_like(value)

    def add_child(self, name: str, module: "Module") -> "Module":
        """Register ``module`` under ``name``; it and its subtree now use this module's workspace."""
        if "." in name:
            raise ValueError(f"child name {name!r} must not contain '.'")
        if not isinstance(module, Module):
            raise TypeError(f"child {name!r} is {type(module).__name__}, not a Module")
        self.children[name] = module
        for _, mod in module.named_modules():
            mod.workspace = self.workspace
        return module

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self.children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, object, object]]:
        """Yield ``(dotted_name, param, grad)`` for every parameter, depth first, in a stable order."""
        for mod_name, mod in self.named_modules(prefix):
            for key, value in mod.params.items():
                name = f"{mod_name}.{key}" if mod_name else key
                yield name, value, mod.grads[key]

    def parameters(self) -> list[tuple[str, object, object]]:
        return list(self.named_parameters())

    def num_parameters(self) -> int:
        return int(sum(p.size for _, p, _ in self.named_parameters()))

    # -- state -------------------------------------------------------------------------------
    def zero_grad(self) -> None:
        for _, mod in self.named_modules():
            for g in mod.grads.values():
                g[...] = 0

    def train(self, mode: bool = True) -> "Module":
        for _, mod in self.named_modules():
            mod.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def to(self, device: str) -> "Module":
        """Move every parameter and gradient to ``device`` ("cpu" or "cuda"), in place."""
        for _, mod in self.named_modules():
            for key in list(mod.params):
                mod.params[key] = to_device(mod.params[key], device)
                mod.grads[key] = to_device(mod.grads[key], device)
        self.clear_cache()
        return self

    def astype(self, dtype) -> "Module":
        """Cast parameters and gradients (float64 for gradient checks), in place."""
        for _, mod in self.named_modules():
            for key in list(mod.params):
                mod.params[key] = mod.params[key].astype(dtype)
                mod.grads[key] = mod.grads[key].astype(dtype)
        self.clear_cache()
        return self

    def clear_cache(self) -> None:
        """Release every buffer this module and the modules below it keep: forward caches, column
        buffers, argmax maps (each module's `clear_own_cache`) and the shared workspace's scratch."""
        for _, mod in self.named_modules():
            mod.clear_own_cache()
            mod.workspace.clear()

    def clear_own_cache(self) -> None:
        """Drop what this module alone keeps between calls (layers with caches override; not children)."""

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters by dotted name, as they are (not copied; not moved to the host)."""
        return OrderedDict((name, p) for name, p, _ in self.named_parameters())

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters, in place, checking names and shapes.

        Raises ValueError naming the first missing, unexpected or mismatched parameter.
        """
        own = OrderedDict((name, (mod, key)) for mod_name, mod in self.named_modules()
                          for key in mod.params
                          for name in [f"{mod_name}.{key}" if mod_name else key])
        if strict:
            missing = [n for n in own if n not in state]
            if missing:
                raise ValueError(f"state is missing parameter {missing[0]!r} ({len(missing)} missing in all)")
            extra = [n for n in state if n not in own]
            if extra:
                raise ValueError(f"state has unexpected parameter {extra[0]!r} ({len(extra)} unexpected in all)")
        for name, (mod, key) in own.items():
            if name not in state:
                continue
            value = state[name]
            target = mod.params[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(target.shape)} in the model "
                    f"but {tuple(value.shape)} in the state"
                )
            xp = get_array_module(target)
            if xp is np:
                value = to_cpu(value)           # np.asarray refuses a CuPy array (no implicit copy)
            target[...] = xp.asarray(value, dtype=target.dtype)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()})"
        if not self.children:
            return head
        lines = [f"{type(self).__name__}("]
        for name, child in self.children.items():
            sub = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        lines.append(")")
        return "\n".join(lines)


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    ``Sequential([("conv1_1", Conv2d(...)), ("relu1_1", ReLU())])`` or ``Sequential(a, b, c)``
    (children then get the names "0", "1", ...).
    """

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, item in enumerate(layers):
            if isinstance(item, tuple):
                name, module = item
            else:
                name, module = str(i), item
            if not isinstance(module, Module):
                raise TypeError(f"Sequential item {name!r} is {type(module).__name__}, not a Module")
            self.add_child(name, module)

    def forward(self, x):
        for layer in self.children.values():
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(list(self.children.values())):
            dy = layer.backward(dy)
        return dy

    def __getitem__(self, name):
        if isinstance(name, int):
            return list(self.children.values())[name]
        return self.children[name]

    def __len__(self) -> int:
        return len(self.children)

    def __iter__(self):
        return iter(self.children.values())
