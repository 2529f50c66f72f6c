"""Transfer learning: what each freezing regime trains, frozen BatchNorm statistics, the two phases'
learning rates, the cached-feature head, and --freeze auto."""

from __future__ import annotations

import json

import pytest
import torch
from train_shapes import make_shapes

from convnets.models import create_model
from convnets.train import Phase, TrainOptions, apply_phase, choose_regime, plan_phases, set_bn_modes, train
from convnets.weights import save_state_dict


def _count(params) -> int:
    return sum(p.numel() for p in params)


def _trainable(model) -> int:
    return _count(p for p in model.parameters() if p.requires_grad)


def _bn_stats(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k}


@pytest.fixture
def model():
    m = create_model("resnet20", num_classes=10)
    m.reset_classifier(3, dropout=0.2)
    return m


def test_each_regime_trains_exactly_its_layers(model):
    head = _count(model.get_classifier().parameters())
    layer3 = _count(model.layer3.parameters())
    from_block = _count(model.layer3[1].parameters()) + _count(model.layer3[2].parameters())

    apply_phase(model, Phase("head", 1, 0.1, "head"))
    assert _trainable(model) == head
    apply_phase(model, Phase("finetune", 1, 0.01, "last:1"))
    assert _trainable(model) == head + layer3
    apply_phase(model, Phase("finetune", 1, 0.01, "last:2"))
    assert _trainable(model) == head + layer3 + _count(model.layer2.parameters())
    apply_phase(model, Phase("finetune", 1, 0.01, "from:layer3.1"))
    assert _trainable(model) == head + from_block
    apply_phase(model, Phase("train", 1, 0.1, "all"))
    assert _trainable(model) == _count(model.parameters())


def _one_step(model, phase: Phase, bn_train: bool = False) -> None:
    apply_phase(model, phase)
    model.train()
    set_bn_modes(model, phase, bn_train)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(8, 3, 16, 16) * 3 + 1, torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_frozen_batchnorm_statistics_do_not_move(model):
    before = _bn_stats(model)
    fc = model.get_classifier().weight.clone()
    _one_step(model, Phase("head", 1, 0.1, "head"))
    after = _bn_stats(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(fc, model.get_classifier().weight)  # the head did learn

    # Fine-tuning keeps every BN in eval mode by default ...
    _one_step(model, Phase("finetune", 1, 0.01, "last:1"))
    after = _bn_stats(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bn_train_updates_only_unfrozen_batchnorm(model):
    before_l1, before_l3 = _bn_stats(model.layer1), _bn_stats(model.layer3)
    _one_step(model, Phase("finetune", 1, 0.01, "last:1"), bn_train=True)
    assert all(torch.equal(before_l1[k], v) for k, v in _bn_stats(model.layer1).items())
    assert any(not torch.equal(before_l3[k], v) for k, v in _bn_stats(model.layer3).items())


def test_freeze_auto_thresholds_and_plans(model):
    assert choose_regime(50)[0] == "head"
    assert choose_regime(500)[0] == "finetune"
    assert choose_regime(5000)[0] == "all"
    opts = TrainOptions(weights="w.pt", freeze="auto", epochs=3, fine_tune_epochs=2)
    said = []
    assert [p.name for p in plan_phases(opts, model, 50, 1e-3, log=said.append)] == ["head"]
    phases = plan_phases(opts, model, 500, 1e-3, log=said.append)
    assert [(p.name, p.epochs, p.unfreeze) for p in phases] == [
        ("head", 3, "head"),
        ("finetune", 2, "last:2"),
    ]
    assert phases[1].lr == pytest.approx(1e-4)
    assert [p.unfreeze for p in plan_phases(opts, model, 5000, 1e-3, log=said.append)] == ["all"]
    assert len(said) == 3 and "images per class" in said[0]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 'pretrained' resnet20 checkpoint (random weights, but non-trivial BN statistics) and a folder."""
    root = tmp_path_factory.mktemp("transfer")
    torch.manual_seed(1)
    base = create_model("resnet20", num_classes=10)
    for m in base.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    save_state_dict(base, root / "resnet20.safetensors")
    return root / "resnet20.safetensors", make_shapes(root / "shapes", per_class=16, size=16)


def test_two_phases_in_one_run(pretrained, tmp_path):
    """Head phase (cached features) then fine-tuning the last stage at lr x 0.1: one metrics log,
    frozen layers' weights and every BN statistic untouched (BN stays in eval mode)."""
    ckpt, shapes = pretrained
    run = tmp_path / "run"
    result = train(
        shapes,
        model="resnet20",
        out=run,
        weights=str(ckpt),
        fine_tune_last=1,
        epochs=2,
        fine_tune_epochs=1,
        lr=0.01,
        schedule="constant",
        workers=0,
        quiet=True,
    )
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["epoch"], m["phase"]) for m in metrics] == [(1, "head"), (2, "head"), (3, "finetune")]
    assert [m["lr"] for m in metrics] == pytest.approx([0.01, 0.01, 0.001])
    assert len(result.history) == 3
    config = json.loads((run / "config.json").read_text())
    assert config["head"] == "transfer" and config["head_dropout"] == 0.2
    assert [p["name"] for p in config["phases"]] == ["head", "finetune"] and config["phases"][0]["cached"]
    assert config["options"]["freeze"] == "base"

    from safetensors.torch import load_file

    start = load_file(ckpt)
    end = torch.load(run / "last.pt", weights_only=True)["model"]
    for key, value in start.items():
        if key.startswith("fc."):
            continue
        if "running_" in key or key.startswith(("stem.", "layer1.", "layer2.")):
            assert torch.equal(value, end[key]), key  # frozen weights and every BN statistic
    assert not torch.equal(start["layer3.2.conv2.weight"], end["layer3.2.conv2.weight"])  # fine-tuned


def test_cached_head_is_the_saved_model(pretrained, tmp_path):
    """Training the head on cached features must give the same model as the network: the saved run,
    evaluated through the full network on the validation images, scores the recorded accuracy."""
    from convnets.data import load_data
    from convnets.weights import load_run

    ckpt, shapes = pretrained
    run = tmp_path / "run"
    train(
        shapes,
        model="resnet20",
        out=run,
        weights=str(ckpt),
        freeze="base",
        epochs=3,
        lr=0.05,
        augment="hflip",
        feature_views=2,
        workers=0,
        quiet=True,
    )
    model, config = load_run(run)
    splits = load_data(
        config.data.source,
        image_size=config.image_size,
        in_chans=3,
        mean=config.mean,
        std=config.std,
        split=config.split,
        augment="none",
        num_workers=0,
    )
    correct = seen = 0
    with torch.no_grad():
        for x, y in splits.val:
            correct += (model(x).argmax(1) == y).sum().item()
            seen += len(y)
    assert correct / seen == pytest.approx(config.best.val_acc, abs=1e-9)


def test_fast_feature_extraction_matches_the_eager_base():
    import torch

    from convnets.models import create_model
    from convnets.train.features import FeatureExtractor

    model = create_model("mobilenet_v2", num_classes=3).eval()
    x = torch.randn(4, 3, 64, 64)
    fast = FeatureExtractor(model, torch.device("cpu"))
    slow = FeatureExtractor(model, torch.device("cpu"), fast=False)
    assert fast.fast and not slow.fast
    a, b = fast(x), slow(x)
    assert a.shape == (4, model.num_features)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # the model itself is untouched: its BatchNorm layers are still there
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_head_only_run_fits_the_ood_detector_on_its_cached_features(pretrained, tmp_path, monkeypatch):
    """After a head-only run the detector comes from the cached base features (no second pass over the
    images) and equals the one fitted afterwards by running the saved model over the run's split."""
    import numpy as np

    import convnets.trust.fit as trust
    from convnets.base.runs import RunConfig
    from convnets.trust.ood import OODDetector

    ckpt, shapes = pretrained
    run = tmp_path / "run"

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the OOD fit ran the model over the images again")

    with monkeypatch.context() as m:
        m.setattr(trust, "split_features", no_second_pass)
        train(
            shapes,
            model="resnet20",
            out=run,
            weights=str(ckpt),
            freeze="base",
            epochs=2,
            workers=0,
            quiet=True,
        )
    config = RunConfig.read(run)
    assert config.ood is not None and config.ood.n_train > 0 and config.ood.n_val > 0
    cached = OODDetector.load(run, config.ood)
    trust.calibrate_run(run, temperature=False)  # the general path: the saved model over the split
    config = RunConfig.read(run)
    refit = OODDetector.load(run, config.ood)
    assert (refit.n_train, refit.n_val) == (cached.n_train, cached.n_val)
    np.testing.assert_allclose(refit.centres, cached.centres, atol=1e-4)
    assert refit.threshold == pytest.approx(cached.threshold, rel=1e-3)
