"""deploy/engines and quantize.py: engines on a run's export, the auto choice, int8 with its accuracy gate,
numpy TTA, and the torch-free cold paths (``convnets --help``, ``predict`` on an existing export)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from convnets import create_model
from convnets.base.runs import INT8_ONNX_FILE, RunConfig, RunFolderError
from convnets.deploy.engines import (
    EngineError,
    ExportedModel,
    ExportInfo,
    auto_candidates,
    ensure_exported,
    openvino_available,
    split_files,
    ten_crop,
)

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A folder run (split recorded like `convnets train` does) around a small CIFAR ResNet at 16 px."""
    base = tmp_path_factory.mktemp("exported")
    data = base / "data"
    rng = np.random.default_rng(0)
    rels = []
    for c, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            pixels[..., c] = 255  # a class signal the random model may or may not pick up
            Image.fromarray(pixels).save(data / name / f"{i}.png")
            rels.append(f"{name}/{i}.png")
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=2, in_chans=3).eval()
    run_dir = base / "run"
    run_dir.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run_dir / "model.safetensors")
    split = {
        "root": str(data),
        "layout": "classes",
        "class_names": CLASSES,
        "train": [r for r in rels if not r.endswith(("6.png", "7.png"))],
        "val": [r for r in rels if r.endswith(("6.png", "7.png"))],
    }
    RunConfig(
        model="resnet20", num_classes=2, class_names=CLASSES, image_size=(16, 16), resize="center-crop",
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), normalize="dataset", split=split,
    ).write(run_dir)  # fmt: skip
    ensure_exported(run_dir)
    return run_dir, model, data


def _torch_probs(model, pixels: np.ndarray) -> np.ndarray:
    x = (torch.from_numpy(pixels) - 0.5) / 0.25
    with torch.no_grad():
        return torch.softmax(model(x), 1).numpy()


def test_onnxruntime_engine_matches_pytorch_and_reads_files(run):
    run_dir, model, data = run
    m = ExportedModel.open(run_dir, "onnxruntime")
    assert m.backend == "onnxruntime" and m.class_names == CLASSES
    pixels = np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)
    probs = np.exp(m.logits(pixels))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, _torch_probs(model, pixels), atol=1e-4)
    rows = m.predict_files([data / "cat"], top=1)
    assert len(rows) == 8 and all(r.error is None and r.label in CLASSES for r in rows)


@pytest.mark.skipif(not openvino_available(), reason="openvino not installed")
def test_openvino_engine_agrees_with_onnxruntime_and_records_its_check(run):
    run_dir, _, data = run
    files = sorted(str(p) for p in (data / "dog").iterdir())
    ort = ExportedModel.open(run_dir, "onnxruntime").predict([(f, f) for f in files], top=2)
    ov = ExportedModel.open(run_dir, "openvino")
    assert ov.backend == "openvino" and ov.engine.description.startswith("OpenVINO")
    for a, b in zip(ort, ov.predict([(f, f) for f in files], top=2)):
        assert abs(a.top[0].prob - dict((c.label, c.prob) for c in b.top)[a.label]) < 0.05
    # batch sizes 1 and 3 (each a static graph) give the same rows
    one = ov.predict_views([ov.read(files[0])])
    three = ov.predict_views([ov.read(f) for f in files[:3]])
    np.testing.assert_allclose(one[0], three[0], atol=1e-5)
    from convnets.deploy.engines import check_engine

    check = check_engine(run_dir, ov.engine)
    assert check.source == "validation images" and check.images == 4 and check.passed
    assert check.engine in ExportInfo.read(run_dir).checks


def test_auto_runs_the_engine_timed_fastest_on_this_machine(run, monkeypatch):
    """auto: the candidates that are installed and valid, timed once per run folder and machine (kept in
    export.json), the fastest chosen; small jobs open ONNX Runtime without timing anything."""
    import convnets.deploy.engines.choice as choice
    from convnets.deploy.engines import EngineCheck

    run_dir, _, _ = run
    assert auto_candidates(run_dir)[-1] == "onnxruntime"
    assert ("openvino" in auto_candidates(run_dir)) == openvino_available()
    small = ExportedModel.open(run_dir, "auto", images=1)
    assert small.backend == "onnxruntime"

    class Fake:
        def __init__(self, name, ms):
            self.name, self.ms, self.description = name, ms, f"Fake{name} 1.0 fp32"

        def run(self, pixels):
            time.sleep(self.ms / 1000 * len(pixels))
            return np.zeros((len(pixels), 2), np.float32)

    fakes = {"openvino": Fake("openvino", 0.2), "onnxruntime": Fake("onnxruntime", 2.0)}
    monkeypatch.setattr(choice, "auto_candidates", lambda _run: ["openvino", "onnxruntime"])
    monkeypatch.setattr(choice, "make_engine", lambda _run, name, **_: fakes[name])
    monkeypatch.setattr(choice, "check_engine", lambda *_a, **_k: EngineCheck("x", 4, "x", 1.0, 0.0))
    lines = []
    assert choice.open_engine(run_dir, "auto", log=lines.append) is fakes["openvino"]
    speeds = ExportInfo.read(run_dir).speeds[choice.machine_key()]
    assert speeds["fakeopenvino-fp32"] < speeds["fakeonnxruntime-fp32"] and "timed on this CPU" in lines[0]
    # The same machine later: read from export.json, not timed again (here the record now says otherwise).
    info = ExportInfo.read(run_dir)
    info.speeds[choice.machine_key()] = {"fakeopenvino-fp32": 9.0, "fakeonnxruntime-fp32": 1.0}
    info.write(run_dir)
    lines.clear()
    assert choice.open_engine(run_dir, "auto", log=lines.append) is fakes["onnxruntime"] and not lines
    # Another machine (other flags) times anew.
    monkeypatch.setattr(choice, "machine_key", lambda threads=None: "another-cpu")
    assert choice.open_engine(run_dir, "auto", log=lines.append) is fakes["openvino"] and lines


class _FakeOpenVino:
    name, description = "openvino", "OpenVINO 0.0 bf16"

    def run(self, pixels):
        return np.zeros((len(pixels), 2), np.float32)


def test_choose_engine_passes_over_a_failing_engine_and_names_it(run, monkeypatch):
    """auto: OpenVINO failing its check, or missing, leaves ONNX Runtime, and the one passed over is named."""
    import convnets.deploy.engines.choice as choice
    from convnets.deploy.engines import EngineCheck, choose_engine

    run_dir, _, _ = run
    real_make_engine = choice.make_engine

    def make_engine(run_dir, name, **kwargs):
        return _FakeOpenVino() if name == "openvino" else real_make_engine(run_dir, name, **kwargs)

    monkeypatch.setattr(choice, "auto_candidates", lambda _run: ["openvino", "onnxruntime"])
    monkeypatch.setattr(choice, "make_engine", make_engine)
    monkeypatch.setattr(choice, "check_engine", lambda *_a, **_k: EngineCheck("x", 4, "x", 0.5, 0.4))
    lines = []
    picked = choose_engine(run_dir, "auto", pytorch_fallback=True, log=lines.append)
    assert picked.model.backend == "onnxruntime" and picked.note is None
    assert lines == ["not using OpenVINO 0.0 bf16: against ONNX Runtime fp32 top-1 agreed on 50%, "
                     "probabilities moved up to 0.400"]  # fmt: skip

    def no_openvino(run_dir, name, **kwargs):
        if name == "openvino":
            raise EngineError("the openvino backend needs: pip install 'convnets[openvino]'")
        return real_make_engine(run_dir, name, **kwargs)

    monkeypatch.setattr(choice, "make_engine", no_openvino)
    assert choose_engine(run_dir, "auto").model.backend == "onnxruntime"
    # Asked for by name, a missing engine is an error that names the option, never a quiet substitute.
    with pytest.raises(EngineError, match=r"^--backend openvino: .*convnets\[openvino\]"):
        choose_engine(run_dir, "openvino", pytorch_fallback=True)


def test_choose_engine_falls_back_to_pytorch_with_a_note(run, tmp_path, monkeypatch):
    """predict's fallback, as a library call: under auto an export that cannot be used gives no model
    and says why; asked for by name, it is an error; the server drops only the ood field."""
    import shutil

    from convnets.deploy.engines import EngineChoice, ExportMismatchError, choose_engine

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    with pytest.raises(EngineError, match=r"^--backend int8: .*no int8 model"):
        choose_engine(run_dir, "int8", pytorch_fallback=True)
    # A graph without a features output: served without the ood field, or (predict) run on PyTorch.
    monkeypatch.setattr("convnets.trust.ood.features_graph", lambda _p: (_ for _ in ()).throw(
        ValueError("no Linear at the end")))  # fmt: skip
    served = choose_engine(run_dir, features=True, features_optional=True)
    assert served.model is not None and served.note.startswith("rows will have no ood field")
    assert choose_engine(run_dir, features=True, pytorch_fallback=True) == EngineChoice(None)
    # A read-only run folder whose export is not the run's: refused, PyTorch runs the run's own weights.
    (run_dir / "model.onnx").write_bytes(b"garbage")
    monkeypatch.setattr("convnets.deploy.engines.onnx_file.can_write_in", lambda p: False)
    fallback = choose_engine(run_dir, "auto", pytorch_fallback=True)
    assert fallback.model is None and "read-only" in fallback.note and "running PyTorch" in fallback.note
    for kwargs in ({"backend": "onnxruntime", "pytorch_fallback": True}, {"backend": "auto"}):
        with pytest.raises(ExportMismatchError, match="read-only"):
            choose_engine(run_dir, **kwargs)


def test_predict_cli_takes_its_engine_and_fallback_from_choose_engine(run, monkeypatch, capsys):
    """cli/predict decides nothing itself: what choose_engine answers is what it runs and says."""
    import convnets.deploy.engines as engines
    from convnets.cli import main

    run_dir, _, data = run
    calls = []

    def choose_engine(run_dir, backend="auto", **kwargs):
        calls.append((backend, kwargs["pytorch_fallback"]))
        return engines.EngineChoice(None, "not using the exported model (test); running PyTorch")

    monkeypatch.setattr(engines, "choose_engine", choose_engine)
    assert main(["predict", str(run_dir), str(data / "dog" / "0.png"), "--json", "--no-ood"]) == 0
    out, err = capsys.readouterr()
    assert calls == [("auto", True)] and "(test); running PyTorch" in err
    assert json.loads(out)[0]["file"].endswith("0.png")


def test_tta_views_match_torchvision(run):
    from torchvision.transforms.v2 import functional as TF

    base = np.random.default_rng(2).integers(0, 256, (19, 21, 3), dtype=np.uint8)
    expected = TF.ten_crop(torch.from_numpy(base).permute(2, 0, 1), [16, 16])
    for ours, theirs in zip(ten_crop(base, (16, 16)), expected):
        np.testing.assert_array_equal(ours, theirs.permute(1, 2, 0).numpy())
    run_dir, _, data = run
    m = ExportedModel.open(run_dir, "onnxruntime")
    f = str(data / "cat" / "0.png")
    for tta, views in (("none", 1), ("flip", 2), ("10crop", 10)):
        assert len(m.read_views(f, tta)) == views
        (row,) = m.predict([(f, f)], top=2, tta=tta)
        assert row.error is None and abs(sum(c.prob for c in row.top) - 1) < 1e-5


def test_int8_is_measured_recorded_and_refused_beyond_max_drop(run, tmp_path):
    from convnets.deploy.quantize import QuantizationRefused, quantize_run

    run_dir, _, _ = run
    result = quantize_run(run_dir, calibration_images=6)
    info = ExportInfo.read(run_dir).int8
    assert result.path == run_dir / INT8_ONNX_FILE and result.path.is_file()
    assert info.calibration_images == 6 and info.val_images == 4 and info.accepted
    assert info.delta_points == pytest.approx(100 * (info.int8_top1 - info.fp32_top1))
    m = ExportedModel.open(run_dir, "int8")
    assert m.backend == "int8" and m.predict_views([np.zeros((16, 16, 3), np.uint8)]).shape == (1, 2)
    assert auto_candidates(run_dir)[0] == "int8"  # an accepted int8 model is a candidate wherever it runs
    # An impossible bar (int8 must gain 100 points): refused with the numbers, the file removed.
    with pytest.raises(QuantizationRefused, match=r"points.*on 4 images"):
        quantize_run(run_dir, calibration_images=6, max_drop=-100)
    assert not (run_dir / INT8_ONNX_FILE).exists() and not ExportInfo.read(run_dir).int8.accepted
    with pytest.raises(EngineError, match="refused"):
        ExportedModel.open(run_dir, "int8")
    assert "int8" not in auto_candidates(run_dir)


def test_new_weights_make_the_export_and_int8_stale(run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    (run_dir / INT8_ONNX_FILE).write_bytes(b"stale")
    torch.manual_seed(1)
    model = create_model("resnet20", num_classes=2, in_chans=3).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run_dir / "model.safetensors")
    m = ExportedModel.open(run_dir, "onnxruntime")  # re-exports
    pixels = np.random.default_rng(3).random((2, 3, 16, 16), dtype=np.float32)
    probs = np.exp(m.logits(pixels))
    np.testing.assert_allclose(probs / probs.sum(1, keepdims=True), _torch_probs(model, pixels), atol=1e-4)
    assert not (run_dir / INT8_ONNX_FILE).exists() and ExportInfo.read(run_dir).int8 is None
    with pytest.raises(EngineError, match="--int8"):
        ExportedModel.open(run_dir, "int8")


def test_int8_needs_a_folder_run(run, tmp_path):
    config = RunConfig.read(run[0])
    config.split = {"train": [0, 1], "val": [2]}
    with pytest.raises(RunFolderError, match="image folder"):
        split_files(config, "train")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_help_imports_neither_torch_nor_numpy():
    modules = _modules_after(
        "from convnets.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert not {"torch", "torchvision", "numpy"} & modules


def test_predict_on_an_existing_export_does_not_import_torch(run):
    run_dir, _, data = run
    image = data / "dog" / "0.png"
    modules = _modules_after(
        f"from convnets.cli import main\nrc = main(['predict', {str(run_dir)!r}, {str(image)!r}, '--json'])\n"
        "assert rc == 0, rc"
    )
    assert "onnxruntime" in modules and not {"torch", "torchvision"} & modules


def test_export_int8_cli_prints_the_measured_change_and_refuses_builtin_runs(run, tmp_path, capsys):
    import shutil

    from convnets.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(run[0], run_dir)
    assert main(["export", str(run_dir), "--int8", "--calibration-images", "4"]) == 0
    out = capsys.readouterr().out
    assert "model.int8.onnx" in out and "points" in out and "validation top-1 on 4 images" in out
    config = RunConfig.read(run_dir)
    config.split = {"train": [0, 1], "val": [2]}  # what a built-in dataset (digits) records
    config.write(run_dir)
    assert main(["export", str(run_dir), "--int8"]) == 2
    assert "image folder" in capsys.readouterr().err


def test_int8_without_vnni_has_u8_weights_run_by_onnxruntime(run, monkeypatch):
    """On x86 without VNNI, u8 x s8 products saturate in AVX2's vpmaddubsw: the quantizer then writes u8
    weights (U8U8, which ONNX Runtime widens before multiplying), says so in export.json, runs the file
    on ONNX Runtime (OpenVINO's AVX2 kernels cannot), and still gates it by accuracy."""
    import onnx

    from convnets.base import runtime
    from convnets.deploy import quantize
    from convnets.deploy.quantize import int8_weight_type, quantize_run

    avx2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
    assert int8_weight_type(avx2) == ("u8" if quantize.X86_MACHINE else "s8")
    assert int8_weight_type(avx2 | {"avx512_vnni"}) == int8_weight_type(avx2 | {"avx_vnni"}) == "s8"
    if not quantize.X86_MACHINE:
        pytest.skip("u8 weights are for x86 CPUs without VNNI")
    run_dir, _, _ = run
    monkeypatch.setattr(runtime, "cpu_flags", lambda: avx2)
    result = quantize_run(run_dir, calibration_images=6, max_drop=100)
    info = ExportInfo.read(run_dir).int8
    assert info.weights == "u8" and "U8U8" in info.quantizer and info.accepted
    assert result.engine.startswith("ONNX Runtime")
    model = onnx.load(str(run_dir / INT8_ONNX_FILE))
    types = {t.data_type for t in model.graph.initializer if len(t.dims) == 4}  # the conv weights
    assert onnx.TensorProto.UINT8 in types and onnx.TensorProto.INT8 not in types
    m = ExportedModel.open(run_dir, "int8")
    assert m.engine.description.startswith("ONNX Runtime")
    assert m.predict_views([np.zeros((16, 16, 3), np.uint8)]).shape == (1, 2)
    # (Its accuracy against fp32 on real weights: bench/backends.py --part accuracy, in RESULTS.md.)


def test_features_graph_is_made_once_and_then_opened_without_the_onnx_package(run, tmp_path, monkeypatch):
    """The out-of-distribution features come from a cached copy of the graph with a second output:
    building it imports `onnx` (1.2 s of a 2 s cold `predict` on an AVX2 EPYC), opening it does not."""
    from convnets.trust.ood import features_graph

    run_dir, _, _ = run
    cache = tmp_path / "cache"
    monkeypatch.setenv("CONVNETS_CACHE", str(cache))
    first = features_graph(run_dir / "model.onnx")
    assert first.parent == cache / "onnx-features" and features_graph(run_dir / "model.onnx") == first
    pixels = np.random.default_rng(3).random((2, 3, 16, 16), dtype=np.float32)
    engine = ExportedModel.open(run_dir, "onnxruntime", features=True).engine
    logits, feats = engine.run_with_features(pixels)
    np.testing.assert_allclose(logits, ExportedModel.open(run_dir, "onnxruntime").logits(pixels), atol=1e-5)
    assert feats.shape == (2, 64)  # resnet20's pooled features
    code = (
        "import sys; from convnets.deploy.engines import ExportedModel as M; "
        f"M.open({str(run_dir)!r}, 'onnxruntime', features=True); print('onnx' in sys.modules)"
    )
    env = {**__import__("os").environ, "CONVNETS_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False", out.stderr
    # Another graph (new weights) gets its own file; a stale cache entry is never used for it.
    import onnx

    graph = onnx.load(str(run_dir / "model.onnx"))
    graph.doc_string = "other weights"
    other = tmp_path / "other.onnx"
    onnx.save(graph, str(other))
    assert features_graph(other) != first
