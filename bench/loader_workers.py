"""Data-loading worker processes on a CPU: ``convnets train --workers 0`` against one worker per core.

What a user feels from the ``--workers`` default (``data.loaders.default_num_workers``): each variant
is a whole ``convnets train`` process on the alpaca photos, timed from start to exit, with the
"N epoch(s) in S s" line giving the training part. Repetitions interleave the variants and alternate
which goes first; the ratio (one worker per core) / (no workers) is taken per repetition (> 1: no
workers is faster).

    .venv/bin/python bench/loader_workers.py                # ~5 min idle on 2 cores
    .venv/bin/python bench/loader_workers.py --reps 1 --quick
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, SHARED_DATA, describe_machine  # noqa: E402

# (model, image size, augmentation): a compute-heavy step without augmentation, and a light model
# whose per-image augmentation weighs more against its step.
CASES = [("mobilenet_v2", 160, "none"), ("resnet20", 64, "standard")]
EPOCHS_LINE = re.compile(r"(\d+) epoch\(s\) in ([\d.]+)s")


def run_train(
    data: str, model: str, size: int, augment: str, workers: int, epochs: int
) -> tuple[float, float]:
    """(whole-process seconds, training seconds) of one ``convnets train``."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "convnets",
            "train",
            data,
            "--model",
            model,
            "--image-size",
            str(size),
            "--augment",
            augment,
            "--epochs",
            str(epochs),
            "--workers",
            str(workers),
            "--out",
            f"{tmp}/run",
        ]
        t0 = time.perf_counter()
        out = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}
        )
        wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    match = EPOCHS_LINE.search(out.stdout + out.stderr)
    if match is None:
        raise RuntimeError(f"no 'epoch(s) in' line in the output of {' '.join(cmd)}")
    return wall, float(match.group(2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED_DATA / "alpaca"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="1 epoch of the first case only")
    args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"skipped: no data at {args.data}")
        return 0
    cores = len(os.sched_getaffinity(0))
    cases, epochs = (CASES[:1], 1) if args.quick else (CASES, args.epochs)
    machine = describe_machine()
    print(
        f"{machine['cpu']}, {cores} cores, flags {' '.join(machine.get('flags', []))}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print("| model | size | augment | workers | wall s | training s | ratio (workers/none), training |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for model, size, augment in cases:
        times: dict[int, list[tuple[float, float]]] = {0: [], cores: []}
        for rep in range(args.reps):
            order = [0, cores] if rep % 2 == 0 else [cores, 0]
            for workers in order:
                times[workers].append(run_train(args.data, model, size, augment, workers, epochs))
        ratios = [w[1] / n[1] for w, n in zip(times[cores], times[0])]
        for workers, rows in times.items():
            walls, trains = [r[0] for r in rows], [r[1] for r in rows]
            ratio = (
                f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})" if workers else ""
            )
            print(
                f"| {model} | {size} | {augment} | {workers} | {statistics.median(walls):.1f} "
                f"({min(walls):.1f}-{max(walls):.1f}) | {statistics.median(trains):.1f} "
                f"({min(trains):.1f}-{max(trains):.1f}) | {ratio} |",
                flush=True,
            )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
