"""SGD with momentum and weight decay, per-parameter lr/decay multipliers, and learning-rate schedules.

The SSD authors trained with Caffe's SGD solver (paper section 3: "SGD with initial learning rate
1e-3, 0.9 momentum, 0.0005 weight decay, and batch size 32"), so this follows Caffe's update:

    g_t = dL/dw + decay_mult * weight_decay * w          (L2 regularisation)
    v_t = momentum * v_{t-1} + lr * lr_mult * g_t        (the history holds lr-scaled steps)
    w  <- w - v_t

PyTorch's torch.optim.SGD keeps the unscaled buffer instead, ``b_t = momentum * b_{t-1} + g_t`` and
``w <- w - lr * b_t``. With a constant lr the two are the same iterates (v_t = lr * b_t; the tests
check this against torch.optim.SGD). They differ right after the lr changes: PyTorch rescales the
whole accumulated velocity at once, Caffe lets the old velocity decay at its old scale. We keep Caffe's
form because it is what the authors' recipe (1e-3, then steps of 10x; no warmup) was tuned with, and because a
10x lr drop then does not cut the velocity already in flight.

Parameter groups (Caffe's ``param { lr_mult decay_mult }``): the SSD prototxts give every bias
``lr_mult: 2, decay_mult: 0``; `CAFFE_GROUPS` (or ``groups="caffe"``) does the same by name.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from collections import OrderedDict
from typing import Callable

import numpy as np

from .backend import get_array_module, to_cpu


def is_bias(name: str) -> bool:
    """True for a conv bias: the parameter named ``b`` (dotted names end in ``.b``)."""
    return name == "b" or name.endswith(".b")


# the authors' Caffe recipe: biases learn twice as fast and are not decayed
CAFFE_GROUPS = {is_bias: {"lr_mult": 2.0, "decay_mult": 0.0}}


def _number(value, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return value


class SGD:
    """Caffe-style SGD over the parameters of ``model`` (a minissd Module).

    Parameters
    ----------
    model : Module whose ``named_parameters()`` gives (dotted name, param, grad).
    lr : base learning rate (settable as ``opt.lr``, e.g. from a schedule each iteration).
    momentum, weight_decay : as in Caffe's solver (paper: 0.9 and 5e-4).
    groups : None (multipliers 1), "caffe" (`CAFFE_GROUPS`), a dict ``{predicate(name) -> bool:
        {"lr_mult": .., "decay_mult": ..}}`` or a list of such pairs; the first predicate that
        matches a name decides, unmatched names get 1 and 1.

    Parameters are looked up by name at every step, so ``model.to(device)`` or ``model.astype``
    after building the optimiser is fine; momentum buffers follow their parameter's device and dtype.
    """

    def __init__(self, model, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4, groups=None):
        self.model = model
        self.lr = lr
        self.momentum = _number(momentum, "momentum")
        self.weight_decay = _number(weight_decay, "weight_decay")
        if groups == "caffe":
            groups = CAFFE_GROUPS
        if groups is None:
            rules: list = []
        elif isinstance(groups, dict):
            rules = list(groups.items())
        else:
            rules = list(groups)
        self._rules = []
        for pred, mults in rules:
            if not callable(pred):
                raise ValueError(f"groups: each key must be a predicate on the parameter name, got {pred!r}")
            unknown = set(mults) - {"lr_mult", "decay_mult"}
            if unknown:
                raise ValueError(f"groups: unknown multiplier {sorted(unknown)[0]!r}; use lr_mult, decay_mult")
            self._rules.append((pred, _number(mults.get("lr_mult", 1.0), "lr_mult"),
                                _number(mults.get("decay_mult", 1.0), "decay_mult")))
        self.iteration = 0
        self.buffers: "OrderedDict[str, object]" = OrderedDict()
        for name, p, _ in model.named_parameters():
            self.buffers[name] = get_array_module(p).zeros_like(p)

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = _number(value, "lr")

    def multipliers(self, name: str) -> tuple[float, float]:
        """(lr_mult, decay_mult) of the parameter called ``name``."""
        for pred, lr_mult, decay_mult in self._rules:
            if pred(name):
                return lr_mult, decay_mult
        return 1.0, 1.0

    def step(self) -> None:
        """One update of every parameter from its accumulated gradient (grads are left as they are)."""
        for name, p, g in self.model.named_parameters():
            v = self.buffers.get(name)
            if v is None:
                raise KeyError(f"parameter {name!r} appeared after the optimiser was built")
            xp = get_array_module(p)
            if get_array_module(v) is not xp or v.dtype != p.dtype:
                v = self.buffers[name] = _like(v, p)
            lr_mult, decay_mult = self.multipliers(name)
            rate = self._lr * lr_mult
            decay = self.weight_decay * decay_mult
            v *= self.momentum
            v += rate * g                                  # v = m v + lr (g + decay w)
            if decay:
                v += (rate * decay) * p
            p -= v
        self.iteration += 1

    def zero_grad(self) -> None:
        self.model.zero_grad()

    # -- exact resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Hyper-parameters, iteration and the momentum buffers by parameter name (not copied)."""
        return {"lr": self._lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "iteration": self.iteration, "buffers": OrderedDict(self.buffers)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (buffers copied onto each parameter's device and dtype).

        Raises ValueError naming a missing, unexpected or mis-shaped buffer.
        """
        buffers = state.get("buffers")
        if not isinstance(buffers, dict):
            raise ValueError("optimiser state has no 'buffers' dict")
        params = OrderedDict((name, p) for name, p, _ in self.model.named_parameters())
        missing = [n for n in params if n not in buffers]
        if missing:
            raise ValueError(f"optimiser state is missing the momentum buffer of {missing[0]!r}")
        extra = [n for n in buffers if n not in params]
        if extra:
            raise ValueError(f"optimiser state has a buffer for unknown parameter {extra[0]!r}")
        for name, p in params.items():
            b = buffers[name]
            if tuple(b.shape) != tuple(p.shape):
                raise ValueError(f"momentum buffer {name!r} has shape {tuple(b.shape)}, parameter has "
                                 f"{tuple(p.shape)}")
        self.lr = state.get("lr", self._lr)
        self.momentum = _number(state.get("momentum", self.momentum), "momentum")
        self.weight_decay = _number(state.get("weight_decay", self.weight_decay), "weight_decay")
        self.iteration = int(state.get("iteration", 0))
        for name, p in params.items():
            self.buffers[name] = _like(buffers[name], p, copy=True)


def _like(a, p, copy: bool = False):
    """``a`` on ``p``'s device with ``p``'s dtype (a new array when ``copy``).

    To the CPU through `to_cpu`: NumPy refuses the implicit conversion of a CuPy array (TypeError).
    """
    xp = get_array_module(p)
    if xp is np:
        out = to_cpu(a)
        return out.astype(p.dtype, copy=copy)
    return xp.array(a, dtype=p.dtype, copy=True) if copy else xp.asarray(a, dtype=p.dtype)


# ------------------------------------------------------------------------------------------------
# schedules: schedule(iteration) -> lr, iterations counted from 0
# ------------------------------------------------------------------------------------------------
class WarmupMultiStep:
    """Linear warmup to ``base_lr`` over ``warmup_iters``, then ``gamma`` times less at each milestone.

    lr(i) = base_lr * (i + 1) / warmup_iters for i < warmup_iters, else
    base_lr * gamma ** (number of milestones <= i). The paper's VOC recipe: 1e-3, x0.1 at 40k, 50k.
    """

    def __init__(self, base_lr: float, warmup_iters: int = 0, milestones=(), gamma: float = 0.1):
        self.base_lr = _number(base_lr, "base_lr")
        self.warmup_iters = int(_number(warmup_iters, "warmup_iters"))
        self.milestones = [int(_number(m, "milestone")) for m in milestones]
        if self.milestones != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        self.gamma = _number(gamma, "gamma")

    def __call__(self, iteration: int) -> float:
        i = int(iteration)
        if i < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        lr = self.base_lr * self.gamma ** bisect_right(self.milestones, i)
        if i < self.warmup_iters:
            lr *= (i + 1) / self.warmup_iters
        return lr

    schedule = __call__


class WarmupCosine:
    """Linear warmup, then cosine decay from ``base_lr`` to ``min_lr`` at ``total_iters``.

    lr(i) = min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2, t = (i - warmup) / (total - warmup)
    clipped to [0, 1].
    """

    def __init__(self, base_lr: float, warmup_iters: int, total_iters: int, min_lr: float = 0.0):
        self.base_lr = _number(base_lr, "base_lr")
        self.warmup_iters = int(_number(warmup_iters, "warmup_iters"))
        self.total_iters = int(_number(total_iters, "total_iters", 1))
        if self.total_iters <= self.warmup_iters:
            raise ValueError(f"total_iters ({total_iters}) must exceed warmup_iters ({warmup_iters})")
        self.min_lr = _number(min_lr, "min_lr")

    def __call__(self, iteration: int) -> float:
        i = int(iteration)
        if i < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        if i < self.warmup_iters:
            return self.base_lr * (i + 1) / self.warmup_iters
        t = min(1.0, (i - self.warmup_iters) / (self.total_iters - self.warmup_iters))
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    schedule = __call__


Schedule = Callable[[int], float]
