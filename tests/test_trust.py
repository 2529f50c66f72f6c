"""Calibration (temperature, ECE) and the out-of-distribution detector, on numbers and on a trained run."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from convnets.base.predictions import softmax
from convnets.trust.calibration import (
    Calibration,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability,
)
from convnets.trust.ood import OODDetector


def _overconfident(n: int = 2000, seed: int = 0):
    """Logits of a 3-class model that is right ~70% of the time but says ~99%: the true class gets a
    noisy margin, and everything is multiplied by 8."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), targets] += 1.2
    return softmax(8 * logits), targets


def test_temperature_lowers_nll_and_ece_of_an_overconfident_model():
    probs, targets = _overconfident()
    cal = Calibration.fit(probs, targets)
    assert cal.temperature > 3  # it was multiplied by 8: the fit undoes most of it
    assert cal.nll_after < 0.6 * cal.nll_before
    assert cal.ece_after < 0.05 < 0.2 < cal.ece_before
    after = apply_temperature(probs, cal.temperature)
    assert np.array_equal(after.argmax(1), probs.argmax(1))  # predictions never change
    # On fresh data from the same model the fitted temperature helps just as much.
    probs2, targets2 = _overconfident(seed=1)
    assert nll(probs2, targets2, cal.temperature) < 0.6 * nll(probs2, targets2)


def test_temperature_on_probabilities_equals_temperature_on_logits():
    logits = np.random.default_rng(0).normal(0, 3, (5, 4))
    expected = softmax(logits / 2.5)
    assert np.allclose(apply_temperature(softmax(logits), 2.5), expected, atol=1e-6)
    assert apply_temperature(softmax(logits), None) is not None


def test_ece_and_reliability_by_hand():
    # Two bins used: 0.9-confident (4 images, 3 right) and 0.6-confident (2 images, 2 right).
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    targets = np.array([0, 0, 0, 1, 0, 0])
    rel = reliability(probs, targets, bins=10)
    expected = 4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(1.0 - 0.6)
    assert rel.ece == pytest.approx(expected)
    assert expected_calibration_error(probs, targets, bins=10) == pytest.approx(expected)
    assert sum(rel.counts) == 6 and rel.counts[8] == 4 and rel.counts[5] == 2


def test_no_mistakes_leaves_the_temperature_at_one():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert fit_temperature(probs, np.array([0, 1])) == 1.0


@pytest.mark.parametrize("n, p", [(30, 80), (200, 16)])
def test_shrunk_precision_equals_scikit_learns_ledoit_wolf(n, p):
    from sklearn.covariance import LedoitWolf

    from convnets.trust.ood import shrunk_precision

    rng = np.random.default_rng(n)
    x = rng.normal(0, 1, (n, p)) @ rng.normal(0, 1, (p, p)) / np.sqrt(p)  # correlated features
    expected = LedoitWolf(assume_centered=True).fit(x).precision_
    np.testing.assert_allclose(shrunk_precision(x), expected, rtol=1e-6, atol=1e-8 * np.abs(expected).max())


def test_ood_detector_on_gaussian_clusters(tmp_path):
    rng = np.random.default_rng(0)
    centres = np.array([[4.0] * 16, [4.0, -4.0] * 8])  # two directions (the detector sees directions)
    y = rng.integers(0, 2, 400)
    x = centres[y] + rng.normal(0, 1, (400, 16))
    val = centres[rng.integers(0, 2, 200)] + rng.normal(0, 1, (200, 16))
    det = OODDetector.fit(x, y, val)
    assert (det.score(val) <= det.threshold).mean() == pytest.approx(0.95, abs=0.01)
    far = rng.normal(0, 1, (100, 16)) + np.array([-4.0] * 16)  # the opposite direction
    assert (det.score(far) > det.threshold).mean() > 0.95

    from convnets.base.runs import RunConfig

    det2 = OODDetector.load(tmp_path, det.save(tmp_path))
    assert np.allclose(det2.score(far), det.score(far))
    cfg = RunConfig(model="m", num_classes=2, class_names=["a", "b"], image_size=(8, 8), ood=det.config())
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).ood == det.config()


# --- a trained run -----------------------------------------------------------------------------------


def _write_patch_folder(root, n, seed):
    from test_explain import _patch_images

    images, labels, _ = _patch_images(n, seed=seed)
    for i, (a, label) in enumerate(zip(images, labels)):
        d = root / ("red", "blue")[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(d / f"{i}.png")
    return root


def _third_kind(root, n: int = 20, seed: int = 5):
    """Images of neither class: stripes, noise and colour ramps."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            a = np.zeros((32, 32, 3), np.uint8)
            a[(np.arange(32) // rng.integers(2, 6)) % 2 == 0] = rng.integers(100, 256, 3)
        elif kind == 1:
            a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        else:
            a = (
                (np.linspace(0, 1, 32)[None, :, None] * rng.integers(50, 256, 3))
                .astype(np.uint8)
                .repeat(32, 0)
            )
        paths.append(root / f"other{i}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    """A small CIFAR ResNet trained on "red patch" vs "blue patch" (about 10 s on one busy core)."""
    from convnets.train import train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("patch")
    data = _write_patch_folder(base / "data", 120, seed=0)
    try:
        result = train(
            str(data),
            model="cifar_resnet",
            out=base / "run",
            epochs=6,
            lr=3e-3,
            workers=0,
            quiet=True,
            model_kwargs={"depth": 8, "widths": [8, 16, 32]},
        )
    finally:
        torch.set_num_threads(before)
    assert result.best_val_acc >= 0.9
    return base


def test_training_fits_the_detector_on_its_own_images_as_a_refit_from_disk_does(patch_run, tmp_path):
    """train() fits the detector over the trainer's in-memory images; calibrate_run later re-reads the
    folder. Both must see the same images the same way."""
    import shutil

    from convnets.base.runs import RunConfig
    from convnets.trust.fit import calibrate_run

    run = tmp_path / "run"
    shutil.copytree(patch_run / "run", run)
    config = RunConfig.read(run)
    from_training = OODDetector.load(run, config.ood)
    calibrate_run(run, temperature=False)
    refit = OODDetector.load(run, RunConfig.read(run).ood)
    probe = np.random.default_rng(0).normal(size=(16, from_training.centres.shape[1])).astype(np.float32)
    assert refit.threshold == pytest.approx(from_training.threshold, rel=1e-4)
    np.testing.assert_allclose(refit.score(probe), from_training.score(probe), rtol=1e-4)


def test_ood_flags_a_third_kind_and_passes_the_runs_own_images(patch_run):
    from convnets.base.runs import RunConfig
    from convnets.data.images import read_image, to_input
    from convnets.trust.fit import calibrate_run, split_features
    from convnets.trust.ood import features_and_logits
    from convnets.weights import load_run

    run = patch_run / "run"
    fit = calibrate_run(run, temperature=False)
    assert fit.val_pass_rate >= 0.9
    config = RunConfig.read(run)
    assert config.ood is not None and (run / config.ood.file).is_file() and config.temperature is None
    detector = OODDetector.load(run, config.ood)
    model, _ = load_run(run)
    feats = split_features(run, model=model)
    assert (detector.score(feats.val_features) <= detector.threshold).mean() >= 0.9

    def scores(paths):
        views = np.stack([read_image(p, config.image_size, config.in_chans, config.resize) for p in paths])
        logits, f = features_and_logits(model, torch.from_numpy(to_input(views, *config.normalization())))
        return detector.score(f.numpy()), torch.softmax(logits, 1).max(1).values

    others = _third_kind(patch_run / "others")
    other_scores, other_conf = scores(others)
    assert (other_scores > detector.threshold).mean() >= 0.9
    fresh = _write_patch_folder(patch_run / "fresh", 40, seed=3)
    fresh_scores, _ = scores(sorted(fresh.rglob("*.png")))
    assert (fresh_scores <= detector.threshold).mean() >= 0.8  # new images of the two classes
    # What the flag is for: softmax alone is confident on most of those other images.
    assert float(other_conf.median()) > 0.9


def _png_bytes(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_error_analysis_by_hand():
    from convnets.trust.analysis import balanced_accuracy, macro_f1, most_confused, top_losses

    # true a: 8 right, 2 called b; true b: 1 right, 1 called c; true c: 0 images; one b called c.
    cm = [[8, 2, 0], [0, 1, 1], [0, 0, 0]]
    assert balanced_accuracy(cm) == pytest.approx((0.8 + 0.5) / 2)
    f1_a, f1_b, f1_c = 2 * 8 / (8 + 10), 2 * 1 / (3 + 2), 0.0
    assert macro_f1(cm) == pytest.approx((f1_a + f1_b + f1_c) / 3)
    pairs = most_confused(cm, ["a", "b", "c"])
    assert [(p.true, p.predicted, p.count) for p in pairs] == [("a", "b", 2), ("b", "c", 1)]
    assert pairs[1].share == 0.5
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    losses = top_losses(probs, np.array([0, 0, 1]), ["x", "y", "z"], ["p", "q"], k=2)
    assert [(t.id, t.predicted, t.true) for t in losses] == [("y", "q", "p"), ("z", "p", "q")]
    assert losses[0].loss == pytest.approx(-np.log(0.2)) and losses[0].prob == pytest.approx(0.8)


def test_exported_model_gives_the_same_features_and_flags(patch_run):
    pytest.importorskip("onnxruntime")
    from convnets.base.predictions import Prediction
    from convnets.base.runs import RunConfig
    from convnets.data.images import read_image, to_input
    from convnets.deploy.engines import ensure_exported
    from convnets.trust.fit import annotate_exported, calibrate_run
    from convnets.trust.ood import FeatureSession, features_and_logits
    from convnets.weights import load_run

    run = patch_run / "run"
    if RunConfig.read(run).ood is None:
        calibrate_run(run, temperature=False)
    config = RunConfig.read(run)
    others = _third_kind(patch_run / "others_onnx", n=6)
    files = [*others, *sorted((patch_run / "data" / "red").glob("*.png"))[:3]]
    views = np.stack([read_image(f, config.image_size, config.in_chans, config.resize) for f in files])
    model, _ = load_run(run)
    logits_t, feats_t = features_and_logits(model, torch.from_numpy(to_input(views, *config.normalization())))
    session = FeatureSession(ensure_exported(run))
    logits_o, feats_o = session(views.astype(np.float32).transpose(0, 3, 1, 2) / 255)
    assert np.allclose(feats_o, feats_t.numpy(), atol=1e-3)
    assert np.allclose(logits_o, logits_t.numpy(), atol=1e-3)

    rows = [Prediction(str(f), top=[]) for f in files] + [Prediction("broken.png", error="no such file")]
    annotate_exported(run, rows, reject=True)
    flagged = [r.extra["ood"]["flagged"] for r in rows[:-1]]
    assert flagged == [True] * 6 + [False] * 3
    assert rows[0].top[0].label == "unknown" and "model_top" in rows[0].extra["ood"]
    assert "ood" not in rows[-1].extra


def test_feature_output_name_in_float_and_int8_graphs():
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    from convnets.trust.ood import feature_output_name

    def graph(nodes, out):
        output = helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)
        return helper.make_model(helper.make_graph(nodes, "g", [], [output]))

    def qdq(x, tag):  # x -> QuantizeLinear -> DequantizeLinear
        return [
            helper.make_node("QuantizeLinear", [x, "s", "z"], [f"{tag}_q"]),
            helper.make_node("DequantizeLinear", [f"{tag}_q", "s", "z"], [f"{tag}_dq"]),
        ], f"{tag}_dq"

    pool = helper.make_node("GlobalAveragePool", ["x"], ["pool"])
    plain = [
        pool,
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w"], ["logits"]),
    ]
    assert feature_output_name(graph(plain, "logits")) == "flat"
    q1, pooled = qdq("pool", "p")
    q2, flat = qdq("flat", "f")
    q3, logits = qdq("gemm", "l")
    int8 = [
        pool,
        *q1,
        helper.make_node("Flatten", [pooled], ["flat"]),
        *q2,
        helper.make_node("Gemm", [flat, "w", "b"], ["gemm"]),
        *q3,
    ]
    assert feature_output_name(graph(int8, logits)) == "pool"  # the float pool, before any rounding
    with pytest.raises(ValueError, match="final Linear"):
        feature_output_name(graph([pool], "pool"))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_engines_give_the_detectors_features_in_the_same_pass(patch_run, backend):
    pytest.importorskip("onnxruntime")
    if backend == "openvino":
        pytest.importorskip("openvino")
    from convnets.base.runs import RunConfig
    from convnets.data.images import read_image
    from convnets.deploy.engines import ExportedModel, ensure_exported, pixels_of
    from convnets.trust.ood import FeatureSession

    run = patch_run / "run"
    config = RunConfig.read(run)
    mine = sorted((patch_run / "data" / "blue").glob("*.png"))[:3]
    files = [*_third_kind(patch_run / f"others_{backend}", n=4), *mine]
    views = [read_image(f, config.image_size, config.in_chans, config.resize) for f in files]
    _, reference = FeatureSession(ensure_exported(run))(pixels_of(views))
    model = ExportedModel.open(run, backend, features=True)
    probs, features = model.predict_views_with_features(views)
    np.testing.assert_allclose(probs, model.predict_views(views), atol=2e-2)
    # OpenVINO runs bf16 on AMX CPUs: features to bf16 rounding, fp32 elsewhere
    np.testing.assert_allclose(features, reference, rtol=3e-2, atol=3e-2 * float(np.abs(reference).max()))


def test_served_rows_carry_the_ood_field(patch_run):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from convnets.base.runs import RunConfig
    from convnets.serve import create_app
    from convnets.trust.fit import calibrate_run

    run = patch_run / "run"
    if RunConfig.read(run).ood is None:
        calibrate_run(run, temperature=False)
    others = _third_kind(patch_run / "others_served", n=3)
    mine = sorted((patch_run / "data" / "red").glob("*.png"))[:3]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in [*others, *mine]]
    files.append(("files", ("broken.png", b"not an image", "image/png")))
    with TestClient(create_app(run, backend="onnxruntime", max_batch=4)) as client:
        rows = client.post("/v1/predict", files=files).json()["predictions"]
    assert [r["ood"]["flagged"] for r in rows[:-1]] == [True] * 3 + [False] * 3
    assert "ood" not in rows[-1] and rows[-1]["error"]


def test_server_answers_without_the_field_when_the_graph_gives_no_features(patch_run, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from convnets.serve import create_app
    from convnets.trust import ood

    def no_linear(path):
        raise ValueError("the logits do not come from a final Linear layer")

    monkeypatch.setattr(ood, "features_graph", no_linear)
    image = next((patch_run / "data" / "red").glob("*.png"))
    with TestClient(create_app(patch_run / "run", backend="onnxruntime", max_batch=2)) as client:
        r = client.post("/v1/predict", files=[("files", (image.name, image.read_bytes(), "image/png"))])
    assert r.status_code == 200
    (row,) = r.json()["predictions"]
    assert row["top"] and "ood" not in row


def test_predict_and_evaluate_flag_calibrate_and_reject(patch_run, capsys):
    """End to end through the CLI: train fitted the detector; predict flags a third kind (torch and
    exported paths), --reject-ood answers unknown, evaluate --calibrate stores a temperature that
    predict then applies."""
    from convnets.base.runs import RunConfig
    from convnets.cli import main

    run = patch_run / "run"
    others = _third_kind(patch_run / "others_cli", n=3)
    own = sorted((patch_run / "data" / "blue").glob("*.png"))[:2]
    files = [str(f) for f in (*others, *own)]
    for backend in ("eager", "auto"):
        assert main(["predict", str(run), *files, "--json", "--backend", backend]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["ood"]["flagged"] for r in rows] == [True, True, True, False, False], backend
        assert rows[3]["top"][0]["class"] == "blue"
    assert main(["predict", str(run), *files, "--reject-ood"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert all(": unknown" in line for line in lines[:3]) and "blue" in lines[3]
    assert "3 of 5 image(s) look unlike the training data" in out.err

    one = ["predict", str(run), files[3], "--json", "--backend", "eager"]
    before = json.loads(_run_cli(main, capsys, one))
    ev = patch_run / "ev"
    assert main(["evaluate", str(run), str(patch_run / "data"), "--calibrate", "--out", str(ev)]) == 0
    text = capsys.readouterr().out
    assert "temperature" in text and "ECE" in text and "balanced accuracy" in text
    config = RunConfig.read(run)
    assert config.temperature is not None
    metrics = json.loads((ev / "metrics.json").read_text())
    keys = {"balanced_accuracy", "macro_f1", "most_confused", "top_losses", "calibration", "ood"}
    assert keys <= set(metrics)
    assert (ev / "reliability.png").is_file()
    from pathlib import Path

    assert metrics["top_losses"] and all(Path(t["id"]).is_file() for t in metrics["top_losses"])
    after = json.loads(_run_cli(main, capsys, one))
    from convnets.trust.calibration import apply_temperature

    p = before[0]["top"][0]["prob"]
    expected = apply_temperature(np.array([[p, 1 - p]]), config.temperature)[0, 0]
    assert after[0]["top"][0]["prob"] == pytest.approx(float(expected), abs=1e-4)


def _run_cli(main, capsys, argv):
    assert main(argv) == 0
    return capsys.readouterr().out


def test_report_shows_heat_maps_of_mistakes_calibration_and_ood(patch_run):
    import shutil

    from convnets.report import report

    # A folder where two images sit under the wrong class: two sure mistakes to explain.
    data = _write_patch_folder(patch_run / "swapped", 12, seed=7)
    red, blue = sorted((data / "red").glob("*.png")), sorted((data / "blue").glob("*.png"))
    shutil.move(red[0], data / "blue" / "moved-red.png")
    shutil.move(blue[0], data / "red" / "moved-blue.png")
    page = report(patch_run / "run", patch_run / "report.html", data=data, backend="eager").read_text()
    for heading in (
        "Why: the worst mistakes with their heat maps",
        "Error analysis",
        "Calibration",
        "Unlike the training data",
        "balanced accuracy",
        "top losses",
    ):
        assert heading in page, heading
    assert "moved-red.png" in page and "moved-blue.png" in page  # the top losses name the files
