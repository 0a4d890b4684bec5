"""Render every figure of docs/: runs main(outdir) of each scripts/figures/fig_*.py.

    python scripts/make_figures.py [--out docs/figures] [--only NAME] [--run RUN_DIR]

The figures of a trained model (scripts whose main takes ``run``: mined negatives, NMS, PR curves,
the detection gallery) draw the best.npz of --run RUN_DIR, a run directory of python -m minissd.train.
Without --run they train the small model once into build/figure_run/ (a short fixed-seed run, a few
minutes on 2 cores) and reuse it afterwards.
"""
import argparse
import importlib.util
import inspect
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "figures"), help="output directory")
    parser.add_argument("--only", default=None, help="run only scripts/figures/fig_ONLY.py")
    parser.add_argument("--run", default=None, metavar="RUN_DIR",
                        help="the run directory (python -m minissd.train) whose best.npz the trained-model figures "
                             "draw (default: train the small model once into build/figure_run/ and reuse it)")
    args = parser.parse_args(argv)
    if args.run is not None and not os.path.isfile(os.path.join(args.run, "best.npz")):
        print(f"--run {args.run}: not a finished run directory (no best.npz in it)", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    if str(HERE / "figures") not in sys.path:
        sys.path.insert(0, str(HERE / "figures"))   # the scripts share figures/_trained.py
    scripts = sorted((HERE / "figures").glob("fig_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem == f"fig_{args.only}"]
        if not scripts:
            print(f"no scripts/figures/fig_{args.only}.py", file=sys.stderr)
            return 2
    for script in scripts:
        spec = importlib.util.spec_from_file_location(script.stem, script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        takes_run = "run" in inspect.signature(module.main).parameters
        written = module.main(args.out, run=args.run) if takes_run else module.main(args.out)
        for path in written or []:
            print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
