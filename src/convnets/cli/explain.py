"""`convnets explain RUN_DIR IMAGES... --out DIR`: Grad-CAM heat maps of why the model decided."""

from __future__ import annotations

import argparse
import json

from . import CLIError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "explain",
        help="Grad-CAM heat maps: where in each image the evidence for a class is",
        description="Saves, per image, the image and a Grad-CAM heat map over it (OUT/<name>.gradcam.png) "
        "for the predicted class, or for --class. The map is read at the model's last convolutional "
        "stage (--layer picks another module). Needs: pip install 'convnets[explain]'.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by `convnets train`")
    p.add_argument("paths", metavar="IMAGE", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for the heat-map PNGs")
    p.add_argument(
        "--class", dest="class_name", default=None, help="explain this class instead of the prediction"
    )
    p.add_argument(
        "--layer", default=None, help="module name to read, e.g. layer3 (default: the last conv stage)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON row per image")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..base.runs import RunFolderError
    from ..trust.explain import explain_files

    try:
        rows = explain_files(args.run_dir, args.paths, args.out, class_name=args.class_name, layer=args.layer)
    except (RunFolderError, ValueError, ImportError) as e:
        raise CLIError(str(e)) from e
    if not rows:
        raise CLIError(f"no image files found in {', '.join(args.paths)}")
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        for r in rows:
            if r.error is not None:
                print(f"{r.file}: ERROR {r.error}")
                continue
            shown = f"; map for {r.explained} {r.explained_prob:.3f}" if r.explained != r.predicted else ""
            print(f"{r.file}: {r.predicted} {r.prob:.3f}{shown} -> {r.path}")
    return 1 if any(r.error is not None for r in rows) else 0
