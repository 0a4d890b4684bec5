"""Render every figure of docs/: runs main(outdir) of each scripts/figures/fig_*.py.

    python scripts/make_figures.py [--out docs/figures] [--only NAME]
"""
import argparse
import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "figures"), help="output directory")
    parser.add_argument("--only", default=None, help="run only scripts/figures/fig_ONLY.py")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
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
        for path in module.main(args.out) or []:
            print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
