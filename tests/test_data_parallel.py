"""Data-parallel training: shards, the global normaliser N, and `mpiexec -n 2 python -m minissd.train`.

In-process tests run two "ranks" as two threads joined by `ThreadComm` (a real all-reduce through a
barrier), so the loss's global N and the gradient sum are checked without MPI. The mpiexec tests run
the training command for real (a few seconds each) with a timeout, and skip, saying so, only when
mpi4py is missing (the `test` extra installs mpi4py and the MPICH wheel).

Tolerance of "the same weights": with K processes each rank computes dW over its shard and the
all-reduce adds the K partial sums; one process computes dW over the whole batch in one GEMM. The
float32 sums differ in order only. Measured (3 steps, lr 0.01, global batch 4, small model): the
largest difference of any weight is 1.8e-6, at most 7.8e-6 of how far training moved that array from
its initial value. The test asks, for every array of the checkpoint (weights and momentum), max |diff|
<= 1e-4 x max |change made by training| (init = the seeded model; momentum starts at 0), 13x that
measurement; a wrong normaliser or an averaged instead of summed gradient moves the weights by a
sizeable fraction of the change itself (tested below in-process).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from conftest import run_mpi_job
from minissd import distributed as dist
from minissd.checkpoint import load_checkpoint
from minissd.data import DataLoader, ShapesDataset, TrainTransform
from minissd.loss import MultiBoxLoss, NonFiniteError
from minissd.training.recipe import build_model_for

try:
    import mpi4py  # noqa: F401  (the package only: importing mpi4py.MPI would start MPI inside pytest)

    MPI4PY_REASON = None
except ImportError as err:
    MPI4PY_REASON = f"mpi4py is not installed ({err}): pip install -e '.[test]' installs it and MPICH"

needs_mpi = pytest.mark.skipif(MPI4PY_REASON is not None, reason=str(MPI4PY_REASON))
TIMEOUT_S = 180   # a healthy 3-iteration job takes ~7 s on the loaded 2-core machine
TOLERANCE = 1e-4  # of the change training made to each array (see the module docstring)


# -- two ranks as two threads ------------------------------------------------------------------------
class ThreadComm(dist.Communicator):
    """Rank ``rank`` of ``size`` threads sharing ``board``: a real all-reduce (sum) through a barrier."""

    def __init__(self, rank, size, board):
        self.rank, self.size, self.board = rank, size, board

    def allreduce_sum_(self, buf):
        b = self.board
        b["barrier"].wait()
        b["slots"][self.rank] = buf.copy()
        b["barrier"].wait()
        buf[...] = sum(b["slots"][r] for r in range(self.size))   # rank order: deterministic
        b["barrier"].wait()
        return buf


def run_ranks(size, fn):
    """Run ``fn(comm)`` on ``size`` threads; returns the results by rank (re-raises the first error)."""
    board = {"barrier": threading.Barrier(size, timeout=30), "slots": {}}
    results, errors = [None] * size, [None] * size

    def target(rank):
        try:
            results[rank] = fn(ThreadComm(rank, size, board))
        except BaseException as exc:  # noqa: BLE001  (handed to the main thread)
            errors[rank] = exc
            board["barrier"].abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


# -- the loader's shards -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset("train", size=64, seed=3, count=24)


def _loader(ds, rank=0, world_size=1, batch_size=8, **kw):
    transform = TrainTransform(64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))   # random crops too
    return DataLoader(ds, batch_size, transform, shuffle=True, seed=7, num_workers=0, rank=rank,
                      world_size=world_size, **kw)


@pytest.mark.parametrize("world_size", [2, 4])
def test_shards_are_disjoint_and_their_union_is_the_one_process_batch(shapes, world_size):
    gens = [_loader(shapes, r, world_size).batches() for r in range(world_size)]
    one = _loader(shapes).batches()
    for _ in range(5):      # crosses an epoch boundary (3 batches per epoch)
        ref = next(one)
        parts = [next(g) for g in gens]
        ids = [i for p in parts for i in p.ids]
        assert ids == ref.ids                              # in rank order, nothing lost or repeated
        assert all(len(p.ids) == 8 // world_size for p in parts)
        # augmentation depends on (seed, epoch, index), not on the rank that draws the image
        np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), ref.images)


def test_shard_positions_resume_like_the_whole_batch(shapes):
    a = _loader(shapes, 1, 2)
    stream = a.batches()
    for _ in range(4):
        next(stream)
    b = _loader(shapes, 1, 2)
    b.load_state_dict(a.state_dict())
    assert next(b.batches()).ids == next(stream).ids


def test_loader_rejects_a_batch_that_does_not_split(shapes):
    with pytest.raises(ValueError, match="batch_size 6 is not a multiple of world_size 4"):
        _loader(shapes, 0, 4, batch_size=6)
    with pytest.raises(ValueError, match="rank"):
        _loader(shapes, 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        _loader(shapes, 0, 0)
    with pytest.raises(ValueError, match="drop_last"):
        _loader(shapes, 0, 2, drop_last=False)


# -- the loss: the global N ----------------------------------------------------------------------------
def _loss_inputs(rng, n=4, p=60, m=4, positives=(9, 1, 0, 5)):
    loc = rng.standard_normal((n, p, 4))
    conf = rng.standard_normal((n, p, m)) * 2
    loc_t = rng.standard_normal((n, p, 4))
    labels = np.zeros((n, p), np.int64)
    for i, k in enumerate(positives):
        labels[i, rng.choice(p, k, replace=False)] = rng.integers(1, m, k)
    return loc, conf, loc_t, labels


def _shard_losses(inputs, size, comm_for=lambda comm: comm):
    per = inputs[0].shape[0] // size

    def fn(comm):
        sl = slice(comm.rank * per, (comm.rank + 1) * per)
        loss = MultiBoxLoss(comm=comm_for(comm))
        parts = loss.forward(*(a[sl] for a in inputs))
        return parts, loss.backward()

    results, errors = run_ranks(size, fn)
    for e in errors:
        if e is not None:
            raise e
    return results


@pytest.mark.parametrize("size", [2, 4])
def test_shard_gradients_sum_to_the_whole_batch_gradient(rng, size):
    # Shards with 10 and 5 positives (size 2), or 9, 1, 0, 5 (size 4): unequal on purpose.
    inputs = _loss_inputs(rng)
    whole = MultiBoxLoss()
    ref = whole.forward(*inputs)
    d_loc, d_conf = whole.backward()
    results = _shard_losses(inputs, size)
    for parts, _ in results:      # every rank reports the global batch's loss and N
        assert parts.num_pos == ref.num_pos == 15
        np.testing.assert_allclose([parts.total, parts.conf, parts.loc], [ref.total, ref.conf, ref.loc],
                                   rtol=1e-13)
    # each rank's gradient is d(its terms)/N_global: stacked, the shards are the one-process gradient
    np.testing.assert_allclose(np.concatenate([g[0] for _, g in results]), d_loc, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(np.concatenate([g[1] for _, g in results]), d_conf, rtol=1e-13, atol=1e-16)


def test_a_per_rank_normaliser_would_be_wrong(rng):
    # The same shards, each normalised by its own N: ranks with few positives are over-weighted
    # (the shard with 1 positive divides by 1), and the average of the shard losses is not the loss.
    inputs = _loss_inputs(rng)
    ref = MultiBoxLoss().forward(*inputs)
    results = _shard_losses(inputs, 4, comm_for=lambda comm: None)
    mean_of_ratios = np.mean([parts.total for parts, _ in results])
    assert abs(mean_of_ratios - ref.total) > 0.05 * ref.total


def test_a_nan_on_one_rank_raises_on_every_rank(rng):
    inputs = list(_loss_inputs(rng))
    inputs[1] = inputs[1].copy()
    inputs[1][3, 7, 2] = np.nan              # in rank 1's shard only

    def fn(comm):
        sl = slice(2 * comm.rank, 2 * comm.rank + 2)
        with pytest.raises(NonFiniteError, match="1 of 2 ranks"):
            MultiBoxLoss(comm=comm).forward(*(a[sl] for a in inputs))
        return True

    results, errors = run_ranks(2, fn)
    assert errors == [None, None] and results == [True, True]


def test_loss_with_one_process_comm_is_the_plain_loss(rng):
    inputs = _loss_inputs(rng)
    a, b = MultiBoxLoss(), MultiBoxLoss(comm=dist.SingleProcess())
    assert a.forward(*inputs) == b.forward(*inputs)
    for x, y in zip(a.backward(), b.backward(), strict=True):
        np.testing.assert_array_equal(x, y)


# -- mpiexec -n 2 python -m minissd.train -------------------------------------------------------------
TINY = ["--iterations", "3", "--batch-size", "4", "--train-limit", "16", "--val-dataset", "none",
        "--test-dataset", "none", "--eval-every", "0", "--max-minutes", "0", "--progress", "none",
        "--num-workers", "0", "--warmup", "1", "--lr", "0.01", "--log-every", "1"]

FAIL_ON_RANK_1 = textwrap.dedent('''
    import sys
    from minissd import train
    from minissd.training import trainer
    real_step = trainer.train_step
    calls = []

    def step(*args, **kw):
        calls.append(1)
        if len(calls) == 2 and trainer_rank() == 1:
            raise RuntimeError("deliberate failure in step 2")
        return real_step(*args, **kw)

    def trainer_rank():
        from mpi4py import MPI
        return MPI.COMM_WORLD.Get_rank()

    trainer.train_step = step
    sys.exit(train.main(sys.argv[1:]))
''')


def _env():
    env = {k: v for k, v in os.environ.items() if k not in dist.LAUNCHER_MARKER_VARS}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_job(args, n=2, script=None, timeout=TIMEOUT_S):
    """``mpiexec -n n python -m minissd.train ARGS`` (or a script); (returncode, stdout, stderr).

    A job still running at ``timeout`` is killed with its process group, and the test fails.
    """
    mpiexec = dist.find_mpiexec()
    if mpiexec is None:
        pytest.fail("mpi4py is installed but no mpiexec was found beside python or on PATH "
                    "(pip install mpich provides one)")
    target = [str(script)] if script else ["-m", "minissd.train"]
    cmd = [mpiexec, "-n", str(n), sys.executable, *target, *args]
    return run_mpi_job(cmd, _env(), timeout)


def _one_process(out):
    proc = subprocess.run([sys.executable, "-m", "minissd.train", *TINY, "--out", str(out)], env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stderr
    return str(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process run and the two-process run of the same 3 steps (global batch 4, seed 0)."""
    if MPI4PY_REASON is not None:
        pytest.skip(MPI4PY_REASON)
    tmp = tmp_path_factory.mktemp("dp")
    one = _one_process(tmp / "one")
    rc, out, err = run_job([*TINY, "--out", str(tmp / "two")])
    assert rc == 0, f"mpiexec -n 2 exited {rc}\nstdout:\n{out}\nstderr:\n{err}"
    return {"one": one, "two": str(tmp / "two"), "stdout": out, "tmp": tmp}


def _assert_same_training(ref_dir, got_dir):
    ref, meta = load_checkpoint(os.path.join(ref_dir, "last.npz"))
    got, _ = load_checkpoint(os.path.join(got_dir, "last.npz"))
    assert sorted(ref) == sorted(got)
    init = build_model_for(meta["train_config"], len(meta["class_names"]), meta["train_config"]["seed"])
    init = init.state_dict()
    worst = 0.0
    for k in ref:
        if ref[k].dtype.kind != "f":
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
            continue
        start = init[k] if k in init else np.zeros_like(ref[k])    # momentum buffers start at 0
        moved = np.abs(ref[k].astype(np.float64) - start).max()
        diff = np.abs(got[k].astype(np.float64) - ref[k]).max()
        assert diff <= TOLERANCE * moved, f"{k}: differs by {diff:.3g}, training moved it by {moved:.3g}"
        worst = max(worst, diff / moved if moved else 0.0)
    return worst


@needs_mpi
def test_two_processes_train_the_same_weights_as_one(runs):
    _assert_same_training(runs["one"], runs["two"])
    _, meta = load_checkpoint(os.path.join(runs["two"], "last.npz"))
    assert meta["world_size"] == 2 and meta["iteration"] == 3
    assert "data-parallel over 2 processes (2 images each, mpi)" in runs["stdout"]
    # rank 0 alone printed (one summary line), and the logged losses are the global batch's
    assert runs["stdout"].count("trained 3 iterations") == 1
    from minissd.training.runlog import read_jsonl
    a = read_jsonl(os.path.join(runs["one"], "metrics.jsonl"))
    b = read_jsonl(os.path.join(runs["two"], "metrics.jsonl"))
    assert [r["num_pos"] for r in a] == [r["num_pos"] for r in b]
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-6)


@needs_mpi
def test_resume_under_mpiexec_restores_every_rank(runs):
    # Stop after 2 of the 3 steps, resume under mpiexec: the same weights as the uninterrupted
    # two-process run, bit for bit (same shards, same reduction order). Were rank 1 not restored,
    # its half of step 3's gradient would come from the initial weights.
    out = str(runs["tmp"] / "two_resumed")
    rc, _, err = run_job([*TINY, "--out", out, "--stop-at", "2"])
    assert rc == 0, err
    rc, stdout, err = run_job(["--resume", out, "--progress", "none"])
    assert rc == 0, err
    assert "resuming" in stdout
    a, _ = load_checkpoint(os.path.join(runs["two"], "last.npz"))
    b, meta = load_checkpoint(os.path.join(out, "last.npz"))
    assert meta["iteration"] == 3
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@needs_mpi
def test_a_rank_that_raises_ends_the_job_naming_it(tmp_path):
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(FAIL_ON_RANK_1)
    start = time.monotonic()
    rc, out, err = run_job([*TINY, "--out", str(tmp_path / "run")], script=script)
    assert rc != 0
    assert "rank 1 of 2 failed: RuntimeError: deliberate failure in step 2" in err, err
    assert "trained 3 iterations" not in out
    assert time.monotonic() - start < TIMEOUT_S


@needs_mpi
def test_a_global_batch_that_does_not_split_is_a_one_line_error(tmp_path):
    args = [a if a != "4" else "5" for a in TINY]   # --batch-size 5 over 2 processes
    rc, _, err = run_job([*args, "--out", str(tmp_path / "run")])
    assert rc != 0
    assert "--batch-size 5 (the global batch) is not a multiple of the 2 processes" in err, err
    assert "Traceback" not in err


# -- an unreadable image met by one rank (issue 16) ---------------------------------------------------
VOC_XML = ("<annotation><filename>{id}.jpg</filename><size><width>40</width><height>30</height><depth>3</depth>"
           "</size><object><name>dog</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>5</ymin>"
           "<xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>")

REPORT_EXIT = textwrap.dedent('''
    import sys
    from minissd import train
    status = train.main(sys.argv[1:])
    from mpi4py import MPI
    print(f"rank {MPI.COMM_WORLD.Get_rank()} exit {status}", flush=True)
    sys.exit(status)
''')


def _voc_tree(root, n=8, bad=None):
    """A VOCdevkit/VOC2007 of ``n`` 40x30 JPEGs, one dog each; image ``bad`` (an index) cut in half."""
    from PIL import Image

    voc = os.path.join(root, "VOCdevkit", "VOC2007")
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    ids = [f"{i:06d}" for i in range(n)]
    rng = np.random.default_rng(0)
    for image_id in ids:
        with open(os.path.join(voc, "Annotations", image_id + ".xml"), "w") as f:
            f.write(VOC_XML.format(id=image_id))
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
            os.path.join(voc, "JPEGImages", image_id + ".jpg"))
    for split in ("trainval", "val"):
        with open(os.path.join(voc, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("".join(i + "\n" for i in ids))
    if bad is not None:
        path = os.path.join(voc, "JPEGImages", ids[bad] + ".jpg")
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
        return voc, path
    return voc, None


def _rank_1_image_of_step_2():
    """The dataset index of the first image rank 1 of 2 reads at step 2 (global batch 4, seed 0, 8 images)."""
    loader = DataLoader(list(range(8)), 4, None, seed=0, num_workers=0, rank=1, world_size=2)
    order = loader.order(0)                                       # epoch 0 visits each image once
    return int(loader.shard(order[4:8])[0])


def _assert_stopped_together(rc, out, err, path, iteration, run_dir):
    """Every rank exits 1, one error line names the file and the resume, last.npz is at ``iteration``."""
    assert rc == 1, f"exit {rc}\nstdout:\n{out}\nstderr:\n{err}"
    # mpiexec forwards the two ranks' stdout as it comes, so their lines may interleave mid-line
    assert sorted(re.findall(r"rank \d+ exit -?\d+", out)) == ["rank 0 exit 1", "rank 1 exit 1"], out
    assert "Traceback" not in err and "aborting" not in err, err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1, err
    line = errors[0]
    assert path in line and "--skip-unreadable" in line and f"--resume {run_dir}" in line, line
    assert f"after iteration {iteration}" in line, line
    _, meta = load_checkpoint(os.path.join(run_dir, "last.npz"))
    assert meta["iteration"] == iteration and meta["world_size"] == 2
    return line, meta


@needs_mpi
def test_an_unreadable_image_on_one_rank_stops_every_rank_and_resumes_with_skip(tmp_path):
    # Only rank 1 reads the truncated image, at step 2: both ranks stop after step 1, rank 0 saves the
    # state of step 1 (the batch of step 2 still to come), and the resume skips the image.
    bad = _rank_1_image_of_step_2()
    voc, path = _voc_tree(str(tmp_path), bad=bad)
    run_dir = str(tmp_path / "run")
    script = tmp_path / "report_exit.py"
    script.write_text(REPORT_EXIT)
    rc, out, err = run_job([*TINY, "--dataset", "voc:" + voc, "--out", run_dir], script=script)
    line, meta = _assert_stopped_together(rc, out, err, path, 1, run_dir)
    assert "rank 1 of 2" in line, line
    # the loader resumes at step 2's batch, which rank 0 had already drawn when the ranks agreed to stop
    assert (meta["loader"]["epoch"], meta["loader"]["position"]) == (0, 1)
    rc, out, err = run_job(["--resume", run_dir, "--skip-unreadable", "--progress", "none"])
    assert rc == 0, f"exit {rc}\nstdout:\n{out}\nstderr:\n{err}"
    assert f"unreadable image #1 skipped (using the next readable image in its place): {path}" in err, err
    _, meta = load_checkpoint(os.path.join(run_dir, "last.npz"))
    assert meta["iteration"] == 3


@needs_mpi
@pytest.mark.parametrize("when", ["periodic", "final"])
def test_an_unreadable_validation_image_stops_every_rank(tmp_path, when):
    # Rank 0 alone validates: its DataError must end the other rank too, not leave it waiting.
    train_voc, _ = _voc_tree(str(tmp_path / "train"))
    val_voc, path = _voc_tree(str(tmp_path / "val"), n=4, bad=2)
    run_dir = str(tmp_path / "run")
    script = tmp_path / "report_exit.py"
    script.write_text(REPORT_EXIT)
    options = dict(zip(TINY[::2], TINY[1::2], strict=True))
    options.update({"--dataset": "voc:" + train_voc, "--val-dataset": f"voc:{val_voc}:val", "--out": run_dir,
                    "--eval-every": "2" if when == "periodic" else "0"})
    args = [word for pair in options.items() for word in pair]
    rc, out, err = run_job(args, script=script)
    iteration = 2 if when == "periodic" else 3
    line, meta = _assert_stopped_together(rc, out, err, path, iteration, run_dir)
    assert "(rank 0 of 2)" in line, line
    if when == "periodic":
        assert meta["pending_eval"] == 2
    rc, out, err = run_job(["--resume", run_dir, "--skip-unreadable", "--progress", "none"])
    assert rc == 0, f"exit {rc}\nstdout:\n{out}\nstderr:\n{err}"
    _, meta = load_checkpoint(os.path.join(run_dir, "last.npz"))
    assert meta["iteration"] == 3


class RecordingSingleProcess(dist.SingleProcess):
    """One process that notes every collective it is asked for."""

    def __init__(self):
        self.calls = []

    def allreduce_sum_(self, buf):
        self.calls.append("allreduce_sum_")
        return super().allreduce_sum_(buf)

    def allreduce_scalar(self, value, op="sum"):
        self.calls.append("allreduce_scalar")
        return super().allreduce_scalar(value, op)

    def bcast(self, obj, root=0):
        self.calls.append("bcast")
        return super().bcast(obj, root)

    def idle_barrier(self, poll_s=0.005):
        self.calls.append("idle_barrier")


def test_one_process_agrees_on_nothing(tmp_path):
    # The data-parallel agreements (batch read on every rank, rank 0's evaluations) cost one process
    # nothing: a run with validation every step asks its communicator for no collective at all.
    from minissd import train
    from minissd.training import Trainer

    options = dict(zip(TINY[::2], TINY[1::2], strict=True))
    options.update({"--iterations": "2", "--val-dataset": "shapes:val", "--val-limit": "4", "--eval-every": "1"})
    config, _ = train.parse_config([word for pair in options.items() for word in pair])
    train.resolve_eval_specs(config)
    train.resolve_augment(config)
    config["device"] = "cpu"
    comm = RecordingSingleProcess()
    assert Trainer(config, str(tmp_path / "run"), profile=False, comm=comm).run() == 0
    assert comm.calls == []
    _, meta = load_checkpoint(str(tmp_path / "run" / "last.npz"))
    assert meta["iteration"] == 2
