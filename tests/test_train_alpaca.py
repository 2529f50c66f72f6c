"""Integration: the course's transfer-learning recipe on the real alpaca photos with the real
ImageNet-pretrained MobileNetV2 (../shared/data; skipped when absent).

160x160, inputs in [-1, 1] (`--normalize inception`), base frozen while the new head trains on
cached features, then the last two stages fine-tuned at lr x 0.1. A linear probe on these features
gets about 0.91 (../shared/data/weights/README.md). Measured: best validation accuracy 0.938
(61/65) in about 3 minutes on the shared 2-core machine (under load).
"""

from __future__ import annotations

import json

import pytest

from convnets.train import train


@pytest.mark.slow
@pytest.mark.shared
def test_alpaca_mobilenet_v2_course_recipe(shared_data, tmp_path):
    weights = shared_data / "weights" / "mobilenet_v2_imagenet.pth"
    result = train(
        shared_data / "alpaca",
        model="mobilenet_v2",
        out=tmp_path / "alpaca",
        weights=str(weights),
        normalize="inception",
        image_size=160,
        fine_tune_last=2,
        epochs=10,
        fine_tune_epochs=2,
        lr=1e-2,
        workers=0,
        quiet=True,
    )
    phases = [h["phase"] for h in result.history]
    assert phases == ["head"] * 10 + ["finetune"] * 2
    config = json.loads((tmp_path / "alpaca" / "config.json").read_text())
    assert config["mean"] == [0.5, 0.5, 0.5] and config["std"] == [0.5, 0.5, 0.5]
    assert config["class_names"] == ["alpaca", "not alpaca"]
    assert config["split"]["n_val"] == 65  # the lists themselves are in split.json
    assert result.best_val_acc >= 0.90
