"""Non-square images with the subject to one side: ``--resize crop`` vs ``letterbox`` vs ``squash``.

Builds an off-centre set from the shared alpaca photos (never inside the repo: under ``--out``, a
temporary folder by default): each photo's central square is scaled to S x S and put at the left or
the right end (seeded coin) of a ``ratio``:1 canvas whose rest is filled with CIFAR-10 training
photos from ../shared/data/cifar10 (class-neutral clutter: drawn at random whatever the label). A
centre crop of such an image sees the inner part of the subject and some clutter; letterbox and
squash see all of it. Then the transfer recipe (MobileNetV2 with the shared ImageNet weights,
``--normalize inception --freeze base``) trains once per mode, same seed and split, and the best
validation accuracy and the training time are printed (and written to OUT/results.json).

    nice -n 10 .venv/bin/python bench/resize_modes.py [--ratio 2] [--epochs 5] [--size 160]
        [--original]   # also the three modes on the unmodified photos
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"
MODES = ("crop", "letterbox", "squash")


def make_offcentre(src: Path, out: Path, fillers: list[Path], ratio: float, side: int, seed: int) -> Path:
    """``src/<class>/<image>`` -> ``out/<class>/<image>.jpg`` on a ``ratio``:1 canvas, subject to one side."""
    rng = random.Random(seed)
    width = round(side * ratio)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        try:
            with Image.open(path) as im:
                photo = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (side, side))
        except OSError:
            continue
        canvas = Image.new("RGB", (width, side))
        left = rng.random() < 0.5
        x, rest = (0, side) if left else (width - side, 0)
        canvas.paste(photo, (x, 0))
        filled = 0  # the clutter: CIFAR photos, each scaled to the canvas height
        while filled < width - side:
            with Image.open(rng.choice(fillers)) as f:
                tile = f.convert("RGB").resize((side, side), Image.BILINEAR)
            canvas.paste(tile, (rest + filled, 0))
            filled += side
        canvas.paste(photo, (x, 0))  # the last tile may have run over the subject
        dest = out / path.parent.name / (path.stem + ".jpg")
        dest.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(dest, quality=92)
    return out


def train_mode(data: Path, mode: str, seed: int, out: Path, args: argparse.Namespace) -> dict:
    from convnets.train import train

    start = time.perf_counter()
    result = train(
        str(data),
        model="mobilenet_v2",
        weights=str(WEIGHTS),
        normalize="inception",
        freeze="base",
        epochs=args.epochs,
        image_size=args.size,
        resize=mode,
        seed=seed,
        workers=0,
        quiet=True,
        out=str(out),
    )
    return {
        "mode": mode,
        "seed": seed,
        "best_val_acc": result.best_val_acc,
        "train_seconds": round(result.seconds, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=2.0, help="canvas width / height (default 2)")
    p.add_argument("--size", type=int, default=160, help="model input side (default 160)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seed of the derived set (sides, clutter)")
    p.add_argument("--seeds", default="0", help="training seeds (split, head init), e.g. 0,1,2")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--original", action="store_true", help="also train on the unmodified photos")
    p.add_argument("--out", type=Path, help="where the derived set and runs go (default: a temp folder)")
    args = p.parse_args()
    alpaca, cifar = SHARED / "alpaca", SHARED / "cifar10" / "train"
    if not (alpaca.is_dir() and cifar.is_dir() and WEIGHTS.is_file()):
        print(f"skipped: needs {alpaca}, {cifar} and {WEIGHTS}", file=sys.stderr)
        return 0
    from convnets.base.runtime import describe_cpu, tune_malloc

    tune_malloc()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        fillers = sorted(cifar.rglob("*.jpg"))[::50]  # 1,000 of the 50,000
        t = time.perf_counter()
        data = out / f"offcentre_{args.ratio:g}to1"
        make_offcentre(alpaca, data, fillers, args.ratio, 192, args.seed)
        print(f"built {data} in {time.perf_counter() - t:.1f} s; {describe_cpu()}", flush=True)
        sets = [("off-centre", data)] + ([("original", alpaca)] if args.original else [])
        rows = []
        for name, folder in sets:
            for seed in (int(s) for s in args.seeds.split(",")):
                for mode in args.modes.split(","):  # one configuration at a time
                    row = {"set": name, "ratio": args.ratio if name == "off-centre" else None}
                    row.update(train_mode(folder, mode, seed, out / "runs" / f"{name}-{mode}-{seed}", args))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=2))
        print("\n| set | resize | seed | best val acc | train s |\n|---|---|---|---|---|")
        for r in rows:
            acc = f"{r['best_val_acc']:.3f}"
            print(f"| {r['set']} | {r['mode']} | {r['seed']} | {acc} | {r['train_seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
