"""`convnets compare`: train several architectures under one budget and split, rank them with their cost.

Every model is trained by ``convnets.train`` with the same data, seed, validation split, epochs and
(unless a model cannot take it) image size, so the validation subsets are identical (the split is
keyed by file and seed, not by model) and the accuracies are comparable. Next to each accuracy go
the parameters and multiply-adds (``cost.model_cost``), the measured batch-1 latency on this
machine and the training seconds: the case studies' accuracy-versus-cost trade-off, on your data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Leaderboard", "compare", "plot_accuracy_vs_cost"]


@dataclass
class Leaderboard:
    rows: list[dict]  # best first: model, val_acc, params, macs, latency_ms, train_seconds, ...
    out: Path
    same_split: bool
    files: dict[str, str]

    def to_dict(self) -> dict:
        return {"rows": self.rows, "same_split": self.same_split, "files": self.files}


def _markdown(rows: list[dict], data: str, epochs: int, same_split: bool) -> str:
    from ..cost import format_count  # start-up: torch on first use

    lines = [
        f"# Leaderboard: {data}",
        "",
        f"Same training budget ({epochs} epoch(s)) and "
        + (
            "the same validation subset for every model."
            if same_split
            else "**different** validation subsets."
        ),
        "Latency: batch 1, median of several runs on this machine. "
        "Multiply-adds: convolutions and linear layers.",
        "",
        "| rank | model | image size | val accuracy | params | multiply-adds | latency / image | training |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for rank, r in enumerate(rows, 1):
        size = "x".join(map(str, r["image_size"]))
        acc = f"{r['val_acc']:.4f}" if r["val_acc"] is not None else "-"
        lines.append(
            f"| {rank} | {r['model']} | {size} | {acc} | {format_count(r['params'])} "
            f"| {format_count(r['macs'])} | {r['latency_ms']:.2f} ms | {r['train_seconds']:.1f} s |"
        )
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_cost(rows: Sequence[dict], path: str | Path) -> Path:
    """Validation accuracy against multiply-adds (log scale); marker area ~ parameters, labelled."""
    from ..base.plots import pyplot, save_figure  # start-up: numpy on first use

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    max_params = max((r["params"] for r in rows), default=1) or 1
    for r in rows:
        size = 60 + 900 * r["params"] / max_params
        ax.scatter(r["macs"], r["val_acc"] or 0.0, s=size, alpha=0.5)
        ax.annotate(
            f"{r['model']}\n{r['params'] / 1e6:.2f} M params",
            (r["macs"], r["val_acc"] or 0.0),
            textcoords="offset points",
            xytext=(8, 4),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("multiply-adds per image (log scale)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("accuracy vs cost (marker area ~ parameters)")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.3, y=0.15)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def compare(
    data: str | Path,
    models: Sequence[str],
    out: str | Path,
    *,
    epochs: int = 5,
    image_size: int | None = None,
    seed: int = 0,
    measure_latency: bool = True,
    **train_options,
) -> Leaderboard:
    """Train each of ``models`` on ``data`` into ``out/<model>`` and write the leaderboard files.

    ``train_options`` are passed to every ``convnets.train`` call (``batch_size``, ``lr``, ...).
    """
    from ..accel.inference import backend_of  # start-up: torch on first use
    from ..cost import model_cost  # start-up: torch on first use
    from ..deploy.predictor import Classifier  # start-up: torch on first use
    from ..deploy.predictor import measure_latency as latency_of  # start-up: torch on first use
    from ..train import train  # start-up: torch on first use

    if not models:
        raise ValueError("--models: give at least one model")
    if len(set(models)) != len(models):
        raise ValueError(f"--models: a model is listed twice ({', '.join(models)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, splits = [], []
    for name in models:
        result = train(
            data,
            model=name,
            out=out / name,
            epochs=epochs,
            image_size=image_size,
            seed=seed,
            quiet=True,
            overwrite=True,
            **train_options,
        )
        clf = Classifier.from_run(result.run_dir)
        cost = model_cost(clf.model, image_size=clf.image_size, in_chans=clf.in_chans)
        splits.append(clf.config.split)
        rows.append(
            {
                "model": name,
                "val_acc": result.best_val_acc,
                "best_epoch": result.best_epoch,
                "params": cost.params,
                "macs": cost.macs,
                "latency_ms": latency_of(clf) if measure_latency else float("nan"),
                "backend": backend_of(clf.runner),
                "train_seconds": result.seconds,
                "image_size": list(clf.image_size),
                "run_dir": str(result.run_dir),
            }
        )
    rows.sort(key=lambda r: -(r["val_acc"] or 0.0))
    same_split = all(_val_part(s) == _val_part(splits[0]) for s in splits)
    files = {
        "leaderboard_json": str(out / "leaderboard.json"),
        "leaderboard_md": str(out / "leaderboard.md"),
        "plot": str(out / "accuracy_vs_cost.png"),
    }
    board = Leaderboard(rows, out, same_split, files)
    (out / "leaderboard.json").write_text(
        json.dumps({"data": str(data), "epochs": epochs, "seed": seed, **board.to_dict()}, indent=2),
        encoding="utf-8",
    )
    (out / "leaderboard.md").write_text(_markdown(rows, str(data), epochs, same_split), encoding="utf-8")
    plot_accuracy_vs_cost(rows, out / "accuracy_vs_cost.png")
    return board


def _val_part(split) -> object:
    """The part of a saved split that identifies the validation subset."""
    if isinstance(split, dict):
        return {k: v for k, v in split.items() if k not in ("train",)}
    return split
