"""Run state: everything a resume needs, as named arrays plus JSON metadata.

A run checkpoint (last.npz, best.npz) is a `minissd.model.save_model` file: the weights under their
dotted names, so `load_model` reads it like any model file, and beside them the optimizer and
loader state: arrays under ``optim/...`` and ``loader/...`` (which `load_model` skips), everything
else in the JSON metadata with the marker ``kind: "minissd-training-state"``.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..backend import get_array_module, to_cpu
from ..checkpoint import CheckpointError
from ..model import load_weights

STATE_KIND = "minissd-training-state"


def flatten(prefix: str, state, arrays: dict):
    """Split a nested state into arrays (stored by path under ``prefix``) and a JSON-able skeleton."""
    if isinstance(state, dict):
        return {str(k): flatten(f"{prefix}/{k}", v, arrays) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [flatten(f"{prefix}/{i}", v, arrays) for i, v in enumerate(state)]
    if isinstance(state, np.generic):          # NumPy scalars: plain JSON numbers
        return state.item()
    if hasattr(state, "shape") and hasattr(state, "dtype"):   # NumPy or CuPy arrays, 0-d included
        arrays[prefix] = to_cpu(state)
        return {"__array__": prefix}
    return state


def unflatten(skeleton, arrays: dict):
    """The inverse of `flatten`: the nested state from its skeleton and arrays."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__array__"}:
            return arrays[skeleton["__array__"]]
        return {k: unflatten(v, arrays) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten(v, arrays) for v in skeleton]
    return skeleton


def training_state(model, optimizer, loader, iteration: int, extra: dict) -> tuple[dict, dict]:
    """``(extra_arrays, meta)`` of the training state after ``iteration`` steps, besides the weights.

    The weights go in as `minissd.model.save_model` writes them (so ``load_model`` reads any run
    checkpoint); optimizer and loader arrays go under ``optim/...`` and ``loader/...``, which
    ``load_model`` skips; their non-array parts go into the JSON metadata.
    """
    arrays = OrderedDict()
    meta = dict(extra)
    meta["kind"] = STATE_KIND
    meta["iteration"] = int(iteration)
    meta["optimizer"] = flatten("optim", optimizer.state_dict(), arrays)
    meta["loader"] = flatten("loader", loader.state_dict(), arrays)
    return arrays, meta


def model_state_from(arrays: dict) -> dict:
    """The model parameters of a checkpoint's arrays, by dotted name (names without '/')."""
    return OrderedDict((k, v) for k, v in arrays.items() if "/" not in k)


def restore_training_state(arrays, meta, model, optimizer, loader) -> int:
    """Load a training state into model, optimizer and loader; returns the iteration reached."""
    if meta.get("kind") != STATE_KIND:
        raise CheckpointError("checkpoint is not a minissd training state (no 'kind' marker); "
                              "it cannot be resumed")
    load_weights(model, arrays, "the run's last.npz")
    optimizer.load_state_dict(_to_device_tree(unflatten(meta["optimizer"], arrays), model))
    loader.load_state_dict(unflatten(meta["loader"], arrays))
    return int(meta["iteration"])


def _to_device_tree(state, model):
    """Move the arrays of an optimizer state to the device of the model's parameters."""
    first = next(iter(model.state_dict().values()))
    xp = get_array_module(first)
    if xp is np:
        return state
    if isinstance(state, dict):
        return {k: _to_device_tree(v, model) for k, v in state.items()}
    if isinstance(state, list):
        return [_to_device_tree(v, model) for v in state]
    if isinstance(state, np.ndarray):
        return xp.asarray(state)
    return state
