"""Communicators for synchronous data-parallel SGD: MPI for NumPy buffers, NCCL for CuPy buffers.

Data-parallel SGD runs K copies of the same program (``mpiexec -n K python -m minissd.train``). Each
process ("rank") computes gradients on its shard of the global batch; one all-reduce per step sums the
gradients over the ranks; every rank then applies the same optimizer update to the same weights, so the
replicas never drift apart. This module is the communication half of that; nothing here knows about SSD.

Three communicators share one interface, so the training step has one code path:

* `SingleProcess`: size 1, every operation returns its input unchanged (the default without mpiexec);
* `MPIComm`: mpi4py over any MPI (the ``minissd[mpi]`` extra installs MPICH from a wheel); buffers are
  NumPy arrays, reduced in place with ``Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)``;
* `NCCLComm`: ``cupy.cuda.nccl`` for CuPy buffers (GPU memory never goes through the host), with MPI
  underneath for start-up (rank 0 makes the NCCL unique id and broadcasts it), for host-side scalars and
  Python objects, and for abort. One GPU per process, chosen by the local rank (MPI's shared-memory split).

`get_communicator(device)` picks one from the environment, and `GradientBucket` packs a model's
gradients into one flat buffer so that a step costs one all-reduce call, not one per parameter (the
latency of ~40 small calls would dominate on a fast network; cf. Horovod's tensor fusion and torch DDP's
buckets).

A rank that raises must not leave the others waiting forever inside a collective (an MPI job whose rank
died without MPI_Abort hangs). `MPIComm` therefore installs a ``sys.excepthook`` that prints the traceback,
names the rank and calls ``MPI_Abort``, which ends every process of the job with a non-zero status;
`Communicator.guard` does the same for a block of code, SystemExit with a non-zero code included.

Walkthrough: docs/15-data-parallel.md (issue 14). The trainer uses it in minissd/training/trainer.py.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import time
import traceback
import zlib

import numpy as np

from . import backend

MPI_INSTALL_HINT = 'pip install -e ".[mpi]"   (or: pip install mpi4py mpich)'

# Variables that the common launchers set in every process they start: Open MPI's mpirun, MPICH/Intel
# MPI's Hydra (PMI_*), PMIx launchers (prterun, srun --mpi=pmix), MVAPICH.
LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
LAUNCHER_MARKER_VARS = LAUNCHER_SIZE_VARS + ("PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS")

_OPS = ("sum", "max", "min")

# Seconds an aborting rank waits after writing its message, so that mpiexec forwards it before MPI_Abort.
ABORT_GRACE_S = 0.5


class DistributedError(RuntimeError):
    """The job cannot run as asked: MPI missing under mpiexec, NCCL unavailable, a bad buffer."""


def launched_by_mpi(environ=None) -> str | None:
    """The name of the launcher variable that says this process runs under mpiexec, else None."""
    environ = os.environ if environ is None else environ
    for name in LAUNCHER_MARKER_VARS:
        if environ.get(name, "") != "":
            return name
    return None


def _launcher_size(environ) -> str:
    for name in LAUNCHER_SIZE_VARS:
        if environ.get(name):
            return f"{name}={environ[name]}"
    name = launched_by_mpi(environ)
    return f"{name}={environ[name]}" if name else "no launcher variable"


def _check_op(op: str) -> str:
    if op not in _OPS:
        raise ValueError(f"op: expected one of {', '.join(_OPS)}, got {op!r}")
    return op


def _check_host_buffer(buf, who: str) -> np.ndarray:
    """A C-contiguous NumPy array, or ValueError naming what is wrong with ``buf``."""
    if backend.is_gpu_array(buf):
        raise ValueError(f"{who}: buffer is a CuPy array; MPI here moves host memory only. "
                         "Use get_communicator('cuda') (NCCL) for GPU buffers")
    if not isinstance(buf, np.ndarray):
        raise ValueError(f"{who}: buffer must be a NumPy array, got {type(buf).__name__}")
    if not buf.flags.c_contiguous or not buf.flags.writeable:
        raise ValueError(f"{who}: buffer must be C-contiguous and writeable (in-place reduction), "
                         f"got shape {buf.shape} strides {buf.strides}")
    if buf.dtype.kind not in "fiub":
        raise ValueError(f"{who}: buffer dtype must be a number, got {buf.dtype}")
    return buf


class Communicator:
    """The interface every communicator offers.

    Attributes
    ----------
    rank : int, this process's index in the job, 0 .. size - 1 (rank 0 logs and writes files).
    size : int, number of processes K.
    local_rank : int, index among the processes on this machine (picks the GPU).
    local_size : int, number of processes on this machine.
    """

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    name = "base"

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # -- collectives (every rank must call them, in the same order) ------------------------------
    def allreduce_sum_(self, buf):
        """Sum ``buf`` over the ranks, in place; returns ``buf``. One call per step: pack first."""
        raise NotImplementedError

    def allreduce_scalar(self, value, op: str = "sum"):
        """``op`` ("sum", "max", "min") of a Python number over the ranks; int in, int out."""
        raise NotImplementedError

    def bcast(self, obj, root: int = 0):
        """Rank ``root``'s Python object (pickled), on every rank."""
        raise NotImplementedError

    def bcast_array_(self, buf, root: int = 0):
        """Overwrite ``buf`` on every rank with rank ``root``'s ``buf``, in place; returns ``buf``."""
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def idle_barrier(self, poll_s: float = 0.005) -> None:
        """A barrier that sleeps while it waits (for a rank busy alone: evaluation, the final report).

        MPICH's blocking calls spin a core while they wait; on a machine with few cores the waiting
        ranks would take CPU from the one doing the work. Here the wait polls a non-blocking barrier.
        """
        self.barrier()

    # -- failure -----------------------------------------------------------------------------------
    def abort(self, message: str, code: int = 1):
        """End the whole job with a non-zero status, after printing ``message`` with this rank's number."""
        raise NotImplementedError

    @contextlib.contextmanager
    def guard(self):
        """Run a block; any exception (SystemExit with a non-zero code too) aborts the whole job.

        Without it a failing rank would exit while the others wait in the next all-reduce forever.
        A no-op for one process (the exception propagates as usual).
        """
        try:
            yield self
        except SystemExit as exc:
            if self.size > 1 and exc.code not in (None, 0):
                self.abort(f"SystemExit: {exc.code}", code=exc.code if isinstance(exc.code, int) else 1)
            raise
        except BaseException as exc:
            if self.size > 1:
                traceback.print_exc()
                self.abort(f"{type(exc).__name__}: {exc}")
            raise

    def close(self) -> None:
        """Release what the communicator holds (NCCL); MPI itself is finalised by mpi4py at exit."""

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"


class SingleProcess(Communicator):
    """The communicator of a job of one process: every operation leaves its input as it is."""

    name = "single"

    def allreduce_sum_(self, buf):
        return buf

    def allreduce_scalar(self, value, op: str = "sum"):
        _check_op(op)
        return value

    def bcast(self, obj, root: int = 0):
        _check_root(root, 1)
        return obj

    def bcast_array_(self, buf, root: int = 0):
        _check_root(root, 1)
        return buf

    def barrier(self) -> None:
        pass

    def idle_barrier(self, poll_s: float = 0.005) -> None:
        pass

    def abort(self, message: str, code: int = 1):
        sys.stderr.write(f"minissd: rank 0 of 1 failed: {message}\n")
        sys.stderr.flush()
        raise SystemExit(code or 1)


def _check_root(root, size: int) -> int:
    if int(root) != root or not 0 <= root < size:
        raise ValueError(f"root: expected a rank in [0, {size}), got {root!r}")
    return int(root)


def _import_mpi():
    """``mpi4py.MPI``, or DistributedError with the install command."""
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise DistributedError(f"mpi4py is not installed ({err}); {MPI_INSTALL_HINT}") from err
    except RuntimeError as err:  # mpi4py's wheel found no MPI library to load
        raise DistributedError(f"mpi4py finds no MPI library ({err}); {MPI_INSTALL_HINT}") from err
    return MPI


class MPIComm(Communicator):
    """mpi4py over COMM_WORLD; buffers are NumPy arrays.

    Parameters
    ----------
    comm : an ``mpi4py.MPI.Comm`` (default COMM_WORLD).
    install_excepthook : bool, make an uncaught exception on any rank abort the whole job (default True).
    """

    name = "mpi"

    def __init__(self, comm=None, install_excepthook: bool = True):
        MPI = _import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        # Processes that share memory are the ones on this machine: their order gives the local rank.
        self.node_comm = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = self.node_comm.Get_rank()
        self.local_size = self.node_comm.Get_size()
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        if install_excepthook and self.size > 1:
            self._previous_hook = sys.excepthook
            sys.excepthook = self._excepthook

    def _excepthook(self, exc_type, exc, tb):
        traceback.print_exception(exc_type, exc, tb)
        self.abort(f"{exc_type.__name__}: {exc}")

    def allreduce_sum_(self, buf):
        buf = _check_host_buffer(buf, "MPIComm.allreduce_sum_")
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def allreduce_scalar(self, value, op: str = "sum"):
        op = _check_op(op)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"allreduce_scalar: value must be an int or a float, got {value!r}")
        is_int = isinstance(value, (int, np.integer))
        buf = np.array([value], dtype=np.int64 if is_int else np.float64)
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self._ops[op])
        return int(buf[0]) if is_int else float(buf[0])

    def bcast(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=_check_root(root, self.size))

    def bcast_array_(self, buf, root: int = 0):
        buf = _check_host_buffer(buf, "MPIComm.bcast_array_")
        root = _check_root(root, self.size)
        if self.size > 1:
            self.comm.Bcast(buf, root=root)
        return buf

    def barrier(self) -> None:
        self.comm.Barrier()

    def idle_barrier(self, poll_s: float = 0.005) -> None:
        if self.size == 1:
            return
        request = self.comm.Ibarrier()
        while not request.Test():
            time.sleep(poll_s)

    def abort(self, message: str, code: int = 1):
        sys.stderr.write(f"minissd: rank {self.rank} of {self.size} failed: {message}; aborting the job\n")
        sys.stderr.flush()
        sys.stdout.flush()
        code = int(code) if code else 1
        # MPI_Abort kills every process at once, the launcher's I/O forwarding included: give it a moment
        # to pass the lines above on, or the user may see an empty stderr (seen in CI with MPICH's hydra).
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)
        # MPI_Abort does not return; should a signal from the launcher interrupt it (two ranks aborting
        # at once), the process still must not go on as if nothing had happened.
        os._exit(code)


def _nccl_dtypes(nccl) -> dict:
    names = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
             "int32": "NCCL_INT32", "int64": "NCCL_INT64"}
    return {np.dtype(k): getattr(nccl, v) for k, v in names.items() if hasattr(nccl, v)}


class NCCLComm(Communicator):
    """NCCL for CuPy buffers, bootstrapped and backed by a host communicator (normally `MPIComm`).

    Device buffers (``cupy.ndarray``) go through NCCL on the current stream; NumPy buffers, scalars and
    objects go through the host communicator, so the loss can all-reduce its few host numbers with the
    same object. The constructor selects GPU ``local_rank % device_count`` and makes it current, so call
    it before any CuPy array is created.

    Parameters
    ----------
    host : Communicator, the MPI communicator (rank, size, local rank, bcast, abort).
    cupy : the CuPy module (default: `minissd.backend`'s); tests pass a stand-in.
    nccl : the ``cupy.cuda.nccl`` module (default: imported from ``cupy``).
    """

    name = "nccl"

    def __init__(self, host: Communicator, cupy=None, nccl=None):
        cp = backend.cupy_module() if cupy is None else cupy
        if cp is None:
            raise DistributedError("NCCLComm needs CuPy, which does not import here: "
                                   f"{backend.gpu_unavailable_reason()}; install the cuda12 or cuda13 "
                                   "extra, or train with --device cpu (MPI)")
        if nccl is None:
            try:
                nccl = importlib.import_module("cupy.cuda.nccl")
            except ImportError as err:
                raise DistributedError(f"NCCLComm: cupy.cuda.nccl does not import ({err})") from err
            if not getattr(nccl, "available", True):
                raise DistributedError("NCCLComm: CuPy finds no NCCL library; pip install "
                                       "nvidia-nccl-cu12 (or -cu13), or train with --device cpu (MPI)")
        self.host, self.cp, self.nccl = host, cp, nccl
        self.rank, self.size = host.rank, host.size
        self.local_rank, self.local_size = host.local_rank, host.local_size
        n_gpus = cp.cuda.runtime.getDeviceCount()
        if n_gpus < 1:
            raise DistributedError("NCCLComm: no CUDA device is visible")
        if host.local_size > n_gpus:
            # Two ranks on one GPU: NCCL refuses the duplicate device, so say it before it does.
            raise DistributedError(f"NCCLComm: {host.local_size} processes on this machine but only "
                                   f"{n_gpus} GPU(s) visible; start at most one process per GPU")
        self.device_id = self.local_rank % n_gpus
        cp.cuda.Device(self.device_id).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = host.bcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._dtypes = _nccl_dtypes(nccl)

    def _is_device(self, buf) -> bool:
        return isinstance(buf, self.cp.ndarray)

    def _device_args(self, buf, who: str):
        if not buf.flags.c_contiguous:
            raise ValueError(f"{who}: buffer must be C-contiguous, got strides {buf.strides}")
        nccl_dtype = self._dtypes.get(np.dtype(buf.dtype))
        if nccl_dtype is None:
            raise ValueError(f"{who}: dtype {buf.dtype} is not one of "
                             f"{', '.join(str(d) for d in self._dtypes)}")
        return buf.data.ptr, buf.size, nccl_dtype, self.cp.cuda.get_current_stream().ptr

    def allreduce_sum_(self, buf):
        if not self._is_device(buf):
            return self.host.allreduce_sum_(buf)
        ptr, count, dtype, stream = self._device_args(buf, "NCCLComm.allreduce_sum_")
        if self.size > 1:
            self.comm.allReduce(ptr, ptr, count, dtype, self.nccl.NCCL_SUM, stream)
        return buf

    def allreduce_scalar(self, value, op: str = "sum"):
        return self.host.allreduce_scalar(value, op)

    def bcast(self, obj, root: int = 0):
        return self.host.bcast(obj, root)

    def bcast_array_(self, buf, root: int = 0):
        if not self._is_device(buf):
            return self.host.bcast_array_(buf, root)
        root = _check_root(root, self.size)
        ptr, count, dtype, stream = self._device_args(buf, "NCCLComm.bcast_array_")
        if self.size > 1:
            self.comm.bcast(ptr, count, dtype, root, stream)
        return buf

    def barrier(self) -> None:
        self.cp.cuda.get_current_stream().synchronize()
        self.host.barrier()

    def idle_barrier(self, poll_s: float = 0.005) -> None:
        self.cp.cuda.get_current_stream().synchronize()
        self.host.idle_barrier(poll_s)

    def abort(self, message: str, code: int = 1):
        with contextlib.suppress(Exception):
            self.comm.abort()
        self.host.abort(message, code)

    def close(self) -> None:
        comm, self.comm = self.comm, None
        if comm is not None:
            comm.destroy()


def get_communicator(device: str = "cpu", environ=None) -> Communicator:
    """The communicator for this process: MPI/NCCL under mpiexec, `SingleProcess` otherwise.

    Parameters
    ----------
    device : "cpu" (MPI over NumPy buffers) or "cuda" (NCCL over CuPy buffers, one GPU per local rank).
    environ : mapping read for the launcher variables (default ``os.environ``).

    Raises DistributedError, with the install command, when launched by mpiexec but mpi4py is missing,
    and when ``device="cuda"`` under mpiexec but CuPy or NCCL cannot be used.
    """
    if device not in backend.DEVICES:
        raise ValueError(f"device: expected one of {', '.join(backend.DEVICES)}, got {device!r}")
    environ = os.environ if environ is None else environ
    marker = launched_by_mpi(environ)
    if marker is None:
        return SingleProcess()
    try:
        host = MPIComm()
    except DistributedError as err:
        raise DistributedError(f"launched by mpiexec ({_launcher_size(environ)}) but {err}") from None
    if device == "cuda":
        try:
            return NCCLComm(host)
        except Exception as err:
            # One rank's failure here must end the job, not leave the others in the id broadcast.
            host.abort(f"{type(err).__name__}: {err}")
            raise
    return host


def find_mpiexec() -> str | None:
    """The ``mpiexec`` of this Python's MPI: beside ``sys.executable`` (where the mpich wheel puts it,
    so it matches the library mpi4py loads), else the first on PATH, else None."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    return shutil.which("mpiexec")


# -- model helpers ---------------------------------------------------------------------------------
def _layout(model, which: int):
    """[(name, array)] of the params (which=1) or grads (which=2), and a signature of their layout."""
    entries = [(t[0], t[which]) for t in model.named_parameters()]
    if not entries:
        raise ValueError("model: has no parameters")
    signature = tuple((name, a.shape, str(a.dtype), backend.device_of(a)) for name, a in entries)
    dtypes = {str(a.dtype) for _, a in entries}
    devices = {backend.device_of(a) for _, a in entries}
    if len(dtypes) > 1 or len(devices) > 1:
        odd = next(name for name, a in entries
                   if (str(a.dtype), backend.device_of(a)) != (signature[0][2], signature[0][3]))
        raise ValueError(f"model: every parameter must share one dtype and device to be packed into one "
                         f"buffer; {entries[0][0]} is {signature[0][2]} on {signature[0][3]}, {odd} is not")
    return entries, signature


class GradientBucket:
    """All of a model's gradients in one flat buffer, so a step costs one all-reduce.

    ``allreduce_()`` copies every ``grad`` into the buffer (allocated once, rebuilt only if the model's
    parameters change name, shape, dtype or device, e.g. after ``model.to("cuda")``), all-reduces it,
    optionally divides by the number of ranks, and copies the result back into the grads, in place.

    Parameters
    ----------
    model : yields ``(name, param, grad)`` from ``named_parameters()`` (minissd.nn.module.Module).
    comm : Communicator.
    average : bool, required. True: grads become the mean over the ranks (torch DDP, Horovod), right when
        each rank's loss is normalised by its own share. False: grads become the sum, right when each
        rank's loss is already divided by the whole global batch's normaliser (the MultiBox loss divided
        by the all-reduced number of positives N): then the sum over ranks is exactly the gradient of the
        single-process loss, and averaging would shrink it K times.

    With one process ``allreduce_()`` touches nothing (no copy, no division), so a run without mpiexec
    computes exactly what it did before.
    """

    def __init__(self, model, comm: Communicator, *, average: bool):
        if not isinstance(average, bool):
            raise ValueError(f"average: expected True or False, got {average!r}")
        self.model, self.comm, self.average = model, comm, average
        self.buffer = None
        self._signature = None
        self._build()

    def _build(self):
        entries, signature = _layout(self.model, 2)
        xp = backend.get_array_module(entries[0][1])
        total = sum(int(g.size) for _, g in entries)
        self.buffer = xp.empty(total, dtype=entries[0][1].dtype)       # (total,)
        self._signature = signature
        return entries

    @property
    def nbytes(self) -> int:
        """Bytes sent per step by each rank (the size of the buffer)."""
        return int(self.buffer.nbytes)

    def pack(self, entries) -> None:
        offset = 0
        for _, g in entries:
            self.buffer[offset:offset + g.size] = g.reshape(-1)
            offset += g.size

    def unpack(self, entries) -> None:
        offset = 0
        for _, g in entries:
            g[...] = self.buffer[offset:offset + g.size].reshape(g.shape)
            offset += g.size

    def allreduce_(self) -> None:
        """Sum (``average=False``) or average (``average=True``) every grad over the ranks, in place."""
        if self.comm.size == 1:
            return
        entries, signature = _layout(self.model, 2)
        if signature != self._signature:
            entries = self._build()
        self.pack(entries)
        self.comm.allreduce_sum_(self.buffer)
        if self.average:
            self.buffer /= self.comm.size
        self.unpack(entries)


def broadcast_parameters(model, comm: Communicator, root: int = 0) -> None:
    """Overwrite every rank's parameters with rank ``root``'s, in place (one flat broadcast).

    Replicas built from the same seed already agree; this makes the start independent of that (a
    checkpoint read on rank 0 only, an initialiser that reads global state), as torch DDP does.
    """
    if comm.size == 1:
        return
    entries, _ = _layout(model, 1)
    xp = backend.get_array_module(entries[0][1])
    flat = xp.concatenate([p.reshape(-1) for _, p in entries])        # (total,)
    comm.bcast_array_(flat, root=root)
    offset = 0
    for _, p in entries:
        p[...] = flat[offset:offset + p.size].reshape(p.shape)
        offset += p.size


def parameters_digest(model) -> int:
    """A CRC-32 of every parameter's bytes in ``named_parameters`` order (equal replicas, equal digests)."""
    crc = 0
    for name, p, _ in model.named_parameters():
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(backend.to_cpu(p)).tobytes(), crc)
    return crc


def replicas_agree(model, comm: Communicator) -> bool:
    """True when every rank holds bit-identical parameters (a collective: every rank must call it)."""
    digest = parameters_digest(model)
    return comm.allreduce_scalar(digest, "max") == comm.allreduce_scalar(digest, "min")
