"""Non-square images (issue #26 item 3): ``--resize crop|letterbox|squash``, stored in the run and
used the same way by training's eval transform, evaluate, predict (torch and exported) and serve."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from convnets.base.runs import RunConfig, RunFolderError
from convnets.data import load_data
from convnets.data.decode import LETTERBOX_FILL, letterbox_fill, load_base, resize_mode
from convnets.data.images import read_image, to_input
from convnets.models.base import IMAGENET_MEAN, IMAGENET_STD

SIZE = (16, 16)
MODES = ("center-crop", "letterbox", "resize")


@pytest.fixture(scope="module")
def wide_folder(tmp_path_factory):
    """Two classes of non-square noise pictures (wide and tall, odd sizes)."""
    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    sizes = [(20, 41), (50, 19), (17, 33), (30, 90), (23, 23), (64, 21)]
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_resize_names_map_to_stored_modes():
    assert [resize_mode(n) for n in ("crop", "squash", "letterbox")] == ["center-crop", "resize", "letterbox"]
    assert resize_mode("center-crop") == "center-crop"
    with pytest.raises(ValueError, match="crop, squash, letterbox"):
        resize_mode("stretch")
    base = dict(model="lenet5", num_classes=2, class_names=["a", "b"], image_size=(16, 16))
    assert RunConfig(**base, resize="squash").resize == "resize"
    assert RunConfig.from_dict({**base, "resize": "letterbox"}).resize == "letterbox"
    assert RunConfig.from_dict(base).resize == "center-crop"  # old runs: what they always did
    with pytest.raises(RunFolderError, match="stretch"):
        RunConfig.from_dict({**base, "resize": "stretch"})


def test_letterbox_keeps_the_whole_picture_and_pads_with_the_mean_colour(tmp_path):
    img = np.zeros((10, 40, 3), dtype=np.uint8)
    img[:, :20] = (255, 0, 0)  # left half red, right half black
    Image.fromarray(img).save(tmp_path / "w.png")
    out = load_base(tmp_path / "w.png", (16, 16), 3, "letterbox")
    assert out.shape == (16, 16, 3)
    # 40x10 -> 16x4 content, centred: rows 6..9; 6 rows of fill above, 6 below.
    assert (out[:6] == LETTERBOX_FILL).all() and (out[10:] == LETTERBOX_FILL).all()
    assert (out[6:10, :7, 0] > 200).all() and (out[6:10, 9:, 0] < 60).all()  # both halves are there
    crop = read_image(tmp_path / "w.png", (16, 16), 3, "center-crop")  # the middle 10 columns only
    assert (crop[:, :4, 0] > 200).all() and (crop[:, 12:, 0] < 60).all() and crop[0, 0, 1] < 60
    grey = load_base(tmp_path / "w.png", (16, 16), 1, "letterbox")
    assert (grey[:6, :, 0] == letterbox_fill("L")).all()
    # Normalised with ImageNet's statistics, the pad is (almost) zero: what zero padding looks like.
    pad = to_input(out[None, :1, :1], IMAGENET_MEAN, IMAGENET_STD)
    assert np.abs(pad).max() < 0.01


@pytest.mark.parametrize("mode", MODES)
def test_every_reader_gives_training_eval_input(wide_folder, tmp_path, mode):
    """Training's eval transform (load_data's validation loader), evaluate on a folder, predict on
    torch, the exported model's reader and the server's (uploaded bytes) give the same tensor."""
    from convnets.data.run_splits import load_run_splits
    from convnets.deploy.engines import ExportedModel
    from convnets.deploy.predictor import Classifier

    splits = load_data(
        wide_folder,
        image_size=SIZE,
        val_split=0.5,
        augment="none",
        normalize="imagenet",
        resize={"center-crop": "crop", "resize": "squash"}.get(mode, mode),  # the --resize names
        num_workers=0,
    )
    assert splits.resize == mode
    files = splits.val.dataset.names()
    train_eval = torch.cat([x for x, _ in splits.val])
    config = RunConfig(
        model="lenet5",
        num_classes=2,
        class_names=splits.class_names,
        image_size=SIZE,
        resize=splits.resize,
        mean=tuple(splits.mean),
        std=tuple(splits.std),
        normalize="imagenet",
    )
    mean, std = config.normalization()
    torch_predict, errors = Classifier(torch.nn.Identity(), config).load_files(files)
    assert not errors
    torch.testing.assert_close(torch_predict, train_eval, atol=1e-6, rtol=0)

    exported = ExportedModel(tmp_path, config, engine=None)  # the reader only: no engine needed
    from_files = to_input([exported.read(f) for f in files], mean, std)
    served = to_input([exported.read(open(f, "rb").read()) for f in files], mean, std)
    np.testing.assert_allclose(from_files, train_eval.numpy(), atol=1e-6)
    np.testing.assert_allclose(served, train_eval.numpy(), atol=1e-6)

    # evaluate on a folder that is not the run's own: still the run's mode
    other = load_run_splits(config, wide_folder, batch_size=64, own_source=False)
    assert other.resize == mode
    by_file = {}
    for subset in (other.train.dataset, other.val.dataset):  # augment="none": the eval transform
        by_file.update((name, subset[i][0]) for i, name in enumerate(subset.names()))
    torch.testing.assert_close(torch.stack([by_file[f] for f in files]), train_eval, atol=1e-6, rtol=0)


def test_letterbox_augmentation_never_cuts_the_picture():
    from convnets.data import build_train_transform

    img = torch.zeros(3, 24, 32, dtype=torch.uint8)
    img[0] = 255  # the whole canvas is picture (red)
    tf = build_train_transform(["rrc:0.3", "hflip"], (24, 32), 3, [0.0] * 3, [1.0] * 3, resize="letterbox")
    fill = torch.tensor(LETTERBOX_FILL, dtype=torch.float32) / 255
    areas = []
    for seed in range(20):
        torch.manual_seed(seed)
        out = tf(img)
        red = (out[0] > 0.9) & (out[1] < 0.1)
        ys, xs = torch.nonzero(red, as_tuple=True)
        # Scaled by s in [sqrt(0.3), 1] and shifted within the room: the red block stays whole,
        # so its bounding box is about s x the canvas, never clipped at two opposite edges.
        areas.append(red.float().mean().item())
        assert not (xs.min() == 0 and xs.max() == 31 and red.float().mean() < 0.95)
        # What is not picture is the fill colour (bar the blended rim), never black.
        is_fill = ((out - fill[:, None, None]).abs() < 0.01).all(0)
        assert (is_fill | red).float().mean() > 0.8 and not (out.sum(0) < 0.05).any()
    assert min(areas) > 0.3 - 0.05 and max(areas) <= 1.0 and len(set(areas)) > 5
    torch.manual_seed(0)  # crop mode keeps torchvision's random-resized crop (it cuts)
    crop_tf = build_train_transform(["rrc:0.3"], (24, 32), 3, [0.0] * 3, [1.0] * 3)
    assert (crop_tf(img)[0] > 0.9).all()


def test_train_records_the_mode_and_export_documents_it(wide_folder, tmp_path, one_thread):
    from convnets.cli import main
    from convnets.deploy.predictor import Classifier
    from convnets.train import train

    with pytest.raises(SystemExit):  # argparse: --resize takes only the three names
        main(["train", str(wide_folder), "-m", "resnet20", "-o", str(tmp_path / "x"), "--resize", "pad"])
    from convnets.train import TrainConfigError

    with pytest.raises(TrainConfigError, match=r"--resize: must be one of crop, squash, letterbox, got"):
        train(str(wide_folder), model="resnet20", out=str(tmp_path / "y"), resize="pad")
    run = tmp_path / "run"
    train(
        str(wide_folder),
        model="resnet20",
        out=str(run),
        epochs=1,
        image_size=16,
        resize="letterbox",
        workers=0,
        quiet=True,
    )
    config = RunConfig.read(run)
    assert config.resize == "letterbox" and config.options["resize"] == "letterbox"
    clf = Classifier.from_run(run, backend="eager")
    files = sorted(str(p) for p in wide_folder.rglob("*.png"))[:3]
    x, _ = clf.load_files(files)
    expected = to_input([read_image(f, SIZE, 3, "letterbox") for f in files], *config.normalization())
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    pytest.importorskip("onnx")
    from convnets.deploy.export import export_run

    result = export_run(run, "onnx", tmp_path / "m.onnx")
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["preprocess"]["resize"] == "letterbox" and meta["preprocess"]["fill"] == list(LETTERBOX_FILL)
    assert result.path.is_file()
