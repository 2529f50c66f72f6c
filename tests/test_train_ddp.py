"""The same `convnets train` command under torchrun: two CPU processes with DistributedDataParallel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_shapes import make_shapes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_torchrun_two_cpu_processes(tmp_path):
    from convnets.data import load_data
    from convnets.weights import load_run

    shapes = make_shapes(tmp_path / "shapes", per_class=16, size=16)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "convnets", "train", str(shapes), "--model", "lenet5", "--out", str(run), "--epochs", "2",
           "--image-size", "16", "--batch-size", "8", "--device", "cpu", "--workers", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best validation accuracy") == 1  # only rank 0 prints

    for name in ("model.safetensors", "config.json", "metrics.jsonl", "curves.png", "confusion_matrix.png",
                 "last.pt"):
        assert (run / name).is_file(), name
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    # 38 training images over 2 ranks: 19 each, 3 batches of 8 per rank and epoch.
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 6

    # Validation metrics are all-reduced over both ranks' shards: the saved best model, evaluated
    # on the whole validation set in one process, gives the recorded accuracy.
    model, config = load_run(run)
    splits = load_data(config.data.source, image_size=config.image_size, in_chans=config.in_chans,
                       mean=config.mean, std=config.std, split=config.split, augment="none",
                       num_workers=0)
    correct = seen = 0
    with torch.no_grad():
        for x, y in splits.val:
            correct += (model(x).argmax(1) == y).sum().item()
            seen += len(y)
    assert correct / seen == pytest.approx(config.best.val_acc, abs=1e-9)
