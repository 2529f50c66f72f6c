"""MixUp / CutMix as batch augmentation ops: parsing, the mixer, soft-target training, exact resume."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from train_shapes import make_shapes

from convnets.base.runs import RunConfig
from convnets.data.augment import PRESETS, batch_ops, parse_ops, sample_ops
from convnets.models.lenet import LeNet5
from convnets.train import TrainingInterrupted, train
from convnets.train.mixing import BatchMixer, batch_mixer, mixed_targets

COMMON = dict(model="lenet5", epochs=2, lr=3e-3, workers=0, quiet=True, device="cpu", batch_size=16)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("mix") / "shapes", per_class=10, size=16)


def test_batch_ops_parse_apart_from_the_image_ops():
    assert parse_ops("hflip,mixup") == [("hflip", 0.5), ("mixup", 0.4)]
    assert sample_ops("hflip,cutmix:0.5") == [("hflip", 0.5)]
    assert batch_ops("hflip,cutmix:0.5,mixup") == [("cutmix", 0.5), ("mixup", 0.4)]
    assert not any(batch_ops(p) for p in PRESETS)  # never in a preset
    with pytest.raises(ValueError, match="alpha must be > 0"):
        parse_ops("mixup:0")
    assert batch_mixer("light", 3, seed=0) is None


def test_mixer_is_a_pure_function_of_seed_epoch_and_batch():
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    mixer = BatchMixer([("mixup", 1.0), ("cutmix", 1.0)], num_classes=4, seed=3)
    rng = torch.get_rng_state()
    a, b = mixer(x, y, epoch=1, index=2), mixer(x, y, epoch=1, index=2)
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is neither read nor moved
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = mixer(x, y, epoch=1, index=3)
    assert not torch.equal(a[0], c[0])
    assert a[1].shape == (8, 4) and torch.allclose(a[1].sum(1), torch.ones(8))


def test_mixup_soft_labels_and_dominant_label():
    x = torch.randn(6, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    mixer = BatchMixer([("mixup", 1.0)], num_classes=3, seed=0)
    for index in range(5):
        mixed, soft, dominant = mixed_targets(mixer, x, y, epoch=0, index=index)
        # MixUp blends each image with the previous one (the batch rolled by one).
        lam = float(soft[0, y[0]])  # y[0] != y[-1]: its share is lambda
        assert torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)
        expected = y if lam >= 0.5 else y.roll(1, 0)
        if lam != 0.5:
            assert torch.equal(dominant, expected)
    assert mixed_targets(None, x, y, 0, 0) == (x, y, y)


def test_training_with_mixing_and_label_smoothing_and_class_weights(shapes, tmp_path, one_thread):
    mixed = dict(augment="hflip,cutmix,mixup", label_smoothing=0.1, balance="loss")
    result = train(shapes, out=tmp_path / "r", **mixed, **COMMON)
    assert len(result.history) == 2 and all(0 <= h["train_acc"] <= 1 for h in result.history)
    assert RunConfig.read(tmp_path / "r").options["augment"] == "hflip,cutmix,mixup"
    # The batch ops do change training (the per-image ops and everything else being equal).
    plain = train(shapes, out=tmp_path / "p", augment="hflip", label_smoothing=0.1, balance="loss", **COMMON)
    assert result.history[0]["train_loss"] != plain.history[0]["train_loss"]


def test_interrupted_mixup_run_resumes_exactly(shapes, tmp_path, one_thread):
    options = dict(COMMON, epochs=3, augment="hflip,mixup:1,cutmix")
    straight = train(shapes, out=tmp_path / "a", **options)
    count = {"n": 0}

    def hook(module, _inputs, _output):
        if isinstance(module, LeNet5) and module.training:
            count["n"] += 1
            if count["n"] == 3:  # epoch 2 (2 batches of 16 per epoch), first step
                os.kill(os.getpid(), signal.SIGINT)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with pytest.raises(TrainingInterrupted):
            train(shapes, out=tmp_path / "b", **options)
    finally:
        handle.remove()
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["partial"]["batch"] == 1
    torch.manual_seed(123)  # a different global RNG state must not matter to the mixing
    resumed = train(None, out=tmp_path / "b", resume=True, quiet=True)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [h["train_loss"] for h in straight.history]
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(losses)
    assert [h["train_acc"] for h in resumed.history] == [h["train_acc"] for h in straight.history]


def test_transfer_with_mixing_trains_the_head_on_mixed_images(shapes, tmp_path, one_thread):
    from convnets.models import create_model
    from convnets.weights import save_state_dict

    ckpt = tmp_path / "resnet20.safetensors"
    save_state_dict(create_model("resnet20", num_classes=10), ckpt)
    options = dict(COMMON, model="resnet20", weights=str(ckpt), freeze="base", epochs=1)
    train(shapes, out=tmp_path / "mix", augment="mixup", **options)
    train(shapes, out=tmp_path / "plain", augment="none", **options)
    # Pooled features of unmixed images cannot stand in for mixed ones: no feature cache then.
    assert RunConfig.read(tmp_path / "mix").phases[0]["cached"] is False
    assert RunConfig.read(tmp_path / "plain").phases[0]["cached"] is True
