"""train --balance: weights, the balanced draw, and a higher recall for the small class of a 10:1 set."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from convnets.train.balance import balanced_accuracy, resolve_balance


def test_auto_turns_the_weighted_loss_on_above_3x_and_says_so():
    labels = [0] * 100 + [1] * 10 + [2] * 40
    b = resolve_balance("auto", labels, 3)
    assert b.mode == "loss" and b.imbalanced and b.ratio == 10
    assert torch.allclose(b.class_weights(), torch.tensor([150 / 300, 150 / 30, 150 / 120]))
    assert "10.0x" in b.message(["a", "b", "c"]) and "--balance auto" in b.message(["a", "b", "c"])
    even = resolve_balance("auto", [0] * 30 + [1] * 10, 2)
    assert even.mode == "none" and not even.imbalanced and even.message(["a", "b"]) is None
    assert resolve_balance("sampler", labels, 3).mode == "sampler"
    with pytest.raises(ValueError, match="--balance"):
        resolve_balance("oversample", labels, 3)


def test_the_balanced_draw_is_balanced_and_repeatable():
    labels = [0] * 900 + [1] * 100
    b = resolve_balance("sampler", labels, 2)
    drawn = b.draw(labels, seed=0, epoch=3)
    assert len(drawn) == 1000 and drawn == b.draw(labels, seed=0, epoch=3) != b.draw(labels, seed=0, epoch=4)
    share = Counter(labels[i] for i in drawn)[1] / len(drawn)
    assert 0.45 < share < 0.55


def test_balanced_accuracy_is_the_mean_recall():
    assert balanced_accuracy([90, 1], [100, 10]) == pytest.approx((0.9 + 0.1) / 2)
    assert balanced_accuracy([5, 0], [5, 0]) == 1.0  # a class absent from validation is left out


def _grey_folder(root, counts, seed):
    """Two overlapping classes of 16x16 noise, told apart by mean brightness (0.44 vs 0.56)."""
    rng = np.random.default_rng(seed)
    for name, n, mean in zip(("common", "rare"), counts, (0.44, 0.56)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            a = np.clip(mean + rng.normal(0, 0.06) + rng.normal(0, 0.15, (16, 16)), 0, 1)
            Image.fromarray((a * 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_balance_raises_the_minority_recall_on_a_10_to_1_set(tmp_path, one_thread, capsys):
    from convnets.deploy.evaluate import evaluate
    from convnets.train import train

    data = _grey_folder(tmp_path / "data", (200, 20), seed=0)
    test = _grey_folder(tmp_path / "test", (100, 100), seed=1)  # balanced: recall per class is fair
    recall = {}
    for mode in ("none", "auto", "sampler"):
        run = tmp_path / mode
        train(str(data), model="lenet5", out=run, epochs=10, lr=3e-3, workers=0, balance=mode, image_size=16)
        per_class = evaluate(run, test, backend="eager").metrics["per_class"]
        recall[mode] = per_class["rare"]["recall"]
        config = json.loads((run / "config.json").read_text())
        assert config["options"]["balance"] == mode
        assert config["best"]["val_bal_acc"] is not None  # chosen by balanced accuracy
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert all(line["val_bal_acc"] is not None for line in lines)
    out = capsys.readouterr().out
    assert "imbalanced classes: common has 160 training images, rare 16 (10.0x): class-weighted loss" in out
    assert "bal acc" in out
    # Measured with this data: none 0.34, auto (weighted loss) 0.54, sampler 0.88.
    assert recall["auto"] >= recall["none"] + 0.1, recall
    assert recall["sampler"] >= recall["none"] + 0.1, recall
