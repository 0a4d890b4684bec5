"""Saving and loading a model: parameters by dotted name plus the config that rebuilds it.

A model checkpoint is a `minissd.checkpoint` file (atomic .npz, JSON metadata, no pickles) whose
metadata holds ``config`` (the JSON config of minissd/model/configs.py), ``num_classes`` (M, with
background), ``input_mean``/``input_std`` (the input normalisation the weights were trained with, also
inside ``config``) and ``class_names`` (the C object classes, index i is label i + 1), so `load_model`
needs nothing but the path. Files written before the normalisation was part of the config carry it
in ``input_mean``/``input_std`` (the training command wrote them) or not at all; `load_model` reads
the first, else the config's default (`minissd.model.configs.input_normalisation`). Arrays whose
names contain "/" (``optim/...``, written by the training command into the same file) are not model
parameters and are skipped here.
"""
from __future__ import annotations

import numpy as np

from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .configs import as_rgb, input_normalisation
from .ssd import SSD

FORMAT = "minissd.model/1"


def save_model(path, model: SSD, meta: dict | None = None, extra_arrays: dict | None = None) -> str:
    """Write ``model``'s parameters and config to ``path`` atomically; returns the path.

    Parameters
    ----------
    meta : dict, optional
        More JSON metadata (``class_names``, iteration, metrics ...). ``config``, ``num_classes``,
        ``input_mean`` and ``input_std`` are taken from the model and override any given here.
    extra_arrays : dict, optional
        Other state to store in the same file; names must contain "/" (e.g. ``optim/...``) so they
        cannot be mistaken for parameters.
    """
    meta = dict(meta or {})
    meta.update(format=FORMAT, config=model.config, num_classes=int(model.num_classes),
                input_mean=list(model.input_mean), input_std=list(model.input_std))
    names = meta.get("class_names")
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != model.num_classes - 1:
            raise ValueError(f"meta['class_names'] has {len(names)} names but the model has "
                             f"{model.num_classes - 1} object classes (num_classes {model.num_classes} "
                             "includes background)")
        meta["class_names"] = names
    arrays = dict(model.state_dict())
    for name, value in (extra_arrays or {}).items():
        if "/" not in name:
            raise ValueError(f"extra_arrays name {name!r} must contain '/' (e.g. 'optim/{name}')")
        if name in arrays:
            raise ValueError(f"extra_arrays name {name!r} collides with a parameter")
        arrays[name] = value
    return save_checkpoint(path, arrays, meta)


def load_weights(model: SSD, arrays: dict, source: str = "state") -> None:
    """Copy parameters from ``arrays`` (dotted names) into ``model``, in place.

    Raises CheckpointError naming the first parameter (in the model's order) that is missing or has
    another shape, with both shapes, and any parameter the model does not have.
    """
    own = list(model.named_parameters())
    for name, param, _ in own:
        if name not in arrays:
            raise CheckpointError(f"{source} does not fit model {model.config['name']!r}: parameter {name!r} "
                                  f"(shape {tuple(param.shape)} in the model) is missing from it")
        theirs = tuple(arrays[name].shape)
        if theirs != tuple(param.shape):
            raise CheckpointError(f"{source} does not fit model {model.config['name']!r}: parameter {name!r} "
                                  f"has shape {tuple(param.shape)} in the model but {theirs} in the checkpoint")
    names = {name for name, _, _ in own}
    extra = [k for k in arrays if "/" not in k and k not in names]
    if extra:
        raise CheckpointError(f"{source} has parameter {extra[0]!r} that model {model.config['name']!r} "
                              f"does not have ({len(extra)} such in all)")
    model.load_state_dict({name: arrays[name] for name in names})
    model.clear_cache()


def load_model(path, model: SSD | None = None, dtype=None) -> tuple[SSD, dict]:
    """Read a model checkpoint; returns ``(model, meta)``.

    Parameters
    ----------
    path : str or PathLike
    model : SSD, optional
        Load into this model (its config must fit the checkpoint's parameters); by default a new
        model is built from the checkpoint's config. Either way the model gets the file's input
        normalisation (``meta["input_mean"]``/``["input_std"]``, else its config's default).
    dtype : numpy dtype, optional
        For a new model; default: the dtype the parameters were saved in.

    Raises
    ------
    CheckpointError (a ValueError) for a missing, truncated or corrupt file, a file without a model
    config, or parameters that do not fit (naming the first mismatched parameter and both shapes).
    """
    arrays, meta = load_checkpoint(path)
    source = f"checkpoint {str(path)!r}"
    mean, std = meta.get("input_mean"), meta.get("input_std")
    if model is None:
        if "config" not in meta or "num_classes" not in meta:
            raise CheckpointError(f"{source} has no model config in its metadata (not written by save_model)")
        if dtype is None:
            floats = [a.dtype for k, a in arrays.items() if "/" not in k and a.dtype.kind == "f"]
            dtype = floats[0] if floats else np.float32
        try:
            # The weights are overwritten below; a fixed seed keeps construction deterministic.
            model = SSD(meta["config"], int(meta["num_classes"]), rng=np.random.default_rng(0), dtype=dtype,
                        input_mean=mean, input_std=std)
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{source} has a model config that does not build: {err}") from err
        load_weights(model, arrays, source)
        return model, meta
    try:  # into the given model: the file's normalisation, else its config's default, else the model's own
        if isinstance(meta.get("config"), dict):
            mean, std = input_normalisation(meta["config"], mean, std)
        mean = model.input_mean if mean is None else as_rgb(mean, "input_mean")
        std = model.input_std if std is None else as_rgb(std, "input_std", positive=True)
    except ValueError as err:
        raise CheckpointError(f"{source} has a bad input normalisation: {err}") from err
    load_weights(model, arrays, source)
    model.input_mean, model.input_std = mean, std   # only once the weights fit
    return model, meta
