"""Tests added after mutation testing of minissd/loss.py (tests/MUTATION.md): each kills a mutant that
survived the rest of tests/test_loss.py."""
import numpy as np

from minissd.loss import log_softmax, mine_hard_negatives_ref


def test_log_softmax_shifts_each_row_by_its_own_maximum():
    """Rows of very different magnitude: a shift by the global maximum (or adding the maximum instead
    of subtracting it) underflows or overflows exp() and gives -inf/nan; mathematically it is the same
    function, so only extreme rows tell the two apart."""
    x = np.array([[1000.0, 999.0], [-1000.0, -1001.0], [0.0, 0.0]])
    a = -np.log1p(np.exp(-1.0))
    expected = np.array([[a, a - 1.0], [a, a - 1.0], [-np.log(2.0), -np.log(2.0)]])
    np.testing.assert_allclose(log_softmax(x), expected, rtol=1e-12)
    np.testing.assert_allclose(log_softmax(x.T, axis=0), expected.T, rtol=1e-12)
    x32 = np.array([[60.0, 59.0, -40.0]], np.float32)     # exp(120) overflows float32
    y32 = log_softmax(x32)
    assert y32.dtype == np.float32 and np.all(np.isfinite(y32))
    np.testing.assert_allclose(np.exp(y32).sum(), 1.0, rtol=1e-6)


def test_mine_hard_negatives_ref_returns_a_boolean_mask():
    """The twin's result is used as a mask (``~mask``, ``mask & other``): a 0/1 float array is wrong."""
    bg = np.array([[0.3, 0.9, 0.1, 0.5]])
    out = mine_hard_negatives_ref(bg, np.array([[False, True, False, False]]), np.array([2]))
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, [[True, False, False, True]])
