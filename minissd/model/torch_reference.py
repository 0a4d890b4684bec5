"""The same network in PyTorch, built from the same config: the oracle for tests and benchmarks.

Written independently of minissd's layers (torch.nn.functional does the arithmetic, autograd the
backward), so a test that copies minissd's weights in and compares outputs and gradients checks
minissd's forward and hand-written backward. Parameter names are minissd's dotted names, so
``load_minissd_state``/``grads_by_name`` need no mapping. PyTorch is needed only here.
"""
from __future__ import annotations

import numpy as np

from .configs import get_config


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("minissd.model.torch_reference needs PyTorch (pip install torch)") from err
    return torch


def build_torch_reference(config, num_classes: int, dtype=None):
    """A ``torch.nn.Module`` with ``forward(x) -> (loc (N, P, 4), conf (N, P, M))``."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional
    config = get_config(config)

    class TorchSSD(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = config
            self.num_classes = num_classes
            self.params = nn.ParameterDict()
            self.layers = []  # (name, spec)
            channels = config["in_channels"]
            self.source_channels = {}
            for part in ("trunk", "extras"):
                for spec in config[part]:
                    if spec["type"] == "conv":
                        k = spec["kernel"]
                        self._add(f"{part}.{spec['name']}.W", (spec["out"], channels, k, k))
                        self._add(f"{part}.{spec['name']}.b", (spec["out"],))
                        channels = spec["out"]
                    self.layers.append((part, spec))
                    self.source_channels[spec["name"]] = channels
            for s, scale in config["l2norm"].items():
                p = self._add(f"l2norm.{s}.weight", (self.source_channels[s],))
                with torch.no_grad():
                    p.fill_(scale)
            kh = config["head_kernel"]
            for s, k in zip(config["sources"], config["boxes_per_location"], strict=True):
                c = self.source_channels[s]
                for head, width in (("loc", 4 * k), ("conf", num_classes * k)):
                    self._add(f"{head}.{s}.W", (width, c, kh, kh))
                    self._add(f"{head}.{s}.b", (width,))
            if dtype is not None:
                self.to(dtype)

        def _add(self, name, shape):
            # ParameterDict keys cannot contain '.', so they are stored with '/'.
            p = nn.Parameter(torch.zeros(shape))
            self.params[name.replace(".", "/")] = p
            return p

        def p(self, name):
            return self.params[name.replace(".", "/")]

        def forward(self, x):
            feats = {}
            for part, spec in self.layers:
                if spec["type"] == "conv":
                    x = F.conv2d(x, self.p(f"{part}.{spec['name']}.W"), self.p(f"{part}.{spec['name']}.b"),
                                 stride=spec["stride"], padding=spec["padding"], dilation=spec["dilation"])
                    x = F.relu(x)
                else:
                    x = F.max_pool2d(x, spec["kernel"], spec["stride"], spec["padding"],
                                     ceil_mode=spec["ceil_mode"])
                feats[spec["name"]] = x
            locs, confs = [], []
            pad = config["head_kernel"] // 2
            for s in config["sources"]:
                f = feats[s]
                if s in config["l2norm"]:
                    # eps inside the root, as in Caffe's Normalize layer.
                    norm = torch.sqrt((f * f).sum(dim=1, keepdim=True) + 1e-10)
                    f = f / norm * self.p(f"l2norm.{s}.weight").view(1, -1, 1, 1)
                n = f.shape[0]
                loc = F.conv2d(f, self.p(f"loc.{s}.W"), self.p(f"loc.{s}.b"), padding=pad)
                conf = F.conv2d(f, self.p(f"conf.{s}.W"), self.p(f"conf.{s}.b"), padding=pad)
                # (N, k*4, H, W) -> (N, H, W, k*4) -> (N, H*W*k, 4): prior order of minissd.priors.
                locs.append(loc.permute(0, 2, 3, 1).reshape(n, -1, 4))
                confs.append(conf.permute(0, 2, 3, 1).reshape(n, -1, self.num_classes))
            return torch.cat(locs, 1), torch.cat(confs, 1)

        def load_minissd_state(self, state: dict):
            """Copy arrays (dotted minissd names) into the parameters; every name must match."""
            own = {k.replace("/", "."): v for k, v in self.params.items()}
            if set(own) != set(state):
                diff = sorted(set(own) ^ set(state))
                raise ValueError(f"parameter names differ, first: {diff[0]!r}")
            with torch.no_grad():
                for name, value in state.items():
                    own[name].copy_(torch.as_tensor(np.asarray(value), dtype=own[name].dtype))

        def grads_by_name(self) -> dict:
            return {k.replace("/", "."): (None if v.grad is None else v.grad.detach().cpu().numpy())
                    for k, v in self.params.items()}

    return TorchSSD()
