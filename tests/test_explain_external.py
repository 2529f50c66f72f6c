"""Grad-CAM on timm/ and torchvision/ backbones: read at the last spatial feature map, not after pooling.

A wrapped torchvision network pools inside its own forward (its ``forward_features`` is a 1x1 map), so
Grad-CAM reads the module ``feature_map_module()`` names; timm's ``forward_features`` is the map.
Random weights, no network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convnets import create_model
from convnets.trust.explain import grad_cam, target_layer

pytest.importorskip("captum")
pytest.importorskip("timm", reason="timm/ models need the timm extra (pip install 'convnets[timm]')")

SIZE = 96  # a 3x3 last map at stride 32
# model -> the module holding its last stage (its output is the last spatial feature map)
LAST_STAGE = {
    "torchvision/resnet18": "body.layer4",
    "torchvision/mobilenet_v3_small": "body.features",
    "timm/test_resnet": "body.layer4",
    "timm/test_convnext": "body.stages.3",
}


def _last_stage_output(model, name: str, x: torch.Tensor) -> torch.Tensor:
    kept = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, out: kept.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    return kept[-1]


@pytest.mark.parametrize("name", sorted(LAST_STAGE))
def test_map_is_read_at_the_last_stage(name, one_thread):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    stage = _last_stage_output(model, LAST_STAGE[name], x)
    assert stage.ndim == 4 and stage.shape[-2:] == (3, 3)
    if name.startswith("torchvision/"):
        assert model.forward_features(x).shape[-2:] == (1, 1)  # pooled inside: why the hook is needed
        assert target_layer(model) is model.get_submodule(LAST_STAGE[name])
    else:
        assert torch.allclose(model.forward_features(x), stage)

    cam = grad_cam(model, x, target_class=1)
    assert cam.heatmaps.shape == (2, SIZE, SIZE) and cam.classes == [1, 1]
    assert np.isfinite(cam.heatmaps).all() and np.all((cam.heatmaps >= 0) & (cam.heatmaps <= 1))
    assert all(h.std() > 0.05 for h in cam.heatmaps), "a flat map: read after the global pooling"
    # The same maps as Captum's LayerGradCam at the last stage.
    by_captum = grad_cam(model, x, target_class=1, layer=LAST_STAGE[name])
    assert np.allclose(cam.heatmaps, by_captum.heatmaps, atol=1e-4)
    assert np.allclose(cam.probs, by_captum.probs, atol=1e-5)


@pytest.mark.parametrize("name", ["torchvision/resnet18", "timm/test_resnet"])
def test_map_peaks_on_the_planted_evidence(name, one_thread):
    """Class 1's weights are the feature difference a coloured square makes at its cell of the last
    map (measured on one image), so the square is the evidence for class 1 wherever it is: the map for
    class 1 must be high on the square and low elsewhere."""
    size, square = 128, 32  # a 4x4 last map; the square covers about one cell
    rng = np.random.default_rng(0)

    def image(r: int, c: int) -> torch.Tensor:
        img = rng.normal(0, 0.1, (3, size, size)).astype(np.float32)
        img[:, r : r + square, c : c + square] += np.array([2.0, -1.5, 1.0], np.float32)[:, None, None]
        return torch.from_numpy(img)

    torch.manual_seed(0)
    model = create_model(name, num_classes=2).eval()
    stage = _last_stage_output(model, LAST_STAGE[name], image(0, 0)[None])[0]
    evidence = stage[:, 0, 0] - stage.flatten(1).mean(1)  # the square's cell against the average cell
    with torch.no_grad():
        model.get_classifier().weight.copy_(torch.stack([-evidence, evidence]))
        model.get_classifier().bias.zero_()
    corners = rng.integers(0, size - square + 1, size=(8, 2))
    cam = grad_cam(model, torch.stack([image(r, c) for r, c in corners]), target_class=1)
    assert cam.predicted == [1] * 8
    for heat, (r, c) in zip(cam.heatmaps, corners):
        on = np.zeros(heat.shape, bool)
        on[r : r + square, c : c + square] = True
        assert heat[r + square // 2, c + square // 2] > 0.6, f"square at {(r, c)}: map {heat[on].mean():.2f}"
        assert heat[on].mean() > 1.5 * heat[~on].mean()  # a flat map (the bug) gives equal means


def test_finding_the_map_keeps_the_training_modes():
    model = create_model("torchvision/resnet18", num_classes=2).train()
    model.body.layer1.eval()  # a frozen stage's BatchNorm, as transfer learning keeps it
    assert model.feature_map_module() is model.body.layer4
    assert model.body.training and model.body.layer2.training and not model.body.layer1.training
