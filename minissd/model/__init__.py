"""The SSD network (paper section 2.1, figure 2): configs, trunk, extras, heads, save/load.

    build_model("small", num_classes=5, rng=np.random.default_rng(0)) -> SSD
    model.forward(x) -> (loc (N, P, 4), conf (N, P, M)); model.backward(d_loc, d_conf) -> dx
    save_model(path, model, {"class_names": [...]}); load_model(path) -> (model, meta)

Walkthrough: docs/05-network.md.
"""
from .configs import MODEL_CONFIGS, MODEL_NAMES, describe, get_config, scale_width, source_sizes
from .saving import load_model, load_weights, save_model
from .ssd import SSD, build_model, softmax

__all__ = ["MODEL_CONFIGS", "MODEL_NAMES", "SSD", "build_model", "describe", "get_config", "load_model",
           "load_weights", "save_model", "scale_width", "softmax", "source_sizes"]
