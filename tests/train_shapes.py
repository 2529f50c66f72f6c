"""A small generated image folder for the training tests: PIL-drawn circles, squares and triangles."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


def make_shapes(root: Path, per_class: int = 24, size: int = 32, seed: int = 0) -> Path:
    """``root/<shape>/<i>.png``: one shape of random size, place and colour on a random background."""
    rng = random.Random(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            bg = tuple(rng.randrange(0, 90) for _ in range(3))
            fg = tuple(rng.randrange(150, 256) for _ in range(3))
            im = Image.new("RGB", (size, size), bg)
            draw = ImageDraw.Draw(im)
            r = rng.uniform(0.25, 0.4) * size
            cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
            if shape == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
            elif shape == "square":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
            im.save(root / shape / f"{i}.png")
    return root


@contextmanager
def interrupted_at_step(step: int) -> Iterator[None]:
    """SIGINT during training step ``step`` (counted by the classifier's training-mode forwards; a
    global hook, since the model is built inside ``train``): the trainer finishes the step, saves, stops."""
    from torch import nn

    calls = {"n": 0}

    def hook(module, _inputs, _output):
        if module.training and isinstance(module, nn.Linear):
            calls["n"] += 1
            if calls["n"] == step:
                os.kill(os.getpid(), signal.SIGINT)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
