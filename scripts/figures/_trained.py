"""The trained small model that the figures of docs/ show: a given run, or one trained once and cached.

    from _trained import trained_model, run_label
    model, meta, run_dir = trained_model()            # trains build/figure_run/ the first time
    model, meta, run_dir = trained_model("runs/x")    # a run of `python -m minissd.train`

Without a run directory, the small model is trained once with ``python -m minissd.train`` (shapes,
``ITERATIONS`` iterations, seed 0, no time limit) into ``build/figure_run/``; later calls reuse it
when it is complete (``results.json`` written) and was made with the same settings, and resume it
when it was interrupted. The figure scripts call this through ``main(outdir, run=None)``;
``python scripts/make_figures.py --run RUN_DIR`` passes a run to all of them.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "figure_run"
# 400 iterations of batch 32 (the default run's recipe otherwise: lr 0.04, warmup 100, x0.1 at 85%):
# val mAP@0.5 0.877, test 0.878 (the default 1600 iterations reach about 0.91), so the failures a
# gallery needs are still there to be seen. About 5 CPU-minutes: 17 minutes of wall time with the two
# cores shared by a dozen other jobs, a few minutes on a quiet machine.
ITERATIONS = 400
SEED = 0
CHECKPOINT = "best.npz"

_loaded = {}   # (resolved checkpoint path, mtime) -> (model, meta): one load per make_figures run


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def train_command(out, iterations: int = ITERATIONS, seed: int = SEED) -> list:
    """The `minissd.train` command line that makes the cached figure run."""
    return [sys.executable, "-m", "minissd.train", "--out", str(out), "--iterations", str(int(iterations)),
            "--max-minutes", "0", "--seed", str(int(seed)), "--progress", "lines"]


def cache_state(run_dir, iterations: int = ITERATIONS, seed: int = SEED) -> str:
    """What ``run_dir`` holds for a figure run of these settings: "complete", "resumable", "other" (a
    run with other settings, or not a run), or "missing"."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "missing"
    config = _read_json(run_dir / "config.json")
    if (not isinstance(config, dict) or config.get("iterations") != int(iterations)
            or config.get("seed") != int(seed) or config.get("model") != "small"
            or config.get("dataset") != "shapes"):
        return "other"
    if (run_dir / "results.json").is_file() and (run_dir / CHECKPOINT).is_file():
        return "complete"
    if (run_dir / "last.npz").is_file():
        return "resumable"
    return "other"


def ensure_figure_run(out=CACHE, iterations: int = ITERATIONS, seed: int = SEED) -> Path:
    """Train (or finish) the cached figure run in ``out`` unless it is already complete; its path."""
    out = Path(out)
    state = cache_state(out, iterations, seed)
    if state == "complete":
        print(f"figures: reusing the trained small model in {out}", flush=True)
        return out
    if state == "resumable":
        cmd = [sys.executable, "-m", "minissd.train", "--resume", str(out), "--max-minutes", "0",
               "--progress", "lines"]
        print(f"figures: resuming the interrupted figure run in {out}", flush=True)
    else:
        if state == "other":
            print(f"figures: {out} holds a run with other settings; training a fresh one there", flush=True)
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = train_command(out, iterations, seed)
        print(f"figures: training the small model once ({iterations} iterations, seed {seed}) into {out}; "
              "later runs reuse it", flush=True)
    print("  $ " + " ".join(cmd[1:] if cmd[0] == sys.executable else cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"training the figure run failed (exit {done.returncode}): {' '.join(cmd)}")
    if cache_state(out, iterations, seed) != "complete":
        raise RuntimeError(f"training the figure run ended without {out / 'results.json'}")
    return out


def trained_model(run_dir=None, iterations: int = ITERATIONS, checkpoint: str = CHECKPOINT):
    """``(model, meta, run_dir)``: the model of ``run_dir/checkpoint`` (``best.npz``), in eval mode.

    ``run_dir`` None: the cached figure run (`ensure_figure_run`), trained on first use. ``meta`` is
    the checkpoint's metadata (``class_names``, ``iteration``, ``best_map``, ``train_config`` ...).
    Raises ValueError naming ``run_dir`` when it is not a run directory with that checkpoint.
    """
    from minissd.inference import load_inference_model

    if run_dir is None:
        run_dir = ensure_figure_run(CACHE, iterations)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {str(run_dir)!r} does not exist (a directory made by python -m minissd.train)")
    path = run_dir / checkpoint
    if not path.is_file():
        raise ValueError(f"run directory {str(run_dir)!r} has no {checkpoint} (is the run finished?)")
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _loaded:
        model, _, meta = load_inference_model(str(path))
        _loaded[key] = (model, meta)
    model, meta = _loaded[key]
    return model, meta, run_dir


_predictions = {}


def shapes_predictions(model, split: str = "test"):
    """`minissd.inference.predict` of ``model`` on the whole shapes ``split`` with its images (pixels,
    the paper's post-processing), computed once per model and split."""
    from minissd.data import ShapesDataset
    from minissd.inference import predict

    key = (id(model), split)
    if key not in _predictions:
        ds = ShapesDataset(split)
        print(f"figures: detecting the {len(ds)} shapes {split} images", flush=True)
        _predictions[key] = predict(model, ds, batch_size=50, keep_images=len(ds))
    return _predictions[key]


def save_png(fig, path, dpi=100, max_kb: int = 350) -> str:
    """``fig.savefig(path)``; a PNG over ``max_kb`` (photos with noisy backgrounds) is rewritten with
    an adaptive 256-colour palette, which keeps it readable at a third of the size."""
    from PIL import Image

    fig.savefig(path, dpi=dpi)
    if Path(path).stat().st_size > max_kb * 1024:
        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(path, optimize=True)
    return str(path)


def _shown_path(run_dir) -> str:
    p = Path(run_dir).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return p.name


def run_label(meta, run_dir, checkpoint: str = CHECKPOINT) -> str:
    """One line for a figure's title: which run, which checkpoint and iteration, its validation mAP."""
    cfg = meta.get("train_config") or {}
    it = meta.get("iteration")
    trained = (_read_json(Path(run_dir) / "results.json") or {}).get("iterations", cfg.get("iterations"))
    parts = [f"{cfg.get('model', 'small')} model, run {_shown_path(run_dir)}: {checkpoint} at iteration {it}"
             + (f" of {trained}" if trained and trained != it else "")]
    best = meta.get("best_map")
    if best is not None:
        parts.append(f"val mAP {best:.3f}")
    return ", ".join(parts)


def test_map(run_dir):
    """The run's test mAP@0.5 (11-point) from its results.json, or None."""
    results = _read_json(Path(run_dir) / "results.json") or {}
    test = results.get("test") or {}
    for key in ("map07", "map"):
        if isinstance(test.get(key), (int, float)):
            return float(test[key])
    return None


if __name__ == "__main__":
    model, meta, run = trained_model(sys.argv[1] if len(sys.argv) > 1 else None)
    print(run_label(meta, run), "| test mAP", test_map(run))
