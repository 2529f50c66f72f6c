"""Data layer: datasets from a folder or a built-in name, the split, augmentation, loaders.

Public entry points (see docs/ARCHITECTURE.md, "Data"):

* ``load_data(source, *, image_size, in_chans, ...) -> DataSplits`` -- what train/evaluate/compare use;
* ``image_dataset_from_directory(directory, validation_split=0.2, ...) -> (train, val)`` -- Keras-style;
* ``load_images(paths, class_names=None, *, image_size, in_chans, mean, std)`` -- prediction batches;
* ``build_train_transform`` / ``build_eval_transform`` / ``parse_ops`` / ``PRESETS`` -- augmentation.
"""

from __future__ import annotations

from ..base.lazy import lazy_exports

# Lazy (PEP 562): `convnets.data.decode` and `convnets.data.images` are torch-free, and importing
# them must not pull in torch through this package's __init__ (the server and `predict` on an
# exported model start without torch).
_EXPORTS = {
    "BUILTIN_NAMES": "builtin",
    "ColorShift": "augment_ops",
    "DataSplits": "pipeline",
    "DatasetError": "folder",
    "IMAGE_EXTENSIONS": "decode",
    "ImageBatch": "pipeline",
    "ImageLoader": "loaders",
    "ImageReadError": "decode",
    "OPS": "augment",
    "PCAColor": "augment_ops",
    "PRESETS": "augment",
    "SeededSampler": "loaders",
    "SkippedImageWarning": "decode",
    "TORCHVISION": "builtin",
    "build_eval_transform": "augment",
    "build_train_transform": "augment",
    "channel_stats": "pca",
    "default_num_workers": "loaders",
    "expand_paths": "images",
    "find_presplit": "folder",
    "image_dataset_from_directory": "pipeline",
    "load_base": "decode",
    "load_data": "pipeline",
    "load_images": "pipeline",
    "load_run_splits": "run_splits",
    "parse_ops": "augment",
    "pca_stats": "pca",
    "probe": "decode",
    "read_image": "images",
    "read_images": "images",
    "resolve_normalization": "pipeline",
    "run_data_source": "run_splits",
    "scan_folder": "folder",
    "stratified_split": "split",
    "to_input": "images",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
