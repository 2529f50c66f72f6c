"""evaluate.py: metrics against hand-computed values, TTA views, ensembles, predict, class checks.

The models here are tiny modules whose outputs are known in closed form, so every expected number
is computed by hand in the test rather than by the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convnets.base.runs import RunConfig
from convnets.deploy.evaluate import ClassMismatchError, classification_metrics, evaluate, evaluate_ensemble
from convnets.deploy.predictor import Classifier, predict, tta_views


class LeftHalfMean(nn.Module):
    """2 logits: [k * (mean of the input's left half - threshold), 0]; asymmetric, so mirroring matters."""

    def __init__(self, k: float = 10.0, expect_size: int | None = None, threshold: float = 0.5):
        super().__init__()
        self.k, self.threshold = k, threshold
        self.expect_size = expect_size
        self.dummy = nn.Parameter(torch.zeros(1))  # so cost/latency code finds a parameter and device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.expect_size is not None:
            assert tuple(x.shape[-2:]) == (self.expect_size, self.expect_size), x.shape
        w = x.shape[-1]
        m = x[..., : w // 2].mean(dim=(1, 2, 3))
        return torch.stack([self.k * (m - self.threshold), torch.zeros_like(m)], dim=1) + self.dummy


class ConstantLogits(nn.Module):
    def __init__(self, logits: list[float], expect_size: int):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))
        self.expect_size = expect_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each member must receive its own preprocessing (its own image size).
        assert tuple(x.shape[-2:]) == (self.expect_size, self.expect_size), x.shape
        return x.new_zeros(x.shape[0], len(self.logits)) + self.logits


def _config(class_names, size, in_chans=1, **more):
    return RunConfig(
        model="test",
        num_classes=len(class_names),
        class_names=class_names,
        image_size=(size, size),
        in_chans=in_chans,
        mean=[0.0] * in_chans,
        std=[1.0] * in_chans,
        normalize=True,
        **more,
    )


def _gradient_png(path, size=16):
    """Pixel (i, j) = 16 i + j: every crop's mean is known in closed form."""
    i, j = np.mgrid[0:size, 0:size]
    Image.fromarray((16 * i + j).astype(np.uint8), mode="L").save(path)


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _expected_ten_crop_p0(k: float = 10.0, threshold: float = 0.5) -> float:
    # Base 16x16 (= round(14 / 0.875)), crops 14x14 at row/col offsets: corners (0|2, 0|2), centre (1, 1).
    # Crop at (r0, c0): mean row = r0 + 6.5; left half = cols c0..c0+6 (mean c0 + 3), and for the
    # mirrored crop the left half is original cols c0+13..c0+7 (mean c0 + 10).
    probs = []
    for r0, c0 in [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]:
        for col_mean in (c0 + 3, c0 + 10):
            m = (16 * (r0 + 6.5) + col_mean) / 255
            probs.append(_sigmoid(k * (m - threshold)))
    return sum(probs) / len(probs)


def test_metrics_match_hand_computed_values():
    names = ["a", "b", "c", "d", "e", "f"]
    targets = torch.tensor([0, 0, 1, 1, 2, 3, 4, 4])
    preds = [0, 1, 1, 1, 2, 4, 4, 0]
    probs = torch.full((8, 6), 0.01)
    for row, p in enumerate(preds):
        probs[row, p] = 0.9
    # Sample 5 (true d): make d the *least* likely class, so it is outside the top 5.
    probs[5, 3] = 0.001
    m = classification_metrics(probs, targets, names)
    assert m["n"] == 8
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["top5"] == pytest.approx(7 / 8)
    pc = m["per_class"]
    assert (pc["a"]["precision"], pc["a"]["recall"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2))
    assert (pc["b"]["precision"], pc["b"]["recall"]) == (pytest.approx(2 / 3), pytest.approx(1.0))
    assert pc["b"]["f1"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    assert (pc["d"]["precision"], pc["d"]["recall"], pc["d"]["support"]) == (0.0, 0.0, 1)
    assert (pc["e"]["precision"], pc["e"]["recall"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2))
    assert pc["f"]["support"] == 0
    cm = m["confusion_matrix"]
    assert cm[0] == [1, 1, 0, 0, 0, 0] and cm[3] == [0, 0, 0, 0, 1, 0] and cm[4] == [1, 0, 0, 0, 1, 0]
    assert "top5" not in classification_metrics(probs[:, :4], targets.clamp(max=3), names[:4])


def test_ten_crop_averages_the_ten_known_crops():
    i, j = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    base = ((16 * i + j) / 255)[None, None]
    clf = Classifier(LeftHalfMean(expect_size=14), _config(["bright", "dark"], 14))
    views = tta_views(base, "10crop", (14, 14))
    assert len(views) == 10 and all(v.shape == (1, 1, 14, 14) for v in views)
    p = clf.predict_proba(base, "10crop")
    assert p[0, 0].item() == pytest.approx(_expected_ten_crop_p0(), abs=1e-6)
    # flip: the centre crop (offset 1, 1) and its mirror.
    expected_flip = (
        _sigmoid(10 * ((16 * 7.5 + 4) / 255 - 0.5)) + _sigmoid(10 * ((16 * 7.5 + 11) / 255 - 0.5))
    ) / 2
    assert clf.predict_proba(base, "flip")[0, 0].item() == pytest.approx(expected_flip, abs=1e-6)


def test_evaluate_folder_with_ten_crop_reports_gain_and_cost(tmp_path):
    data = tmp_path / "data"
    (data / "bright").mkdir(parents=True)
    (data / "dark").mkdir()
    _gradient_png(data / "bright" / "g.png")
    Image.fromarray(np.full((16, 16), 250, np.uint8), mode="L").save(data / "dark" / "white.png")
    clf = Classifier(LeftHalfMean(expect_size=14, threshold=0.49), _config(["bright", "dark"], 14))
    result = evaluate(clf, data, tta="10crop", out=tmp_path / "eval")
    p_gradient = _expected_ten_crop_p0(threshold=0.49)
    assert result.probs[0, 0].item() == pytest.approx(p_gradient, abs=1e-6)
    # The gradient image: its plain centre view has left-half mean 124/255 < 0.49 -> "dark" (wrong),
    # but the ten crops average to p(bright) > 0.5 (right). The white image is "bright" either way
    # (wrong: its folder says dark). So plain 0/2, ten-crop 1/2: a gain of +0.5 for 10x the compute.
    assert p_gradient > 0.5
    assert result.tta["plain_accuracy"] == 0.0 and result.metrics["accuracy"] == 0.5
    assert result.tta["gain"] == pytest.approx(0.5)
    assert result.tta["cost_factor"] == 10 and result.tta["views"] == 10
    assert result.tta["seconds"] > 0 and result.tta["plain_seconds"] > 0
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("accuracy", "n", "per_class", "confusion_matrix", "tta"):
        assert key in written
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 0
    assert (tmp_path / "eval" / "mistakes.png").stat().st_size > 0
    assert [m["id"].rsplit("/", 1)[-1] for m in result.mistakes] == ["white.png"]


def test_class_mismatch_names_extra_and_missing(tmp_path):
    for name in ("cat", "zebra"):
        (tmp_path / name).mkdir()
        Image.new("L", (8, 8)).save(tmp_path / name / "x.png")
    clf = Classifier(LeftHalfMean(), _config(["cat", "dog"], 8))
    with pytest.raises(ClassMismatchError, match=r"not in the model: zebra.*missing from the data: dog"):
        evaluate(clf, tmp_path)


def test_ensemble_is_the_exact_average_with_per_member_preprocessing(tmp_path):
    for name, count in (("a", 2), ("b", 1)):
        (tmp_path / name).mkdir()
        for k in range(count):
            Image.new("RGB", (20, 30), (k * 50, 0, 0)).save(tmp_path / name / f"{k}.png")
    cfg_small, cfg_large = _config(["a", "b"], 8, 3), _config(["a", "b"], 12, 3)
    member_a = Classifier(ConstantLogits([2.0, 0.0], 8), cfg_small, name="A")
    member_b = Classifier(ConstantLogits([0.0, 1.0], 12), cfg_large, name="B")
    result = evaluate_ensemble([member_a, member_b], tmp_path, measure=True)
    pa = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    pb = [1 / (1 + math.e), math.e / (1 + math.e)]
    expected = torch.tensor([(pa[0] + pb[0]) / 2, (pa[1] + pb[1]) / 2])
    assert torch.allclose(result.probs, expected.expand(3, 2), atol=1e-7)
    assert [m["accuracy"] for m in result.members] == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    assert result.accuracy == pytest.approx(2 / 3) and result.gain == pytest.approx(0.0)
    assert result.params == 4 and result.latency_ms > 0
    assert [m["image_size"] for m in result.members] == [[8, 8], [12, 12]]

    other = Classifier(ConstantLogits([0.0, 1.0], 8), _config(["a", "c"], 8, 3), name="C")
    with pytest.raises(ClassMismatchError, match="c"):
        evaluate_ensemble([member_a, other], tmp_path)


def test_resize_mode_follows_the_runs_data():
    # A digits run stretches its 8x8 images (resize "resize"); a photo folder's run centre-crops.
    assert Classifier(LeftHalfMean(), _config(["a", "b"], 8, resize="resize")).resize_mode == "resize"
    assert Classifier(LeftHalfMean(), _config(["a", "b"], 8)).resize_mode == "center-crop"


def test_predict_reports_broken_files_and_goes_on(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    Image.new("L", (10, 10), 255).save(folder / "white.png")
    Image.new("L", (10, 10), 0).save(folder / "sub" / "black.png")
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    clf = Classifier(LeftHalfMean(), _config(["bright", "dark"], 8))
    results = [p.to_dict() for p in predict(clf, [folder], top_k=1)]
    by_name = {r["file"].rsplit("/", 1)[-1]: r for r in results}
    assert set(by_name) == {"white.png", "black.png", "broken.jpg"}
    assert "error" in by_name["broken.jpg"] and "top" not in by_name["broken.jpg"]
    assert by_name["white.png"]["top"][0]["class"] == "bright"
    assert by_name["white.png"]["top"][0]["prob"] == pytest.approx(_sigmoid(5.0), abs=1e-6)
    assert by_name["black.png"]["top"] == [
        {"class": "dark", "prob": pytest.approx(1 - _sigmoid(-5.0), abs=1e-6)}
    ]


def test_predict_cli_from_a_run_folder_exits_1_on_a_broken_file(tmp_path, capsys):
    from safetensors.torch import save_file

    from convnets import create_model
    from convnets.cli import main

    model = create_model("lenet5", num_classes=3, in_chans=1).eval()
    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run / "model.safetensors")
    config = {
        "model": "lenet5", "model_kwargs": {}, "num_classes": 3, "in_chans": 1, "head": "default",
        "head_dropout": None, "image_size": [32, 32], "mean": [0.5], "std": [0.25], "normalize": "dataset",
        "class_names": ["x", "y", "z"], "data": {"source": "digits", "val_split": 0.2, "seed": 0},
        "split": None,
    }  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    Image.new("RGB", (50, 40), (200, 10, 10)).save(tmp_path / "red.jpg")  # colour -> grey by the data layer
    (tmp_path / "empty.png").write_bytes(b"")
    rc = main(
        [
            "predict",
            str(run),
            str(tmp_path / "red.jpg"),
            str(tmp_path / "empty.png"),
            "--top-k",
            "3",
            "--json",
        ]
    )
    assert rc == 1
    results = json.loads(capsys.readouterr().out)
    assert [r["file"].rsplit("/", 1)[-1] for r in results] == ["red.jpg", "empty.png"]
    assert "error" in results[1]
    top = results[0]["top"]
    assert sorted(t["class"] for t in top) == ["x", "y", "z"]
    assert sum(t["prob"] for t in top) == pytest.approx(1.0, abs=1e-5)
    assert [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)
    assert main(["predict", str(run), str(tmp_path / "red.jpg")]) == 0


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript", "eager"])
def test_every_backend_gives_the_same_evaluation(tmp_path, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    for name, shade in (("bright", 230), ("dark", 20)):
        (tmp_path / name).mkdir()
        Image.new("L", (10, 10), shade).save(tmp_path / name / "a.png")
    clf = Classifier(LeftHalfMean(), _config(["bright", "dark"], 8), backend=backend)
    result = evaluate(clf, tmp_path, tta="flip")
    assert result.backend == backend and result.to_dict()["backend"] == backend
    assert result.metrics["accuracy"] == 1.0
    p_bright = _sigmoid(10 * (230 / 255 - 0.5))
    assert float(result.probs[0, 0]) == pytest.approx(p_bright, abs=1e-5)
    with pytest.raises(ValueError, match="unknown inference backend"):
        Classifier(LeftHalfMean(), _config(["bright", "dark"], 8), backend="gpu")


def test_evaluate_cli_without_data_uses_the_runs_own_validation_split(tmp_path, one_thread, capsys):
    """`convnets evaluate RUN` (no DATA) evaluates exactly the validation files the run trained
    with (config.json's split), as `yolo val` does; a DATA folder still overrides it."""
    from train_shapes import make_shapes

    from convnets.cli import main
    from convnets.train import train

    data = make_shapes(tmp_path / "shapes", per_class=10, size=24)
    run = tmp_path / "run"
    train(str(data), "lenet5", run, epochs=1, workers=0, quiet=True, val_split=0.3, seed=3)
    from convnets.base.runs import RunConfig

    split = RunConfig.read(run).split  # config.json's split, its file lists kept in split.json
    val_files = sorted(str(data / rel) for rel in split["val"])
    assert 0 < len(val_files) < 30

    assert main(["evaluate", str(run), "--json", "--out", str(tmp_path / "eval")]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["n"] == len(val_files)
    assert "validation subset" in own["data"]
    assert sorted(str(Path(i).resolve()) for i in evaluate(run).ids) == [
        str(Path(f).resolve()) for f in val_files
    ]

    other = tmp_path / "other"  # the same classes, a different folder: every image in it
    for shape in ("circle", "square", "triangle"):
        (other / shape).mkdir(parents=True)
        for k in range(2):
            (other / shape / f"{k}.png").write_bytes((data / shape / f"{k}.png").read_bytes())
    assert main(["evaluate", str(run), str(other), "--json", "--out", str(tmp_path / "eval2")]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6


def test_evaluate_without_data_needs_a_run_that_names_its_data(tmp_path):
    clf = Classifier(LeftHalfMean(), _config(["a", "b"], 8))
    with pytest.raises(ValueError, match="config.json does not say which data"):
        evaluate(clf)


def test_a_run_validated_on_flips_is_evaluated_on_flips(tmp_path, one_thread, capsys):
    """`train --val-tta flip` validates on the image and its mirror; `convnets evaluate RUN` then uses
    the same views unless told (and reproduces the run's best validation accuracy); --tta none is one
    view again."""
    from train_shapes import make_shapes

    from convnets.base.runs import RunConfig
    from convnets.cli import main
    from convnets.train import train

    data = make_shapes(tmp_path / "shapes", per_class=12, size=24)
    run = tmp_path / "run"
    train(str(data), "lenet5", run, epochs=2, workers=0, quiet=True, val_split=0.3, seed=3, val_tta="flip")
    config = RunConfig.read(run)
    assert config.options["val_tta"] == "flip" and config.test_views == "flip"

    assert main(["evaluate", str(run), "--json", "--backend", "eager", "--out", str(tmp_path / "e1")]) == 0
    flipped = json.loads(capsys.readouterr().out)
    assert flipped["tta"]["mode"] == "flip"
    assert flipped["tta"]["accuracy"] == pytest.approx(config.best.val_acc)
    assert main(["evaluate", str(run), "--json", "--tta", "none", "--out", str(tmp_path / "e2")]) == 0
    assert json.loads(capsys.readouterr().out)["tta"]["mode"] == "none"
