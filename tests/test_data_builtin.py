"""Built-in datasets and load_data: digits, normalisation modes, offline torchvision failure."""

from __future__ import annotations

import json
import time
import urllib.error

import pytest
import torch

from convnets.data import DatasetError, load_data


def test_digits_loads_and_splits():
    splits = load_data("digits", image_size=16, in_chans=1, batch_size=64, augment="none", normalize="none")
    assert splits.class_names == [str(i) for i in range(10)]
    assert splits.train.num_samples + splits.val.num_samples == 1797
    assert splits.val.num_samples == pytest.approx(0.2 * 1797, abs=5)
    assert not set(splits.split["train"]) & set(splits.split["val"])
    assert splits.train.num_workers == 0  # in memory: no worker processes
    x, y = next(iter(splits.val))
    assert x.shape == (64, 1, 16, 16) and y.dtype == torch.int64
    assert x.min() == 0 and x.max() <= 1 and x.max() > 0.9  # 0..16 scaled to [0, 1]
    rgb = load_data("digits", image_size=8, in_chans=3, augment="light", normalize="imagenet")
    assert next(iter(rgb.train))[0].shape[1:] == (3, 8, 8)
    again = load_data("digits", image_size=8, in_chans=1, split=json.loads(json.dumps(splits.split)))
    assert again.val.file_paths == splits.val.file_paths


def test_normalisation_modes():
    common = dict(image_size=8, in_chans=3, augment="none")
    assert load_data("digits", normalize="imagenet", **common).mean == [0.485, 0.456, 0.406]
    inc = load_data("digits", normalize="inception", **common)
    assert inc.mean == [0.5] * 3 and inc.std == [0.5] * 3
    assert load_data("digits", normalize="auto", mean=[0.1] * 3, std=[0.2] * 3, **common).std == [0.2] * 3
    ds = load_data("digits", normalize="auto", **common)  # no model statistics -> the dataset's
    x = torch.cat([b for b, _ in ds.train])
    assert x.mean().abs() < 0.05 and (x.std() - 1).abs() < 0.05  # normalised by its own stats
    one = load_data("digits", image_size=8, in_chans=1, normalize="imagenet", augment="none")
    assert one.mean == [pytest.approx((0.485 + 0.456 + 0.406) / 3)]
    with pytest.raises(ValueError, match="normalize"):
        load_data("digits", normalize="zscore", **common)


def test_unknown_source_and_bad_augment():
    with pytest.raises(DatasetError, match="neither an existing folder nor a built-in"):
        load_data("no_such_dataset", image_size=8)
    with pytest.raises(ValueError, match="unknown augmentation"):
        load_data("digits", image_size=8, augment="spin")


def test_offline_torchvision_dataset_fails_fast_and_clearly(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class OfflineCIFAR10:
        def __init__(self, root, download=False, **kwargs):
            calls.append(download)
            if not download:
                raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd, "CIFAR10", OfflineCIFAR10)
    start = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        load_data("cifar10", image_size=32, data_root=tmp_path / "ds")
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "cifar10" in message and str(tmp_path / "ds") in message and "offline" in message
    assert calls == [False, True]  # looked on disk first, then tried to download


def test_torchvision_dataset_on_disk_is_used(tmp_path, monkeypatch):
    import numpy as np
    import torchvision.datasets as tvd

    class FakeMNIST:  # what torchvision's MNIST exposes: uint8 .data (N, 28, 28), .targets, .classes
        def __init__(self, root, train=True, download=False):
            assert not download
            n = 40 if train else 10
            self.data = torch.randint(0, 255, (n, 28, 28), dtype=torch.uint8)
            self.targets = torch.arange(n) % 2
            self.classes = ["0 - zero", "1 - one"]

    monkeypatch.setattr(tvd, "MNIST", FakeMNIST)
    splits = load_data(
        "mnist", image_size=14, in_chans=1, data_root=tmp_path, augment="none", normalize="none", batch_size=8
    )
    assert splits.class_names == ["0 - zero", "1 - one"]
    assert (splits.train.num_samples, splits.val.num_samples, splits.test.num_samples) == (32, 8, 10)
    assert next(iter(splits.train))[0].shape == (8, 1, 14, 14)
    assert np.isclose(splits.split["val_split"], 0.2)
