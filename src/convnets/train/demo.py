"""``convnets demo``: LeNet-5 and a small residual network trained side by side on the embedded digits.

The point of the demo is the case studies' first lesson in one minute on a laptop: a 1998
five-layer network and a 2015 residual network on the same real handwritten digits, with their
accuracy, size and cost in one table, and run folders to inspect afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..cost import format_count, model_cost
from ..weights import load_run
from .api import train

# The small residual network: the CIFAR-style ResNet-20 (He et al. 2015, section 4.2).
RESIDUAL_MODEL = "resnet20"
# (model, epochs, learning rate, image size): sized so both finish in about a minute on two CPU
# cores. The digits are 8x8 scans, so 16x16 loses nothing for ResNet-20 and costs 4x less than 32x32;
# LeNet-5 keeps its 1998 32x32 input.
DEMO_RUNS = (("lenet5", 5, 3e-3, 32), (RESIDUAL_MODEL, 3, 3e-3, 16))
DEMO_DATA = "digits"


@dataclass
class DemoRow:
    model: str
    val_acc: float
    params: int
    macs: int
    seconds: float
    image_size: int
    run_dir: Path


def run_demo(out: str | Path = "runs/demo", quiet: bool = True, seed: int = 0, log=print) -> list[DemoRow]:
    """Train every model of ``DEMO_RUNS`` on ``digits`` into ``out/<model>``; one row per model."""

    rows = []
    for name, epochs, lr, image_size in DEMO_RUNS:
        run_dir = Path(out) / name
        if not quiet:
            log(f"\n== {name} on {DEMO_DATA} ==")
        start = time.perf_counter()
        result = train(
            DEMO_DATA,
            model=name,
            out=run_dir,
            epochs=epochs,
            lr=lr,
            image_size=image_size,
            seed=seed,
            overwrite=True,
            quiet=quiet,
            workers=0,
        )
        seconds = time.perf_counter() - start
        model, config = load_run(run_dir)
        size = config.image_size[0]
        rows.append(
            DemoRow(
                name,
                result.best_val_acc,
                sum(p.numel() for p in model.parameters()),
                _macs(model, size),
                seconds,
                size,
                run_dir,
            )
        )
    return rows


def _macs(model, image_size: int) -> int:

    return model_cost(model, image_size=image_size).macs


def format_table(rows: list[DemoRow]) -> str:

    header = ("model", "input", "val acc", "params", "mult-adds", "seconds", "run folder")
    lines = [header] + [
        (
            r.model,
            f"{r.image_size}x{r.image_size}",
            f"{r.val_acc:.3f}",
            format_count(r.params),
            format_count(r.macs),
            f"{r.seconds:.1f}",
            str(r.run_dir),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
