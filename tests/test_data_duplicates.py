"""data/duplicates.py: train's exact-copy pre-check across the split (same bytes, or same decoded pixels)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from convnets.data.duplicates import DataLeakageWarning, exact_duplicates_across, warn_split_duplicates
from convnets.doctor.synthetic import random_picture


def test_train_precheck_finds_exact_copies_across_the_split(tmp_path):
    rng = np.random.default_rng(7)
    train = [tmp_path / f"t{i}.png" for i in range(5)]
    for p in train:
        random_picture(rng, (32, 32), 0.2).save(p)
    val = [tmp_path / "v0.png", tmp_path / "v1.png", tmp_path / "v2.png"]
    val[0].write_bytes(train[1].read_bytes())  # same bytes
    Image.open(train[2]).save(val[1], compress_level=1)  # same pixels, other bytes
    random_picture(rng, (32, 32), 0.2).save(val[2])
    assert sorted(exact_duplicates_across(train, val)) == [
        (str(val[0]), str(train[1])),
        (str(val[1]), str(train[2])),
    ]
    split = {"root": str(tmp_path), "train": [p.name for p in train], "val": [p.name for p in val]}
    with pytest.warns(DataLeakageWarning, match="2 validation image"):
        assert warn_split_duplicates(split) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_split_duplicates({"train": [0, 1], "val": [2]}) == 0  # a built-in dataset
