"""Figure for docs/08-training.md: loss parts, learning rate and validation/test mAP of the default run.

Drawn from the metrics log of the default run (``python -m minissd.train``), committed as
benchmarks/train_default_metrics.jsonl so the figure can be remade without retraining. Point
MINISSD_RUN at a run directory to draw that run instead.

The drawing is `minissd.viz.plot_curves`, the same as every run directory's curves.png (the test
point drawn apart from the last validation point there).

    python scripts/make_figures.py --only training
"""
import json
import os

os.environ.setdefault("MPLBACKEND", "Agg")


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_LOG = os.path.join(ROOT, "benchmarks", "train_default_metrics.jsonl")
TITLE = "python -m minissd.train (small model, shapes, 2 CPU cores)"


def draw(records, path, title=TITLE):
    from minissd import viz

    return viz.plot_curves(records, path, title=title)


def main(outdir):
    run = os.environ.get("MINISSD_RUN")
    log = os.path.join(run, "metrics.jsonl") if run else DEFAULT_LOG
    if not os.path.exists(log):
        print(f"fig_training: {log} not found; run python -m minissd.train first")
        return []
    with open(log, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [draw(records, os.path.join(outdir, "training_curves.png"))]


if __name__ == "__main__":
    print(main(os.path.join(ROOT, "docs", "figures")))
