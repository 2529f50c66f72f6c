"""report.py: a self-contained report.html whose every image loads in headless Chromium, offline."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from convnets import create_model
from convnets.cli import main

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def lenet_run(tmp_path):
    """A run folder per docs/ARCHITECTURE.md (untrained LeNet-5) and a folder of its two classes."""
    model = create_model("lenet5", num_classes=2, in_chans=1).eval()
    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run / "model.safetensors")
    config = {
        "model": "lenet5", "model_kwargs": {}, "num_classes": 2, "in_chans": 1, "head": "default",
        "head_dropout": None, "image_size": [32, 32], "mean": [0.5], "std": [0.25], "normalize": "dataset",
        "class_names": ["dark", "light"], "data": {"source": "elsewhere", "val_split": 0.2, "seed": 0},
        "split": None, "options": {"epochs": 2, "lr": 0.001, "batch_size": 32},
        "best": {"epoch": 2, "val_acc": 0.5},
    }  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    rows = [
        {"epoch": 1, "phase": "train", "train_loss": 0.9, "train_acc": 0.5, "val_loss": 0.8, "val_acc": 0.45,
         "lr": 1e-3, "seconds": 1.0},
        {"epoch": 2, "phase": "train", "train_loss": 0.6, "train_acc": 0.7, "val_loss": 0.7, "val_acc": 0.5,
         "lr": 5e-4, "seconds": 1.0},
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name, level in (("dark", 40), ("light", 210)):
        (data / name).mkdir(parents=True)
        for k in range(3):
            pixels = np.clip(rng.normal(level, 20, (40, 36)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(data / name / f"{k}.png")
    return run, data


def test_report_is_self_contained_and_complete(lenet_run, tmp_path):
    run, data = lenet_run
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--data", str(data), "--out", str(out), "--samples", "4"]) == 0
    page = out.read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    # curves, confusion matrix, 4 sample thumbnails, mistakes grid (an untrained net errs on some images)
    assert len(sources) >= 6
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing to fetch
    for text in (
        "Training curves",
        "Confusion matrix",
        "Sample predictions",
        "Per-class metrics",
        "Cost",
        "Options",
        "10,164",
        "true: dark",
    ):  # fmt: skip  (10,164 = F6: 120 x 84 + 84)
        assert text in page, text


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (apt-get install chromium)"
)
def test_report_images_all_load_in_headless_chromium(lenet_run, tmp_path):
    run, data = lenet_run
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--data", str(data), "--out", str(out), "--samples", "4"]) == 0
    n_images = len(re.findall(r"<img\s", out.read_text()))
    profile = tmp_path / "chromium-profile"
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
        "--virtual-time-budget=10000", "--dump-dom", out.as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    # The page's own load handler marks each image with naturalWidth > 0 and counts them on <body>.
    marked = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert marked, f"the page's load script did not run; chromium printed: {dom[:300]!r}"
    assert marked.group(1) == marked.group(2) == str(n_images)
    assert 'data-loaded="no"' not in dom
