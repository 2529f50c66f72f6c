"""timm/NAME and torchvision/NAME backbones in the zoo: the transfer workflow on a library-layout weights
file (random weights, no network): head on the frozen base then the last stage fine-tuned, the frozen
part bit-identical, the run folder rebuilt and exported to ONNX with matching outputs."""

from __future__ import annotations

import json

import pytest
import torch
from train_shapes import make_shapes

from convnets.models import create_model, get_model_cfg, list_models
from convnets.weights import WeightsError, load_run

timm = pytest.importorskip("timm", reason="timm/ models need the timm extra (pip install 'convnets[timm]')")

BACKBONES = [
    "timm/test_convnext",
    "timm/test_resnet",
    "torchvision/mobilenet_v3_small",
    "torchvision/resnet18",
]


def _library_weights(name: str, root) -> str:
    """A weights file in the library's own layout, as a user downloads it: timm's safetensors (1000
    classes), torchvision's weights-only state dict."""
    library, arch = name.split("/")
    torch.manual_seed(1)
    if library == "timm":
        from safetensors.torch import save_file

        net = timm.create_model(arch, num_classes=1000)
        path = root / f"{arch}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    else:
        import torchvision

        net = torchvision.models.get_model(arch, weights=None)
        path = root / f"{arch}.pth"
        torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), per_class=8, size=32)


@pytest.mark.parametrize("name", BACKBONES)
def test_fine_tune_last_stage_frozen_part_identical_onnx_matches(name, shapes, tmp_path):
    from convnets.deploy.engines import ExportedModel, ensure_exported
    from convnets.train import train

    weights = _library_weights(name, tmp_path)
    run = tmp_path / "run"
    train(
        shapes,
        model=name,
        out=run,
        weights=weights,
        freeze="base",
        fine_tune_last=1,
        epochs=1,
        fine_tune_epochs=1,
        image_size=32,
        batch_size=8,
        lr=0.01,
        workers=0,
        quiet=True,
    )
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == name and config["head"] == "transfer"
    assert [p["name"] for p in config["phases"]] == ["head", "finetune"]
    assert config["phases"][0]["cached"]  # the head trained on cached base features

    model, _ = load_run(run)
    start = create_model(name, num_classes=3, weights=weights).state_dict()
    end = torch.load(run / "last.pt", weights_only=True)["model"]
    last_stage = {id(p) for p in model.stages()[-1].parameters()}
    trained = {k for k, p in model.named_parameters() if id(p) in last_stage}
    frozen = [k for k in start if not k.startswith("classifier.") and k not in trained]
    assert frozen and trained
    for k in frozen:  # frozen weights and every BatchNorm statistic, bit for bit
        assert torch.equal(start[k], end[k]), k
    assert any(not torch.equal(start[k], end[k]) for k in trained)  # the last stage was fine-tuned

    ensure_exported(run)
    exported = ExportedModel.open(run, "onnxruntime")  # the fp32 file itself (auto may compute in bf16)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(config["std"]).view(1, 3, 1, 1)
        eager = model((x - mean) / std).numpy()
    onnx = exported.logits(x.numpy())
    assert abs(onnx - eager).max() < 1e-3


@pytest.mark.parametrize("name", BACKBONES)
def test_library_file_loads_exactly(name, tmp_path):
    """A library-layout file gives the library's own network: same logits for the same input."""
    weights = _library_weights(name, tmp_path)
    model = create_model(name, weights=weights).eval()
    library, arch = name.split("/")
    if library == "timm":
        ref = timm.create_model(arch, num_classes=1000)
    else:
        import torchvision

        ref = torchvision.models.get_model(arch, weights=None)
    from convnets.weights import load_weights_file

    ref.load_state_dict(load_weights_file(weights)[0])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), ref.eval()(x), atol=1e-5)


def test_names_configs_and_errors(monkeypatch, tmp_path):
    names = list_models(all=True)
    assert "torchvision/convnext_tiny" in names and "timm/convnext_tiny" in names
    assert "torchvision/convnext_tiny" not in list_models()  # the zoo alone by default
    cfg = get_model_cfg("timm/test_convnext")  # input size and normalisation from the weights' config
    assert cfg.input_size == (3, 160, 160) and cfg.mean == (0.5, 0.5, 0.5)
    assert get_model_cfg("torchvision/efficientnet_b0").input_size == (3, 224, 224)
    with pytest.raises(KeyError, match="convnext_tiny"):
        get_model_cfg("timm/convnext_tiyn")
    with pytest.raises(ValueError, match="not a Linear"):
        create_model("torchvision/squeezenet1_0")

    # Offline: the hub download fails at once, naming the file to pass with --weights FILE.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsError, match=r"model\.safetensors.*--weights FILE"):
        create_model("timm/test_resnet", num_classes=3, weights="imagenet")


def test_fine_tune_last_counts_stages():
    convnext = create_model("timm/test_convnext", num_classes=3)
    stages = convnext.stages()
    assert len(stages) == 5  # stem + 4 stages; the head norm trains with the last
    head_norm = {id(p) for p in convnext.body.head.norm.parameters()}
    assert head_norm <= {id(p) for p in stages[-1].parameters()}
    resnet = create_model("torchvision/resnet18", num_classes=3)
    assert resnet.stages()[-1] is resnet.body.layer4
