"""cost.py and the `models` / `cost` commands: published totals, the lectures' arithmetic, JSON shapes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from convnets import cli, create_model
from convnets.cost import conv_cost, format_count, model_cost

# Published multiply-adds at the default resolution (papers / torchvision's model docs).
PUBLISHED_GMACS = {
    "resnet50": 4.09,
    "mobilenet_v2": 0.30,
    "mobilenet_v1": 0.569,
    "vgg16": 15.47,
    "efficientnet_b0": 0.39,
    "alexnet": 0.71,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_GMACS))
def test_published_multiply_adds(name):
    report = model_cost(name)
    assert report.macs / 1e9 == pytest.approx(PUBLISHED_GMACS[name], rel=0.03)


def test_googlenet_multiply_adds_both_layouts():
    # torchvision's layout (3x3 in the "5x5" branch) is the one its ~1.5 G figure describes.
    with torch.device("meta"):
        tv = create_model("googlenet", tv_layout=True)
    assert model_cost(tv, image_size=224).macs / 1e9 == pytest.approx(1.5, rel=0.03)
    # The paper's true 5x5 branches cost more; its Table 1 lists the 7x7 stem conv as 34 M, but
    # 112*112*64 outputs x 7*7*3 weights is 118 M, so the honest total sits ~5% above "1.5 G".
    paper = model_cost("googlenet")
    stem = next(layer for layer in paper.layers if layer.name.startswith("conv1") and layer.type == "Conv2d")
    assert stem.macs == 112 * 112 * 64 * 7 * 7 * 3
    assert paper.macs / 1e9 == pytest.approx(1.5, rel=0.06)
    assert paper.macs > model_cost(tv, image_size=224).macs


def test_params_match_the_model_and_layers_sum_to_total():
    report = model_cost("resnet18")
    model = create_model("resnet18")
    assert report.params == sum(p.numel() for p in model.parameters())
    assert sum(layer.macs for layer in report.layers) == report.macs
    conv1 = report.layers[0]
    assert (conv1.name, conv1.type, conv1.output_shape) == ("conv1", "Conv2d", [64, 112, 112])
    assert conv1.macs == 112 * 112 * 64 * 7 * 7 * 3 and conv1.params == 64 * 3 * 7 * 7


def test_instance_counts_like_name_and_keeps_training_mode():
    model = create_model("lenet5", num_classes=10, in_chans=1).train()
    by_instance = model_cost(model, image_size=32)
    assert model.training
    assert by_instance.macs == model_cost("lenet5").macs
    assert by_instance.params == model_cost("lenet5").params


def test_depthwise_and_squeeze_excitation_are_counted():
    mobilenet = model_cost("mobilenet_v1")
    model = create_model("mobilenet_v1")
    modules = dict(model.named_modules())
    depthwise = [
        layer
        for layer in mobilenet.layers
        if layer.type == "Conv2d" and modules[layer.name].groups == modules[layer.name].in_channels > 1
    ]
    assert depthwise, "MobileNet v1 has depthwise convolutions"
    for layer in depthwise:
        c, h, w = layer.output_shape
        assert layer.macs == c * h * w * 3 * 3  # one 3x3 filter per channel, not 3x3xC
    # EfficientNet's squeeze-and-excitation: 1x1 convs on a 1x1 map, counted like any other conv.
    effnet = model_cost("efficientnet_b0")
    se = [layer for layer in effnet.layers if layer.type == "Conv2d" and layer.output_shape[1:] == [1, 1]]
    assert se and all(layer.macs == layer.params - layer.output_shape[0] for layer in se)  # weights, not bias


def test_image_size_and_in_chans_change_the_cost():
    base = model_cost("resnet18")
    small = model_cost("resnet18", image_size=112, in_chans=1)
    assert small.image_size == [112, 112]
    assert small.params == base.params - 64 * 2 * 7 * 7
    assert small.macs < base.macs / 3
    with pytest.raises(ValueError, match="cannot run"):
        model_cost("alexnet", image_size=16)


def test_lecture_examples_exactly():
    plain = conv_cost((28, 28, 192), filters=32, kernel=5, padding="same")
    assert plain["macs"] == 120_422_400
    assert plain["output_shape"] == [28, 28, 32]
    assert plain["params"] == (5 * 5 * 192 + 1) * 32 and plain["bias_counted"]

    bottleneck = conv_cost((28, 28, 192), filters=32, kernel=5, bottleneck=16)
    assert bottleneck["macs"] == 12_443_648
    assert [s["macs"] for s in bottleneck["stages"]] == [2_408_448, 10_035_200]
    assert bottleneck["macs_saving"] == pytest.approx(120_422_400 / 12_443_648)

    small = conv_cost("6x6x3", filters=5, kernel=3, padding="valid")
    assert small["macs"] == 2_160 and small["output_shape"] == [4, 4, 5]
    separable = conv_cost((6, 6, 3), filters=5, kernel=3, padding="valid", depthwise_separable=True)
    assert [s["macs"] for s in separable["stages"]] == [432, 240]
    assert separable["macs"] == 672 and separable["plain_macs"] == 2_160
    assert separable["params_without_bias"] == 3 * 3 * 3 + 3 * 5

    strided = conv_cost((7, 7, 8), filters=4, kernel=3, stride=2, padding="valid")
    assert strided["output_shape"] == [3, 3, 4]
    with pytest.raises(ValueError, match="HxWxC"):
        conv_cost("28x28", filters=1, kernel=1)
    with pytest.raises(ValueError, match="padding"):
        conv_cost((8, 8, 3), filters=1, kernel=3, padding="full")


def test_format_count():
    assert format_count(4_089_184_256) == "4.09 G"
    assert format_count(3_504_872) == "3.50 M"
    assert format_count(672) == "672"


def test_cli_cost_model_json(capsys):
    assert cli.main(["cost", "resnet50", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"model", "image_size", "params", "macs", "layers"}
    assert out["model"] == "resnet50" and out["image_size"] == [224, 224]
    assert out["params"] == 25_557_032
    assert out["macs"] / 1e9 == pytest.approx(4.09, rel=0.03)
    assert all(set(layer) == {"name", "type", "output_shape", "params", "macs"} for layer in out["layers"])
    assert out["layers"][-1]["name"] == "fc" and out["layers"][-1]["output_shape"] == [1000]


def test_cli_cost_model_table(capsys):
    assert cli.main(["cost", "lenet5", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "multiply-adds" in out and "Conv2d" in out
    assert f"{model_cost('lenet5').params:,}" in out


def test_cli_cost_conv(capsys):
    argv = ["cost", "conv", "--input", "28x28x192", "--filters", "32", "--kernel", "5", "--bottleneck", "16"]
    assert cli.main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["macs"] == 12_443_648 and out["output_shape"] == [28, 28, 32]
    assert cli.main(argv) == 0
    assert "12,443,648" in capsys.readouterr().out


def test_cli_cost_errors(capsys):
    assert cli.main(["cost", "resnet5"]) == 2
    assert "resnet50" in capsys.readouterr().err  # did-you-mean
    assert cli.main(["cost", "resnet18", "--filters", "3"]) == 2
    assert "only apply to `convnets cost conv`" in capsys.readouterr().err
    assert cli.main(["cost", "conv", "--input", "8x8x3"]) == 2
    assert "--filters" in capsys.readouterr().err


def test_cli_cost_compare_writes_chart(tmp_path, capsys):
    chart = tmp_path / "chart.png"
    argv = ["cost", "compare", "lenet5", "resnet20", "--runs", "1", "--out", str(chart), "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["model"]: r for r in out["models"]}
    assert set(rows) == {"lenet5", "resnet20"}
    assert rows["resnet20"]["macs"] == model_cost("resnet20").macs
    assert all(r["latency_ms"] > 0 for r in rows.values())
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_models_json(capsys):
    assert cli.main(["models", "resnet5*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["resnet50", "resnet56"]
    resnet50, resnet56 = rows
    assert resnet50["macs"] / 1e9 == pytest.approx(4.09, rel=0.03)
    assert resnet50["torchvision"] == "resnet50" and resnet50["input_size"] == [3, 224, 224]
    assert resnet56["num_classes"] == 10 and resnet56["input_size"] == [3, 32, 32]
    assert cli.main(["models", "nothing-like-this*"]) == 2


def test_module_called_twice_is_counted_twice():
    class ConvTwice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    report = model_cost(ConvTwice(), image_size=8)
    assert report.macs == 2 * (8 * 8 * 3) * (3 * 3 * 3)
    assert [(layer.name, layer.macs, layer.output_shape) for layer in report.layers] == [
        ("conv", report.macs, [3, 8, 8])
    ]
