"""Hostile and careless input (issue #25): each case ends in one line naming the file, field or option,
with the documented exit code, never a traceback; a swapped exported model is never run.

One run folder (`convnets train digits --model lenet5 --epochs 1`) is trained for the module; each
case damages its own copy.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convnets.base.errors import EXIT_INTERNAL, EXIT_PARTIAL, EXIT_USAGE, can_write_in, output_dir
from convnets.cli import main

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run folder the issue's cases were found with, exported once (copies carry model.onnx)."""
    from convnets.deploy.engines import ensure_exported

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("hostile") / "run"
        argv = ["train", "digits", "--model", "lenet5", "--epochs", "1", "--out", str(run), "--quiet"]
        assert main(argv) == 0
        ensure_exported(run)
    finally:
        torch.set_num_threads(before)
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run this test may damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture
def images(tmp_path) -> list[Path]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i in range(2):
        pixels = (np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``convnets ARGV`` in-process: (exit code, stdout, stderr); a usage error's SystemExit counts."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, *words: str) -> str:
    """The stderr of a refused command: one line, no traceback, naming ``words``."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ": error: " in ln]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def edit_config(run: Path, **changes) -> None:
    config = json.loads((run / "config.json").read_text())
    config.update(changes)
    (run / "config.json").write_text(json.dumps(config))


def probs(out: str) -> list[dict]:
    return [{c["class"]: round(c["prob"], 4) for c in row["top"]} for row in json.loads(out)]


# --- output paths ----------------------------------------------------------------------------------


def test_output_path_onto_a_file_is_refused_before_any_work(run, images, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["predict", run, images[0], "--explain", afile, "--backend", "eager"], "--explain"),
        (["evaluate", run, "digits", "--out", afile], "--out"),
        (["train", "digits", "--model", "lenet5", "--epochs", "1", "--out", afile], "--out"),
        (["explain", run, images[0], "--out", afile], "--out"),
    ]
    for argv, option in cases:
        rc, _, err = cli(capsys, *argv)
        assert rc == EXIT_USAGE, (argv, err)
        one_error_line(err, option, str(afile), "is a file")
    assert afile.read_text() == "x"


def test_output_file_onto_a_folder_is_refused(run, images, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    rc, _, err = cli(capsys, "doctor", images[0].parent, "--no-labels", "--html", folder)
    assert rc == EXIT_USAGE
    one_error_line(err, "--html", "is a folder")
    rc, _, err = cli(capsys, "export", run, "--out", folder)
    assert rc == EXIT_USAGE
    one_error_line(err, "--out", "is a folder")
    assert list(folder.iterdir()) == []


def test_read_only_output_folder_is_refused_before_the_work(run, tmp_path, capsys, monkeypatch):
    # We run as root, whom chmod does not stop: the probe is made to fail for this folder instead.
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real = can_write_in
    monkeypatch.setattr("convnets.base.errors.can_write_in", lambda p: Path(p) != read_only and real(p))
    rc, _, err = cli(capsys, "evaluate", run, "digits", "--out", read_only)
    assert rc == EXIT_USAGE
    one_error_line(err, "--out", "not writable")
    rc, _, err = cli(capsys, "train", "digits", "--model", "lenet5", "--epochs", "1", "--out", read_only)
    assert rc == EXIT_USAGE
    one_error_line(err, "--out", "not writable")
    assert list(read_only.iterdir()) == []


def test_describe_tells_expected_failures_from_bugs():
    from convnets.base.errors import describe, error_text
    from convnets.base.runs import RunFolderError

    assert describe(PermissionError(13, "Permission denied", "/runs/a")) == ("/runs/a: Permission denied", 2)
    assert describe(OSError(36, "File name too long", "a" * 300))[0].endswith("file name too long")
    assert describe(RunFolderError("runs/a/config.json: missing model\nmore")) == (
        "runs/a/config.json: missing model",
        EXIT_USAGE,
    )
    assert describe(ValueError("--top-k must be at least 1")) == ("--top-k must be at least 1", EXIT_USAGE)
    assert describe(TypeError("unsupported operand")) is None
    assert describe(type("DecodeError", (ValueError,), {"__module__": "google.protobuf"})("x")) is None
    assert error_text(KeyError("unknown dataset 'x'")) == "unknown dataset 'x'"


def test_write_probe_sees_a_read_only_file_system_even_as_root(tmp_path):
    sys_fs = Path("/sys/kernel")
    assert can_write_in(tmp_path)
    if not sys_fs.is_dir() or can_write_in(sys_fs):
        pytest.skip("no read-only file system (/sys) to probe here")
    with pytest.raises(ValueError, match="not writable"):
        output_dir(sys_fs, "--out")


# --- damaged run folders ---------------------------------------------------------------------------


def test_class_names_shorter_than_the_classes(run, images, capsys):
    edit_config(run, class_names=["a", "b"])
    for backend in ("auto", "eager"):
        rc, _, err = cli(capsys, "predict", run, images[0], "--backend", backend)
        assert rc == EXIT_USAGE
        one_error_line(err, "config.json", "class_names", "num_classes 10")


def test_unknown_model_name(run, images, capsys):
    edit_config(run, model="nosuchnet")
    (run / "model.onnx").unlink()  # no export to fall back on: the model must be built
    rc, _, err = cli(capsys, "predict", run, images[0])
    assert rc == EXIT_USAGE
    one_error_line(err, "config.json", "model", "nosuchnet")


def test_num_classes_not_a_number(run, images, capsys):
    edit_config(run, num_classes="ten")
    rc, _, err = cli(capsys, "predict", run, images[0])
    assert rc == EXIT_USAGE
    one_error_line(err, "config.json", "num_classes", "'ten'")


@pytest.mark.parametrize(
    "field, value",
    [("model_kwargs", [1]), ("temperature", "hot"), ("image_size", [0, 0]), ("mean", ["a"])],
)
def test_damaged_config_fields_are_named(run, images, capsys, field, value):
    edit_config(run, **{field: value})
    rc, _, err = cli(capsys, "predict", run, images[0], "--backend", "eager")
    assert rc == EXIT_USAGE
    one_error_line(err, "config.json", field)


def test_garbage_ood_detector(run, images, capsys):
    (run / "ood.safetensors").write_bytes(b"garbage" * 10)
    rc, _, err = cli(capsys, "predict", run, images[0])
    assert rc == EXIT_USAGE
    one_error_line(err, "ood.safetensors", "--no-ood")
    rc, out, _ = cli(capsys, "predict", run, images[0], "--no-ood")
    assert rc == 0 and out.strip()


def test_unreadable_weights(run, images, capsys, monkeypatch):
    import builtins

    weights, real_open = run / "model.safetensors", builtins.open

    def guarded(file, *args, **kwargs):  # as root, chmod 000 would not stop the read
        if str(file) == str(weights):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    rc, _, err = cli(capsys, "predict", run, images[0])
    assert rc == EXIT_USAGE
    one_error_line(err, "model.safetensors", "Permission denied")


# --- the exported model is trusted only if it is the run's ------------------------------------------


def test_export_json_records_the_exported_file(trained):
    from convnets.deploy.engines import ExportInfo, file_sha256

    info = ExportInfo.read(trained)
    assert info.onnx_sha256 == file_sha256(trained / "model.onnx")
    assert info.input_shape == [1, 32, 32] and info.num_classes == 10


def _other_runs_onnx(path: Path, in_chans: int = 1, size: int = 32) -> None:
    """A LeNet-5 with other (random) weights exported to ``path``: another run's model.onnx."""
    from convnets import create_model
    from convnets.deploy.export import export_model

    torch.manual_seed(123)
    model = create_model("lenet5", num_classes=10, in_chans=in_chans)
    names = [str(i) for i in range(10)]
    export_model(
        model, path, format="onnx", image_size=(size, size), in_chans=in_chans, mean=(0.5,) * in_chans,
        std=(0.25,) * in_chans, class_names=names,
    )  # fmt: skip


@pytest.mark.parametrize("swap", ["another run's", "another input size", "garbage"])
def test_a_swapped_export_is_exported_again_never_run(run, images, tmp_path, capsys, swap):
    rc, out, _ = cli(capsys, "predict", run, *images, "--json", "--backend", "eager", "--no-ood")
    assert rc == 0
    own = probs(out)
    if swap == "garbage":
        (run / "model.onnx").write_bytes(b"garbage" * 10)
    else:
        _other_runs_onnx(tmp_path / "other.onnx", 1 if swap == "another run's" else 3)
        shutil.copy(tmp_path / "other.onnx", run / "model.onnx")
    rc, out, err = cli(capsys, "predict", run, *images, "--json", "--backend", "onnxruntime", "--no-ood")
    assert rc == 0, err
    assert "exporting" in err and "Traceback" not in err
    assert probs(out) == own


def test_a_swapped_export_in_a_read_only_run_is_refused(run, images, tmp_path, capsys, monkeypatch):
    _other_runs_onnx(tmp_path / "other.onnx")
    shutil.copy(tmp_path / "other.onnx", run / "model.onnx")
    monkeypatch.setattr("convnets.deploy.engines.onnx_file.can_write_in", lambda p: False)
    rc, _, err = cli(capsys, "predict", run, images[0], "--backend", "onnxruntime")
    assert rc == EXIT_USAGE
    one_error_line(err, "model.onnx", "sha256", "read-only")
    # auto runs the run's own weights on PyTorch instead, and says why
    rc, out, err = cli(capsys, "predict", run, images[0], "--json", "--no-ood")
    assert rc == 0 and "running PyTorch" in err
    rc, eager, _ = cli(capsys, "predict", run, images[0], "--json", "--no-ood", "--backend", "eager")
    assert probs(out) == probs(eager)
    # and the server does not start on it
    pytest.importorskip("starlette")
    from convnets.deploy.engines import ExportMismatchError
    from convnets.serve.app import open_model

    with pytest.raises(ExportMismatchError, match="read-only"):
        open_model(run)


def test_read_only_run_without_an_export_runs_on_pytorch(run, images, capsys, monkeypatch):
    (run / "model.onnx").unlink()
    (run / "export.json").unlink()
    monkeypatch.setattr("convnets.deploy.engines.onnx_file.can_write_in", lambda p: False)
    rc, out, err = cli(capsys, "predict", run, images[0])
    assert rc == 0, err
    assert "running PyTorch" in err and "Traceback" not in err and out.strip()
    assert not (run / "model.onnx").exists()


def test_an_int8_file_that_is_not_the_checked_one_is_refused(run):
    from convnets.deploy.engines import EngineError, ExportInfo, Int8Info, make_engine

    info = ExportInfo.read(run)
    info.int8 = Int8Info(info.weights_sha256, "q", 4, 4, 0.5, 0.5, 1.0, 1.0, int8_sha256="0" * 64)
    info.write(run)
    shutil.copy(run / "model.onnx", run / "model.int8.onnx")
    with pytest.raises(EngineError, match="sha256"):
        make_engine(run, "int8")


def test_serve_re_exports_a_garbage_export(run):
    pytest.importorskip("starlette")
    from convnets.serve.app import open_model

    (run / "model.onnx").write_bytes(b"garbage")
    model = open_model(run)
    view = np.zeros((32, 32, 1), np.uint8)
    assert model.predict_views([view]).shape == (1, 10)


# --- file names --------------------------------------------------------------------------------------


def test_a_name_too_long_is_one_bad_row_in_the_batch(run, images, capsys):
    long = images[0].parent / ("a" * 300 + ".png")
    rc, out, err = cli(capsys, "predict", run, images[0], long, "--no-ood")
    assert rc == EXIT_PARTIAL and "Traceback" not in err
    lines = out.splitlines()
    assert lines[0].startswith(str(images[0])) and "ERROR" not in lines[0]
    assert "ERROR" in lines[1] and "too long" in lines[1]


def test_explain_writes_maps_for_long_names(run, images, tmp_path, capsys):
    long = images[0].parent / ("b" * 250 + ".png")
    shutil.copy(images[0], long)
    rc, out, err = cli(capsys, "explain", run, images[0].parent, "--out", tmp_path / "maps", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert len(rows) == 3 and all(r.get("error") is None for r in rows)
    assert all(len(Path(r["path"]).name.encode()) <= 255 and Path(r["path"]).is_file() for r in rows)


# --- option values -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-4"])
def test_predict_batch_size_must_be_positive(run, images, capsys, value):
    rc, _, err = cli(capsys, "predict", run, images[0], "--batch-size", value)
    assert rc == EXIT_USAGE and "--batch-size" in err and "Traceback" not in err


@pytest.mark.parametrize("opset", ["1", "999"])
def test_export_opset_out_of_range(run, capsys, opset):
    before = (run / "model.onnx").read_bytes()
    rc, _, err = cli(capsys, "export", run, "--opset", opset)
    assert rc == EXIT_USAGE
    one_error_line(err, "--opset", opset)
    assert (run / "model.onnx").read_bytes() == before


def test_export_negative_atol_is_refused_before_the_export(run, tmp_path, capsys):
    from convnets.deploy.export import export_run

    rc, _, err = cli(capsys, "export", run, "--atol", "-1", "--out", tmp_path / "m.onnx")
    assert rc == EXIT_USAGE and "--atol" in err
    with pytest.raises(ValueError, match="--atol"):
        export_run(run, out=tmp_path / "m.onnx", atol=-1)
    assert not (tmp_path / "m.onnx").exists()


def test_train_image_size_too_large_names_the_option(tmp_path, capsys):
    rc, _, err = cli(
        capsys, "train", "digits", "--model", "lenet5", "--out", tmp_path / "r", "--image-size", 99999
    )
    assert rc == EXIT_USAGE
    one_error_line(err, "--image-size", "99999")
    assert "DATA" not in err


def test_train_weights_on_a_text_file(tmp_path, capsys):
    text = tmp_path / "weights.txt"
    text.write_text("hello\n")
    argv = ["train", "digits", "--model", "lenet5", "--out", tmp_path / "r", "--weights", text]
    rc, _, err = cli(capsys, *argv)
    assert rc == EXIT_USAGE
    one_error_line(err, "--weights", str(text), "not a readable PyTorch checkpoint")


# --- smaller -------------------------------------------------------------------------------------------


def test_serve_tells_a_busy_port_without_printing_a_url(trained, capsys):
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        rc, _, err = cli(capsys, "serve", trained, "--port", port, "--max-batch", "1")
    assert rc == EXIT_USAGE
    one_error_line(err, "--port", str(port), "cannot listen")
    assert "http://" not in err


def test_warnings_are_one_line():
    # A child process: pytest records the warnings of the tests it runs, so none would be shown here.
    code = (
        "import sys, warnings\n"
        "from convnets.cli import main, models_cmd\n"
        "from convnets.data.decode import SkippedImageWarning\n"
        "def noisy(args):\n"
        "    warnings.warn('skipping a.png: truncated file', SkippedImageWarning, stacklevel=1)\n"
        "    return 0\n"
        "models_cmd.run = noisy\n"
        "sys.exit(main(['models']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stderr == "convnets models: warning: skipping a.png: truncated file\n"


def test_error_messages_keep_their_quotes(run, capsys):
    rc, _, err = cli(capsys, "evaluate", run, "nosuchdata")
    assert rc == EXIT_USAGE
    one_error_line(err, "'nosuchdata' is neither")


def test_a_bug_is_one_line_and_its_traceback_needs_debug(monkeypatch, capsys):
    from convnets.cli import models_cmd

    def broken(args) -> int:
        raise TypeError("unsupported operand")

    monkeypatch.setattr(models_cmd, "run", broken)
    rc, _, err = cli(capsys, "models")
    assert rc == EXIT_INTERNAL and "Traceback" not in err
    assert "internal error: TypeError: unsupported operand" in err and "--debug" in err
    rc, _, err = cli(capsys, "models", "--debug")
    assert rc == EXIT_INTERNAL and "Traceback" in err
    monkeypatch.setenv("CONVNETS_DEBUG", "1")
    rc, _, err = cli(capsys, "models")
    assert rc == EXIT_INTERNAL and "Traceback" in err
