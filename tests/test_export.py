"""export.py: ONNX and TorchScript parity on a run folder with BatchNorm (folded), labels, tolerance."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from convnets import create_model
from convnets.cli import main
from convnets.deploy.export import NormalizedModel, export_run, fold_batchnorm

pytest.importorskip("onnxruntime")


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so folding BN really changes the convs."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)


@pytest.fixture
def bn_run(tmp_path):
    """A run folder per docs/ARCHITECTURE.md around a small CIFAR ResNet (conv-BN everywhere)."""
    model = create_model("resnet20", num_classes=3, in_chans=3).eval()
    _randomise_bn(model)
    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run / "model.safetensors")
    config = {
        "model": "resnet20", "model_kwargs": {}, "num_classes": 3, "in_chans": 3, "head": "default",
        "head_dropout": None, "image_size": [16, 16], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3],
        "normalize": "dataset", "class_names": ["cat", "dog", "not alpaca"],
        "data": {"source": "nowhere", "val_split": 0.2, "seed": 0}, "split": None, "options": {},
    }  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    return run, model, config


def test_fold_batchnorm_removes_every_bn_and_keeps_outputs(bn_run):
    _, model, _ = bn_run
    folded, info = fold_batchnorm(model)
    assert info["batchnorm_before"] > 0 and info["batchnorm_after"] == 0
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_with_normalisation_inside(bn_run, tmp_path, fmt):
    run, model, config = bn_run
    out = tmp_path / f"model.{fmt}"
    result = export_run(run, fmt, out)
    assert out.is_file() and result.max_abs_diff <= 1e-4
    assert result.fold["batchnorm_after"] == 0 and result.fold["batchnorm_before"] > 0
    assert (tmp_path / f"model.{fmt}.labels.txt").read_text().splitlines() == config["class_names"]

    # Independently: the exported file fed [0, 1] pixels == the original model fed normalised pixels.
    x = torch.rand(5, 3, 16, 16)  # a batch size never used during export: the batch axis is dynamic
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((x - mean) / std)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still works
            got = torch.jit.load(str(out))(x)
    assert got.shape == (5, 3)
    assert torch.allclose(got, expected, atol=1e-4)


def test_export_fails_clearly_over_tolerance(bn_run, tmp_path, capsys):
    run, _, _ = bn_run
    # Folding BN changes float rounding, so an impossible tolerance must fail, with a clear message.
    assert (
        main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--atol", "1e-12"])
        == 2
    )
    err = capsys.readouterr().err
    assert "differs from PyTorch" in err and "--atol" in err


def test_normalized_model_is_the_affine_map():
    wrapped = NormalizedModel(nn.Identity(), (0.5,), (0.25,))
    assert torch.equal(wrapped(torch.tensor([[[[1.0]]]])), torch.tensor([[[[2.0]]]]))
