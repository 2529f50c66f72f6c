"""`convnets train` end to end on a generated folder, the run-folder contract, and refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from train_shapes import SHAPES, make_shapes

from convnets.base.runs import RunConfig
from convnets.cli import main

CONTRACT_KEYS = {
    "model",
    "model_kwargs",
    "num_classes",
    "in_chans",
    "head",
    "head_dropout",
    "image_size",
    "mean",
    "std",
    "normalize",
    "class_names",
    "data",
    "split",
    "options",
    "versions",
    "best",
}
METRIC_KEYS = {
    "epoch",
    "phase",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
    "rss_mb",
    "peak_rss_mb",
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", per_class=40)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """One quiet CLI run shared by the run-folder tests."""
    run_dir = tmp_path_factory.mktemp("runs") / "lenet"
    rc = main(
        [
            "train",
            str(shapes),
            "--model",
            "lenet5",
            "--out",
            str(run_dir),
            "--epochs",
            "8",
            "--lr",
            "3e-3",
            "--workers",
            "0",
            "--quiet",
        ]
    )
    return rc, run_dir


def test_end_to_end_reaches_accuracy_clearly_above_chance(trained):
    rc, run_dir = trained
    assert rc == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["best"]["val_acc"] > 0.6  # three classes: chance is 0.33


def test_run_folder_files_and_config_contract(trained, shapes):
    _, run_dir = trained
    for name in (
        "model.safetensors",
        "config.json",
        "metrics.jsonl",
        "curves.png",
        "confusion_matrix.png",
        "last.pt",
    ):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert CONTRACT_KEYS <= set(config)
    assert config["model"] == "lenet5" and config["head"] == "default" and config["head_dropout"] is None
    assert config["num_classes"] == 3 and config["class_names"] == sorted(SHAPES)
    assert config["image_size"] == [32, 32] and config["in_chans"] == 1
    assert config["data"] == {"source": str(shapes.resolve()), "val_split": 0.2, "seed": 0}
    # The file lists live in split.json (config.json stays small at any data size), checked by sha256.
    assert config["split"]["file"] == "split.json" and config["split"]["n_val"] == 24
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["val"]) == 24 and len(split["train"]) == 96
    assert RunConfig.read(run_dir).split == split
    assert config["options"]["epochs"] == 8 and config["options"]["lr"] == 3e-3
    # lenet5 has no depthwise convolutions: NCHW unless the CPU has AVX-512 (measured); CUDA fp32: NCHW.
    from convnets.base.runtime import prefers_channels_last

    expected_cl = not torch.cuda.is_available() and prefers_channels_last(nn.Conv2d(1, 1, 1))
    assert config["options"]["optimizer"] == "adamw" and config["options"]["channels_last"] is expected_cl
    assert config["resize"] == "center-crop"  # a folder of images: what predict must do too
    assert set(config["versions"]) == {"python", "torch", "torchvision", "convnets"}

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, 9))
    assert all(METRIC_KEYS <= set(m) and m["phase"] == "train" for m in lines)
    # resident memory, MiB: a training process holds at least torch (~200 MiB), and the peak bounds it
    assert all(100 < m["rss_mb"] <= m["peak_rss_mb"] for m in lines)
    best = max(lines, key=lambda m: m["val_acc"])
    assert config["best"]["val_acc"] == best["val_acc"]
    assert config["best"]["epoch"] == best["epoch"]

    state = torch.load(run_dir / "last.pt", weights_only=True)  # plain containers and tensors only
    assert state["epoch"] == 8 and state["phase"] == "train" and len(state["history"]) == 8
    assert isinstance(state["rng"]["torch"], torch.Tensor)


def test_saved_model_reproduces_recorded_accuracy(trained):
    """model.safetensors is the best epoch: load_run + the saved split give its validation accuracy."""
    from convnets.data import load_data
    from convnets.weights import load_run

    _, run_dir = trained
    model, config = load_run(run_dir)
    splits = load_data(
        config.data.source,
        image_size=config.image_size,
        in_chans=config.in_chans,
        mean=config.mean,
        std=config.std,
        normalize="auto",
        split=config.split,
        augment="none",
        num_workers=0,
    )
    correct = seen = 0
    with torch.no_grad():
        for x, y in splits.val:
            correct += (model(x).argmax(1) == y).sum().item()
            seen += len(y)
    assert seen == 24
    assert math.isclose(correct / seen, config.best.val_acc, abs_tol=1e-9)


def test_quiet_prints_only_the_summary(shapes, tmp_path, capsys):
    rc = main(
        [
            "train",
            str(shapes),
            "--model",
            "lenet5",
            "--out",
            str(tmp_path / "r"),
            "--epochs",
            "1",
            "--image-size",
            "16",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert len(out) == 1 and out[0].startswith("best validation accuracy") and str(tmp_path / "r") in out[0]


@pytest.mark.parametrize(
    "args, option",
    [
        (["--fine-tune-last", "2"], "--fine-tune-last"),
        (["--freeze", "base"], "--freeze"),
        (["--image-size", "8"], "--image-size"),
        (["--precision", "fp16", "--device", "cpu"], "--precision"),
        (["--resume"], "--resume"),
        (["--epochs", "0"], "--epochs"),
        (["--fine-tune-last", "1", "--fine-tune-from", "x", "--weights", "w.pt"], "--fine-tune-from"),
        (["--augment", "nosuchop"], "--augment"),
    ],
)
def test_cli_refuses_invalid_combinations(args, option, shapes, tmp_path, capsys):
    rc = main(["train", str(shapes), "--model", "lenet5", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert option in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_bf16_refused_without_native_support(shapes, tmp_path, capsys):
    from convnets.base.runtime import cpu_has_native_bf16

    if cpu_has_native_bf16():
        pytest.skip("this CPU has native bf16")
    rc = main(
        [
            "train",
            str(shapes),
            "--model",
            "lenet5",
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--precision",
            "bf16",
        ]
    )
    assert rc == 2 and "--precision" in capsys.readouterr().err


def test_refuses_unknown_model_and_existing_run(trained, shapes, capsys):
    _, run_dir = trained
    assert main(["train", str(shapes), "--model", "lenet6", "--out", str(run_dir.parent / "x")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["train", str(shapes), "--model", "lenet5", "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--resume" in err


def test_confusion_matrix_reuses_the_best_epochs_validation_pass(shapes, tmp_path, monkeypatch):
    """No extra pass over the validation split at the end: the best epoch's predictions are the
    restored weights' predictions."""
    from convnets.train.trainer import Trainer

    finish = Trainer._finish
    seen: dict = {}

    def checking_finish(self):
        seen["reused"] = self._best_predictions
        self.model.load_state_dict(self.best_state)
        y_true, y_pred = [], []
        for logits, y in self._predict_batches(list(range(len(self.val_set))), whole=True):
            y_pred += logits.argmax(1).tolist()
            y_true += y.tolist()
        seen["fresh"] = (y_true, y_pred)
        seen["best_epoch"], seen["epochs"] = self.best["epoch"], len(self.history)
        return finish(self)

    monkeypatch.setattr(Trainer, "_finish", checking_finish)
    args = ["train", str(shapes), "--model", "lenet5", "--out", str(tmp_path / "run"), "--epochs", "4"]
    assert main([*args, "--lr", "3e-3", "--workers", "0", "--quiet"]) == 0
    assert seen["reused"] is not None and len(seen["reused"][0]) == len(seen["fresh"][0]) > 0
    assert seen["reused"] == seen["fresh"], (seen["best_epoch"], seen["epochs"])
    assert (tmp_path / "run" / "confusion_matrix.png").is_file()


def test_ema_weights_are_what_the_run_keeps(tmp_path):
    """--ema: validation and model.safetensors are the weights' moving average. With a decay of 1 - 1e-12
    the average is the copy torch's AveragedModel takes at the first optimizer step, so a 3-step run
    (one full-batch step per epoch) must keep exactly the weights of a 1-step run without --ema."""
    from safetensors.torch import load_file

    from convnets.base.runs import RunConfig
    from convnets.train import train

    data = make_shapes(tmp_path / "shapes", per_class=6, size=16)
    common = dict(model="lenet5", image_size=16, batch_size=64, workers=0, quiet=True, seed=1, lr=0.05)
    train(str(data), out=tmp_path / "one", epochs=1, **common)
    train(str(data), out=tmp_path / "ema", epochs=3, ema=1 - 1e-12, **common)
    one, ema = (load_file(tmp_path / run / "model.safetensors") for run in ("one", "ema"))
    assert one.keys() == ema.keys()
    for key in one:
        assert torch.allclose(one[key], ema[key], atol=1e-6), key
    assert RunConfig.read(tmp_path / "ema").options["ema"] == 1 - 1e-12

    # the live weights did move on for two more steps (last.pt): what was kept is the average
    live = torch.load(tmp_path / "ema" / "last.pt", weights_only=True)["model"]
    assert any(not torch.allclose(one[k], live[k], atol=1e-6) for k in one)
    assert torch.load(tmp_path / "ema" / "last.pt", weights_only=True)["ema"]["n_averaged"] == 3


def test_ema_must_be_a_decay(tmp_path):
    from convnets.train import TrainConfigError, train

    with pytest.raises(TrainConfigError, match="ema"):
        train("digits", model="lenet5", out=tmp_path / "run", epochs=1, ema=1.5)


def test_ema_resumes_exactly(tmp_path):
    """An --ema run interrupted mid-epoch and resumed keeps the same average as an uninterrupted one."""
    from train_shapes import interrupted_at_step

    from convnets.train import TrainingInterrupted, train

    data = make_shapes(tmp_path / "shapes", per_class=8, size=16)
    common = dict(model="lenet5", image_size=16, batch_size=4, workers=0, quiet=True, seed=1, ema=0.9)
    train(str(data), out=tmp_path / "a", epochs=2, **common)
    with interrupted_at_step(7), pytest.raises(TrainingInterrupted):
        train(str(data), out=tmp_path / "b", epochs=2, **common)
    train(None, out=tmp_path / "b", resume=True, quiet=True)
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True)["ema"] for run in "ab")
    for key in a:
        assert torch.equal(a[key], b[key]), key
