"""weights.py: safe loading, torchvision checkpoints, head and in_chans adaptation, offline ImageNet, runs."""

from __future__ import annotations

import json
import os
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from convnets import create_model
from convnets.weights import (
    CheckpointMismatchError,
    WeightsError,
    imagenet_weights_url,
    load_run,
    load_weights_file,
    save_state_dict,
)


class _Payload:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tv_resnet18_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def _randomize(model: nn.Module) -> nn.Module:
    """Non-trivial values everywhere (default inits leave BN at identity and heads near zero)."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.rand_like(tensor) + 0.5
                    if "running_var" in name
                    else torch.randn_like(tensor) * 0.05
                )
    return model


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": _Payload(marker)}, evil)
    with pytest.raises(WeightsError, match="refused to load"):
        load_weights_file(evil)
    with pytest.raises(WeightsError, match="refused to load"):
        create_model("resnet18", weights=str(evil))
    assert not marker.exists()


def test_torchvision_resnet18_round_trip(tv_resnet18_file):
    reference = _randomize(torchvision.models.resnet18()).eval()
    torch.save(reference.state_dict(), tv_resnet18_file.with_name("random.pth"))
    model = create_model("resnet18", weights=str(tv_resnet18_file.with_name("random.pth"))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=0)
    assert model.pretrained_cfg["source"].endswith("random.pth")
    assert model.pretrained_cfg["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_torchvision_googlenet_layout_is_detected(tmp_path):
    reference = _randomize(torchvision.models.googlenet(aux_logits=False, init_weights=False)).eval()
    reference.transform_input = True  # as torchvision's IMAGENET1K_V1 model is built
    path = tmp_path / "googlenet.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("googlenet", weights=str(path)).eval()
    assert model.pretrained_cfg["model_kwargs"]["tv_layout"] is True
    assert not model.aux_logits
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=0)

    # Fine-tuned into a run whose config.json does not record the layout: load_run still rebuilds it.
    model.reset_classifier(3, dropout=0.0)
    _write_run(tmp_path / "run", model, model="googlenet", model_kwargs={}, in_chans=3, head_dropout=0.0)
    again, _ = load_run(tmp_path / "run")
    with torch.no_grad():
        torch.testing.assert_close(again(x), model.eval()(x), atol=1e-5, rtol=0)


def test_wrapped_and_ddp_prefixed_state_dict_loads(tmp_path, tv_resnet18_file):
    state = torch.load(tv_resnet18_file, weights_only=True)
    path = tmp_path / "ddp.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = create_model("resnet18", weights=str(path))
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])


def test_mismatched_checkpoint_names_the_keys(tmp_path, tv_resnet18_file):
    state = torch.load(tv_resnet18_file, weights_only=True)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    del state["layer4.1.bn2.running_mean"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        create_model("resnet18", weights=str(path))
    message = str(info.value)
    assert "layer1.0.conv1.weight checkpoint [64, 64, 1, 1] vs model [64, 64, 3, 3]" in message
    assert "missing key(s): layer4.1.bn2.running_mean" in message
    assert "unexpected key(s): extra.weight" in message
    assert str(path) in message
    with pytest.raises(CheckpointMismatchError, match="does not fit resnet34"):
        create_model("resnet34", weights=str(tv_resnet18_file))


def test_new_head_when_num_classes_differs(tv_resnet18_file):
    state = torch.load(tv_resnet18_file, weights_only=True)
    with pytest.warns(UserWarning, match=r"head replaced.*fc\.weight \[1000, 512\] -> \[5, 512\]"):
        model = create_model("resnet18", num_classes=5, weights=str(tv_resnet18_file))
    assert model.fc.out_features == 5
    torch.testing.assert_close(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_in_chans_1_sums_the_rgb_filters(tv_resnet18_file):
    rgb = create_model("resnet18", weights=str(tv_resnet18_file)).eval()
    with pytest.warns(UserWarning, match="summed over the input channels"):
        grey = create_model("resnet18", in_chans=1, weights=str(tv_resnet18_file)).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)
    assert len(grey.pretrained_cfg["mean"]) == 1


def test_normalisation_override(tv_resnet18_file):
    model = create_model("resnet18", weights=str(tv_resnet18_file), normalize="inception")
    assert model.pretrained_cfg["mean"] == [0.5, 0.5, 0.5] and model.pretrained_cfg["std"] == [0.5, 0.5, 0.5]
    model = create_model("resnet18", weights=str(tv_resnet18_file), mean=(0.1, 0.2, 0.3), std=(1, 1, 1))
    assert model.pretrained_cfg["mean"] == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="normalize"):
        create_model("resnet18", weights=str(tv_resnet18_file), normalize="cifar")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and a network that refuses every download."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    calls = []

    def no_network(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    yield tmp_path / "hub", calls
    torch.hub.set_dir(previous)


def test_imagenet_offline_fails_with_a_way_out(offline_hub):
    hub, calls = offline_hub
    with pytest.raises(WeightsError) as info:
        create_model("resnet18", weights="imagenet")
    message = str(info.value)
    assert "--weights PATH" in message and "name resolution" in message
    assert str(hub / "checkpoints" / "resnet18-") in message  # where to put the file
    assert calls == [imagenet_weights_url("resnet18").url]


def test_imagenet_uses_the_hub_cache_without_network(offline_hub, tv_resnet18_file):
    hub, calls = offline_hub
    entry = imagenet_weights_url("resnet18")
    cached = hub / "checkpoints" / entry.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tv_resnet18_file.read_bytes())
    model = create_model("resnet18", weights="imagenet", num_classes=1000)
    assert calls == []
    assert model.pretrained_cfg["input_size"] == [3, 224, 224]
    assert "IMAGENET1K" in model.pretrained_cfg["source"]


@pytest.mark.parametrize("name", ["lenet5", "mobilenet_v1"])
def test_imagenet_for_models_torchvision_lacks(name, offline_hub):
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        create_model(name, weights="imagenet")
    assert offline_hub[1] == []


def test_missing_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="not found.*nope.pth"):
        create_model("resnet18", weights=str(tmp_path / "nope.pth"))


def test_save_state_dict_is_atomic_and_handles_shared_tensors(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight  # tied weights share storage, which safetensors refuses as-is
    path = save_state_dict(model, tmp_path / "out" / "model.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]  # no temp file left
    loaded = load_file(path)
    torch.testing.assert_close(loaded["1.weight"], model[0].weight.detach())


def _write_run(run_dir: Path, net: nn.Module, **config) -> None:
    run_dir.mkdir(parents=True)
    save_state_dict(net, run_dir / "model.safetensors")
    base = {
        "model": "lenet5",
        "model_kwargs": {"activation": "relu"},
        "num_classes": 3,
        "in_chans": 1,
        "head": "transfer",
        "head_dropout": 0.1,
        "image_size": [32, 32],
        "mean": [0.5],
        "std": [0.25],
        "normalize": None,
        "class_names": ["a", "b", "c"],
    }
    (run_dir / "config.json").write_text(json.dumps({**base, **config}))


def test_load_run_round_trip(tmp_path):
    trained = create_model("lenet5", num_classes=3, in_chans=1, activation="relu")
    trained.reset_classifier(3, dropout=0.1)
    _randomize(trained).eval()
    _write_run(tmp_path / "run", trained)

    model, config = load_run(tmp_path / "run")
    assert not model.training and config.class_names == ["a", "b", "c"]
    assert model.pretrained_cfg["mean"] == [0.5] and model.pretrained_cfg["input_size"] == [1, 32, 32]
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x))

    # The same folder as `weights=` (folder or its model.safetensors), with a new head for 4 classes.
    with pytest.warns(UserWarning, match="head replaced"):
        again = create_model(
            "lenet5", num_classes=4, in_chans=1, weights=str(tmp_path / "run" / "model.safetensors")
        )
    torch.testing.assert_close(again.features[0].weight, trained.features[0].weight)
    assert again.get_classifier().out_features == 4
    with pytest.raises(WeightsError, match="holds a lenet5"):
        create_model("resnet18", weights=str(tmp_path / "run"))


def test_load_run_strict_and_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="config.json is missing"):
        (tmp_path / "empty").mkdir()
        load_run(tmp_path / "empty")
    trained = create_model("lenet5", num_classes=3, in_chans=1, activation="relu")  # default head
    _write_run(tmp_path / "run", trained)  # ... but the config says "transfer"
    with pytest.raises(CheckpointMismatchError, match="model.safetensors does not fit lenet5"):
        load_run(tmp_path / "run")


def test_safetensors_file_keeps_its_normalisation(tmp_path, tv_resnet18_file):
    model = create_model("resnet18", weights=str(tv_resnet18_file), normalize="inception")
    path = save_state_dict(model, tmp_path / "resnet18.safetensors")
    again = create_model("resnet18", weights=str(path))
    assert again.pretrained_cfg["mean"] == [0.5, 0.5, 0.5]
    torch.testing.assert_close(again.fc.weight, model.fc.weight)


@pytest.mark.shared
def test_shared_pretrained_mobilenet_v2_loads(shared_data):
    path = shared_data / "weights" / "mobilenet_v2_imagenet.pth"
    model = create_model("mobilenet_v2", weights=str(path), normalize="inception").eval()
    reference = torchvision.models.mobilenet_v2().eval()
    reference.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=0)
    assert model.pretrained_cfg["mean"] == [0.5, 0.5, 0.5]
