"""The SSD network: feature path (trunk + extras), L2Norm, and the per-source loc/conf heads.

    image (N, 3, S, S)
      -> trunk (VGG16 to fc7, or the small trunk) -> extras          one chain of conv+ReLU / pool
         |   taps: the ReLU'd outputs of the ``sources`` (conv4_3, fc7, conv8_2, ...)
         |   conv4_3 -> L2Norm (learned per-channel scale, init 20)
      -> per source k: loc head  3x3 conv, 4 * A_k channels  -> (N, H_k W_k A_k, 4)
                       conf head 3x3 conv, M * A_k channels  -> (N, H_k W_k A_k, M)
      -> concatenated over sources: loc (N, P, 4), conf (N, P, M)

Channel ``a * 4 + c`` of a loc head at location (i, j) is coordinate c of default box a at (i, j)
(``a * M + m`` for conf), so the (N, H, W, A*4) -> (N, H*W*A, 4) reshape lands every output on its
prior in `minissd.priors` order: map by map, row-major, box by box.

Backward runs the chain in reverse. A source map feeds its heads *and* the rest of the network, so
its gradient is the sum of what the heads send back and what the deeper layers send back; the
chain is cut into segments at the sources to add the two before going on.

Paper: section 2.1 ("Multi-scale feature maps", "Convolutional predictors"), figure 2; section 3.1
(L2Norm on conv4_3).
Walkthrough: docs/05-network.md.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..boxes import batched_detect, build_prior_index, decode, encode, match_batch
from ..nn import Conv2d, L2Norm, Module
from ..nn.conv import conv_group_backward, conv_group_forward
from ..priors import get_config as get_prior_config
from ..priors import make_priors, num_priors_per_location
from .configs import as_rgb, describe, get_config, input_normalisation
from .vgg import build_layers, relu_name


class SSD(Module):
    """Single Shot MultiBox Detector built from a config (minissd/model/configs.py).

    Parameters
    ----------
    config : str or dict
        "ssd300", "ssd512", "small", or a config dict.
    num_classes : int
        M, the number of scores per box *including* background (C object classes + 1).
    rng : numpy.random.Generator
        Initial weights (Xavier or He per part, biases 0; L2Norm scale from the config).
    dtype : numpy dtype
        float32 for training, float64 for gradient checks.
    input_mean, input_std : 3 numbers each, optional
        The input normalisation ``(pixel - mean) / std`` per RGB channel in 0..255 units; default: the
        config's (`minissd.model.configs.input_normalisation`).

    Attributes
    ----------
    priors_cxcywh : (P, 4) float64 NumPy array, the default boxes the outputs refer to.
    prior_index : the index of the priors that matching searches (`minissd.boxes.build_prior_index`),
        built once here and passed to every `match_batch` call of `targets`.
    image_size : int, the input side S.
    num_classes : int, M.
    input_mean, input_std : tuples of 3 floats (0..255 RGB units): how images must be normalised for
        these weights. Saved and loaded with them; setting one validates it and updates ``config``.
    config : dict, JSON-able (stored in checkpoints), including ``input_mean``/``input_std``.
    """

    def __init__(self, config, num_classes: int, rng: np.random.Generator | None = None, dtype=np.float32,
                 input_mean=None, input_std=None):
        super().__init__()
        config = get_config(config)
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (object classes + background), got {num_classes!r}")
        mean, std = input_normalisation(config, input_mean, input_std)
        config["input_mean"], config["input_std"] = list(mean), list(std)
        if rng is None:
            rng = np.random.default_rng(0)
        self.config = config
        self.num_classes = int(num_classes)
        self.image_size = int(config["image_size"])
        self.variances = tuple(float(v) for v in config["variances"])
        init = config["init"]

        # Shapes first: a config whose maps do not fit its priors fails before any weight is drawn.
        rows = {r["name"]: r for r in describe(config)}
        self.source_names = list(config["sources"])
        self.source_sizes = [rows[s]["size"] for s in self.source_names]
        self.boxes_per_location = [int(k) for k in config["boxes_per_location"]]
        self.priors_cxcywh = self._make_priors(config)
        self.prior_index = build_prior_index(self.priors_cxcywh)

        self.trunk, c = build_layers(config["trunk"], config["in_channels"], init["trunk"], rng, dtype)
        self.add_child("trunk", self.trunk)
        self.extras, _ = build_layers(config["extras"], c, init["extras"], rng, dtype)
        self.add_child("extras", self.extras)

        self.l2norm = self.add_child("l2norm", Module())
        for s, scale in config["l2norm"].items():
            self.l2norm.add_child(s, L2Norm(rows[s]["channels"], scale=float(scale), dtype=dtype))
        self.loc = self.add_child("loc", Module())
        self.conf = self.add_child("conf", Module())
        kh = int(config["head_kernel"])
        for s, k in zip(self.source_names, self.boxes_per_location, strict=True):
            c = rows[s]["channels"]
            self.loc.add_child(s, Conv2d(c, 4 * k, kh, padding=kh // 2, init=init["heads"], rng=rng, dtype=dtype))
            self.conf.add_child(s, Conv2d(c, self.num_classes * k, kh, padding=kh // 2, init=init["heads"],
                                          rng=rng, dtype=dtype))

        # The feature path as segments ending at each source (layers after the last source are
        # rejected by validate_config, so the segments cover the whole chain).
        chain = list(self.trunk.children.values()) + list(self.extras.children.values())
        names = list(self.trunk.children) + list(self.extras.children)
        self._segments, start = [], 0
        for s in self.source_names:
            end = names.index(relu_name(s)) + 1
            self._segments.append(chain[start:end])
            start = end
        # Where each source's boxes start in the (N, P, .) outputs.
        counts = [h * h * k for h, k in zip(self.source_sizes, self.boxes_per_location, strict=True)]
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
        self.num_priors = self._offsets[-1]
        self._device_priors = {}
        self._cache = None

    # -- construction helpers -----------------------------------------------------------------
    def _make_priors(self, config) -> np.ndarray:
        pc = get_prior_config(config["priors"])
        if int(pc.image_size) != self.image_size:
            raise ValueError(f"model config {config['name']!r}: prior image_size {pc.image_size} "
                             f"!= network input {self.image_size}")
        if list(pc.feature_maps) != self.source_sizes:
            raise ValueError(f"model config {config['name']!r}: the network's source maps are "
                             f"{self.source_sizes} but the priors expect {list(pc.feature_maps)}")
        per_loc = num_priors_per_location(pc)
        if per_loc != self.boxes_per_location:
            raise ValueError(f"model config {config['name']!r}: boxes_per_location {self.boxes_per_location} "
                             f"!= the prior config's {per_loc}")
        priors = make_priors(pc)
        if config.get("clamp_priors_cxcywh", False):
            # Files converted before issue 13 carry this flag: cx, cy, w, h each clamped to [0, 1].
            priors = np.clip(priors, 0.0, 1.0)
        if config.get("clamp_priors_wh", False):
            # torchvision's DefaultBoxGenerator (clip=True) clamps each (w, h) to [0, 1] and leaves the
            # centres, some past 1; converted models (minissd/convert.py) set this to keep its boxes.
            priors[:, 2:] = np.clip(priors[:, 2:], 0.0, 1.0)
        return priors

    @property
    def input_grad(self) -> bool:
        """Whether `backward` computes dL/dx for the image (default True).

        Training never uses it; ``model.input_grad = False`` lets the first convolution skip a GEMM
        and a col2im per step, and `backward` then returns None.
        """
        return self._first_conv().input_grad

    @input_grad.setter
    def input_grad(self, value: bool) -> None:
        self._first_conv().input_grad = bool(value)

    def _first_conv(self) -> Conv2d:
        return next(m for m in self.trunk if isinstance(m, Conv2d))

    @property
    def input_mean(self) -> tuple:
        """Per-channel RGB mean (0..255) subtracted from the input pixels; stored in ``config``."""
        return tuple(self.config["input_mean"])

    @input_mean.setter
    def input_mean(self, value) -> None:
        self.config["input_mean"] = list(as_rgb(value, "input_mean"))

    @property
    def input_std(self) -> tuple:
        """Per-channel RGB divisor (0..255 units) applied after the mean; stored in ``config``."""
        return tuple(self.config["input_std"])

    @input_std.setter
    def input_std(self, value) -> None:
        self.config["input_std"] = list(as_rgb(value, "input_std", positive=True))

    @property
    def dtype(self):
        return self.loc.children[self.source_names[0]].params["W"].dtype

    def extra_repr(self) -> str:
        return f"{self.config['name']}, num_classes={self.num_classes}, priors={self.num_priors}"

    # -- the two passes -----------------------------------------------------------------------
    def _check_input(self, x):
        shape = tuple(getattr(x, "shape", ()))
        want = (self.config["in_channels"], self.image_size, self.image_size)
        if len(shape) != 4 or shape[1:] != want:
            raise ValueError(f"SSD({self.config['name']}) input x must have shape (N, {want[0]}, {want[1]}, "
                             f"{want[2]}), got {shape}")
        if x.dtype != self.dtype:
            raise ValueError(f"SSD({self.config['name']}) input x has dtype {x.dtype} but the model is "
                             f"{self.dtype}; convert one of them (x.astype or model.astype)")

    def forward(self, x):
        """Class scores and box offsets for every default box.

        Parameters
        ----------
        x : (N, 3, S, S) normalised images, the model's dtype and device.

        Returns
        -------
        loc : (N, P, 4) offsets (t_cx, t_cy, t_w, t_h) relative to ``priors_cxcywh``, paper eq. (2).
        conf : (N, P, M) class logits (softmax gives the scores; label 0 is background).
        """
        self._check_input(x)
        xp = get_array_module(x)
        n = x.shape[0]
        loc = xp.empty((n, self.num_priors, 4), dtype=x.dtype)
        conf = xp.empty((n, self.num_priors, self.num_classes), dtype=x.dtype)
        h = x
        for k, (s, segment) in enumerate(zip(self.source_names, self._segments, strict=True)):
            for layer in segment:
                h = layer.forward(h)
            f = self.l2norm.children[s].forward(h) if s in self.l2norm.children else h
            # loc and conf read the same map: one im2col and one GEMM with their weights stacked
            # (minissd/nn/conv.py, conv_group_forward); each head keeps its own parameters
            y_loc, y_conf = conv_group_forward([self.loc.children[s], self.conf.children[s]], f)
            self._put(loc, k, y_loc)
            self._put(conf, k, y_conf)
        self._cache = n
        return loc, conf

    def _head_view(self, out, k):
        """(N, H, W, A*D) view of source k's rows of ``out`` (N, P, D); no copy."""
        n, _, d = out.shape
        size, a = self.source_sizes[k], self.boxes_per_location[k]
        # (N, P*D) is a view of the contiguous output; a column slice of it splits into (H, W, A*D)
        # without a copy, because the split axis has unit stride.
        rows = out.reshape(n, -1)[:, self._offsets[k] * d:self._offsets[k + 1] * d]  # (N, H*W*A*D)
        return rows.reshape(n, size, size, a * d)

    def _put(self, out, k, y):
        # y: (N, A*D, H, W) head output -> rows of out: one transposing copy, straight into place.
        self._head_view(out, k)[...] = y.transpose(0, 2, 3, 1)

    def backward(self, d_loc, d_conf):
        """Gradients of every parameter (accumulated) and dL/dx.

        Parameters
        ----------
        d_loc : (N, P, 4) dL/dloc.
        d_conf : (N, P, M) dL/dconf.

        Returns
        -------
        dx : (N, 3, S, S) dL/dx, or None when ``input_grad`` is False.
        """
        if self._cache is None:
            raise ValueError("SSD.backward called before forward (or after the cache was cleared)")
        n = self._cache
        for name, g, d in (("d_loc", d_loc, 4), ("d_conf", d_conf, self.num_classes)):
            if tuple(getattr(g, "shape", ())) != (n, self.num_priors, d):
                raise ValueError(f"SSD.backward: {name} must have shape {(n, self.num_priors, d)}, "
                                 f"got {tuple(getattr(g, 'shape', ()))}")
        xp = get_array_module(d_loc)
        d_loc = xp.ascontiguousarray(d_loc)
        d_conf = xp.ascontiguousarray(d_conf)
        dh = None  # dL/d(source k's output) coming from the deeper layers
        for k in reversed(range(len(self.source_names))):
            s = self.source_names[k]
            # (N, H, W, A*D) view -> (N, A*D, H, W): the layout the head conv produced.
            dl = xp.ascontiguousarray(self._head_view(d_loc, k).transpose(0, 3, 1, 2))
            dc = xp.ascontiguousarray(self._head_view(d_conf, k).transpose(0, 3, 1, 2))
            # dL/dx of loc + dL/dx of conf (a new array), from the columns the forward pass shared
            df = conv_group_backward([self.loc.children[s], self.conf.children[s]], [dl, dc])
            if s in self.l2norm.children:
                df = self.l2norm.children[s].backward(df)
            if dh is not None:
                # The source feeds both its heads and the next segment: the gradients add.
                df = df + dh
            for layer in reversed(self._segments[k]):
                df = layer.backward(df)
            dh = df
        return dh

    def clear_own_cache(self) -> None:
        """The forward cache; `Module.clear_cache` also clears every layer's buffers and the workspace."""
        self._cache = None

    # -- the two halves around the network -----------------------------------------------------
    def _priors_like(self, xp):
        key = xp.__name__
        if key not in self._device_priors:
            self._device_priors[key] = xp.asarray(self.priors_cxcywh)
        return self._device_priors[key]

    def targets(self, gt_xyxy_list, gt_labels_list, threshold: float = 0.5, strategy: str = "bipartite"):
        """Training targets: match every default box to a ground truth and encode it.

        Parameters
        ----------
        gt_xyxy_list : list of N arrays (G_i, 4), normalised xyxy.
        gt_labels_list : list of N int arrays (G_i,), labels in 1..C.

        Returns
        -------
        loc_t : (N, P, 4) encoded offsets (model dtype; zeros-like where unmatched are ignored by the loss).
        labels : (N, P) int64, 0 = background.

        Paper: section 2.2 "Matching strategy" and eq. (2).
        """
        labels, matched_xyxy = match_batch(self.priors_cxcywh, gt_xyxy_list, gt_labels_list,
                                           threshold=threshold, strategy=strategy, index=self.prior_index)
        loc_t = encode(matched_xyxy, self.priors_cxcywh, self.variances)
        dtype = self.dtype
        first = self.loc.children[self.source_names[0]].params["W"]
        xp = get_array_module(first)
        return xp.asarray(loc_t, dtype=dtype), xp.asarray(labels)

    def detect(self, loc, conf, **options):
        """Detections from the network outputs: decode + softmax + per-class NMS + top-k.

        ``options`` go to `minissd.boxes.batched_detect` (score_threshold, nms_threshold,
        pre_nms_top_k, top_k). Returns a list of N Detections with normalised xyxy boxes.
        """
        xp = get_array_module(loc, conf)
        boxes_xyxy = decode(loc, self._priors_like(xp), self.variances)   # (N, P, 4)
        if self.config.get("clip_boxes_before_nms", False):
            # torchvision clips decoded boxes to the image before NMS (Caffe and minissd after it);
            # converted torchvision models set this so their detections are torchvision's.
            boxes_xyxy = xp.clip(boxes_xyxy, 0.0, 1.0)
        return batched_detect(boxes_xyxy, softmax(conf), **options)


def softmax(logits, axis: int = -1):
    """Numerically stable softmax (subtracting the row maximum)."""
    xp = get_array_module(logits)
    z = logits - logits.max(axis=axis, keepdims=True)
    e = xp.exp(z)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def build_model(name, num_classes: int, rng: np.random.Generator | None = None, dtype=np.float32,
                input_mean=None, input_std=None) -> SSD:
    """An `SSD` for a named config ("ssd300", "ssd512", "small") or a config dict.

    ``num_classes`` is M, including background. ``rng`` draws the initial weights. ``input_mean`` /
    ``input_std`` (3 numbers each, 0..255 RGB units) override the config's input normalisation.
    """
    return SSD(name, num_classes, rng=rng, dtype=dtype, input_mean=input_mean, input_std=input_std)


__all__ = ["SSD", "build_model", "softmax"]
