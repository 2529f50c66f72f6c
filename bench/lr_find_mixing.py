"""``--lr auto`` against the default and a small grid, and MixUp/CutMix against none (issue #26).

Each configuration is one ``convnets.train`` call in this process, one after another (run it under
``nice -n 10`` on a shared machine); the figures are the best validation accuracy of the run and its
wall time (for ``--lr auto`` including the range test). Results go to a JSON file and are printed as
Markdown rows for bench/RESULTS.md.

    python bench/lr_find_mixing.py lr alpaca|signs|cifar [--epochs N] [--out FILE]
    python bench/lr_find_mixing.py mix digits|alpaca --epochs 5,30 [--out FILE]
    python bench/lr_find_mixing.py ft alpaca --epochs 3   # fine-tuning: --fine-tune-lr-scale auto vs 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CONVNETS_SHARED_DATA", ROOT.parent / "shared" / "data"))
GRID = (3e-4, 1e-3, 3e-3, 1e-2)  # around AdamW's default 1e-3


def cifar_subset(per_class: int = 500) -> Path:
    """The first ``per_class`` images of each class of the shared CIFAR-10 train set, as symlinks."""
    root = Path(tempfile.gettempdir()) / f"convnets-cifar10-{per_class}"
    for class_dir in sorted((SHARED / "cifar10" / "train").iterdir()):
        target = root / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            link = target / image.name
            if not link.exists():
                link.symlink_to(image)
    return root


def setting(name: str, per_class: int = 500) -> tuple[str, dict]:
    weights = str(SHARED / "weights" / "mobilenet_v2_imagenet.pth")
    if name == "alpaca":
        return str(SHARED / "alpaca"), dict(
            model="mobilenet_v2",
            weights=weights,
            normalize="inception",
            freeze="base",
            image_size=160,
            augment="none",
        )
    if name == "signs":
        return str(SHARED / "signs" / "train"), dict(model="resnet20", image_size=64, augment="none")
    if name == "cifar":
        return str(cifar_subset(per_class)), dict(model="resnet20", image_size=32, augment="none")
    if name == "digits":
        return "digits", dict(model="lenet5", augment="none")
    raise SystemExit(f"unknown setting {name!r}")


def run_one(data: str, label: str, options: dict) -> dict:
    from convnets.base.runs import RunConfig
    from convnets.train import train

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(data, out=Path(tmp) / "run", quiet=True, workers=0, device="cpu", **options)
        seconds = time.perf_counter() - t0
        config = RunConfig.read(Path(tmp) / "run")
    found = config.lr_find or []
    row = {
        "label": label,
        "options": {k: v for k, v in options.items() if k not in ("weights",)},
        "best_val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch,
        "seconds": round(seconds, 1),
        "lr_found": [{"phase": r["phase"], "lr": r["lr"], "seconds": r["seconds"]} for r in found],
        "final_train_acc": result.history[-1]["train_acc"],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("lr", "mix", "ft"))
    parser.add_argument("setting")
    parser.add_argument("--epochs", default="3")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--grid", default=",".join(str(v) for v in GRID))
    parser.add_argument("--image-size", type=int, help="override the setting's image size")
    parser.add_argument("--per-class", type=int, default=500, help="CIFAR-10 images per class (default 500)")
    parser.add_argument("--augments", default="none,mixup,cutmix", help="mix: the batch ops compared")
    args = parser.parse_args()
    data, base = setting(args.setting, args.per_class)
    if args.image_size:
        base["image_size"] = args.image_size
    rows = []
    if args.what == "lr":
        epochs = int(args.epochs)
        rows.append(run_one(data, "lr auto", dict(base, epochs=epochs, lr="auto")))
        for lr in (float(v) for v in args.grid.split(",")):
            label = f"lr {lr:g}" + (" (default)" if lr == 1e-3 else "")
            rows.append(run_one(data, label, dict(base, epochs=epochs, lr=lr)))
    elif args.what == "ft":
        epochs = int(args.epochs)
        for scale in ("auto", 0.1):
            options = dict(base, epochs=epochs, fine_tune_last=2, fine_tune_epochs=epochs)
            options["fine_tune_lr_scale"] = scale
            rows.append(run_one(data, f"fine-tune lr scale {scale}", options))
    else:
        for epochs in (int(v) for v in args.epochs.split(",")):
            for augment in args.augments.split(","):
                extra = "" if base["augment"] == "none" else base["augment"] + ","
                spec = augment if augment == "none" else extra + augment
                rows.append(run_one(data, f"{epochs} ep {augment}", dict(base, epochs=epochs, augment=spec)))
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    if args.out:
        summary = {"setting": args.setting, "what": args.what, "load": load, "rows": rows}
        args.out.write_text(json.dumps(summary))
    print(f"\nload average after: {' '.join(load)}")
    for r in rows:
        found = ", ".join(f"{f['phase']} {f['lr']:.3g} ({f['seconds']:.0f}s)" for f in r["lr_found"]) or "-"
        print(
            f"| {r['label']} | {r['best_val_acc']:.3f} (ep {r['best_epoch']}) | {r['final_train_acc']:.3f} "
            f"| {found} | {r['seconds']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
