"""Training step fp32 vs bf16 (what ``--precision auto`` picks on AMX CPUs), one process, interleaved.

Both variants are convnets' training step (``train_throughput.ConvnetsPeer``: its optimizer, loss,
memory format, malloc tuning and per-step bookkeeping), built side by side in one process and timed
in alternation, so the machine's load hits both alike; the figure is the median (and the best) of the
repetitions after warm-up, and the ratio is bf16 over fp32 per repetition pair. The process's CPU time
per image goes with it: at ``--threads 1`` on a loaded machine it is steadier than the wall clock (time
spent descheduled does not count). The CPU's model
name, the flags that matter (AVX-512, AVX512-BF16, AMX) and the load average go with every row.

    .venv/bin/python bench/train_precision.py --models resnet50:64:32,mobilenet_v2:160:32 --reps 5
    .venv/bin/python bench/train_precision.py --precision fp32,bf16-plain,bf16-unfused,bf16

``bf16`` is what ``--precision bf16`` (and ``auto`` on AMX CPUs) trains with: autocast, the backward
picker (accel/bf16_backward.py) and fused BatchNorm+activation kernels (accel/fused_bn_act.py), all
through the precision plan (accel/plan.py);
``bf16-unfused`` leaves out the fused kernels, ``bf16-plain`` both.
    .venv/bin/python bench/train_precision.py --threads 1     # a loaded machine: see RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(
    model: str, size: int, batch: int, precisions: list[str], reps: int, threads: int, steps: int = 1
) -> dict:
    from train_throughput import ConvnetsPeer

    peers, warmup = {}, {}
    for precision in precisions:
        t0 = time.perf_counter()
        spec = {"model": model, "size": size, "batch": batch, "precision": precision, "threads": threads}
        peers[precision] = ConvnetsPeer({**spec, "steps": steps, "warmup": 2})
        peers[precision].warmup()
        warmup[precision] = time.perf_counter() - t0
    seconds: dict[str, list[float]] = {p: [] for p in precisions}
    cpu_seconds: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(reps):
        for p in precisions:  # A, B, A, B, ...
            rep = peers[p].rep()
            seconds[p].append(rep["seconds"])
            cpu_seconds[p].append(rep["cpu_seconds"])
    base = precisions[0]
    rows = {}
    for p in precisions:
        ratios = [b / s for b, s in zip(seconds[base], seconds[p])]
        cpu_ratios = [b / s for b, s in zip(cpu_seconds[base], cpu_seconds[p])]
        rows[p] = {
            "img_s": steps * batch / statistics.median(seconds[p]),
            "img_s_best": steps * batch / min(seconds[p]),
            "speedup": statistics.median(ratios),
            "cpu_ms_per_img": 1e3 * statistics.median(cpu_seconds[p]) / (steps * batch),
            "cpu_speedup": statistics.median(cpu_ratios),
            "warmup_s": warmup[p],
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet50:64:32,mobilenet_v2:160:32", help="name:size:batch,...")
    p.add_argument("--precision", default="fp32,bf16")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=1, help="training steps per timed repetition")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)

    from convnets.base.runtime import describe_cpu

    cpu = describe_cpu()
    print(
        f"CPU {cpu['cpu']}, {cpu['cores']} cores, {args.threads} torch threads, flags "
        f"{' '.join(cpu['flags'])}; torch {cpu['torch']}; load average {os.getloadavg()[0]:.1f} at start",
        flush=True,
    )
    first = args.precision.split(",")[0]
    print(
        f"| model | input | batch | precision | img/s median | img/s best | vs {first} | "
        f"CPU ms/img | CPU time vs {first} | warm-up s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for item in args.models.split(","):
        name, size, batch = item.split(":")
        precisions = args.precision.split(",")
        rows = measure(name, int(size), int(batch), precisions, args.reps, args.threads, args.steps)
        for precision, r in rows.items():
            print(
                f"| {name} | {size} | {batch} | {precision} | {r['img_s']:.1f} | {r['img_s_best']:.1f} | "
                f"{r['speedup']:.2f}x | {r['cpu_ms_per_img']:.2f} | {r['cpu_speedup']:.2f}x | "
                f"{r['warmup_s']:.1f} |",
                flush=True,
            )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
