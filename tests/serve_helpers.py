"""Helpers for the server tests: a tiny run folder made by hand, test images, a live server process."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "owl"]


def make_run(out: Path, val_acc: float = 0.75) -> Path:
    """A LeNet-5 run on 3-channel 32x32 input with random weights, exported (model.onnx, cost.json)."""
    import torch

    from convnets import create_model
    from convnets.base.runs import BestEpoch, DataSource, RunConfig
    from convnets.weights import save_state_dict

    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=len(CLASSES), in_chans=3)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(model, out / "model.safetensors")
    RunConfig(
        model="lenet5",
        num_classes=len(CLASSES),
        class_names=list(CLASSES),
        image_size=(32, 32),
        in_chans=3,
        resize="resize",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        data=DataSource("tests"),
        best=BestEpoch(epoch=1, val_acc=val_acc),
    ).write(out)
    (out / "metrics.jsonl").write_text('{"epoch": 1, "phase": "train", "val_loss": 0.5, "val_acc": 0.75}\n')
    return out


def image_bytes(seed: int, size: tuple[int, int] = (40, 36), fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (what a decompression bomb does)."""
    png = bytearray(image_bytes(0, (8, 8)))
    ihdr = png.index(b"IHDR")
    png[ihdr + 4 : ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    crc = zlib.crc32(bytes(png[ihdr : ihdr + 17]))
    png[ihdr + 17 : ihdr + 21] = crc.to_bytes(4, "big")
    return bytes(png)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment for a child Python that must import this checkout's convnets."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start_command(args: list[str], ready_url: str, log: Path | None = None) -> subprocess.Popen:
    """``python -m convnets ARGS`` in a child process; returns once ``ready_url`` answers 200 (or raises
    with its log)."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "convnets", *args], stdout=out, stderr=subprocess.STDOUT, env=child_env()
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[0]} exited with {proc.returncode}: {log.read_text() if log else ''}")
        try:
            with urllib.request.urlopen(ready_url, timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{args[0]} did not answer {ready_url} in 60 s")


def start_server(run_dir: Path, port: int, *extra: str, log: Path | None = None) -> subprocess.Popen:
    """``convnets serve`` in a child process; returns once /readyz answers (or raises with its log)."""
    args = ["serve", str(run_dir), "--port", str(port), *extra]
    return start_command(args, f"http://127.0.0.1:{port}/readyz", log)


def headless_chromium():
    """(selenium.webdriver, a headless Debian Chromium driven by it); skips the test without them. The
    flags keep Chromium off the network this machine does not have."""
    import shutil

    import pytest

    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("headless browser test needs Debian's chromium and chromium-driver (apt-get install)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"):  # fmt: skip
        options.add_argument(flag)
    return webdriver, webdriver.Chrome(service=Service(driver), options=options)
