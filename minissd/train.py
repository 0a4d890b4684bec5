"""python -m minissd.train: placeholder until the training command lands (issue 7)."""
import sys


def main(argv=None) -> int:
    print("minissd.train is not built yet: the training command lands with issue 7.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
