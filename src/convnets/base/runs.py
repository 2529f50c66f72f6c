"""The run folder: its file names, its typed ``config.json`` (:class:`RunConfig`), and reading/writing it.

Training writes a run folder; evaluate, predict, export, report, compare, serve, doctor and explain
read it. This module is their one shared definition, and it imports neither torch nor torchvision
so that a server or ``predict`` on an exported model starts without them.

Layout::

    RUN_DIR/config.json          RunConfig (this module); small at any data size
    RUN_DIR/split.json           the train/validation file lists (its sha256 is in config.json)
    RUN_DIR/model.safetensors    best weights (by validation score)
    RUN_DIR/metrics.jsonl        one line per epoch
    RUN_DIR/last.pt              training state for --resume
    RUN_DIR/curves.png, confusion_matrix.png
    RUN_DIR/model.onnx           the exported model (written on first use, see export.py)
    RUN_DIR/export.json          its weights fingerprint, engine checks, int8 accuracy (exported.py)
    RUN_DIR/model.int8.onnx      the int8 model of `convnets export RUN --int8` (quantize.py)

``schema_version`` 1 is the first versioned layout; folders written before it (no version) have the
same keys and load as version 1. A folder written by a newer convnets is refused with a message.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, atomic_write_json
from .choices import RESIZE_MODES, resize_mode
from .errors import ConvnetsError

SCHEMA_VERSION = 1

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"  # the split's file lists, out of config.json (1.2 MB for 50,000 images)
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
LAST_CHECKPOINT = "last.pt"
CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion_matrix.png"
ONNX_FILE = "model.onnx"
EXPORT_INFO_FILE = "export.json"
INT8_ONNX_FILE = "model.int8.onnx"  # written by `convnets export RUN --int8`
OPENVINO_CACHE_DIR = "openvino_cache"  # OpenVINO's compiled-model cache for the exports
COST_FILE = "cost.json"  # params and multiply-adds, cached by the server (serve/model_info.py)
OOD_FILE = "ood.safetensors"  # class centres + shared precision matrix of the OOD detector (trust/ood.py)

# The files whose presence means "a run is already here" (train refuses to overwrite them).
RUN_FILES = (WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE, LAST_CHECKPOINT)


class RunFolderError(ConvnetsError, ValueError):
    """A folder that is not a usable run: missing, not a run, bad JSON, or from a newer convnets."""


@dataclass
class DataSource:
    """Where the training data came from, and how the validation split was drawn."""

    source: str
    val_split: float | None = 0.2
    seed: int = 0


@dataclass
class BestEpoch:
    epoch: int | None = None
    val_acc: float | None = None
    val_bal_acc: float | None = None  # set when classes are imbalanced: the best epoch is chosen by it


@dataclass
class OODConfig:
    """The out-of-distribution detector fitted for the run (``convnets.trust.ood``); its arrays are in
    ``file`` beside config.json."""

    method: str = "mahalanobis-l2"
    threshold: float = 0.0  # scores above it are flagged
    quantile: float = 0.95  # share of the validation images that pass
    file: str = OOD_FILE
    n_train: int = 0
    n_val: int = 0


@dataclass
class RunConfig:
    """``RUN_DIR/config.json``: everything needed to rebuild, run and describe a trained model."""

    model: str
    num_classes: int
    class_names: list[str]
    image_size: tuple[int, int]
    in_chans: int = 3
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    head: str = "default"  # "transfer": the head was replaced with reset_classifier
    head_dropout: float | None = None
    # How every reader brings an image to image_size (train --resize): center-crop (crop), resize
    # (squash) or letterbox; base/choices.py names them. Old runs without the key centre-crop.
    resize: str = "center-crop"
    mean: tuple[float, ...] | None = None  # None: the model takes unnormalised [0, 1] input
    std: tuple[float, ...] | None = None
    normalize: str | bool = "dataset"
    data: DataSource | None = None
    split: dict[str, Any] | None = None
    weights: str | None = None
    phases: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    best: BestEpoch | None = None
    temperature: float | None = None  # logits / T before softmax (``evaluate --calibrate``)
    ood: OODConfig | None = None
    recipe: dict[str, Any] | None = None  # the named recipe's values (train/recipes.py recipe_record)
    # --lr auto: per phase, the range test's suggestion and how it was chosen (train/lr_find.py).
    lr_find: list[dict[str, Any]] | None = None
    # train --cpu-kernels: "auto", or "off" (bf16 on a CPU without the hand-written kernels and module
    # rewrites, accel/plan.py). None: a run written before the switch, which trained as "auto" does.
    cpu_kernels: str | None = None
    schema_version: int = SCHEMA_VERSION
    # Keys this version does not know (written by tools or later additions): kept on a rewrite.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Each field checked by name: a damaged config.json says which value is wrong.
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        if not isinstance(self.image_size, (list, tuple)) or len(self.image_size) != 2:
            raise ValueError(f"image_size must be [height, width], got {self.image_size!r}")
        self.image_size = tuple(_whole_number("image_size", v) for v in self.image_size)
        if self.mean is not None:
            self.mean = _numbers("mean", self.mean)
            self.std = _numbers("std", self.std if self.std is not None else ())
        self.num_classes = _whole_number("num_classes", self.num_classes)
        self.in_chans = _whole_number("in_chans", self.in_chans)
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a model name, got {self.model!r}")
        if not isinstance(self.class_names, list) or len(self.class_names) != self.num_classes:
            n = len(self.class_names) if isinstance(self.class_names, list) else self.class_names
            raise ValueError(f"class_names has {n} names for num_classes {self.num_classes}")
        self.class_names = [str(c) for c in self.class_names]
        for name, kind in (("model_kwargs", dict), ("options", dict), ("versions", dict), ("phases", list)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a JSON {'object' if kind is dict else 'list'}")
        if self.temperature is not None:
            self.temperature = _positive("temperature", self.temperature)
        if isinstance(self.data, dict):
            self.data = DataSource(**self.data)
        if isinstance(self.best, dict):
            self.best = BestEpoch(**{k: self.best.get(k) for k in ("epoch", "val_acc", "val_bal_acc")})
        if isinstance(self.ood, dict):
            self.ood = OODConfig(**self.ood)
        try:
            self.resize = resize_mode(self.resize)  # --resize names (crop, squash) -> stored modes
        except ValueError:
            raise ValueError(f"resize {self.resize!r} is not one of {', '.join(RESIZE_MODES)}") from None

    # -- derived -----------------------------------------------------------------------------

    @property
    def test_views(self) -> str:
        """The TTA mode evaluate and predict use when not told: the views the run validated on."""
        return self.options.get("val_tta") or "none"

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per input channel, as the model's input expects them (identity when the run
        trained on unnormalised input)."""
        if self.normalize is False or self.mean is None:
            return (0.0,) * self.in_chans, (1.0,) * self.in_chans
        return _fit_channels(self.mean, self.in_chans), _fit_channels(self.std, self.in_chans)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, *self.image_size)

    # -- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["image_size"] = list(self.image_size)
        out["mean"] = list(self.mean) if self.mean is not None else None
        out["std"] = list(self.std) if self.std is not None else None
        out["data"] = asdict(self.data) if self.data is not None else None
        if self.best is not None:  # val_bal_acc only where classes were imbalanced
            out["best"] = {k: v for k, v in asdict(self.best).items() if k != "val_bal_acc" or v is not None}
        out["ood"] = asdict(self.ood) if self.ood is not None else None
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = CONFIG_FILE) -> RunConfig:
        version = int(raw.get("schema_version", 1))
        if version > SCHEMA_VERSION:
            raise RunFolderError(
                f"{where}: written by a newer convnets (run schema {version}; this version reads up to "
                f"{SCHEMA_VERSION}); upgrade convnets to use this run"
            )
        missing = [k for k in ("model", "num_classes") if k not in raw]
        if missing:
            raise RunFolderError(f"{where}: missing {', '.join(missing)}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in raw.items() if k in known and v is not None}
        if "class_names" not in values:
            try:
                n = _whole_number("num_classes", raw["num_classes"])
                values["class_names"] = [str(i) for i in range(n)]
            except ValueError as e:
                raise RunFolderError(f"{where}: {e}") from None
        values.setdefault("image_size", (224, 224))
        # Runs written before "resize" was a top-level key recorded it only among the options.
        if "resize" not in values and isinstance(raw.get("options"), dict) and raw["options"].get("resize"):
            values["resize"] = raw["options"]["resize"]
        values["schema_version"] = SCHEMA_VERSION
        extra = {k: v for k, v in raw.items() if k not in known}
        try:
            return cls(**values, extra=extra)
        except (TypeError, ValueError) as e:
            raise RunFolderError(f"{where}: {e}") from e

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> RunConfig:
        """``RUN_DIR/config.json``, checked: a clear :class:`RunFolderError` for anything else."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise RunFolderError(f"run folder not found: {run_dir}")
        path = run_dir / CONFIG_FILE
        if not path.is_file():
            raise RunFolderError(f"{run_dir} is not a run folder: {CONFIG_FILE} is missing")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunFolderError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(raw, dict):
            raise RunFolderError(f"{path}: not a JSON object")
        if _is_split_ref(raw.get("split")):
            raw = {**raw, "split": _read_split(run_dir, raw["split"], path)}
        return cls.from_dict(raw, where=str(path))

    def write(self, run_dir: str | os.PathLike) -> Path:
        """config.json, with the split's file lists in split.json (written first; config.json keeps
        its name and sha256, checked on read). Runs written before kept the split inline: both load."""
        run_dir = Path(run_dir)
        raw = self.to_dict()
        if self.split is not None:
            data = json.dumps(self.split, separators=(",", ":")).encode()
            digest = hashlib.sha256(data).hexdigest()
            split_path = run_dir / SPLIT_FILE
            if not (split_path.is_file() and _sha256(split_path) == digest):  # rewritten only on change
                atomic_write_bytes(split_path, data)
            raw["split"] = {"file": SPLIT_FILE, "sha256": digest, **_split_counts(self.split)}
        return atomic_write_json(run_dir / CONFIG_FILE, raw)


def _is_split_ref(split: Any) -> bool:
    return isinstance(split, dict) and isinstance(split.get("file"), str) and "sha256" in split


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _split_counts(split: dict[str, Any]) -> dict[str, int]:
    """How many images each subset holds, for a reader of config.json (the lists are in split.json)."""
    return {f"n_{k}": len(split[k]) for k in ("train", "val", "test") if isinstance(split.get(k), list)}


def _read_split(run_dir: Path, ref: dict[str, Any], config_path: Path) -> dict[str, Any]:
    name = Path(ref["file"]).name  # the split lives beside config.json, never elsewhere
    path = run_dir / name
    if not path.is_file():
        raise RunFolderError(f"{path}: missing (config.json's split refers to it)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise RunFolderError(
            f"{path}: sha256 differs from the one recorded in {config_path} (the split file was "
            "changed or replaced after training)"
        )
    try:
        split = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(split, dict):
        raise RunFolderError(f"{path}: not a JSON object")
    return split


def weights_path(run_dir: str | os.PathLike) -> Path:
    """``RUN_DIR/model.safetensors``, checked to exist."""
    path = Path(run_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder: {WEIGHTS_FILE} is missing")
    return path


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def _whole_number(name: str, value: Any) -> int:
    """A positive whole number from config.json (``10``, ``10.0``, ``"10"``), else ValueError naming it."""
    try:
        number = int(value)
        ok = number == float(value) and number >= 1 and not isinstance(value, bool)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return number


def _positive(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 < number < float("inf") or isinstance(value, bool):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


def _numbers(name: str, values: Any) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if not out:
        raise ValueError(f"{name} must be a list of numbers, got {values!r}")
    return out


def _fit_channels(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    """Per-channel statistics for ``in_chans`` channels: RGB -> grey averages, one value repeats."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return (sum(values) / len(values),)
    if len(values) == 1:
        return values * in_chans
    raise RunFolderError(f"{len(values)} normalisation values for a {in_chans}-channel input")
