"""bench/cifar_epoch.py keeps working: its pieces and both peers run once on a tiny generated folder
(timings are never asserted; bench/ measures, this only keeps the script runnable)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from train_shapes import make_shapes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import cifar_epoch  # noqa: E402


def test_pieces_report_every_part_of_an_epoch(tmp_path, capsys, one_thread):
    data = make_shapes(tmp_path / "shapes", per_class=40, size=32)
    cifar_epoch.pieces(data, steps=2, batch=16, model_name="resnet20")
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    pieces = [r["piece"] for r in records if "piece" in r]
    assert len(pieces) == 6 and any("memory cache" in p for p in pieces)
    cache = next(r for r in records if "memory cache" in r.get("piece", ""))
    assert cache["train"] + cache["val"] == 120 and cache["val"] == 12


def test_both_peers_train_on_a_subset_folder(tmp_path, one_thread):
    data = make_shapes(tmp_path / "shapes", per_class=20, size=32)
    subset = cifar_epoch.subset_folder(data, 10, tmp_path / "subset")
    assert sum(1 for _ in subset.rglob("*.png")) == 30
    plain = cifar_epoch.peer_plain(subset, batch=8, workers=0, epochs=2)
    ours = cifar_epoch.peer_convnets(subset, batch=8, out=tmp_path / "run", epochs=2)
    for record in (plain, ours):
        assert len(record["epochs"]) == 2
        assert all(e["train_s"] > 0 and 0 <= e["val_acc"] <= 1 for e in record["epochs"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["name"] == "he2015" and config["options"]["schedule"] == "constant"
    history = [{"train_s": 10.0, "val_acc": 0.4}, {"train_s": 10.0, "val_acc": 0.6}]
    assert cifar_epoch.time_to(history, 0.5) == 20.0 and cifar_epoch.time_to(history, 0.7) is None
