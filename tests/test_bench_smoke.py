"""Smoke tests for bench/: each benchmark's peers run once at a tiny size, the harness interleaves
worker processes and survives a failing peer, and run.py assembles RESULTS.md / results.json.
Timings are never asserted (bench/ measures, tests only keep the scripts working)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import inference  # noqa: E402
import run as bench_run  # noqa: E402
import train_throughput  # noqa: E402

TINY = {"model": "mobilenet_v2", "size": 32, "batch": 2, "steps": 1, "warmup": 1}


def _once(peer) -> dict:
    peer.warmup()
    out = peer.rep()
    assert out["seconds"] > 0 and out["items"] > 0
    return out


@pytest.mark.parametrize("kind", ["convnets", "torchvision"])
def test_training_peers_step(kind):
    peer = train_throughput.make_peer({**TINY, "peer": kind})
    assert _once(peer)["items"] == 2
    if kind == "convnets":
        assert peer.meta["channels_last"] and peer.meta["optimizer"] == "adamw"
        assert peer.meta["fused_optimizer"]


def test_inference_peers_and_fast_path_variants():
    kinds = ["convnets", "torchvision"] + (["onnxruntime"] if importlib.util.find_spec("onnxruntime") else [])
    spec = {"model": "mobilenet_v2", "size": 32, "batch": 1, "calls": 1, "warmup": 0}
    for kind in kinds:
        _once(inference.make_peer({**spec, "peer": kind}))
    peer = inference.make_peer({**spec, "peer": "convnets", "options": {"channels_last": True, "jit": True}})
    _once(peer)
    assert peer.meta["batchnorm_left"] == 0
    for backend in ("auto", "torchscript"):  # the tool's own path, as `predict`/`evaluate` run it
        peer = inference.make_peer({**spec, "peer": "convnets", "backend": backend})
        _once(peer)
        expected = "onnxruntime" if backend == "auto" and "onnxruntime" in kinds else "torchscript"
        assert peer.meta["backend"] == expected


def test_harness_interleaves_workers_and_reports_a_failing_peer():
    peers = {
        "ok": ("train_throughput", {**TINY, "peer": "torchvision"}, None),
        "broken": ("train_throughput", {**TINY, "peer": "torchvision", "model": "no_such_net"}, None),
    }
    results = common.compare(peers, reps=2, log=lambda msg: None)
    assert results["ok"].ok and len(results["ok"].seconds) == 2
    assert not results["broken"].ok and "no_such_net" in results["broken"].error
    assert common.ratio(results["ok"], results["broken"]) is None
    assert common.cell(results["broken"]).startswith("failed")


def test_run_writes_results_and_keeps_other_sections(tmp_path):
    previous = "# Benchmarks\n\n## Data pipeline\n\nkept text\n\n## Notes\n\nmine\n"
    (tmp_path / "RESULTS.md").write_text(previous)
    assert bench_run.main(["--quick", "--only", "peak", "--reps", "2", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "RESULTS.md").read_text()
    assert "## Machine fp32 matmul peak" in md and "GFLOP/s" in md
    assert "kept text" in md and "## Notes" in md  # sections this run did not redo survive
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["sections"]["peak"]["gflops"]["median"] > 0
    assert data["machine"]["cores"] >= 1


def test_time_to_accuracy_skips_without_shared_data(tmp_path, monkeypatch):
    import time_to_accuracy

    monkeypatch.setattr(common, "SHARED_DATA", tmp_path / "absent")
    assert "skipped" in time_to_accuracy.run(quick=True, reps=1)


@pytest.mark.skipif(
    os.environ.get("CONVNETS_BENCH_KERAS") != "1",
    reason="Keras/TF start-up alone exceeds this file's time budget; set CONVNETS_BENCH_KERAS=1 to run",
)
def test_keras_peers_step():
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    import keras_peer

    _once(train_throughput.make_peer({**TINY, "peer": "keras"}))
    _once(keras_peer.make_peer({"images": 8, "size": 32}))


def test_shared_sections_keep_the_hand_written_analysis():
    old = "Hand-written reading of the numbers."
    merged = bench_run._merge_shared(old, "| fresh | table |")
    assert merged.startswith(old) and "| fresh | table |" in merged
    again = bench_run._merge_shared(merged, "| newer | table |")
    assert again.startswith(old) and "newer" in again and "fresh" not in again


def test_optional_sections_run_only_when_named_and_refresh_their_block(tmp_path, capsys):
    title = bench_run.TITLES["precision"]
    hand_written = f"# Benchmarks\n\n## {title}\n\nHand-written reading.\n\n## Notes\n\nmine\n"
    (tmp_path / "RESULTS.md").write_text(hand_written)
    assert set(bench_run.OPTIONAL_SECTIONS) == {"shards", "backends", "precision", "wholeprocess", "workers"}
    assert not set(bench_run.OPTIONAL_SECTIONS) & set(bench_run.SECTIONS)  # not in the default run
    assert bench_run.main(["--quick", "--only", "precision", "--reps", "1", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "RESULTS.md").read_text()
    section = md.split(f"## {title}")[1].split("## Notes")[0]
    assert "Hand-written reading." in section and "bench/train_precision.py --reps 1" in section
    assert "| mobilenet_v2 | 32 | 2 | bf16 |" in section  # the script's own table, from its run
    assert "mine" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["sections"]["precision"]["returncode"] == 0
    with pytest.raises(SystemExit):
        bench_run.main(["--only", "shardz", "--out", str(tmp_path)])
    assert "shards" in capsys.readouterr().err
