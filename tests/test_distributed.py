"""minissd.distributed: communicators, the gradient bucket, and real `mpiexec -n 2` jobs.

The MPI tests start `mpiexec -n 2 python worker.py` in a subprocess with a timeout (a hung collective
fails the test instead of hanging CI) and compare what each rank wrote with the same arithmetic done
here in one process. They need mpi4py and an MPI (the `test` extra installs mpi4py and the MPICH wheel)
and skip, saying so, only when mpi4py is missing. The NCCL path needs CuPy and GPUs; on the CPU its
logic runs against stand-ins for cupy and cupy.cuda.nccl, and its error without CuPy runs for real.
"""
import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import run_mpi_job
from minissd import distributed as dist
from minissd.nn.module import Module

try:
    import mpi4py  # noqa: F401  (only the package: importing mpi4py.MPI here would start MPI in pytest)

    MPI4PY_REASON = None
except ImportError as err:
    MPI4PY_REASON = f"mpi4py is not installed ({err}): pip install -e '.[test]' installs it and MPICH"

needs_mpi = pytest.mark.skipif(MPI4PY_REASON is not None, reason=str(MPI4PY_REASON))

TIMEOUT_S = 90  # generous on a loaded 2-core machine; a healthy job takes ~2 s
SEED = 20240614


# -- in-process: the single-process communicator -----------------------------------------------------
def test_single_process_is_a_no_op(rng):
    comm = dist.SingleProcess()
    assert (comm.rank, comm.size, comm.local_rank, comm.local_size, comm.is_root) == (0, 1, 0, 1, True)
    buf = rng.standard_normal(17).astype(np.float32)
    before = buf.copy()
    assert comm.allreduce_sum_(buf) is buf
    np.testing.assert_array_equal(buf, before)
    assert comm.bcast_array_(buf) is buf
    np.testing.assert_array_equal(buf, before)
    obj = {"a": [1, 2]}
    assert comm.bcast(obj) is obj
    assert comm.allreduce_scalar(7) == 7 and comm.allreduce_scalar(2.5, "max") == 2.5
    comm.barrier()
    with pytest.raises(ValueError, match="op"):
        comm.allreduce_scalar(1, "prod")
    with pytest.raises(ValueError, match="root"):
        comm.bcast(obj, root=1)


def test_single_process_guard_lets_the_exception_through():
    with pytest.raises(KeyError), dist.SingleProcess().guard():
        raise KeyError("x")


def test_single_process_abort_exits_non_zero(capsys):
    with pytest.raises(SystemExit) as info:
        dist.SingleProcess().abort("broken", code=3)
    assert info.value.code == 3
    assert "rank 0 of 1 failed: broken" in capsys.readouterr().err


# -- in-process: which communicator --------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_without_a_launcher_the_communicator_is_single_process(device):
    assert isinstance(dist.get_communicator(device, environ={}), dist.SingleProcess)


@pytest.mark.parametrize("var", ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"])
def test_launcher_variables_are_recognised(var):
    assert dist.launched_by_mpi({var: "2"}) == var
    assert dist.launched_by_mpi({"HOME": "/root", var: ""}) is None


def test_under_mpiexec_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # `from mpi4py import MPI` now raises ImportError
    with pytest.raises(dist.DistributedError) as info:
        dist.get_communicator("cpu", environ={"PMI_SIZE": "2", "PMI_RANK": "0"})
    message = str(info.value)
    assert 'pip install -e ".[mpi]"' in message and "PMI_SIZE=2" in message


def test_bad_device_name():
    with pytest.raises(ValueError, match="device"):
        dist.get_communicator("tpu", environ={})


def test_mpi_buffer_checks_name_the_problem():
    with pytest.raises(ValueError, match="NumPy array"):
        dist._check_host_buffer([1.0, 2.0], "MPIComm.allreduce_sum_")
    with pytest.raises(ValueError, match="C-contiguous"):
        dist._check_host_buffer(np.zeros((4, 4))[:, 1], "MPIComm.allreduce_sum_")
    with pytest.raises(ValueError, match="dtype"):
        dist._check_host_buffer(np.array(["a"]), "MPIComm.allreduce_sum_")


# -- in-process: the gradient bucket -------------------------------------------------------------------
def _toy_model(rng, dtype=np.float32):
    """Two levels of modules, four parameters of different shapes, random grads."""
    root, child = Module(), Module()
    child.add_param("W", rng.standard_normal((3, 2, 3, 3)).astype(dtype))
    child.add_param("b", rng.standard_normal(3).astype(dtype))
    root.add_child("conv", child)
    root.add_param("scale", rng.standard_normal((1, 5, 1, 1)).astype(dtype))
    root.add_param("bias", rng.standard_normal(()).astype(dtype))
    for _, _, g in root.named_parameters():
        g[...] = rng.standard_normal(g.shape)
    return root


class EchoComm(dist.Communicator):
    """Size 2 in one process: the 'other rank' holds the arrays given (a flat buffer)."""

    def __init__(self, other):
        self.size, self.other, self.calls = 2, other, 0

    def allreduce_sum_(self, buf):
        self.calls += 1
        buf += self.other
        return buf


def _flat_grads(model):
    return np.concatenate([g.reshape(-1) for _, _, g in model.named_parameters()])


@pytest.mark.parametrize("average", [True, False])
def test_bucket_sums_or_averages_every_grad_with_one_call(rng, average):
    model = _toy_model(rng)
    mine = _flat_grads(model)
    other = rng.standard_normal(mine.size).astype(np.float32)
    comm = EchoComm(other)
    bucket = dist.GradientBucket(model, comm, average=average)
    grads_before = [g for _, _, g in model.named_parameters()]
    bucket.allreduce_()
    expected = (mine + other) / 2 if average else mine + other
    np.testing.assert_array_equal(_flat_grads(model), expected.astype(np.float32))
    assert comm.calls == 1
    assert bucket.nbytes == 4 * mine.size
    # in place: the grad arrays are the same objects (the optimizer holds references to them)
    assert all(a is b for a, (_, _, b) in zip(grads_before, model.named_parameters(), strict=True))


def test_bucket_with_one_process_touches_nothing(rng):
    model = _toy_model(rng)
    before = _flat_grads(model).copy()
    bucket = dist.GradientBucket(model, dist.SingleProcess(), average=True)
    bucket.buffer[...] = np.nan  # would show up if the grads were unpacked from it
    bucket.allreduce_()
    np.testing.assert_array_equal(_flat_grads(model), before)


def test_bucket_follows_a_change_of_dtype(rng):
    model = _toy_model(rng)
    n = _flat_grads(model).size
    bucket = dist.GradientBucket(model, EchoComm(np.ones(n)), average=False)
    first = bucket.buffer
    bucket.allreduce_()
    assert bucket.buffer is first  # allocated once
    model.astype(np.float64)
    mine = _flat_grads(model)
    bucket.allreduce_()
    assert bucket.buffer.dtype == np.float64
    np.testing.assert_array_equal(_flat_grads(model), mine + 1)


def test_bucket_rejects_mixed_dtypes_naming_the_parameter(rng):
    model = _toy_model(rng)
    model.children["conv"].grads["b"] = model.children["conv"].grads["b"].astype(np.float64)
    with pytest.raises(ValueError, match="conv.b"):
        dist.GradientBucket(model, dist.SingleProcess(), average=True)


def test_bucket_needs_an_explicit_average(rng):
    with pytest.raises(ValueError, match="average"):
        dist.GradientBucket(_toy_model(rng), dist.SingleProcess(), average=1)
    with pytest.raises(ValueError, match="no parameters"):
        dist.GradientBucket(Module(), dist.SingleProcess(), average=True)


def test_digest_sees_one_changed_bit(rng):
    model = _toy_model(rng)
    d0 = dist.parameters_digest(model)
    w = model.children["conv"].params["W"]
    w.view(np.uint32).reshape(-1)[5] ^= 1
    assert dist.parameters_digest(model) != d0


# -- in-process: NCCL logic against stand-ins for cupy and cupy.cuda.nccl ------------------------------
class FakeDeviceArray:
    """Enough of cupy.ndarray for NCCLComm: dtype, size, flags, data.ptr."""

    def __init__(self, a):
        self.a = a
        self.dtype, self.size, self.shape, self.flags, self.strides = a.dtype, a.size, a.shape, a.flags, a.strides
        self.data = SimpleNamespace(ptr=a.ctypes.data)


class FakeNcclCommunicator:
    def __init__(self, size, uid, rank):
        self.args, self.calls = (size, uid, rank), []

    def allReduce(self, *args):
        self.calls.append(("allReduce",) + args)

    def bcast(self, *args):
        self.calls.append(("bcast",) + args)

    def abort(self):
        self.calls.append(("abort",))


def _fake_cuda(n_gpus):
    used = []
    cupy = SimpleNamespace(ndarray=FakeDeviceArray, cuda=SimpleNamespace(
        runtime=SimpleNamespace(getDeviceCount=lambda: n_gpus),
        Device=lambda i: SimpleNamespace(use=lambda: used.append(i)),
        get_current_stream=lambda: SimpleNamespace(ptr=1234, synchronize=lambda: None)))
    nccl = SimpleNamespace(NCCL_SUM=0, NCCL_FLOAT32=7, NCCL_FLOAT64=8, NcclCommunicator=FakeNcclCommunicator,
                           get_unique_id=lambda: b"unique-id-of-rank-0", available=True)
    return cupy, nccl, used


class FakeHost(dist.SingleProcess):
    """A host communicator that says rank/size/local rank and records what goes through it."""

    def __init__(self, rank, size, local_rank, local_size):
        self.rank, self.size, self.local_rank, self.local_size = rank, size, local_rank, local_size
        self.log = []

    def bcast(self, obj, root=0):
        self.log.append(("bcast", obj))
        return b"unique-id-of-rank-0" if obj is None else obj

    def allreduce_sum_(self, buf):
        self.log.append(("allreduce_sum_", buf))
        return buf


def test_nccl_bootstrap_picks_the_gpu_of_the_local_rank_and_shares_rank_0s_id():
    cupy, nccl, used = _fake_cuda(n_gpus=2)
    root = dist.NCCLComm(FakeHost(rank=0, size=4, local_rank=0, local_size=2), cupy=cupy, nccl=nccl)
    assert root.host.log == [("bcast", b"unique-id-of-rank-0")]  # rank 0 makes the id and sends it
    other = dist.NCCLComm(FakeHost(rank=3, size=4, local_rank=1, local_size=2), cupy=cupy, nccl=nccl)
    assert other.host.log == [("bcast", None)]                    # the others receive it
    assert used == [0, 1] and other.device_id == 1
    assert other.comm.args == (4, b"unique-id-of-rank-0", 3)


def test_nccl_is_used_for_device_buffers_and_mpi_for_host_buffers(rng):
    cupy, nccl, _ = _fake_cuda(n_gpus=1)
    comm = dist.NCCLComm(FakeHost(rank=1, size=2, local_rank=0, local_size=1), cupy=cupy, nccl=nccl)
    dev = FakeDeviceArray(rng.standard_normal(10).astype(np.float32))
    assert comm.allreduce_sum_(dev) is dev
    assert comm.comm.calls == [("allReduce", dev.data.ptr, dev.data.ptr, 10, 7, 0, 1234)]
    host = np.zeros(4)
    assert comm.allreduce_sum_(host) is host
    assert comm.host.log[-1][0] == "allreduce_sum_" and comm.host.log[-1][1] is host
    assert len(comm.comm.calls) == 1  # the host buffer did not go to NCCL
    comm.bcast_array_(dev, root=0)
    assert comm.comm.calls[-1] == ("bcast", dev.data.ptr, 10, 7, 0, 1234)
    with pytest.raises(ValueError, match="dtype int8"):
        comm.allreduce_sum_(FakeDeviceArray(np.zeros(3, np.int8)))


def test_nccl_refuses_more_processes_than_gpus():
    cupy, nccl, _ = _fake_cuda(n_gpus=1)
    with pytest.raises(dist.DistributedError, match="2 processes on this machine but only 1 GPU"):
        dist.NCCLComm(FakeHost(rank=0, size=2, local_rank=0, local_size=2), cupy=cupy, nccl=nccl)


def test_nccl_without_cupy_says_so(monkeypatch):
    monkeypatch.setattr(dist.backend, "cupy_module", lambda: None)
    with pytest.raises(dist.DistributedError, match="NCCLComm needs CuPy"):
        dist.NCCLComm(dist.SingleProcess())


# -- real jobs: mpiexec -n 2 ----------------------------------------------------------------------------
WORKER = textwrap.dedent('''
    import os, sys
    import numpy as np
    from minissd import distributed as dist
    from minissd.nn.module import Module

    scenario, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def arrays(rank):
        rng = np.random.default_rng([seed, rank])
        return {"f32": rng.standard_normal(1000).astype(np.float32),
                "f64": rng.standard_normal((3, 7)),
                "i64": rng.integers(-5, 5, 11),
                "empty": np.zeros(0, np.float32)}

    def toy(rank):
        rng = np.random.default_rng([seed, 100 + rank])
        m, c = Module(), Module()
        c.add_param("W", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
        c.add_param("b", rng.standard_normal(4).astype(np.float32))
        m.add_child("conv", c)
        m.add_param("s", rng.standard_normal(6).astype(np.float32))
        for _, _, g in m.named_parameters():
            g[...] = rng.standard_normal(g.shape)
        return m

    if scenario == "collectives":
        comm = dist.get_communicator("cpu")
        assert isinstance(comm, dist.MPIComm), comm
        r = {}
        for k, a in arrays(comm.rank).items():
            r["sum_" + k] = comm.allreduce_sum_(a)
        r["scalars"] = np.array([comm.allreduce_scalar(comm.rank + 1), comm.allreduce_scalar(0.5 * comm.rank),
                                 comm.allreduce_scalar(10 - comm.rank, "max"),
                                 comm.allreduce_scalar(10 - comm.rank, "min")])
        obj = comm.bcast({"from": comm.rank, "list": [1, 2, 3]})
        r["bcast_obj_from"] = np.array(obj["from"])
        r["bcast_array"] = comm.bcast_array_(np.full(5, comm.rank + 1.0), root=1)
        for average in (True, False):
            m = toy(comm.rank)
            dist.GradientBucket(m, comm, average=average).allreduce_()
            r[f"bucket_{average}"] = np.concatenate([g.reshape(-1) for _, _, g in m.named_parameters()])
        m = toy(comm.rank)
        agree_before = dist.replicas_agree(m, comm)
        dist.broadcast_parameters(m, comm)
        r["agree"] = np.array([agree_before, dist.replicas_agree(m, comm)])
        r["params"] = np.concatenate([p.reshape(-1) for _, p, _ in m.named_parameters()])
        r["ranks"] = np.array([comm.rank, comm.size, comm.local_rank, comm.local_size])
        comm.barrier()
        np.savez(os.path.join(out, f"rank{comm.rank}.npz"), **r)
    elif scenario == "raise":  # rank 1 fails while rank 0 waits in an all-reduce
        comm = dist.get_communicator("cpu")
        if comm.rank == 1:
            raise RuntimeError("deliberate failure on one rank")
        comm.allreduce_sum_(np.ones(4))
        print("rank 0 went past the all-reduce", flush=True)
    elif scenario == "guard_exit":  # a rank leaves with sys.exit(3) inside guard()
        comm = dist.get_communicator("cpu")
        with comm.guard():
            if comm.rank == 0:
                sys.exit(3)
            comm.barrier()
    elif scenario == "no_mpi4py":
        sys.modules["mpi4py"] = None
        dist.get_communicator("cpu")
    elif scenario == "cuda_without_cupy":
        dist.backend.cupy_module = lambda: None
        dist.get_communicator("cuda")
        print("rank went past get_communicator('cuda')", flush=True)
''')


def run_mpi(tmp_path, scenario, n=2, timeout=TIMEOUT_S):
    """Run the worker under ``mpiexec -n n``; return (returncode, stdout, stderr, seconds).

    A job still running at ``timeout`` is killed with its whole process group and the test fails.
    """
    mpiexec = dist.find_mpiexec()
    if mpiexec is None:
        pytest.fail("mpi4py is installed but no mpiexec was found beside python or on PATH "
                    "(pip install mpich provides one)")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in dist.LAUNCHER_MARKER_VARS}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [mpiexec, "-n", str(n), sys.executable, str(script), scenario, str(tmp_path), str(SEED)]
    start = time.monotonic()
    rc, out, err = run_mpi_job(cmd, env, timeout, what=f"mpiexec -n {n} ({scenario})")
    return rc, out, err, time.monotonic() - start


def _worker_arrays(rank):
    rng = np.random.default_rng([SEED, rank])
    return {"f32": rng.standard_normal(1000).astype(np.float32), "f64": rng.standard_normal((3, 7)),
            "i64": rng.integers(-5, 5, 11), "empty": np.zeros(0, np.float32)}


def _worker_toy(rank, which):
    """The worker's toy model's flat grads (which=2) or params (which=1), rebuilt here."""
    rng = np.random.default_rng([SEED, 100 + rank])
    params = [rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32),
              rng.standard_normal(6).astype(np.float32)]
    order = [2, 0, 1]  # named_parameters order: the root's own "s" first, then the child's W, b
    if which == 1:
        return np.concatenate([params[i].reshape(-1) for i in order])
    return np.concatenate([rng.standard_normal(params[i].shape).astype(np.float32).reshape(-1) for i in order])


@pytest.fixture(scope="module")
def collectives(tmp_path_factory):
    if MPI4PY_REASON is not None:
        pytest.skip(MPI4PY_REASON)
    tmp = tmp_path_factory.mktemp("mpi_collectives")
    rc, out, err, _ = run_mpi(tmp, "collectives")
    assert rc == 0, f"mpiexec -n 2 exited {rc}\nstdout:\n{out}\nstderr:\n{err}"
    return [dict(np.load(tmp / f"rank{r}.npz")) for r in range(2)]


@needs_mpi
def test_mpi_ranks_and_local_ranks(collectives):
    np.testing.assert_array_equal(collectives[0]["ranks"], [0, 2, 0, 2])
    np.testing.assert_array_equal(collectives[1]["ranks"], [1, 2, 1, 2])


@needs_mpi
@pytest.mark.parametrize("key", ["f32", "f64", "i64", "empty"])
def test_mpi_allreduce_equals_the_sum_in_one_process(collectives, key):
    # With two ranks the reduction is one addition a0 + a1, which IEEE rounds the same in either
    # order, so the result must match the one-process sum bit for bit.
    expected = _worker_arrays(0)[key] + _worker_arrays(1)[key]
    for rank in range(2):
        got = collectives[rank]["sum_" + key]
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


@needs_mpi
def test_mpi_scalar_allreduce(collectives):
    for rank in range(2):
        np.testing.assert_array_equal(collectives[rank]["scalars"], [1 + 2, 0.0 + 0.5, 10, 9])


@needs_mpi
def test_mpi_broadcasts(collectives):
    for rank in range(2):
        assert int(collectives[rank]["bcast_obj_from"]) == 0            # rank 0's object
        np.testing.assert_array_equal(collectives[rank]["bcast_array"], np.full(5, 2.0))  # root=1's array


@needs_mpi
@pytest.mark.parametrize("average", [True, False])
def test_mpi_gradient_bucket(collectives, average):
    total = _worker_toy(0, 2) + _worker_toy(1, 2)
    expected = total / np.float32(2) if average else total
    for rank in range(2):
        np.testing.assert_array_equal(collectives[rank][f"bucket_{average}"], expected)


@needs_mpi
def test_mpi_broadcast_parameters_makes_replicas_agree(collectives):
    for rank in range(2):
        np.testing.assert_array_equal(collectives[rank]["agree"], [False, True])
        np.testing.assert_array_equal(collectives[rank]["params"], _worker_toy(0, 1))


@needs_mpi
def test_a_rank_that_raises_ends_the_job_naming_the_rank(tmp_path):
    rc, out, err, seconds = run_mpi(tmp_path, "raise")
    assert rc != 0
    assert "rank 1 of 2 failed: RuntimeError: deliberate failure on one rank" in err, err
    assert "went past" not in out
    assert seconds < TIMEOUT_S


@needs_mpi
def test_a_rank_that_exits_inside_guard_ends_the_job(tmp_path):
    rc, _, err, _ = run_mpi(tmp_path, "guard_exit")
    assert rc != 0
    assert "rank 0 of 2 failed: SystemExit: 3" in err, err


@needs_mpi
def test_under_mpiexec_without_mpi4py_every_rank_says_what_to_install(tmp_path):
    rc, _, err, _ = run_mpi(tmp_path, "no_mpi4py")
    assert rc != 0
    assert err.count('pip install -e ".[mpi]"') == 2, err


@needs_mpi
def test_cuda_under_mpiexec_without_cupy_ends_the_job_with_the_reason(tmp_path):
    rc, out, err, _ = run_mpi(tmp_path, "cuda_without_cupy")
    assert rc != 0
    assert "NCCLComm needs CuPy" in err and "failed" in err, err
    assert "went past" not in out


@needs_mpi
def test_allreduce_benchmark_smoke_run():
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                          "allreduce.py")
    proc = subprocess.run([sys.executable, script, "--sizes", "1000", "--repeat", "2", "--warmup", "0",
                           "--timeout", str(TIMEOUT_S)], capture_output=True, text=True, timeout=2 * TIMEOUT_S,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| flat 1,000 |")]
    assert [row.split("|")[3].strip() for row in rows] == ["1", "2"], proc.stdout
    assert "load average before" in proc.stdout
