"""Writing a shard set: ``write_shards(DATA, OUT)`` (``convnets shard``)."""

from __future__ import annotations

import os
import random
import re
import time
import warnings
from pathlib import Path

from ..decode import ImageReadError, SkippedImageWarning, base_size, load_base
from ..folder import scan_folder
from ..split import stratified_split
from .index import RAW_PREFIX, ShardIndex, ShardInfo

DEFAULT_SHARD_SIZE = "512MB"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``"512MB"``, ``"64k"``, ``1000000`` -> bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"--shard-size: {text!r} is not a size such as 512MB, 64MB or 1GB")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index((m.group(2) or "_").lower()))


def _tar_bytes(data: bytes) -> int:
    """A tar member's size on disk: a 512-byte header and the data padded to 512."""
    return 512 + -(-len(data) // 512) * 512


def write_shards(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shard_size: str | int = DEFAULT_SHARD_SIZE,
    val_split: float | None = 0.2,
    seed: int = 0,
    resize: int | None = None,
    progress: bool = True,
) -> ShardIndex:
    """Write ``data`` (a folder of class sub-folders) as WebDataset shards + ``index.json`` in ``out``.

    ``resize`` stores each image decoded and brought to a ``resize``-pixel base (the folder pipeline's
    centre-crop base, JPEG quality 95) instead of the file's own bytes.
    """
    import webdataset as wds  # optional: convnets[shards]
    from tqdm.auto import tqdm  # start-up: only to write shards

    max_bytes = parse_size(shard_size)
    out = Path(out)
    if out.exists() and any(out.glob("*.tar")):
        raise ValueError(f"--out: {out} already holds shards; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    scan = scan_folder(data)
    root = Path(data)
    rel, files = scan.rel_paths, scan.files
    if val_split:
        train_idx, val_idx = stratified_split(rel, scan.labels, val_split, seed)
    else:
        train_idx, val_idx = list(range(len(rel))), []
    random.Random(seed).shuffle(train_idx)  # classes mixed along the shards: contiguous ranges are random
    skipped: list = [list(s) for s in scan.skipped]  # scan_folder has reported these already
    reported = len(skipped)
    base = base_size((resize, resize), "center-crop") if resize else None

    def payload(i: int) -> tuple[str, bytes]:
        path = files[i]
        if base is None:
            ext = Path(path).suffix.lower().lstrip(".")
            return ("jpg" if ext == "jpeg" else ext), Path(path).read_bytes()
        arr = load_base(path, base)  # decoded pixels: streaming then skips decoding entirely
        return f"{RAW_PREFIX}{arr.shape[0]}x{arr.shape[1]}x{arr.shape[2]}", arr.tobytes()

    bar = tqdm(total=len(rel), desc="shards", unit="img", disable=not progress)

    def write(split: str, indices: list[int]) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        writer = None
        size = 0
        for i in indices:
            try:
                ext, data_bytes = payload(i)
            except (ImageReadError, OSError) as e:
                skipped.append([rel[i], str(e)])
                bar.update()
                continue
            if writer is None or size + len(data_bytes) > max_bytes and shards[-1].count:
                if writer is not None:
                    writer.close()
                name = f"{split}-{len(shards):06d}.tar"
                # An integer mtime: plain ustar headers (a float one adds a PAX header per member).
                writer = wds.TarWriter(str(out / name), encoder=False, mtime=int(time.time()))
                shards.append(ShardInfo(name, 0))
                size = 0
            key = f"{len(shards) - 1:06d}_{shards[-1].count:07d}"
            writer.write(
                {"__key__": key, ext: data_bytes, "cls": str(scan.labels[i]).encode(), "txt": rel[i].encode()}
            )
            shards[-1].count += 1
            size += _tar_bytes(data_bytes) + 2 * _tar_bytes(b"x" * 64)  # + the cls and txt members
            bar.update()
        if writer is not None:
            writer.close()
        return shards

    train = write("train", train_idx)
    val = write("val", val_idx)
    bar.close()
    for name, reason in skipped[reported:]:
        warnings.warn(f"skipping {name}: {reason}", SkippedImageWarning, stacklevel=2)
    counts = {c: 0 for c in scan.class_names}
    for label in scan.labels:
        counts[scan.class_names[label]] += 1
    index = ShardIndex(
        class_names=list(scan.class_names),
        train=train,
        val=val,
        counts=counts,
        stored="resized" if base else "original",
        image_size=resize,
        source=str(root.resolve()),
        val_split=val_split,
        seed=seed,
        skipped=skipped,
    )
    os.chmod(index.write(out), 0o644)  # shards on shared storage: readable by every user, as the tars
    return index
