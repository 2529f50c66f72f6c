"""Class-per-folder datasets with planted problems, to test and benchmark ``doctor`` (and to try it).

Each picture is a colour gradient with a few random shapes; the class sets the hue range, so a small
model can tell the classes apart and a planted label flip stands out. Copies are made the ways real
folders get them: the same file twice, a re-encoded JPEG, a resized copy and a slightly cropped copy.
"""

from __future__ import annotations

import colorsys
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COPY_KINDS = ("exact", "jpeg", "resized", "cropped")


def random_picture(rng: np.random.Generator, size: tuple[int, int], hue: float) -> Image.Image:
    """A gradient in ``hue`` (0..1, +-0.08) with 3-7 random ellipses, rectangles and thick lines."""
    w, h = size

    def colour(light: float) -> tuple[int, int, int]:
        hh = (hue + rng.uniform(-0.08, 0.08)) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hh, rng.uniform(0.4, 1.0), light)
        return int(r * 255), int(g * 255), int(b * 255)

    c0, c1 = np.array(colour(rng.uniform(0.3, 1))), np.array(colour(rng.uniform(0.3, 1)))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1) / 2
    base = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.uint8)
    im = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(3, 8)):
        x0, y0 = rng.uniform(-0.2, 0.9) * w, rng.uniform(-0.2, 0.9) * h
        x1, y1 = x0 + rng.uniform(0.15, 0.6) * w, y0 + rng.uniform(0.15, 0.6) * h
        fill = colour(rng.uniform(0.1, 1.0))
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.line((x0, y0, x1, y1), fill=fill, width=int(rng.integers(2, max(3, w // 10))))
    return im


def make_copy(im: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """``im`` copied the way ``kind`` says; returns the image and the file extension to save it as."""
    w, h = im.size
    if kind == "exact":
        return im, ".png"
    if kind == "jpeg":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(rng.integers(40, 70)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), ".jpg"
    if kind == "resized":
        scale = rng.choice([0.5, 0.75, 1.5])
        return im.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.BILINEAR), ".png"
    if kind == "cropped":  # 5% of each side's length, split between the two edges at random
        dx, dy = round(0.05 * w), round(0.05 * h)
        left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
        return im.crop((left, top, w - (dx - left), h - (dy - top))), ".png"
    raise ValueError(f"copy kind must be one of {COPY_KINDS}, got {kind!r}")


@dataclass
class PlantedData:
    """What was planted, by absolute path, for a test to check doctor's answers against."""

    root: Path
    train: Path
    test: Path | None
    copies: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, original, copy)
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # (original, copy in another class)
    flips: list[str] = field(default_factory=list)  # files saved under a wrong class
    unreadable: list[str] = field(default_factory=list)


def make_planted(
    root: str | os.PathLike,
    *,
    classes: int = 3,
    per_class: int = 30,
    test_per_class: int = 6,
    size: int = 64,
    copies_per_kind: int = 2,
    conflicts: int = 1,
    flips: int = 0,
    unreadable: bool = False,
    seed: int = 0,
    fmt: str = "PNG",
) -> PlantedData:
    """``root/train/<class>/`` and ``root/test/<class>/`` of distinct pictures, then planted problems:
    ``copies_per_kind`` copies of each kind (exact, jpeg, resized, cropped) of train images saved in
    test/ (leakage), ``conflicts`` exact copies saved in another train class, ``flips`` train images
    saved under a wrong class, and (``unreadable``) a truncated, an empty and a not-an-image file."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    names = [f"class{c}" for c in range(classes)]
    ext = ".png" if fmt == "PNG" else ".jpg"
    out = PlantedData(root, root / "train", root / "test" if test_per_class or copies_per_kind else None)

    def save(im: Image.Image, path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jpg":
            im.save(path, "JPEG", quality=90)
        else:
            im.save(path)
        return str(path)

    def picture(c: int) -> Image.Image:
        w = int(size * rng.uniform(0.8, 1.25))
        return random_picture(rng, (w, size), c / classes)

    train: list[tuple[int, str, Image.Image]] = []
    for c, name in enumerate(names):
        for i in range(per_class):
            im = picture(c)
            train.append((c, save(im, root / "train" / name / f"{name}_{i:04d}{ext}"), im))
        for i in range(test_per_class):
            save(picture(c), root / "test" / name / f"{name}_t{i:04d}{ext}")

    order = rng.permutation(len(train))
    k = 0
    for kind in COPY_KINDS:
        for _ in range(copies_per_kind):
            c, path, im = train[order[k]]
            k += 1
            copy, cext = make_copy(im, kind, rng)
            dest = root / "test" / names[c] / f"copy_{kind}_{Path(path).stem}{cext}"
            out.copies.append((kind, path, save(copy, dest)))
    for _ in range(conflicts):
        c, path, im = train[order[k]]
        k += 1
        other = names[(c + 1) % classes]
        out.conflicts.append((path, save(im, root / "train" / other / f"conflict_{Path(path).stem}.png")))
    for _ in range(flips):
        c, path, _im = train[order[k]]
        k += 1
        wrong = names[(c + 1 + int(rng.integers(classes - 1))) % classes]
        dest = root / "train" / wrong / Path(path).name
        os.replace(path, dest)
        out.flips.append(str(dest))
    if unreadable:
        bad = root / "train" / names[0]
        data = Path(train[0][1]).read_bytes()
        (bad / "truncated.png").write_bytes(data[: len(data) // 2])
        (bad / "empty.jpg").write_bytes(b"")
        (bad / "notes.jpg").write_text("not an image")
        out.unreadable = [str(bad / n) for n in ("truncated.png", "empty.jpg", "notes.jpg")]
    return out
