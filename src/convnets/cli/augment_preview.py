"""``convnets augment-preview DATA``: a grid of originals beside augmented versions."""

from __future__ import annotations

import argparse

from . import CLIError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "augment-preview",
        help="save a grid of images beside augmented versions of them",
        description="Show what an augmentation does: each row is a training image (evaluation view) "
        "followed by augmented versions. Ops: hflip, vflip, crop, rrc, rotate, shear, elastic, jitter, "
        "colorshift, pca (name or name:param, comma-separated).",
    )
    p.add_argument(
        "data", help="folder of class sub-folders, or a built-in dataset name (digits, cifar10...)"
    )
    p.add_argument("--preset", default="light", help="none, light, standard or strong (default light)")
    p.add_argument("--ops", default=None, help="ops instead of the preset, e.g. 'hflip,rotate:30,pca:0.2'")
    p.add_argument("--n", type=int, default=8, help="images (rows), default 8")
    p.add_argument("--versions", type=int, default=4, help="augmented versions per image, default 4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--grayscale", action="store_true", help="one input channel")
    p.add_argument("--data-root", default=None, help="where built-in datasets are stored")
    p.add_argument("--out", default="augment_preview.png", help="PNG to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import DatasetError
    from ..data.preview import augment_preview

    if args.n < 1 or args.versions < 1:
        raise CLIError("--n and --versions must be at least 1")
    try:
        out = augment_preview(
            args.data,
            args.ops if args.ops else args.preset,
            args.out,
            n=args.n,
            versions=args.versions,
            seed=args.seed,
            image_size=args.image_size,
            in_chans=1 if args.grayscale else 3,
            data_root=args.data_root,
        )
    except (DatasetError, ValueError) as e:
        raise CLIError(str(e)) from None
    print(f"wrote {out}")
    return 0
