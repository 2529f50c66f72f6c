"""Data layer: datasets from a folder or a built-in name, the split, augmentation, loaders.

Public entry points (see docs/ARCHITECTURE.md, "Data"):

* ``load_data(source, *, image_size, in_chans, ...) -> DataSplits`` -- what train/evaluate/compare use;
* ``image_dataset_from_directory(directory, validation_split=0.2, ...) -> (train, val)`` -- Keras-style;
* ``load_images(paths, class_names=None, *, image_size, in_chans, mean, std)`` -- prediction batches;
* ``build_train_transform`` / ``build_eval_transform`` / ``parse_ops`` / ``PRESETS`` -- augmentation.
"""

from .augment import (
    OPS,
    PRESETS,
    ColorShift,
    PCAColor,
    build_eval_transform,
    build_train_transform,
    parse_ops,
)
from .builtin import BUILTIN_NAMES, TORCHVISION
from .decode import IMAGE_EXTENSIONS, ImageReadError, SkippedImageWarning, load_base, probe
from .folder import DatasetError, find_presplit, scan_folder
from .loaders import ImageLoader, SeededSampler, default_num_workers
from .pca import channel_stats, pca_stats
from .pipeline import (
    DataSplits,
    ImageBatch,
    expand_paths,
    image_dataset_from_directory,
    load_data,
    load_images,
    resolve_normalization,
)
from .split import stratified_split

__all__ = [
    "BUILTIN_NAMES",
    "IMAGE_EXTENSIONS",
    "OPS",
    "PRESETS",
    "TORCHVISION",
    "ColorShift",
    "DataSplits",
    "DatasetError",
    "ImageBatch",
    "ImageLoader",
    "ImageReadError",
    "PCAColor",
    "SeededSampler",
    "SkippedImageWarning",
    "build_eval_transform",
    "build_train_transform",
    "channel_stats",
    "default_num_workers",
    "expand_paths",
    "find_presplit",
    "image_dataset_from_directory",
    "load_base",
    "load_data",
    "load_images",
    "parse_ops",
    "pca_stats",
    "probe",
    "resolve_normalization",
    "scan_folder",
    "stratified_split",
]
