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
@pytest.mark.skipif(not backend.gpu_available(),
                    reason=f"needs CuPy and a CUDA GPU: {backend.gpu_unavailable_reason()}")
def test_gpu_round_trip():
    x = np.arange(6.0).reshape(2, 3)
    g = backend.to_gpu(x)
    assert backend.get_array_module(g) is backend.cupy_module()
    assert backend.device_of(g) == "cuda"
    np.testing.assert_array_equal(backend.to_cpu(g), x)


def _fake_cupy(device_count=None, error=None, sync_error=None):
    """A stand-in for the cupy module: getDeviceCount returns ``device_count`` or raises ``error``."""
    from types import SimpleNamespace

    def get_device_count():
        if error is not None:
            raise error
        return device_count

    def synchronize():
        if sync_error is not None:
            raise sync_error

    stream = SimpleNamespace(synchronize=synchronize)
    cuda = SimpleNamespace(runtime=SimpleNamespace(getDeviceCount=get_device_count),
                           get_current_stream=lambda: stream)
    return SimpleNamespace(cuda=cuda, ndarray=type("FakeGpuArray", (), {}))


def test_unavailable_gpu_says_why(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_CUPY_IMPORT_ERROR", "ImportError: libcudart.so.13: cannot open")
    assert backend.gpu_unavailable_reason() == "CuPy does not import (ImportError: libcudart.so.13: cannot open)"
    assert not backend.gpu_available()
    monkeypatch.setattr(backend, "_cupy", _fake_cupy(error=RuntimeError("cudaErrorNoDevice: no CUDA-capable\nmore")))
    assert backend.gpu_unavailable_reason() == ("CuPy finds no CUDA device (RuntimeError: cudaErrorNoDevice: "
                                               "no CUDA-capable)")
    monkeypatch.setattr(backend, "_cupy", _fake_cupy(device_count=0))
    assert "getDeviceCount() is 0" in backend.gpu_unavailable_reason()
    with pytest.raises(backend.DeviceError, match=r"device 'cuda' was requested but CuPy finds no CUDA device"):
        backend.resolve_device("cuda")
    monkeypatch.setattr(backend, "_cupy", _fake_cupy(device_count=2))
    assert backend.gpu_unavailable_reason() is None and backend.gpu_available()


@pytest.mark.parametrize("value, required", [("", False), ("0", False), ("false", False), ("No", False),
                                             ("off", False), ("1", True), ("yes", True), ("TRUE", True)])
def test_require_gpu_environment_variable(monkeypatch, value, required):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_CUPY_IMPORT_ERROR", "ModuleNotFoundError: No module named 'cupy'")
    monkeypatch.setenv(backend.REQUIRE_GPU_ENV, value)
    assert backend.gpu_required() is required
    if required:
        with pytest.raises(backend.DeviceError, match=r"MINISSD_REQUIRE_GPU is set but CuPy does not import "
                                                      r"\(ModuleNotFoundError"):
            backend.require_gpu_if_asked()
    else:
        backend.require_gpu_if_asked()                 # not asked: no error
    monkeypatch.setattr(backend, "_cupy", _fake_cupy(device_count=1))
    backend.require_gpu_if_asked()                     # a GPU: never an error


def test_synchronize_lets_a_device_fault_surface(monkeypatch):
    # an asynchronous kernel fault is reported by the sync that finds it, not swallowed
    fault = RuntimeError("cudaErrorIllegalAddress: an illegal memory access was encountered")
    monkeypatch.setattr(backend, "_cupy", _fake_cupy(device_count=1, sync_error=fault))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        backend.synchronize()
    backend.synchronize(np.zeros(2))                   # a NumPy array: nothing to wait for
    monkeypatch.setattr(backend, "_cupy", _fake_cupy(device_count=1))
    backend.synchronize()
