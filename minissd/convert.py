"""python -m minissd.convert: PyTorch weights -> minissd files (the command; the library is minissd/pretrained.py).

    python -m minissd.convert ssd300_vgg16_coco-b556d3b4.pth ssd300_coco.npz    # a whole SSD300 model
    python -m minissd.detect --checkpoint ssd300_coco.npz photo.jpg

    python -m minissd.convert vgg16-397923af.pth vgg16_trunk.npz          # torchvision ImageNet vgg16
    python -m minissd.convert vgg16_reducedfc.pth vgg16_trunk.npz         # the reduced-fc VGG16 file

The kind of file is recognised from its keys (``--kind`` names it explicitly). What maps to what, the
fc6/fc7 decimation and the input conventions are described in minissd/pretrained.py, whose names are
re-exported here (``from minissd.convert import load_trunk`` keeps working).
"""
from __future__ import annotations

import argparse
import sys

from .model import save_model
from .pretrained import *  # noqa: F403  (the library's public names, as before the split)
from .pretrained import (
    KINDS,
    convert_state_dict,
    detect_kind,
    read_state_dict,
    save_trunk,
    vgg16_trunk_from_reducedfc,
    vgg16_trunk_from_torchvision,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minissd.convert",
        description="Convert PyTorch weights into minissd files: torchvision's ssd300_vgg16 (a whole model), or "
                    "an ImageNet VGG16 (torchvision's vgg16, or the reduced-fc VGG16 file) into a trunk file for "
                    "ssd300/ssd512.")
    parser.add_argument("src", help="state dict (.pth, or .npz of arrays), e.g. ssd300_vgg16_coco-b556d3b4.pth, "
                                    "vgg16-397923af.pth, vgg16_reducedfc.pth")
    parser.add_argument("dst", help="minissd file to write (.npz)")
    parser.add_argument("--kind", choices=KINDS, default=None,
                        help="what src holds (default: recognised from its keys)")
    parser.add_argument("--class-names", help="ssd300_vgg16 only: comma-separated object class names "
                                              "(default: COCO's 90)")
    args = parser.parse_args(argv)
    try:
        state = read_state_dict(args.src)
        kind = args.kind or detect_kind(state)
        if kind == "ssd300_vgg16":
            names = args.class_names.split(",") if args.class_names else None
            model, meta = convert_state_dict(state, names)
            meta["converted_from_file"] = str(args.src)
            path = save_model(args.dst, model, meta)
        else:
            if args.class_names:
                raise ValueError(f"--class-names applies to ssd300_vgg16 weights, not to a {kind} trunk")
            arrays, meta = (vgg16_trunk_from_torchvision if kind == "vgg16" else vgg16_trunk_from_reducedfc)(state)
            meta["converted_from_file"] = str(args.src)
            path = save_trunk(args.dst, arrays, meta)
    except (ValueError, ImportError) as err:
        message = str(err) if str(args.src) in str(err) else f"{args.src}: {err}"
        print(f"minissd.convert: error: {message}", file=sys.stderr)
        return 2
    if kind == "ssd300_vgg16":
        print(f"wrote {path} (whole SSD300 model)")
    else:
        print(f"wrote {path} (VGG16 trunk from {kind}; input {meta['input']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
