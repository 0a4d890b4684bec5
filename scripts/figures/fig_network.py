"""Figure for docs/05-network.md: what each source map of SSD300 and of the small model can see.

For every source map: the theoretical receptive field of one head output (the source's field plus the
3x3 head), the distance between neighbouring cells (the map's stride in input pixels), and the range
of default-box sides on that map (from the smallest side of a ratio-2 box to the largest of its
boxes). The field grows much faster than the boxes: every map sees well beyond its largest box, and
from fc7 on the field exceeds the whole image (dashed line).

    python scripts/make_figures.py --only network
"""
import math
import os

os.environ.setdefault("MPLBACKEND", "Agg")


def _box_range(pc, k):
    s, s_next = pc.min_sizes[k], pc.max_sizes[k]
    sides = [s, math.sqrt(s * s_next)]
    for r in pc.aspect_ratios[k]:
        sides += [s * math.sqrt(r), s / math.sqrt(r)]
    return min(sides), max(sides)


def main(outdir):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from minissd.model import describe, get_config
    from minissd.priors import get_config as prior_config

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    for panel, name in enumerate(("ssd300", "small")):
        cfg = get_config(name)
        pc = prior_config(cfg["priors"])
        rows = {r["name"]: r for r in describe(cfg, num_classes=21)}
        ax = fig.add_subplot(1, 2, panel + 1)
        xs = range(len(cfg["sources"]))
        rf = [rows[f"loc.{s}"]["rf"] for s in cfg["sources"]]
        jump = [rows[s]["jump"] for s in cfg["sources"]]
        lo_hi = [_box_range(pc, k) for k in xs]
        ax.plot(xs, rf, "o-", color="#377eb8", label="receptive field of a head output")
        ax.plot(xs, jump, "s-", color="#4daf4a", label="cell stride of the network (input px)")
        for k, (lo, hi) in zip(xs, lo_hi, strict=True):
            ax.plot([k, k], [lo, hi], color="#e41a1c", lw=6, alpha=0.6, solid_capstyle="butt",
                    label="default-box sides" if k == 0 else None)
        ax.axhline(cfg["image_size"], color="k", ls="--", lw=1, label=f"input size ({cfg['image_size']} px)")
        ax.set_yscale("log")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{s}\n{rows[s]['size']}x{rows[s]['size']}" for s in cfg["sources"]], fontsize=8)
        ax.set_ylabel("pixels of the input")
        ax.set_title(f"{name}: {cfg['image_size']} px input")
        for k, r in zip(xs, rf, strict=True):
            ax.annotate(str(r), (k, r), textcoords="offset points", xytext=(4, 4), fontsize=7, color="#377eb8")
        ax.grid(True, which="both", alpha=0.2)
        if panel == 0:
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = os.path.join(outdir, "network_receptive_fields.png")
    fig.savefig(path, dpi=110)
    return [path]


if __name__ == "__main__":
    print(main(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "figures")))
