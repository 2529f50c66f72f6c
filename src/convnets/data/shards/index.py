"""A shard set's format: ``index.json`` (:class:`ShardIndex`) and how a sample's image is stored, which
the writer (``write.py``) and the reader (``read.py``) share."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...base.atomic import atomic_write_json

INDEX_FILE = "index.json"
RAW_PREFIX = "u8."  # member extension of decoded pixels: "u8.73x73x3"


@dataclass
class ShardInfo:
    url: str  # relative to the index's folder, or a URL the webdataset library opens
    count: int


@dataclass
class ShardIndex:
    """``index.json``: what a shard set holds."""

    class_names: list[str]
    train: list[ShardInfo]
    val: list[ShardInfo]
    counts: dict[str, int]  # images per class (train + val)
    stored: str  # "original" (the files' own bytes) or "resized" (JPEG of the base image)
    image_size: int | None = None  # the stored base size when resized
    source: str = ""
    val_split: float | None = None
    seed: int = 0
    skipped: list = field(default_factory=list)  # (file, reason) left out at write time
    version: int = 1

    def write(self, folder: Path) -> Path:
        path = Path(folder) / INDEX_FILE
        atomic_write_json(path, asdict(self))
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> ShardIndex:
        path = Path(path)
        if path.is_dir():
            path = path / INDEX_FILE
        try:
            raw = json.loads(path.read_text())
            raw["train"] = [ShardInfo(**s) for s in raw["train"]]
            raw["val"] = [ShardInfo(**s) for s in raw["val"]]
            return cls(**raw)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a readable shard index ({type(e).__name__}: {e})") from e

    def resolve(self, folder: Path, shards: list[ShardInfo]) -> list[tuple[str, int]]:
        """(URL the webdataset library opens, sample count) per shard."""
        out = []
        for s in shards:
            remote = "://" in s.url or s.url.startswith("pipe:")
            out.append((s.url if remote else str(Path(folder) / s.url), s.count))
        return out


def is_shard_source(source: str | os.PathLike) -> bool:
    path = Path(os.path.expanduser(str(source)))
    return (path.is_dir() and (path / INDEX_FILE).is_file()) or (path.name == INDEX_FILE and path.is_file())
