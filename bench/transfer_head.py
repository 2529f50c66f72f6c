"""Frozen-base transfer: head trained on cached base features vs through the frozen base.

A 10-epoch head phase of MobileNetV2 at 160x160 on ~1,000 training images (a generated folder of
PIL-drawn shapes: the speed does not depend on what the pictures show), with the pretrained
weights from ../shared/data when present (random weights otherwise: same cost). Both runs go
through ``convnets.train``; the time is the whole phase (``RunResult.seconds``), feature
extraction and validation included.

    .venv/bin/python bench/transfer_head.py [--images 1250] [--epochs 10] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from train_shapes import SHAPES, make_shapes  # noqa: E402

from convnets.base.runtime import describe_cpu, tune_malloc  # noqa: E402
from convnets.train import train  # noqa: E402

WEIGHTS = ROOT.parent / "shared" / "data" / "weights" / "mobilenet_v2_imagenet.pth"


def _stat(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"{statistics.median(xs):.1f} ({xs[0]:.1f}-{xs[-1]:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1250, help="folder size (80%% train)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each way, interleaved")
    args = parser.parse_args()
    tune_malloc()

    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes(Path(tmp) / "shapes", per_class=args.images // len(SHAPES), size=args.size)
        if WEIGHTS.is_file():
            weights, normalize = str(WEIGHTS), "inception"
        else:  # the pretrained file is absent: a random checkpoint costs the same
            from convnets.models import create_model
            from convnets.weights import save_state_dict

            weights, normalize = str(Path(tmp) / "random.safetensors"), "imagenet"
            save_state_dict(create_model("mobilenet_v2"), weights)
        common = dict(
            model="mobilenet_v2",
            weights=weights,
            normalize=normalize,
            image_size=args.size,
            freeze="base",
            epochs=args.epochs,
            augment="none",
            quiet=True,
            workers=0,
        )
        times: dict[bool, list[float]] = {True: [], False: []}
        accs: dict[bool, list[float]] = {True: [], False: []}
        # One warm-up run (imports, first-call allocations), then the two ways alternate.
        train(data, out=Path(tmp) / "warmup", feature_cache=True, **{**common, "epochs": 1})
        for rep in range(args.reps):
            for cached in (True, False):
                r = train(data, out=Path(tmp) / f"run_{cached}_{rep}", feature_cache=cached, **common)
                times[cached].append(r.seconds)
                accs[cached].append(r.best_val_acc or 0.0)
        n_train = round(0.8 * args.images)
    speedup = statistics.median(times[False]) / statistics.median(times[True])
    print(
        f"MobileNetV2 head phase, {args.epochs} epochs, ~{n_train} training + {args.images - n_train} "
        f"validation images at {args.size}x{args.size}, whole `convnets.train` call (feature extraction, "
        "validation every epoch, plots and checkpoints included); seconds, median (min-max) of "
        f"{args.reps}:"
    )
    print()
    print("| way | seconds | best val acc |")
    print("|---|---|---|")
    print(f"| cached features (default) | {_stat(times[True])} | {statistics.median(accs[True]):.3f} |")
    print(
        f"| head through the frozen base (`feature_cache=False`) | {_stat(times[False])} | "
        f"{statistics.median(accs[False]):.3f} |"
    )
    print()
    print(
        f"**Speed-up of the feature cache: {speedup:.1f}x** (goal 10x; {describe_cpu()['cpu']}, "
        f"{torch.get_num_threads()} threads, weights: {'pretrained' if WEIGHTS.is_file() else 'random'})."
    )


if __name__ == "__main__":
    main()
