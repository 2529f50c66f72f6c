"""The report shows the whole picture: sample predictions drawn across classes (right and wrong,
seeded), and every label of the confusion matrix inside the figure, whatever the class names."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from convnets import create_model
from convnets.base import plots as plots_module
from convnets.cli import main
from convnets.deploy.evaluate import SampleDraw, _Batch

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def ten_class_run(tmp_path):
    """An untrained LeNet-5 over CIFAR-10's class names and a folder of 12 images per class: the
    folder is read class by class, so the first 16 images are all airplanes."""
    model = create_model("lenet5", num_classes=10, in_chans=1).eval()
    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run / "model.safetensors")
    config = {
        "model": "lenet5", "num_classes": 10, "in_chans": 1, "image_size": [32, 32], "mean": [0.5],
        "std": [0.25], "class_names": CIFAR, "data": {"source": "elsewhere", "val_split": 0.2, "seed": 0},
    }  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c, name in enumerate(CIFAR):
        (data / name).mkdir(parents=True)
        for k in range(12):
            pixels = np.clip(rng.normal(20 * c + 30, 30, (32, 32)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(data / name / f"{k}.png")
    return run, data


def _samples(page: str) -> list[tuple[str, str]]:
    section = page.split("<h3>Sample predictions</h3>", 1)[1].split("</div>", 1)[0]
    return re.findall(r"true: ([^<]+)<br><span class='[a-z]+'>pred: ([^ ]+) ", section)


def test_a_ten_class_report_samples_across_classes(ten_class_run, tmp_path):
    run, data = ten_class_run
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--data", str(data), "--out", str(out), "--samples", "16"]) == 0
    shown = _samples(out.read_text())
    assert len(shown) == 16
    assert len({true for true, _ in shown}) == 10  # every class, not the first batch's airplanes
    right = sum(t == p for t, p in shown)
    assert 0 < right < 16 or len({p for _, p in shown}) == 1  # both, unless the net says one class only


def _batch(y: list[int], start: int) -> _Batch:
    return _Batch(torch.zeros(len(y), 1, 2, 2), torch.tensor(y), [f"img{start + i}" for i in range(len(y))])


def _draw(seed: int) -> list[dict]:
    draw = SampleDraw(16, 10, seed=seed)
    rng = np.random.default_rng(0)
    seen = 0
    for c in range(10):  # sorted by class, as a validation folder is read
        y = np.full(100, c)
        pred = np.where(rng.random(100) < 0.5, y, (y + 1) % 10)
        draw.offer(_batch(y.tolist(), seen), np.full(100, 0.9), pred, CIFAR, lambda i: torch.zeros(1, 2, 2))
        seen += 100
    return draw.pick()


def test_sample_draw_spreads_over_classes_and_right_and_wrong():
    picked = _draw(seed=3)
    assert [r["id"] for r in _draw(seed=3)] == [r["id"] for r in picked]  # seeded
    assert [r["id"] for r in _draw(seed=4)] != [r["id"] for r in picked]
    assert len(picked) == 16 and len({r["id"] for r in picked}) == 16
    assert {r["true"] for r in picked} == set(CIFAR)
    right = [r["true"] == r["pred"] for r in picked]
    assert 5 <= sum(right) <= 11  # alternating, started right or wrong by class
    # more classes than samples: k classes, one image each (no class twice)
    many = SampleDraw(4, 50, seed=0)
    many.offer(_batch(list(range(50)), 0), np.ones(50), np.arange(50), [str(i) for i in range(50)],
               lambda i: torch.zeros(1, 2, 2))  # fmt: skip
    assert len({r["true"] for r in many.pick()}) == 4


def _clipped(fig) -> list[str]:
    """Texts of tick labels, axis labels and titles whose box reaches outside the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    out = []
    for ax in fig.axes:
        texts = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.yaxis.label, ax.title]
        for t in texts:
            if not t.get_text() or not t.get_visible():
                continue
            box = t.get_window_extent(renderer)
            if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
                out.append(t.get_text())
    return out


@pytest.mark.parametrize(
    "names",
    [
        CIFAR,
        ["automobile_with_a_long_name", "b"],
        [f"class_number_{i}" for i in range(40)],
        [f"n{i:02d}_" + "x" * (i % 45) for i in range(30)],
    ],
)
def test_every_confusion_matrix_label_fits_in_the_figure(names, monkeypatch, tmp_path):
    drawn = []
    save = plots_module.save_figure

    def keep(fig, path, dpi=100):
        drawn.append((_clipped(fig), [t.get_text() for t in fig.axes[0].get_xticklabels()]))
        return save(fig, path, dpi)

    monkeypatch.setattr(plots_module, "save_figure", keep)
    k = len(names)
    cm = np.random.default_rng(0).integers(0, 30, (k, k))
    plots_module.plot_confusion_matrix(
        cm, names, tmp_path / "cm.png", title="lenet5 validation (best epoch 3)"
    )
    ((clipped, shown),) = drawn
    assert clipped == []
    assert len(shown) == k and all(len(s) <= plots_module.LABEL_CHARS for s in shown)
    assert "automobile" in shown or k != 10
