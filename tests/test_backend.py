import numpy as np
import pytest

from minissd import backend


def test_numpy_arrays_select_numpy():
    assert backend.get_array_module(np.zeros(3)) is np
    assert backend.get_array_module(np.zeros(3), None, 1.0) is np
    assert backend.get_array_module() is np


def test_to_cpu_returns_numpy():
    x = np.arange(4.0)
    assert backend.to_cpu(x) is x
    assert isinstance(backend.to_cpu([1, 2]), np.ndarray)


def test_resolve_device_defaults_to_cpu(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert backend.resolve_device() == "cpu"
    assert backend.resolve_device("CPU") == "cpu"


def test_resolve_device_reads_environment(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "cpu")
    assert backend.resolve_device() == "cpu"
    monkeypatch.setenv(backend.ENV_VAR, "abacus")
    with pytest.raises(backend.DeviceError, match="MINISSD_DEVICE='abacus' is not a device"):
        backend.resolve_device()


def test_unknown_device_names_the_choices():
    with pytest.raises(backend.DeviceError, match="choose one of cpu, cuda"):
        backend.resolve_device("tpu")


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(backend.DeviceError, match="cuda"):
        backend.resolve_device("cuda")
    with pytest.raises(backend.DeviceError):
        backend.to_gpu(np.zeros(2))
    with pytest.raises(backend.DeviceError):
        backend.xp_for("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_gpu_round_trip():
    x = np.arange(6.0).reshape(2, 3)
    g = backend.to_gpu(x)
    assert backend.get_array_module(g) is backend.cupy_module()
    assert backend.device_of(g) == "cuda"
    np.testing.assert_array_equal(backend.to_cpu(g), x)
