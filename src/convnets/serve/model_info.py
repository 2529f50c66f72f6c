"""What ``GET /v1/model`` describes: the run's model, its input, its validation score and its cost.

Parameters and multiply-adds come from :func:`convnets.cost.model_cost`, which needs torch. They are
computed once per run and kept in ``RUN_DIR/cost.json`` (written atomically, keyed by what they depend
on: architecture, its arguments, classes, channels, input size), so a server started on a run that
already has them stays torch-free. When they are missing, :func:`start_cost_job` computes them in a
separate low-priority process after the server is ready, and the server picks the file up when it
appears.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..base.atomic import atomic_write_json
from ..base.runs import COST_FILE, METRICS_FILE, RunConfig


@dataclass(frozen=True)
class RunCost:
    params: int
    macs: int
    key: dict[str, Any]


def cost_key(config: RunConfig) -> dict[str, Any]:
    """What the cost depends on (not the weights)."""
    return {
        "model": config.model,
        "model_kwargs": config.model_kwargs,
        "num_classes": config.num_classes,
        "in_chans": config.in_chans,
        "head": config.head,
        "image_size": list(config.image_size),
    }


def read_cost(run_dir: str | os.PathLike, config: RunConfig) -> RunCost | None:
    """The cached cost, if ``cost.json`` is there and matches the run's current config."""
    try:
        raw = json.loads((Path(run_dir) / COST_FILE).read_text())
        cost = RunCost(int(raw["params"]), int(raw["macs"]), raw["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cost if cost.key == json.loads(json.dumps(cost_key(config))) else None


def write_cost(run_dir: str | os.PathLike) -> RunCost:
    """Compute the run's params and multiply-adds with torch and cache them in ``cost.json``."""
    from ..cost import model_cost  # start-up: the server loads torch only to compute the cost once
    from ..weights import load_run  # start-up: as above

    model, _ = load_run(run_dir)
    config = RunConfig.read(run_dir)
    report = model_cost(model, config.image_size, config.in_chans)
    cost = RunCost(report.params, report.macs, cost_key(config))
    atomic_write_json(Path(run_dir) / COST_FILE, asdict(cost))
    return cost


def start_cost_job(run_dir: str | os.PathLike) -> subprocess.Popen | None:
    """Compute ``cost.json`` in a niced child process (torch stays out of the server's process).

    Returns the process, or None when the run folder cannot be written (the cost is then left out).
    """
    if not os.access(run_dir, os.W_OK):
        return None
    code = "import sys; from convnets.serve.model_info import write_cost; write_cost(sys.argv[1])"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    preexec = (lambda: os.nice(10)) if hasattr(os, "nice") else None
    return subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        preexec_fn=preexec,  # noqa: PLW1509 - only os.nice, before exec
    )


def validation_metrics(run_dir: str | os.PathLike, config: RunConfig) -> dict[str, Any]:
    """The best epoch's validation figures: accuracy from config.json, loss from metrics.jsonl."""
    best = config.best
    out: dict[str, Any] = {
        "accuracy": best.val_acc if best else None,
        "epoch": best.epoch if best else None,
    }
    if best is None or best.epoch is None:
        return out
    try:
        lines = (Path(run_dir) / METRICS_FILE).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("epoch") == best.epoch and row.get("val_loss") is not None:
            out["loss"] = row["val_loss"]
    return out


@dataclass
class ModelInfo:
    """The body of ``GET /v1/model``."""

    name: str
    model: str
    classes: list[str]
    input_size: list[int]  # [C, H, W]
    resize: str
    normalization: dict[str, list[float]]
    validation: dict[str, Any]
    params: int | None
    macs: int | None
    backend: str

    @classmethod
    def of(
        cls, run_dir: str | os.PathLike, config: RunConfig, backend: str, cost: RunCost | None
    ) -> ModelInfo:
        mean, std = config.normalization()
        return cls(
            name=Path(run_dir).resolve().name,
            model=config.model,
            classes=list(config.class_names),
            input_size=list(config.input_shape),
            resize=config.resize,
            normalization={"mean": list(mean), "std": list(std)},
            validation=validation_metrics(run_dir, config),
            params=cost.params if cost else None,
            macs=cost.macs if cost else None,
            backend=backend,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
