"""WebDataset shards: folder -> shards -> training, under torchrun each training image once per epoch
across ranks and workers, a corrupt sample reported and skipped, --resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_shapes import make_shapes

wds = pytest.importorskip(
    "webdataset", reason="shards need the shards extra (pip install 'convnets[shards]')"
)

from convnets.data.shards import ShardIndex, plan_positions, write_shards  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _numbered(root: Path, n: int) -> Path:
    """n solid-colour PNGs whose colour encodes their number (R + 256 G): resizing keeps it exact."""
    for i in range(n):
        cls = root / f"c{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (i % 256, i // 256, 0)).save(cls / f"{i:04d}.png")
    return root


def _number(x: torch.Tensor) -> list[int]:
    return ((x[:, 0, 0, 0] + 256 * x[:, 1, 0, 0]) * 255).round().long().tolist()


def test_plan_covers_every_sample_once_with_equal_rank_counts():
    counts = [7, 7, 7, 7, 7, 3]  # uneven shards: 3 and 3 of them per rank would give 21 vs 17
    for world in (1, 2, 3):
        plans = [plan_positions(counts, 5, 0, r, world, True, True, 4) for r in range(world)]
        assert len({len(p) for p in plans}) == 1  # every rank steps the same number of batches
        seen = [pos for p in plans for pos in p]
        assert set(seen) == {(s, o) for s, c in enumerate(counts) for o in range(c)}
        # padding as DistributedSampler (fewer repeats than ranks), plus one per rank when a last batch
        # would hold a single image (BatchNorm)
        assert len(seen) - sum(counts) < 2 * world
    assert plan_positions(counts, 0, 0, 0, 1, True, True, 4) != plan_positions(
        counts, 1, 0, 0, 1, True, True, 4
    )


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_torchrun_two_ranks_see_each_training_image_once(tmp_path):
    data = _numbered(tmp_path / "numbered", 50)
    index = write_shards(data, tmp_path / "shards", shard_size="8k", val_split=0.2, seed=0, progress=False)
    n_train = sum(s.count for s in index.train)
    assert n_train == 40 and len(index.train) > 2 and len(index.val) >= 1
    train_names = {int(Path(p).stem) for p in _shard_names(tmp_path / "shards", index.train)}

    script = tmp_path / "read.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            import torch.distributed as dist
            from convnets.data import load_data
            dist.init_process_group("gloo")
            splits = load_data(sys.argv[1], image_size=16, batch_size=4, augment="none", normalize="none",
                               num_workers=2)
            seen = {}
            for epoch in (0, 1):
                splits.train.dataset.set_epoch(epoch)
                numbers = []
                for x, _, _ in splits.train:
                    numbers += ((x[:, 0, 0, 0] + 256 * x[:, 1, 0, 0]) * 255).round().long().tolist()
                seen[epoch] = numbers
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, seen)
            if dist.get_rank() == 0:
                json.dump(gathered, open(sys.argv[2], "w"))
            dist.destroy_process_group()
            """
        )
    )
    out = tmp_path / "seen.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*torchrun, str(script), str(tmp_path / "shards"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads(out.read_text())
    for epoch in ("0", "1"):
        per_rank = [r[epoch] for r in ranks]
        assert [len(p) for p in per_rank] == [20, 20]
        everything = sorted(per_rank[0] + per_rank[1])
        assert everything == sorted(train_names)  # each training image exactly once, no validation image
    assert ranks[0]["0"] != ranks[0]["1"]  # reshuffled every epoch

    # The trainer under torchrun on the same shards: both ranks finish every epoch together.
    run = tmp_path / "run"
    cmd = [
        *torchrun,
        "-m",
        "convnets",
        "train",
        str(tmp_path / "shards"),
        "--model",
        "lenet5",
        "--out",
        str(run),
        "--epochs",
        "2",
        "--image-size",
        "16",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--quiet",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 6  # 20 images per rank: 3 batches x 2


def _shard_names(folder: Path, shards) -> list[str]:
    names = []
    for s in shards:
        for sample in wds.WebDataset(
            str(folder / s.url), shardshuffle=False, nodesplitter=None, workersplitter=None
        ):
            names.append(sample["txt"].decode())
    return names


def test_corrupt_sample_reported_and_skipped_then_resume(tmp_path):
    from convnets.data.decode import SkippedImageWarning
    from convnets.train import train

    shapes = make_shapes(tmp_path / "shapes", per_class=8, size=16)
    folder = tmp_path / "shards"
    index = write_shards(shapes, folder, shard_size="8k", val_split=0.25, seed=0, progress=False)
    # Damage one sample inside the first training shard.
    first = folder / index.train[0].url
    samples = list(wds.WebDataset(str(first), shardshuffle=False, nodesplitter=None, workersplitter=None))
    samples[1]["png"] = b"\x89PNG broken"
    with wds.TarWriter(str(first), encoder=False) as writer:
        for sample in samples:
            writer.write({k: v for k, v in sample.items() if k == "__key__" or k in ("png", "cls", "txt")})
    bad_key = samples[1]["__key__"]

    run = tmp_path / "run"
    opts = dict(model="lenet5", out=run, image_size=16, batch_size=8, workers=0, quiet=True, seed=0)
    with pytest.warns(SkippedImageWarning, match=f"{first.name}#{bad_key}"):
        result = train(folder, epochs=1, **opts)
    assert result.best_val_acc is not None
    assert len(result.history) == 1

    resumed = train(None, model=None, out=run, resume=True, epochs=2, quiet=True)  # the next epoch
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["source"] == str(folder.resolve()) and config["class_names"] == index.class_names


def test_index_round_trip_and_errors(tmp_path, capsys):
    from convnets.cli import main

    shapes = make_shapes(tmp_path / "shapes", per_class=4, size=16)
    assert (
        main(["shard", str(shapes), "--out", str(tmp_path / "sh"), "--val-split", "0", "--resize", "16"]) == 0
    )
    assert "wrote 1 training shard(s) (12 images)" in capsys.readouterr().out
    index = ShardIndex.read(tmp_path / "sh" / "index.json")
    assert index.stored == "resized" and not index.val and sum(index.counts.values()) == 12
    assert ShardIndex.read(tmp_path / "sh") == index
    assert main(["shard", str(shapes), "--out", str(tmp_path / "sh")]) == 2  # refuses to mix shard sets
    with pytest.raises(ValueError, match="already holds shards"):
        write_shards(shapes, tmp_path / "sh", progress=False)
    with pytest.raises(ValueError, match="512MB"):
        write_shards(shapes, tmp_path / "other", shard_size="lots", progress=False)
