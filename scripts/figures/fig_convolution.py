"""Figure for docs/04-layers.md: im2col, and what dilation does to a 3x3 kernel.

Left: a 1-channel 5x5 input whose pixels are numbered, with the 3x3 window (padding 1) of output
pixel (1, 2) outlined. Middle: the column matrix im2col makes of it, (C*KH*KW, OH*OW) = (9, 25); the
outlined column is that window, read row by row, zeros where it hangs over the border. One GEMM with
the (F, 9) filter matrix then gives every output pixel at once. Right: the input pixels one output of a
3x3 kernel reads at dilation 1 and at dilation 6 (fc6 of SSD's VGG16): same 9 weights, a 13x13 field.

    python scripts/make_figures.py --only convolution
"""
import os

os.environ.setdefault("MPLBACKEND", "Agg")


def main(outdir):
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from minissd.nn import im2col

    x = np.arange(1, 26, dtype=np.float64).reshape(1, 1, 5, 5)
    col = im2col(x, 3, stride=1, padding=1)[0]              # (9, 25)
    oh, ow = 1, 2
    j = oh * 5 + ow

    fig = Figure(figsize=(12.5, 4.2))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(1, 3, width_ratios=[1, 2.2, 1.25])

    ax = fig.add_subplot(gs[0])
    ax.imshow(x[0, 0], cmap="Blues", vmin=-5, vmax=30)
    for i in range(5):
        for k in range(5):
            ax.text(k, i, f"{int(x[0, 0, i, k])}", ha="center", va="center", fontsize=9)
    ax.add_patch(Rectangle((ow - 1.5, oh - 1.5), 3, 3, fill=False, ec="#e41a1c", lw=2.5))
    ax.set_title(f"input x (1 x 5 x 5), window of output ({oh}, {ow})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])

    ax = fig.add_subplot(gs[1])
    ax.imshow(col, cmap="Blues", vmin=-5, vmax=30, aspect="auto")
    for r in range(9):
        for c in range(25):
            v = int(col[r, c])
            ax.text(c, r, str(v) if v else "·", ha="center", va="center", fontsize=6.5,
                    color="k" if v else "#999999")
    ax.add_patch(Rectangle((j - 0.5, -0.5), 1, 9, fill=False, ec="#e41a1c", lw=2.5))
    ax.set_title("im2col(x): column j = output pixel j, row = (c, kh, kw); y = W.reshape(F, 9) @ col",
                 fontsize=9)
    ax.set_xlabel("output pixel oh*OW + ow")
    ax.set_ylabel("kernel tap (c*KH + kh)*KW + kw")
    ax.set_xticks(range(0, 25, 4))
    ax.set_yticks(range(9))

    ax = fig.add_subplot(gs[2])
    size = 19
    grid = np.zeros((size, size))
    c = size // 2
    for d, val in ((6, 1.0), (1, 2.0)):
        for a in (-1, 0, 1):
            for b in (-1, 0, 1):
                grid[c + a * d, c + b * d] = max(grid[c + a * d, c + b * d], val)
    ax.imshow(grid, cmap="YlOrRd", vmin=0, vmax=2.2)
    ax.set_title("taps of one 3x3 output on a 19x19 map:\n"
                 "dark = dilation 1, light = dilation 6 (fc6)", fontsize=9)
    ax.add_patch(Rectangle((c - 6.5, c - 6.5), 13, 13, fill=False, ec="k", ls="--", lw=1))
    ax.set_xticks([])
    ax.set_yticks([])

    fig.tight_layout()
    path = os.path.join(outdir, "convolution_im2col.png")
    fig.savefig(path, dpi=110)
    return [path]


if __name__ == "__main__":
    import sys

    print(main(sys.argv[1] if len(sys.argv) > 1 else "docs/figures"))
