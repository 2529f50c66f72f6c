"""Augmentation ops: each op's effect, PCA colour exactness, spec parsing, reproducibility, preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convnets.data import PRESETS, ColorShift, PCAColor, build_train_transform, parse_ops, pca_stats
from convnets.data.datasets import ArrayDataset, Subset
from convnets.data.loaders import ImageLoader


def picture(h=24, w=32) -> torch.Tensor:
    """An asymmetric uint8 picture (gradient + block) so every geometric change is visible."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)]).to(torch.uint8)
    img[:, 2:8, 3:12] = torch.tensor([250, 10, 10], dtype=torch.uint8)[:, None, None]
    return img


def run(op: str, img: torch.Tensor, **kw) -> torch.Tensor:
    tf = build_train_transform([op], tuple(img.shape[-2:]), 3, [0.0] * 3, [1.0] * 3, **kw)
    return tf(img)


def test_flips_are_exact():
    img = picture()
    ref = run("hflip:0", img)  # same float conversion, no flip
    assert torch.allclose(ref, img.float() / 255)
    assert torch.equal(run("hflip:1", img), ref.flip(-1))
    assert torch.equal(run("vflip:1", img), ref.flip(-2))


@pytest.mark.parametrize("op", ["rotate:30", "shear:20", "elastic:80", "rrc:0.3", "crop:4"])
def test_geometric_ops_change_geometry_not_size(op):
    img = picture()
    torch.manual_seed(1)
    out = run(op, img)
    assert out.shape == (3, 24, 32)
    assert (out - img.float() / 255).abs().mean() > 0.01


def test_colour_ops_keep_structure():
    img = picture()
    ref = img.float() / 255
    torch.manual_seed(0)
    shifted = run("colorshift:0.2", img)
    offset = (shifted - ref).mean(dim=(1, 2))
    assert torch.allclose(shifted - ref, offset[:, None, None].expand_as(ref), atol=1e-6)
    assert offset.abs().max() <= 0.2 and offset.abs().max() > 0
    torch.manual_seed(0)
    jittered = run("jitter:0.5", img)
    assert jittered.shape == ref.shape and not torch.allclose(jittered, ref)


def test_pca_colour_is_the_papers_formula():
    rng = np.random.default_rng(0)
    # Correlated RGB pixels: most variance along (1, 1, 1)-ish, the axis real photos have.
    base = rng.uniform(0.2, 0.8, (200, 1))
    pixels = np.clip(base + rng.normal(0, [0.02, 0.05, 0.1], (200, 3)), 0, 1)
    arr = (pixels * 255).astype(np.uint8).reshape(10, 20, 3)
    eigvals, eigvecs = pca_stats([arr])
    cov = np.cov(arr.reshape(-1, 3).astype(np.float64) / 255, rowvar=False)
    assert np.allclose(
        cov @ eigvecs.double().numpy(), eigvecs.double().numpy() * eigvals.double().numpy(), atol=1e-6
    )
    assert eigvals[0] >= eigvals[1] >= eigvals[2] >= 0

    img = torch.from_numpy(arr).permute(2, 0, 1)
    torch.manual_seed(3)
    out = run("pca:0.5", img, pca=(eigvals, eigvecs))
    diff = out - img.float() / 255
    delta = diff[:, 0, 0]
    assert torch.allclose(diff, delta[:, None, None].expand_as(diff), atol=1e-6)  # same vector everywhere
    # delta = P (alpha * lambda): solve for alpha and check it is what the RNG drew.
    weights = torch.linalg.solve(eigvecs.double(), delta.double())
    torch.manual_seed(3)
    alpha = torch.randn(3) * 0.5
    assert torch.allclose(weights, (alpha * eigvals).double(), atol=1e-5)


def test_custom_transforms_want_float():
    with pytest.raises(TypeError, match="float"):
        ColorShift(0.1)(picture())
    with pytest.raises(TypeError, match="float"):
        PCAColor(torch.ones(3), torch.eye(3))(picture())


def test_spec_parsing():
    assert parse_ops("none") == []
    assert parse_ops("light") == [("hflip", 0.5), ("rotate", 15.0)]
    assert parse_ops("light,vflip:0.2") == [("hflip", 0.5), ("rotate", 15.0), ("vflip", 0.2)]
    assert parse_ops({"rotate": 10, "pca": None}) == [("rotate", 10.0), ("pca", 0.1)]
    assert parse_ops(["hflip", "shear:5"]) == [("hflip", 0.5), ("shear", 5.0)]
    for bad, match in [
        ("twirl", "unknown augmentation 'twirl'"),
        ("rotate:abc", "must be a number"),
        ("hflip:2", r"\[0, 1\]"),
        ("light:3", "no parameter"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_ops(bad)
    with pytest.raises(ValueError, match="colour statistics"):
        build_train_transform("strong", (8, 8), 3, [0] * 3, [1] * 3)
    assert set(PRESETS) == {"none", "light", "standard", "strong"}


def _loader(num_workers: int, seed: int) -> ImageLoader:
    images = np.stack([picture(12, 12).permute(1, 2, 0).numpy()] * 6)
    ds = ArrayDataset(images, [0, 1] * 3, ["a", "b"], (12, 12), 3)
    tf = build_train_transform("hflip,rotate:40,colorshift", (12, 12), 3, [0] * 3, [1] * 3)
    return ImageLoader(
        Subset(ds, list(range(6)), tf), batch_size=3, shuffle=True, seed=seed, num_workers=num_workers
    )


def test_augmentation_reproducible_whatever_the_workers():
    a = [x for x, _ in _loader(0, seed=7)] + [x for x, _ in _loader(0, seed=7)]
    b_loader = _loader(2, seed=7)
    b = [x for x, _ in b_loader]
    assert all(torch.equal(u, v) for u, v in zip(a[:2], b))
    second_epoch = [x for x, _ in b_loader]
    assert not all(torch.equal(u, v) for u, v in zip(b, second_epoch))  # epochs differ
    other = [x for x, _ in _loader(0, seed=8)]
    assert not all(torch.equal(u, v) for u, v in zip(a[:2], other))


def test_augment_preview_writes_grid(tmp_path):
    from convnets.cli import main

    root = tmp_path / "d"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(picture(40, 48).permute(1, 2, 0).numpy()).save(root / cls / f"{i}.png")
    out = tmp_path / "grid.png"
    rc = main(
        [
            "augment-preview",
            str(root),
            "--preset",
            "strong",
            "--n",
            "3",
            "--image-size",
            "32",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and out.is_file()
    with Image.open(out) as im:
        assert im.size[0] > 100 and im.size[1] > 60


@pytest.mark.parametrize("base", [(73, 73), (70, 81), (50, 60), (65, 64), (64, 64)])
def test_plain_crop_normalize_equals_torchvision(base):
    from torchvision.transforms import v2

    from convnets.data.augment import CenterCropNormalize

    x, size = torch.randint(0, 256, (3, *base), dtype=torch.uint8), (64, 64)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    steps = [v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    expected = v2.Compose(steps)(x)
    torch.testing.assert_close(CenterCropNormalize(size, mean, std)(x), expected)


def test_training_without_augmentation_never_imports_torchvision(tmp_path):
    """torchvision's package import pulls in torch._dynamo (~1 s cold); a run that does not augment
    (the default) has no use for it."""
    import subprocess
    import sys

    code = (
        "import sys; from convnets.train import train; "
        f"train('digits', model='lenet5', epochs=1, out={str(tmp_path / 'run')!r}, workers=0, quiet=True); "
        "print(sorted(m for m in sys.modules if m.startswith('torchvision'))[:3])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=900
    )  # noqa: E501
    assert out.stdout.strip().splitlines()[-1] == "[]"
