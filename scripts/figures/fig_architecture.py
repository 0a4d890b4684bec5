"""Figures for docs/00-ssd-end-to-end.md.

architecture.png: SSD300 and the small model side by side, drawn from their configs.

One row per layer of the feature path (`minissd.model.describe`): its name, its output tensor
(H x W x C), and a bar as wide as the map is tall, so the pyramid shows. The source maps (the
layers whose outputs feed the 3x3 heads) are red, with what their heads emit: k default boxes per
cell, 4 offsets and M class scores each. The totals at the bottom are the network's two outputs.

end_to_end_trace.png: `minissd.explain.draw` of the page's running example (shapes test image 4
through the small model built with seed 0, untrained), the picture the page's code makes.

    python scripts/make_figures.py --only architecture
"""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

PANELS = (("ssd300", 21, "PASCAL VOC: 20 classes + background"), ("small", 5, "shapes: 4 classes + background"))
COLOURS = {"conv": "#9ecae1", "pool": "#d9d9d9", "extras": "#a1d99b", "source": "#e41a1c"}


def _rows(name, num_classes):
    from minissd.model import describe, get_config

    cfg = get_config(name)
    kinds = {spec["name"]: spec["type"] for part in ("trunk", "extras") for spec in cfg[part]}
    layers = [r for r in describe(cfg) if r["part"] in ("trunk", "extras")]
    heads = {r["name"]: r for r in describe(cfg, num_classes=num_classes) if r["part"] in ("loc", "conf")}
    return cfg, kinds, layers, heads


def _panel(ax, name, num_classes, note, n_rows):
    cfg, kinds, layers, heads = _rows(name, num_classes)
    size = cfg["image_size"]
    sources = dict(zip(cfg["sources"], cfg["boxes_per_location"], strict=True))
    n = len(layers) + 1
    ax.set_xlim(0, 1)
    ax.set_ylim(n_rows + 2.2, -1.6)   # one row height in both panels
    ax.set_axis_off()

    def bar(y, frac, colour):
        w = max(0.26 * frac, 0.004)
        ax.add_patch(_rect(0.47 - w / 2, y - 0.36, w, 0.72, colour))

    ax.text(0.0, 0, "input", fontsize=7, va="center")
    ax.text(0.14, 0, f"{size}x{size}x{cfg['in_channels']}", fontsize=7, va="center", family="monospace")
    bar(0, 1.0, "#fdd0a2")
    total = 0
    for i, r in enumerate(layers, 1):
        is_source = r["name"] in sources
        kind = kinds[r["name"]]
        colour = COLOURS["source"] if is_source else COLOURS["pool" if kind == "pool" else
                                                             ("extras" if r["part"] == "extras" else "conv")]
        ax.text(0.0, i, r["name"], fontsize=7, va="center", weight="bold" if is_source else "normal")
        ax.text(0.14, i, f"{r['size']}x{r['size']}x{r['channels']}", fontsize=7, va="center", family="monospace")
        bar(i, r["size"] / size, colour)
        if is_source:
            k = sources[r["name"]]
            boxes = r["size"] * r["size"] * k
            total += boxes
            extra = " (L2Norm first)" if r["name"] in cfg["l2norm"] else ""
            ax.annotate("", xy=(0.62, i), xytext=(0.47 + 0.13 * r["size"] / size + 0.01, i),
                        arrowprops={"arrowstyle": "->", "color": COLOURS["source"], "lw": 1})
            ax.text(0.63, i, f"{r['size']}x{r['size']} x {k} boxes = {boxes}{extra}\n"
                             f"heads 3x3: loc {heads['loc.' + r['name']]['channels']} ch, "
                             f"conf {heads['conf.' + r['name']]['channels']} ch",
                    fontsize=6.2, va="center", color="#a50f15")
    ax.text(0.0, n + 0.8, f"{total} default boxes -> loc (N, {total}, 4), conf (N, {total}, {num_classes})",
            fontsize=8, weight="bold")
    ax.text(0.0, n + 1.7, f"M = {num_classes} ({note})", fontsize=7, color="#555555")
    ax.set_title(f"{name}: {size}x{size} input, {len(sources)} source maps", fontsize=10)
    return total


def _rect(x, y, w, h, colour):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor=colour, edgecolor="#555555", linewidth=0.5)


def main(outdir):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    _, _, big, _ = _rows("ssd300", 21)
    fig = Figure(figsize=(14, 0.3 * (len(big) + 6)))
    FigureCanvasAgg(fig)
    for k, (name, m, note) in enumerate(PANELS):
        ax = fig.add_axes((0.01 + 0.5 * k, 0.02, 0.48, 0.93))
        _panel(ax, name, m, note, len(big) + 1)
    fig.legend(handles=[Patch(facecolor=c, edgecolor="#555555", label=lab) for c, lab in (
        (COLOURS["conv"], "trunk conv (+ReLU)"), (COLOURS["pool"], "max-pool"),
        (COLOURS["extras"], "extra conv (+ReLU)"), (COLOURS["source"], "source map -> heads"))],
        loc="upper center", ncol=4, fontsize=8, frameon=False)
    path = os.path.join(outdir, "architecture.png")
    fig.savefig(path, dpi=110)
    return [path, trace_figure(outdir)]


def trace_figure(outdir):
    import numpy as np

    from minissd.data import ShapesDataset
    from minissd.explain import draw, trace
    from minissd.model import build_model

    sample = ShapesDataset("test").get(4)
    model = build_model("small", num_classes=5, rng=np.random.default_rng(0))
    t = trace(model, sample.image, sample.boxes, sample.labels, class_names=ShapesDataset.class_names)
    return draw(t, os.path.join(outdir, "end_to_end_trace.png"),
                title="shapes test image 4 through the small model, untrained (seed 0)", dpi=80)


if __name__ == "__main__":
    print(main(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "figures")))
