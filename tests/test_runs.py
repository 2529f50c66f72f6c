"""The run folder's contract (convnets.base.runs): old folders still load, bad ones fail with a clear error.

``tests/fixtures/run_lenet5_v0`` was written by ``convnets train digits --model lenet5 --epochs 1``
with the code as it was before config.json had an owner (no schema_version): it must keep loading
and giving the same predictions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convnets.base.runs import SCHEMA_VERSION, RunConfig, RunFolderError

FIXTURE = Path(__file__).parent / "fixtures" / "run_lenet5_v0"

# Top-3 (class, probability) the pre-refactor code printed for the first six load_digits images
# (see _digit_images), on every backend.
EXPECTED_TOP3 = {
    "digit0_0.png": [("0", 0.75731), ("9", 0.09039), ("6", 0.03888)],
    "digit1_1.png": [("1", 0.30671), ("2", 0.19810), ("8", 0.15131)],
    "digit2_2.png": [("7", 0.21854), ("1", 0.20496), ("8", 0.19921)],
    "digit3_3.png": [("3", 0.44838), ("2", 0.15709), ("9", 0.11852)],
    "digit4_4.png": [("4", 0.38864), ("6", 0.26698), ("8", 0.08255)],
    "digit5_5.png": [("9", 0.38367), ("3", 0.28021), ("5", 0.06874)],
}


def _digit_images(folder: Path) -> list[Path]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(6):
        path = folder / f"digit{i}_{digits.target[i]}.png"
        Image.fromarray((digits.images[i] / 16 * 255).astype(np.uint8)).resize((32, 32)).save(path)
        paths.append(path)
    return paths


def test_pre_refactor_run_folder_reads_as_a_run_config():
    config = RunConfig.read(FIXTURE)
    assert "schema_version" not in json.loads((FIXTURE / "config.json").read_text())
    assert config.schema_version == SCHEMA_VERSION
    assert (config.model, config.num_classes, config.in_chans) == ("lenet5", 10, 1)
    assert config.image_size == (32, 32)
    assert config.class_names == [str(i) for i in range(10)] and config.resize == "resize"
    assert config.data.source == "digits" and config.best.epoch == 1
    (mean,), (std,) = config.normalization()
    assert (mean, std) == (pytest.approx(0.306445, abs=1e-6), pytest.approx(0.324019, abs=1e-6))


@pytest.mark.parametrize("backend", ["eager", "torchscript", "onnxruntime"])
def test_pre_refactor_run_predicts_as_before(tmp_path, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    from convnets.deploy.predictor import predict

    rows = predict(FIXTURE, _digit_images(tmp_path / "imgs"), top_k=3, backend=backend)
    got = {Path(r.file).name: [(c.label, c.prob) for c in r.top] for r in rows}
    assert set(got) == set(EXPECTED_TOP3)
    for name, top in EXPECTED_TOP3.items():
        assert [c for c, _ in got[name]] == [c for c, _ in top], name
        assert [p for _, p in got[name]] == pytest.approx([p for _, p in top], abs=2e-5), name


def test_pre_refactor_run_reproduces_its_validation_accuracy():
    from convnets.deploy.evaluate import evaluate

    config = RunConfig.read(FIXTURE)
    result = evaluate(FIXTURE, "digits", backend="eager")
    assert result.metrics["n"] == 359
    assert result.metrics["accuracy"] == pytest.approx(config.best.val_acc, abs=1e-6)


def test_write_read_round_trip_keeps_unknown_keys(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    raw = json.loads((run / "config.json").read_text())
    raw["labelled_by"] = "someone"  # a key this version does not know (a later addition)
    (run / "config.json").write_text(json.dumps(raw))
    config = RunConfig.read(run)
    assert config.extra == {"labelled_by": "someone"}
    config.write(run)
    again = json.loads((run / "config.json").read_text())
    assert again["labelled_by"] == "someone" and again["schema_version"] == SCHEMA_VERSION

    def set_keys(d):  # fields added since the fixture was written are written as null
        return {k: v for k, v in d.items() if k not in ("schema_version", "split") and v is not None}

    assert set_keys(again) == set_keys(raw)
    # The v0 fixture's inline split moves to split.json on a rewrite; config.json keeps its checksum.
    assert again["split"]["file"] == "split.json" and len(again["split"]["sha256"]) == 64
    assert json.loads((run / "split.json").read_text()) == raw["split"]
    assert RunConfig.read(run) == config


def test_clear_errors_for_folders_that_are_not_runs(tmp_path):
    with pytest.raises(RunFolderError, match="run folder not found"):
        RunConfig.read(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="not a run folder: config.json is missing"):
        RunConfig.read(tmp_path / "empty")

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model": "lenet5", ')
    with pytest.raises(RunFolderError, match=r"bad.config\.json: not valid JSON"):
        RunConfig.read(bad)
    (bad / "config.json").write_text("[1, 2]")
    with pytest.raises(RunFolderError, match="not a JSON object"):
        RunConfig.read(bad)
    (bad / "config.json").write_text(json.dumps({"model": "lenet5"}))
    with pytest.raises(RunFolderError, match="missing num_classes"):
        RunConfig.read(bad)
    (bad / "config.json").write_text(json.dumps({"model": "lenet5", "num_classes": 2, "resize": "stretch"}))
    with pytest.raises(RunFolderError, match="resize 'stretch'"):
        RunConfig.read(bad)


def test_a_run_from_a_newer_convnets_is_refused_with_a_message(tmp_path):
    from convnets.deploy.predictor import Classifier
    from convnets.weights import WeightsError

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    raw = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**raw, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(RunFolderError, match="newer convnets.*upgrade"):
        RunConfig.read(run)
    with pytest.raises(WeightsError, match="newer convnets"):  # load_run's callers see a WeightsError too
        Classifier.from_run(run)


def test_missing_weights_are_reported(tmp_path):
    from convnets.weights import load_run

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / "model.safetensors").unlink()
    with pytest.raises(RunFolderError, match="model.safetensors is missing"):
        load_run(run)


def test_cli_modules_and_option_lists_import_without_torch():
    code = (
        "import sys\n"
        "import convnets.base.runs, convnets.base.predictions, convnets.base.plots, convnets.data.images\n"
        "from convnets.cli import build_parser\n"
        "build_parser()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_option_lists_come_from_the_library():
    import dataclasses

    from convnets.accel.inference import BACKENDS
    from convnets.cli import build_parser
    from convnets.cli.train import OPTION_NAMES
    from convnets.deploy.predictor import TTA_MODES
    from convnets.train.options import TrainOptions

    assert OPTION_NAMES == tuple(f.name for f in dataclasses.fields(TrainOptions))
    parser = build_parser()
    args = parser.parse_args(["train", "digits", "--out", "x"])
    assert all(hasattr(args, name) for name in OPTION_NAMES)  # every option has a flag
    sub = next(a for a in parser._actions if a.dest == "command").choices
    from convnets.base.choices import BACKEND_CHOICES

    for command, backends in (("predict", BACKEND_CHOICES), ("evaluate", BACKENDS)):
        actions = {a.dest: a for a in sub[command]._actions}
        assert tuple(actions["tta"].choices) == TTA_MODES
        # predict also runs the exported model on OpenVINO / int8 (convnets.deploy.engines)
        assert tuple(actions["backend"].choices) == backends


def test_split_lives_in_split_json_checked_by_sha256(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    config = RunConfig.read(run)  # the v0 fixture: split inline
    config.split = {"root": "/data", "train": [f"a/{i}.png" for i in range(5000)], "val": ["b/0.png"]}
    config.write(run)
    assert (run / "config.json").stat().st_size < 4000  # small whatever the number of images
    raw = json.loads((run / "config.json").read_text())
    assert raw["split"]["n_train"] == 5000 and raw["split"]["n_val"] == 1
    assert RunConfig.read(run).split == config.split

    (run / "split.json").write_text(json.dumps({**config.split, "val": ["b/1.png"]}))
    with pytest.raises(RunFolderError, match=r"split\.json: sha256 differs"):
        RunConfig.read(run)
    (run / "split.json").unlink()
    with pytest.raises(RunFolderError, match=r"split\.json: missing"):
        RunConfig.read(run)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_run_files_follow_the_umask(tmp_path, umask):
    import os
    import stat

    from convnets.base.atomic import atomic_write_bytes, current_umask

    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        path = atomic_write_bytes(tmp_path / f"f{umask:o}", b"x")
        config = RunConfig.read(FIXTURE)
        config.split = {"train": ["a.png"], "val": []}
        config.write(tmp_path / "run")
    finally:
        os.umask(previous)
    for written in (path, tmp_path / "run" / "config.json", tmp_path / "run" / "split.json"):
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask, written
