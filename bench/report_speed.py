"""`convnets report` on many validation images: a synthetic 10-class folder (CIFAR-10's class names,
tiny PNGs) and an untrained CIFAR ResNet-20 run; the whole command timed in a fresh process, so
imports and the first-call costs count as a user sees them.

    .venv/bin/python bench/report_speed.py [--images 5000] [--reps 2] [--src src OTHER/src ...]

``--src`` takes one or more source trees (e.g. this checkout's and an older one's) and alternates
them, repetition by repetition, so a busy machine slows each equally. Prints one Markdown row per
tree (median seconds, the spread) and how many classes the report's sample predictions show.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_data(root: Path, images: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    per_class = images // len(CLASSES)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            arr[..., c % 3] = (arr[..., c % 3] // 2 + 25 * c).clip(0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")


def make_run(out: Path) -> None:
    import torch

    from convnets import create_model
    from convnets.base.runs import BestEpoch, DataSource, RunConfig
    from convnets.weights import save_state_dict

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(create_model("resnet20", num_classes=10), out / "model.safetensors")
    RunConfig(
        model="resnet20", num_classes=10, class_names=CLASSES, image_size=(32, 32), in_chans=3,
        mean=(0.5,) * 3, std=(0.25,) * 3, data=DataSource("elsewhere"), best=BestEpoch(1, 0.1),
    ).write(out)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--src", nargs="+", default=[str(Path(__file__).resolve().parents[1] / "src")])
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="report-speed-"))
    make_data(work / "data", args.images)
    make_run(work / "run")
    times: dict[str, list[float]] = {s: [] for s in args.src}
    shown: dict[str, int] = {}
    for _ in range(args.reps):
        for src in args.src:
            out = work / f"report-{len(times[src])}.html"
            env = {**os.environ, "PYTHONPATH": src}
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "convnets", "report", str(work / "run"), "--data", str(work / "data"),
                 "--out", str(out)],
                check=True, env=env, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            times[src].append(time.perf_counter() - start)
            page = out.read_text()
            section = page.split("Sample predictions", 1)[1].split("</div>", 1)[0]
            shown[src] = len(set(re.findall(r"true: ([^<]+)<br>", section)))
    print(f"| source tree | images | report s (median of {args.reps}) | min-max | classes in the samples |")
    print("|---|---|---|---|---|")
    for src, ts in times.items():
        print(
            f"| {src} | {args.images} | {statistics.median(ts):.1f} | {min(ts):.1f}-{max(ts):.1f} | "
            f"{shown[src]} |"
        )


if __name__ == "__main__":
    main()
