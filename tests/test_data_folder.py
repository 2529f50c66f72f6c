"""Folder datasets: formats and modes, bad input, errors, caches, pre-split folders, prediction batches."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from convnets.data import (
    DatasetError,
    SkippedImageWarning,
    image_dataset_from_directory,
    load_base,
    load_data,
    load_images,
)


def drawn(size=(48, 36), colour=(200, 40, 40), mode="RGB") -> Image.Image:
    """A white picture with a coloured rectangle in the top-left quarter (orientation visible)."""
    im = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(im).rectangle([2, 2, size[0] // 2, size[1] // 2], fill=colour)
    return im.convert(mode) if mode != "RGB" else im


def make_folder(root: Path, counts: dict[str, int], size=(48, 36), fmt="PNG") -> Path:
    for c, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            colour = (40 + 50 * c, 20 * (i % 10), 200 - 30 * c)
            ext = {"JPEG": "jpg"}.get(fmt, fmt.lower())
            drawn(size, colour).save(root / cls / f"img_{i:03d}.{ext}", fmt)
    return root


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# -- formats and modes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,ext",
    [("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"), ("GIF", "gif"), ("WEBP", "webp"), ("TIFF", "tif")],
)
def test_each_format_decodes(tmp_path, fmt, ext):
    path = tmp_path / f"x.{ext}"
    drawn().save(path, fmt)
    arr = load_base(path, (16, 16), 3, "resize")
    assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8
    assert arr[2, 2, 0] > 150 and arr[2, 2, 1] < 120  # the red corner survived
    assert arr[-2, -2].min() > 200  # white elsewhere


def test_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    arr = load_base(tmp_path / "a.gif", (8, 8), 3, "resize")
    assert arr[..., 0].mean() > 200 and arr[..., 2].mean() < 50


def test_modes_convert_to_model_channels(tmp_path):
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 10, 20))  # left half opaque blue
    rgba.save(tmp_path / "rgba.png")
    arr = load_base(tmp_path / "rgba.png", (20, 20), 3, "resize")
    assert tuple(arr[10, 15]) == (255, 255, 255)  # transparent -> composited on white
    assert tuple(arr[10, 3]) == (0, 0, 255)

    drawn(mode="P").save(tmp_path / "p.png")
    drawn(mode="L").save(tmp_path / "l.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # cyan-free -> red
    cmyk = load_base(tmp_path / "cmyk.jpg", (8, 8), 3, "resize")
    assert cmyk[..., 0].mean() > 200 and cmyk[..., 1].mean() < 60

    sixteen = np.full((20, 20), 65535, dtype=np.uint16)
    sixteen[:, :10] = 0
    Image.fromarray(sixteen).save(tmp_path / "i16.png")  # opens as I;16 or I
    arr16 = load_base(tmp_path / "i16.png", (20, 20), 1, "resize")
    assert arr16.shape == (20, 20, 1) and arr16[0, 0, 0] == 0 and arr16[0, -1, 0] == 255
    assert load_base(tmp_path / "i16.png", (20, 20), 3, "resize").shape == (20, 20, 3)

    for name in ("p.png", "l.png", "rgba.png", "cmyk.jpg"):
        assert load_base(tmp_path / name, (8, 8), 1, "resize").shape == (8, 8, 1)
        assert load_base(tmp_path / name, (8, 8), 3, "resize").shape == (8, 8, 3)


def test_exif_orientation_applied(tmp_path):
    im = drawn((40, 20))  # wide, red block top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    arr = load_base(tmp_path / "rot.jpg", (40, 20), 3, "resize")  # H=40, W=20: portrait after rotation
    # Rotating CW moves the top-left block to the top-right.
    assert arr[3, -4, 0] > 150 and arr[3, -4, 1] < 120
    assert arr[3, 3].min() > 200


def test_jpeg_draft_keeps_the_picture(tmp_path):
    drawn((1600, 1200)).save(tmp_path / "big.jpg", quality=90)
    fast = load_base(tmp_path / "big.jpg", (64, 64), 3, "center-crop", draft=True)
    slow = load_base(tmp_path / "big.jpg", (64, 64), 3, "center-crop", draft=False)
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 3


# -- bad input -----------------------------------------------------------------------------------


def test_bad_files_are_skipped_and_named(tmp_path):
    root = make_folder(tmp_path / "d", {"cat": 6, "dog": 6})
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "cat" / "corrupt.jpg").write_bytes(b"this is not a jpeg" * 10)
    (root / "dog" / "notes.txt").write_text("ignored: not an image extension")
    drawn((300, 300)).save(root / "dog" / "huge.png")
    with pytest.warns(SkippedImageWarning) as record:
        train, val = image_dataset_from_directory(
            root, image_size=(16, 16), batch_size=4, num_workers=0, max_pixels=200 * 200
        )
    named = {Path(p).name for p, _ in train.skipped}
    assert named == {"empty.png", "corrupt.jpg", "huge.png"}
    assert all(any(n in str(w.message) for w in record) for n in named)
    assert dict((Path(p).name, r) for p, r in train.skipped)["huge.png"].startswith("refused")
    assert len(train.file_paths) + len(val.file_paths) == 12
    assert not any(p.endswith(".txt") for p in train.file_paths)
    with pytest.raises(DatasetError, match="corrupt.jpg|empty.png|huge.png"):
        image_dataset_from_directory(root, image_size=(16, 16), on_error="raise", max_pixels=200 * 200)


def _png_with_declared_size(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_decompression_bomb_refused_by_name(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 3, "b": 3})
    _png_with_declared_size(root / "a" / "bomb.png", 100_000, 100_000)
    with pytest.warns(SkippedImageWarning, match="bomb.png"):
        train, val = image_dataset_from_directory(root, image_size=8, num_workers=0)
    assert [Path(p).name for p, _ in train.skipped] == ["bomb.png"]


def test_truncated_file_mid_epoch_is_replaced_and_reported(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 5, "b": 5}, size=(64, 64), fmt="JPEG")
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "a" / "img_001.jpg", quality=95)  # pixel data dominates the file
    _truncate(root / "a" / "img_001.jpg", 0.5)  # header intact: passes the scan, fails to decode
    train = image_dataset_from_directory(
        root, validation_split=None, image_size=8, batch_size=4, num_workers=1
    )
    with pytest.warns(SkippedImageWarning, match="img_001.jpg"):
        seen = sum(len(y) for _, y in train)
    assert seen == 10  # the epoch completes with a replacement sample
    assert [Path(p).name for p, _ in train.skipped] == ["img_001.jpg"]


@pytest.mark.parametrize(
    "layout,match",
    [
        ({}, "no class sub-folders"),
        ({"loose": True}, "no class sub-folders"),
        ({"a": 3, "b": 0}, "no usable images"),
        ({"only": 4}, "at least 2"),
    ],
)
def test_folder_errors_name_the_folder(tmp_path, layout, match):
    root = tmp_path / "data"
    root.mkdir()
    if layout.pop("loose", False):
        drawn().save(root / "x.png")
    for cls, n in layout.items():
        (root / cls).mkdir()
        for i in range(n):
            drawn().save(root / cls / f"{i}.png")
    with pytest.raises(DatasetError, match=match) as err:
        image_dataset_from_directory(root, image_size=8)
    assert str(root) in str(err.value)
    with pytest.raises(DatasetError, match="does not exist"):
        image_dataset_from_directory(tmp_path / "missing", image_size=8)


# -- datasets --------------------------------------------------------------------------------------


def test_image_dataset_from_directory_batches(tmp_path):
    root = make_folder(tmp_path / "d", {"b_cls": 7, "a cls": 8})
    train, val = image_dataset_from_directory(root, image_size=(24, 20), batch_size=4, num_workers=0, seed=1)
    assert train.class_names == ["a cls", "b_cls"]
    assert (len(train.file_paths), len(val.file_paths)) == (12, 3)
    assert not set(train.file_paths) & set(val.file_paths)
    assert len(train) == 3
    x, y = next(iter(train))
    assert x.shape == (4, 3, 24, 20) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1  # normalize="none"
    for path, label in zip(train.file_paths, train.labels):
        assert Path(path).parent.name == train.class_names[label]
    json.dumps(train.split)  # JSON-able for the run folder
    gray = image_dataset_from_directory(
        root, validation_split=None, image_size=8, color_mode="grayscale", num_workers=0
    )
    assert next(iter(gray))[0].shape[1] == 1


def test_presplit_folder_used_as_is(tmp_path):
    for sub, n in [("train", 5), ("val", 2), ("test", 3)]:
        make_folder(tmp_path / "d" / sub, {"x": n, "y": n})
    train, val = image_dataset_from_directory(tmp_path / "d", image_size=8, num_workers=0)
    assert len(train.file_paths) == 10 and len(val.file_paths) == 4
    assert all("/val/" in p for p in val.file_paths)
    assert train.test is not None and len(train.test.file_paths) == 6


def test_saved_split_is_reproduced(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 10, "b": 10})
    first = load_data(root, image_size=8, augment="none", normalize="imagenet", num_workers=0, seed=5)
    make_folder(tmp_path / "d", {"a": 14, "b": 10})  # new files since the run
    again = load_data(
        root,
        image_size=8,
        augment="none",
        normalize="imagenet",
        num_workers=0,
        split=json.loads(json.dumps(first.split)),
    )
    assert again.val.file_paths == first.val.file_paths
    assert again.train.file_paths == first.train.file_paths


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_caches_give_the_same_images(tmp_path, cache):
    root = make_folder(tmp_path / "d", {"a": 4, "b": 4}, fmt="JPEG")
    kw = dict(image_size=16, augment="none", normalize="imagenet", num_workers=0, val_split=None)
    plain_loader = load_data(root, **kw).train
    plain_loader.sampler.shuffle = False  # compare file by file
    plain = torch.cat([x for x, _ in plain_loader])
    cached = load_data(root, cache=cache, cache_dir=tmp_path / "cache", **kw)
    cached.train.sampler.shuffle = False
    for _ in range(2):  # the second epoch reads the cache
        assert torch.equal(torch.cat([x for x, _ in cached.train]), plain)
    if cache == "disk":
        assert len(list((tmp_path / "cache").rglob("*.npy"))) == 8


def test_auto_cache_holds_a_small_folder_in_memory_and_a_large_one_not(tmp_path, monkeypatch):
    from convnets.data import datasets

    root = make_folder(tmp_path / "d", {"a": 4, "b": 4}, fmt="JPEG")
    kw = dict(image_size=16, augment="none", normalize="imagenet", val_split=None, cache="auto")
    small = load_data(root, **kw)
    assert small.train.dataset.dataset.cache == "memory"
    assert small.train.num_workers == 0  # in memory: nothing left to decode in workers
    decoded = []
    monkeypatch.setattr(datasets.FileDataset, "_decode", lambda self, i: decoded.append(i))
    for _ in range(2):
        assert len(torch.cat([x for x, _ in small.train])) == 8
    assert decoded == []  # both epochs read the memory cache
    monkeypatch.undo()
    # 8 images x 18 x 18 x 3 bytes (the base size for 16 px) is over a 1 kB budget
    monkeypatch.setattr(datasets, "memory_cache_budget", lambda: 1000)
    assert load_data(root, **kw).train.dataset.dataset.cache is None


def test_workers_default_leaves_the_cores_to_the_training_threads(monkeypatch):
    from convnets.data import loaders

    monkeypatch.setattr(loaders, "cpu_count", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert loaders.default_num_workers(in_memory=False) == 0  # intra-op threads hold all 8 cores
    assert loaders.default_num_workers(in_memory=False, device_type="cuda") == 8  # the GPU computes
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert loaders.default_num_workers(in_memory=False) == 6
    assert loaders.default_num_workers(in_memory=True, device_type="cuda") == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two ranks share the 8 cores
    assert loaders.default_num_workers(in_memory=False) == 2  # (8 - 2 x 2 threads) / 2 ranks
    assert loaders.default_num_workers(in_memory=False, device_type="cuda") == 4


def test_load_images_reports_unreadable_files(tmp_path):
    make_folder(tmp_path / "d", {"a": 3, "b": 2})
    (tmp_path / "d" / "a" / "bad.png").write_bytes(b"nope")
    batches = list(
        load_images([tmp_path / "d", tmp_path / "missing.jpg"], ["a", "b"], image_size=16, batch_size=4)
    )
    images = torch.cat([b.images for b in batches])
    errors = [e for b in batches for e in b.errors]
    assert images.shape == (5, 3, 16, 16)
    assert {Path(p).name for p, _ in errors} == {"bad.png", "missing.jpg"}
    labels = torch.cat([b.labels for b in batches])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1]
    x, paths, errs = batches[0]  # unpacks as a 3-tuple
    assert len(paths) == len(x)


@pytest.mark.shared
def test_alpaca_integration(shared_data):
    splits = load_data(
        shared_data / "alpaca",
        image_size=32,
        augment="none",
        normalize="inception",
        num_workers=0,
        batch_size=64,
    )
    assert splits.class_names == ["alpaca", "not alpaca"]
    assert splits.train.num_samples + splits.val.num_samples == 327
    assert (splits.train.num_samples, splits.val.num_samples) == (262, 65)
    assert splits.skipped == []
    x, y = next(iter(splits.val))
    assert x.shape == (64, 3, 32, 32) and -1.01 <= x.min() and x.max() <= 1.01


def test_garbage_is_freed_in_the_parent_before_a_worker_forks(tmp_path):
    """Objects left in reference cycles are collected before DataLoader forks its workers, so none is
    freed inside a worker: an ONNX Runtime session freed there hung on its thread pool (its destructor
    needs threads the child does not have), which stalled a test run under pytest-xdist for good."""
    import gc
    import os

    from torch.utils.data import DataLoader, Dataset

    import convnets.data.loaders  # noqa: F401 - registers the before-fork collection

    freed_in = tmp_path / "freed_in"

    class Cyclic:
        def __del__(self):
            freed_in.write_text(str(os.getpid()))

    class Collecting(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            gc.collect()  # a worker's own collection: would free the cycle here if it were still there
            return torch.zeros(1)

    gc.disable()  # keep the cycle alive until the fork, as a busy process may
    try:
        garbage = Cyclic()
        garbage.self = garbage
        del garbage
        for _ in DataLoader(Collecting(), num_workers=1, multiprocessing_context="fork"):
            pass
    finally:
        gc.enable()
    assert freed_in.read_text() == str(os.getpid())
