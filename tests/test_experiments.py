"""The ResNet case-study experiments, end to end at a tiny size, and the pieces they rest on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

from convnets.blocks import BasicBlock
from convnets.cli import main
from convnets.studies.experiments import (
    InsertedBlock,
    _depth_verdict,
    _identity_distance,
    build_cifar_model,
    depth_experiment,
    gradient_experiment,
    identity_experiment,
)


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory) -> Path:
    """A small subset of sklearn's digits as a class-folder dataset: 3 classes x 20 images, 8x8 grey."""
    root = tmp_path_factory.mktemp("tiny_digits")
    images, labels = load_digits(return_X_y=True)
    for digit in (0, 1, 2):
        folder = root / str(digit)
        folder.mkdir()
        for i, image in enumerate(images[labels == digit][:20]):
            pixels = (image.reshape(8, 8) * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root


def test_depth_experiment_end_to_end(tiny_digits, tmp_path, one_thread):
    result = depth_experiment(
        tiny_digits,
        out=tmp_path,
        depths=[14, 8],
        epochs=1,
        image_size=8,
        batch_size=16,
        quiet=True,
        workers=0,
    )
    for name in ("depth.png", "depth.md", "depth.json"):
        assert (tmp_path / name).stat().st_size > 0
    report = json.loads((tmp_path / "depth.json").read_text())
    assert [(r["family"], r["depth"]) for r in report["rows"]] == [
        ("plain", 8),
        ("plain", 14),
        ("resnet", 8),
        ("resnet", 14),
    ]
    for row in report["rows"]:
        assert 0.0 <= row["final_train_error"] <= 1.0 and 0.0 <= row["final_val_error"] <= 1.0
        assert (Path(row["run_dir"]) / "metrics.jsonl").is_file()
    by = {r["model"]: r for r in report["rows"]}
    assert by["plain8"]["params"] == by["resnet8"]["params"]  # option A: the shortcut is free
    assert report["curves"]["resnet14"]["epoch"] == [1]
    assert report["verdict"]["summary"] == result.verdict["summary"]
    assert report["verdict"]["summary"] in (tmp_path / "depth.md").read_text()


def test_depth_verdict_reads_the_training_errors():
    def rows(plain, resnet):
        return [
            {"family": f, "depth": d, "final_train_error": e}
            for f, errors in (("plain", plain), ("resnet", resnet))
            for d, e in zip((8, 20, 56), errors)
        ]

    v = _depth_verdict(rows([0.01, 0.02, 0.30], [0.02, 0.01, 0.005]), tolerance=0.005)
    assert v["plain_degrades"] and v["resnet_deeper_lower"] and v["summary"].startswith("reproduced")
    assert v["plain"]["monotonic_in_depth"] and v["resnet"]["monotonic_in_depth"]
    v = _depth_verdict(rows([0.0, 0.0, 0.30], [0.0, 0.0, 0.002]), tolerance=0.005)
    assert v["plain_degrades"] and not v["resnet_deeper_lower"] and v["resnet_no_degradation"]
    assert v["summary"].startswith("partly reproduced")
    v = _depth_verdict(rows([0.05, 0.04, 0.03], [0.05, 0.04, 0.03]), tolerance=0.005)
    assert not v["plain_degrades"] and v["summary"].startswith("not reproduced")


def test_depth_experiment_rejects_bad_depths(tmp_path):
    with pytest.raises(ValueError, match="6n\\+2"):
        depth_experiment("digits", out=tmp_path, depths=[8, 21])
    with pytest.raises(ValueError, match="two depths"):
        depth_experiment("digits", out=tmp_path, depths=[8])


def test_gradient_experiment_one_value_per_layer_per_step(tiny_digits, tmp_path):
    report = gradient_experiment(
        tiny_digits,
        out=tmp_path,
        models=["plain8", "resnet8"],
        steps=3,
        batch_size=16,
        plot_steps=[1, 3],
        log=lambda _m: None,
    )
    saved = json.loads((tmp_path / "gradients.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert (tmp_path / "gradients.png").stat().st_size > 0 and (tmp_path / "gradients.md").is_file()
    for name in ("plain8", "resnet8"):
        r = saved["models"][name]
        assert len(r["layers"]) == 8  # 7 conv layers + fc: depth 8
        assert r["layers"][0] == "stem.0.weight" and r["layers"][-1] == "fc.weight"
        assert r["steps"] == [1, 2, 3] and len(r["loss"]) == 3
        assert len(r["grad_norm"]) == 3 and all(len(step) == 8 for step in r["grad_norm"])
        assert all(v > 0 for step in r["grad_norm"] for v in step)
        assert set(r["summary"]) == {"1", "3"}
    # Same seed, same batches: the two nets start with identical weights, so the fc gradient at step 1
    # differs only through the shortcuts -- and it does differ.
    assert saved["models"]["plain8"]["grad_norm"][0] != saved["models"]["resnet8"]["grad_norm"][0]


def test_build_cifar_model_any_depth_and_registered_names():
    assert build_cifar_model("plain14", 3, 1).depth == 14
    assert build_cifar_model("plain14", 3, 1).plain is True
    assert build_cifar_model("resnet20", 3, 1).model_name == "resnet20"
    with pytest.raises(ValueError, match="6n\\+2"):
        build_cifar_model("resnet15", 3, 1)
    with pytest.raises(ValueError, match="unknown model"):
        build_cifar_model("nonsense", 3, 1)


def test_zero_branch_residual_block_is_exactly_the_identity():
    """The mechanism of the identity experiment: with the branch's last BN at zero, relu(a + 0) = a
    for the non-negative input a, so the residual block's distance is 0 -- a plain block's is 1."""
    base = build_cifar_model("plain8", 3, 1)
    data = (torch.randn(10, 1, 8, 8), torch.zeros(10, dtype=torch.long))
    residual, plain = BasicBlock(64, 64), BasicBlock(64, 64, residual=False)
    for block in (residual, plain):
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
    assert _identity_distance(base, residual, data) == 0.0
    assert _identity_distance(base, plain, data) == pytest.approx(1.0)
    net = InsertedBlock(base, residual).eval()
    torch.testing.assert_close(net(data[0]), base.eval()(data[0]))


def test_identity_experiment_end_to_end(tiny_digits, tmp_path):
    report = identity_experiment(
        tiny_digits, out=tmp_path, epochs=1, extra_epochs=1, batch_size=16, log=lambda _m: None
    )
    assert json.loads((tmp_path / "identity.json").read_text())["summary"] == report["summary"]
    assert "‖out−in‖/‖in‖" in (tmp_path / "identity.md").read_text()
    stages = [(r["block"], r["stage"]) for r in report["rows"]]
    assert stages == [
        (None, "before"),
        ("residual", "inserted"),
        ("residual", "trained"),
        ("plain", "inserted"),
        ("plain", "trained"),
    ]
    for row in report["rows"][1:]:
        assert 0.0 <= row["train_acc"] <= 1.0 and row["identity_distance"] >= 0.0


def test_cli_experiment_gradients_and_errors(tiny_digits, tmp_path, capsys):
    out = tmp_path / "g"
    rc = main(
        [
            "experiment",
            "gradients",
            str(tiny_digits),
            "--models",
            "plain8,resnet8",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and (out / "gradients.json").is_file()
    assert main(["experiment", "depth", "digits", "--depths", "8,21", "--out", str(tmp_path / "d")]) == 2
    assert "6n+2" in capsys.readouterr().err
    assert main(["experiment", "gradients", str(tiny_digits), "--steps", "0", "--out", str(out)]) == 2


@pytest.fixture(scope="module")
def tiny_rgb(tmp_path_factory) -> Path:
    """A synthetic class folder (RGB shapes, 16x16), standing in for CIFAR-10's layout."""
    from train_shapes import make_shapes

    return make_shapes(tmp_path_factory.mktemp("tiny_rgb") / "shapes", per_class=24, size=16)


class _Killed(Exception):
    """Stands for a SIGKILL: the process is gone at that point, with whatever is on disk."""


def test_depth_experiment_with_the_paper_recipe_writes_table_figure_verdicts(tiny_rgb, tmp_path, one_thread):
    lines: list[str] = []
    result = depth_experiment(
        tiny_rgb,
        out=tmp_path,
        depths=[8, 14],
        recipe="he2015",
        epochs=2,
        image_size=16,
        batch_size=16,
        quiet=False,
        log=lines.append,
        workers=0,
    )
    report = json.loads((tmp_path / "depth.json").read_text())
    assert report["config"]["recipe"] == "he2015" and report["config"]["weight_decay"] == 1e-4
    assert report["config"]["lr"] == 0.1 and report["config"]["epochs"] == 2  # the recipe, the budget given
    by = {r["model"]: r for r in report["rows"]}
    assert by["plain14"]["macs"] == by["resnet14"]["macs"] > by["plain8"]["macs"] > 0
    assert all(r["epochs"] == 2 and r["seconds"] > 0 for r in report["rows"])
    config = json.loads((Path(by["resnet8"]["run_dir"]) / "config.json").read_text())
    assert config["recipe"]["name"] == "he2015" and config["options"]["augment"] == "crop:4,hflip"
    plain, resnet = result.verdict["sentences"]
    p8, p14 = (100 * by[m]["final_train_error"] for m in ("plain8", "plain14"))
    assert plain.startswith("deeper plain net trains")
    assert f"plain-14 {p14:.2f}% vs plain-8 {p8:.2f}% training error" in plain
    r8, r14 = (100 * by[m]["final_val_error"] for m in ("resnet8", "resnet14"))
    assert f"resnet-14 {r14:.2f}% vs resnet-8 {r8:.2f}% validation error" in resnet
    md = (tmp_path / "depth.md").read_text()
    assert "multiply-adds" in md and plain in md and resnet in md
    assert (tmp_path / "depth.png").stat().st_size > 5000
    assert sum("epoch   2/2" in line for line in lines) == 4  # a log line per epoch, per model
    # a second plain run over finished work is refused, not silently redone
    with pytest.raises(ValueError, match="--resume"):
        depth_experiment(tiny_rgb, out=tmp_path, depths=[8, 14], recipe="he2015", epochs=2, image_size=16)


def test_depth_experiment_resumes_after_ctrl_c_and_a_kill_without_retraining(tiny_rgb, tmp_path, one_thread):
    import os
    import signal

    from convnets.train import TrainingInterrupted

    def run(stop_at: str | None, how: str = "", **kw):
        lines: list[str] = []

        def log(message: str) -> None:
            lines.append(message)
            if stop_at and message.startswith(f"[{stop_at}]") and "epoch   1/2" in message:
                if how == "sigint":  # Ctrl-C during the epoch's summary: the trainer stops at the next step
                    os.kill(os.getpid(), signal.SIGINT)
                else:
                    raise _Killed(message)

        try:
            depth_experiment(tiny_rgb, log=log, **kw)
        except (TrainingInterrupted, _Killed):
            pass
        return lines

    first = run(
        "2/4 plain14",
        "sigint",
        out=tmp_path,
        depths=[8, 14],
        epochs=2,
        image_size=16,
        batch_size=16,
        workers=0,
    )
    assert not (tmp_path / "depth.json").exists()
    # resumed with no settings repeated (they are saved in --out); killed hard in the third model
    second = run("3/4 resnet8", "kill", out=tmp_path, resume=True, workers=0)
    third = run(None, out=tmp_path, resume=True, workers=0)

    def said(lines, text):
        return any(text in line for line in lines)

    assert said(first, "plain8: training") and not said(second + third, "plain8: training")
    assert said(second, "plain8: finished earlier") and said(third, "plain8: finished earlier")
    assert said(second, "plain14: resuming from") and said(third, "plain14: finished earlier")
    assert said(third, "resnet8: resuming from") and said(third, "resnet14: training")
    report = json.loads((tmp_path / "depth.json").read_text())
    for name, curve in report["curves"].items():
        assert curve["epoch"] == [1, 2], name
    assert report["config"]["epochs"] == 2 and report["config"]["batch_size"] == 16
