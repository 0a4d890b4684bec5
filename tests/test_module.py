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
