"""`convnets shard DATA --out SHARDS/`: a folder of class sub-folders as WebDataset tar shards."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import CLIError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "shard",
        help="write a folder of images as WebDataset tar shards (+ index.json) to stream from",
        description="Scans DATA once, splits it (stratified, seeded: the split a folder run makes), and "
        "writes train-NNNNNN.tar / val-NNNNNN.tar shards of about --shard-size each with index.json "
        "(class names, counts, which shards are validation). `convnets train SHARDS/` then streams them, "
        "under torchrun each rank reading its own part. Needs the shards extra (pip install "
        "'convnets[shards]').",
    )
    p.add_argument("data", metavar="DATA", help="folder of class sub-folders")
    p.add_argument("--out", type=Path, required=True, help="folder for the shards (new or empty)")
    p.add_argument("--shard-size", default="512MB", help="bytes per shard, e.g. 512MB, 64MB (default 512MB)")
    p.add_argument("--val-split", type=float, default=0.2, help="validation fraction (default 0.2; 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the shard order (default 0)")
    p.add_argument(
        "--resize",
        type=int,
        default=None,
        metavar="SIZE",
        help="store each image decoded and resized for SIZE-pixel training (JPEG) instead of the "
        "file's own bytes: smaller shards, cheaper streaming; default: original bytes",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from ..data.shards import write_shards
    except ImportError as e:
        raise CLIError(f"{e}; install the shards extra: pip install 'convnets[shards]'") from e
    from ..data.folder import DatasetError

    start = time.perf_counter()
    try:
        index = write_shards(
            args.data,
            args.out,
            shard_size=args.shard_size,
            val_split=args.val_split or None,
            seed=args.seed,
            resize=args.resize,
            progress=sys.stderr.isatty(),
        )
    except (DatasetError, ValueError, OSError) as e:
        raise CLIError(str(e)) from e
    n_train = sum(s.count for s in index.train)
    n_val = sum(s.count for s in index.val)
    print(
        f"wrote {len(index.train)} training shard(s) ({n_train:,} images) and {len(index.val)} validation "
        f"shard(s) ({n_val:,}) to {args.out} in {time.perf_counter() - start:.1f} s"
        + (f"; {len(index.skipped)} unreadable file(s) skipped" if index.skipped else "")
    )
    print(f"train on them: convnets train {args.out} --model MODEL --out RUN_DIR")
    return 0
