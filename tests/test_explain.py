"""Grad-CAM: the layer per family, and a map that finds the patch a model learned to look at."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convnets import create_model
from convnets.trust.explain import explain_files, grad_cam, overlay, overlays, target_layer

pytest.importorskip("captum")

# Small inputs each family accepts; what matters is that the hooked layer's output is the model's
# forward_features output (the last conv stage), not accuracy.
FAMILIES = {
    "lenet5": dict(in_chans=1, size=32),
    "alexnet": dict(size=64),
    "vgg11": dict(size=32),
    "resnet18": dict(size=32),
    "resnet20": dict(size=32),
    "plain20": dict(size=32),
    "googlenet": dict(size=64, aux_logits=False),
    "mobilenet_v1_025": dict(size=32),
    "mobilenet_v2": dict(size=32),
    "efficientnet_b0": dict(size=32),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_target_layer_is_the_last_conv_stage(name, one_thread):
    spec = dict(FAMILIES[name])
    size, in_chans = spec.pop("size"), spec.pop("in_chans", 3)
    model = create_model(name, num_classes=3, in_chans=in_chans, **spec).eval()
    x = torch.randn(2, in_chans, size, size)
    seen = []
    handle = target_layer(model).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
        handle.remove()
        expected = model.forward_features(x)
    assert len(seen) == 1 and torch.equal(seen[0], expected)
    cam = grad_cam(model, x, target_class=1)
    assert cam.heatmaps.shape == (2, size, size)
    assert cam.classes == [1, 1] and np.all((cam.heatmaps >= 0) & (cam.heatmaps <= 1))
    # The one-forward computation at the default layer is Captum's LayerGradCam at target_layer.
    by_captum = grad_cam(model, x, target_class=1, layer=target_layer(model))
    assert np.allclose(cam.heatmaps, by_captum.heatmaps, atol=1e-4)
    assert np.allclose(cam.probs, by_captum.probs, atol=1e-5)


def test_named_layer_and_bad_names():
    model = create_model("resnet20", num_classes=2)
    assert target_layer(model, "layer2") is model.layer2
    with pytest.raises(ValueError, match="no module 'layer9'"):
        target_layer(model, "layer9")
    with pytest.raises(ValueError, match="target_class"):
        grad_cam(model.eval(), torch.randn(1, 3, 32, 32), target_class=5)


def _patch_images(n: int, size: int = 32, patch: int = 8, seed: int = 0):
    """Grey noise with one bright square; its colour (red or blue) is the class, its place random."""
    rng = np.random.default_rng(seed)
    images = rng.integers(60, 160, size=(n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, size=n)
    corners = rng.integers(0, size - patch + 1, size=(n, 2))
    for img, label, (r, c) in zip(images, labels, corners):
        img[r : r + patch, c : c + patch] = (230, 20, 20) if label == 0 else (20, 20, 230)
    return images, labels, corners


def _train_patch_model(max_steps: int = 300):
    torch.manual_seed(0)
    images, labels, _ = _patch_images(512)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(labels).long()
    model = create_model("cifar_resnet", num_classes=2, depth=8, widths=(8, 16, 32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(max_steps):
        idx = torch.randint(0, len(x), (32,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 30 and loss.item() < 0.02:
            break
    return model.eval()


def test_grad_cam_peaks_on_the_deciding_patch(tmp_path, one_thread):
    model = _train_patch_model()
    images, labels, corners = _patch_images(32, seed=1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    cam = grad_cam(model, x)
    assert (np.array(cam.predicted) == labels).mean() >= 0.9
    hits = 0
    for heat, (r, c) in zip(cam.heatmaps, corners):
        pr, pc = np.unravel_index(heat.argmax(), heat.shape)
        hits += (r <= pr < r + 8) and (c <= pc < c + 8)  # the peak lies on the 8x8 patch
    assert hits / len(corners) >= 0.9, f"peak on the patch for {hits}/{len(corners)} images"
    pictures = overlays(model, x[:2], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert [p.shape for p in pictures] == [(3, 32, 32)] * 2
    assert 0 <= pictures[0].min() <= pictures[0].max() <= 1

    # The same through a run folder's files: one overlay PNG per image.
    run = tmp_path / "run"
    run.mkdir()
    from safetensors.torch import save_file

    from convnets.base.runs import RunConfig

    save_file(model.state_dict(), str(run / "model.safetensors"))
    RunConfig(
        model="cifar_resnet",
        num_classes=2,
        class_names=["red", "blue"],
        image_size=(32, 32),
        model_kwargs={"depth": 8, "widths": [8, 16, 32]},
        normalize=False,
    ).write(run)
    files = []
    for i in range(3):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(images[i]).save(files[-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows = explain_files(run, [*files, tmp_path / "broken.png"], tmp_path / "out", model=model)
    assert [r.error is None for r in rows] == [True, True, True, False]
    for row, label, (r, c) in zip(rows[:3], labels, corners):
        assert row.predicted == ["red", "blue"][label] and row.explained == row.predicted
        assert Image.open(row.path).size[0] > 100
        assert r - 4 <= row.peak[0] < r + 12 and c - 4 <= row.peak[1] < c + 12
    other = explain_files(run, files[:1], tmp_path / "out2", class_name="blue", model=model)
    assert other[0].explained == "blue"
    with pytest.raises(ValueError, match="--class"):
        explain_files(run, files[:1], tmp_path / "out3", class_name="green", model=model)


def test_explain_cli(tmp_path, capsys):
    import json

    from safetensors.torch import save_file

    from convnets.base.runs import RunConfig
    from convnets.cli import main

    run = tmp_path / "run"
    run.mkdir()
    model = create_model("cifar_resnet", num_classes=2, depth=8, widths=(8, 16, 32))
    save_file(model.state_dict(), str(run / "model.safetensors"))
    RunConfig(
        model="cifar_resnet",
        num_classes=2,
        class_names=["red", "blue"],
        image_size=(32, 32),
        model_kwargs={"depth": 8, "widths": [8, 16, 32]},
    ).write(run)
    images, _, _ = _patch_images(2)
    for i, a in enumerate(images):
        Image.fromarray(a).save(tmp_path / f"img{i}.png")
    rc = main(
        [
            "explain",
            str(run),
            str(tmp_path / "img0.png"),
            str(tmp_path / "img1.png"),
            "--out",
            str(tmp_path / "maps"),
            "--class",
            "blue",
            "--json",
        ]
    )
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0 and [r["explained"] for r in rows] == ["blue", "blue"]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["img0.gradcam.png", "img1.gradcam.png"]
    bad = ["explain", str(run), str(tmp_path / "img0.png"), "--out", str(tmp_path), "--class", "x"]
    assert main(bad) == 2
    assert "--class: 'x' is not one of the run's classes" in capsys.readouterr().err


def test_overlay_keeps_shape_and_grey_images():
    grey = np.zeros((8, 8, 1), np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[2, 3] = 1
    out = overlay(grey, heat)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[2, 3].sum() > out[7, 7].sum()
