import numpy as np
import pytest

from minissd.nn import Module, Sequential


class Scale(Module):
    """y = w * x with one learnable scalar-per-feature, enough to exercise the container plumbing."""

    def __init__(self, n):
        super().__init__()
        self.add_param("w", np.arange(1.0, n + 1))

    def forward(self, x):
        self.x = x
        return x * self.params["w"]

    def backward(self, dy):
        self.grads["w"] += (dy * self.x).sum(axis=0)
        return dy * self.params["w"]


def test_dotted_names_and_order():
    net = Sequential([("a", Scale(2)), ("b", Sequential([("c", Scale(2))]))])
    assert [n for n, _, _ in net.named_parameters()] == ["a.w", "b.c.w"]
    assert net.num_parameters() == 4


def test_backward_accumulates_until_zero_grad():
    net = Sequential([("a", Scale(2)), ("b", Scale(2))])
    x = np.ones((3, 2))
    net.forward(x)
    net.backward(np.ones((3, 2)))
    first = net["a"].grads["w"].copy()
    net.forward(x)
    net.backward(np.ones((3, 2)))
    np.testing.assert_allclose(net["a"].grads["w"], 2 * first)
    net.zero_grad()
    assert not net["a"].grads["w"].any()


def test_load_state_dict_names_the_mismatch():
    net = Sequential([("a", Scale(2)), ("b", Scale(3))])
    state = {"a.w": np.zeros(2), "b.w": np.zeros(4)}
    with pytest.raises(ValueError, match=r"'b.w' has shape \(3,\) in the model but \(4,\)"):
        net.load_state_dict(state)
    with pytest.raises(ValueError, match="missing parameter 'b.w'"):
        net.load_state_dict({"a.w": np.zeros(2)})
    net.load_state_dict({"a.w": np.full(2, 5.0), "b.w": np.zeros(3)})
    np.testing.assert_array_equal(net["a"].params["w"], [5.0, 5.0])


def test_train_eval_propagates():
    net = Sequential([("a", Scale(1)), ("b", Sequential([("c", Scale(1))]))])
    net.eval()
    assert not net["b"]["c"].training
    net.train()
    assert net["b"]["c"].training


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="not a Module"):
        Sequential([("x", 3)])


class Cached(Scale):
    """Scale that keeps its input until clear_own_cache."""

    def clear_own_cache(self):
        self.x = None


def test_clear_cache_reaches_every_module_and_the_shared_workspace():
    net = Sequential([("a", Cached(2)), ("b", Sequential([("c", Cached(2))]))])
    assert net["b"]["c"].workspace is net.workspace is net["a"].workspace
    net.forward(np.ones((3, 2)))
    net.workspace.get(np, "y", (4,), np.float64)
    net["b"].clear_cache()                              # a subtree: only its own modules
    assert net["b"]["c"].x is None and net["a"].x is not None
    net.clear_cache()
    assert net["a"].x is None and len(net.workspace) == 0


def test_ssd_clear_cache_releases_columns_argmax_and_scratch(rng):
    from minissd.model import SSD
    from minissd.nn import Conv2d, MaxPool2d

    model = SSD("small", 3, rng)
    size = model.image_size
    model.forward(rng.standard_normal((1, 3, size, size)).astype(np.float32))
    layers = [m for _, m in model.named_modules()]
    assert all(m.workspace is model.workspace for m in layers)
    assert any(isinstance(m, Conv2d) and m._col is not None for m in layers)
    assert any(isinstance(m, MaxPool2d) and m._argmax is not None for m in layers)
    assert model.workspace.nbytes > 0
    model.clear_cache()
    assert all(m._col is None and m._x is None for m in layers if isinstance(m, Conv2d))
    assert all(m._argmax is None for m in layers if isinstance(m, MaxPool2d))
    assert model.workspace.nbytes == 0 and model._cache is None


def test_load_state_dict_takes_arrays_from_any_device(xp):
    """GPU state into a CPU model goes through backend.to_cpu (np.asarray refuses CuPy arrays)."""
    net = Sequential([("a", Scale(2))])
    net.load_state_dict({"a.w": xp.asarray([3.0, 4.0])})
    assert type(net["a"].params["w"]) is np.ndarray
    np.testing.assert_array_equal(net["a"].params["w"], [3.0, 4.0])


def test_add_child_rejects_non_modules():
    with pytest.raises(TypeError, match="'x' is int, not a Module"):
        Module().add_child("x", 3)


def test_workspace_growth_frees_the_old_buffer_first():
    # Growing a slot must not hold the old and the new buffer at once: the peak is the new size.
    import tracemalloc

    from minissd.nn.workspace import Workspace

    ws = Workspace()
    tracemalloc.start()
    try:
        ws.get(np, "s", (1 << 20,), np.float32)         # 4 MB, traced
        tracemalloc.reset_peak()
        ws.get(np, "s", (2 << 20,), np.float32)         # grows to 8 MB
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 9 << 20, f"peak {peak / 2**20:.1f} MiB: the old 4 MiB buffer was still held"
