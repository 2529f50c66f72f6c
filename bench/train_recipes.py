"""Accuracy of the course's two recipes on the shared data, per precision and augmentation.

These runs choose the defaults that are about accuracy rather than speed (bench/RESULTS.md, "Training
precision" and "Augmentation defaults"): ``--precision auto`` may only pick bf16 where it reaches
fp32's accuracy, and ``--augment auto`` picks, per regime, the preset that validated best.

- ``alpaca``: MobileNetV2 transfer on /work/shared/data/alpaca (pretrained ImageNet weights from
  /work/shared/data/weights, ``--normalize inception``, 160 px), the shortest command's phases
  (``--freeze auto``: head on cached features, then fine-tuning of the last stages).
- ``signs``: ResNet-50 from scratch on SIGNS (train/ + val/ folders, 64 px), the course's exercise.

Each variant is a fresh process (``convnets.train``), run one after the other; the table gives the
best and last validation accuracy, the wall time, and the fine-tune phase's last training accuracy.

    .venv/bin/python bench/train_recipes.py alpaca --precision fp32,bf16 --augment none --seeds 0,1
    .venv/bin/python bench/train_recipes.py signs --precision fp32,bf16 --epochs 8
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CONVNETS_SHARED_DATA", ROOT.parent / "shared" / "data"))
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")

RECIPES = {
    "alpaca": lambda: (
        str(SHARED / "alpaca"),
        {
            "model": "mobilenet_v2",
            "weights": str(SHARED / "weights" / "mobilenet_v2_imagenet.pth"),
            "normalize": "inception",
            "image_size": 160,
            "epochs": 5,
        },
    ),
    "signs": lambda: (str(SHARED / "signs"), {"model": "resnet50", "image_size": 64, "epochs": 8}),
}

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from convnets.train import train
data, out, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
r = train(data, out=out, quiet=True, **opts)
cfg = json.load(open(out + "/config.json"))
print(json.dumps({"best": r.best_val_acc, "history": r.history, "seconds": time.perf_counter() - t0,
                  "precision": cfg["options"]["precision"], "augment": cfg["options"]["augment"]}))
"""


def run_one(data: str, opts: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, data, str(Path(tmp) / "run"), json.dumps(opts)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", choices=sorted(RECIPES))
    p.add_argument("--precision", default="fp32,bf16")
    p.add_argument("--augment", default="auto", help="comma-separated presets to compare")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int)
    p.add_argument("--fine-tune-epochs", type=int)
    p.add_argument("--json", help="append the rows to this JSON-lines file")
    args = p.parse_args(argv)
    data, base = RECIPES[args.recipe]()
    if args.epochs:
        base["epochs"] = args.epochs
    if args.fine_tune_epochs:
        base["fine_tune_epochs"] = args.fine_tune_epochs
    print(f"{args.recipe}: {data} {base}; load average {os.getloadavg()[0]:.1f}", flush=True)
    print("| precision | augment | seed | best val acc | last val acc | last train acc | seconds |")
    print("|---|---|---|---|---|---|---|", flush=True)
    variants = itertools.product(args.seeds.split(","), args.augment.split(","), args.precision.split(","))
    for seed, augment, precision in variants:
        opts = {**base, "precision": precision, "augment": augment, "seed": int(seed)}
        t0 = time.perf_counter()
        r = run_one(data, opts)
        last = r["history"][-1]
        row = {"recipe": args.recipe, **opts, **{k: r[k] for k in ("best", "seconds")}}
        row.update(resolved_precision=r["precision"], resolved_augment=r["augment"], last=last)
        print(
            f"| {r['precision']} | {r['augment']} | {seed} | {r['best']:.3f} | {last['val_acc']:.3f} | "
            f"{last['train_acc']:.3f} | {time.perf_counter() - t0:.0f} |",
            flush=True,
        )
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
