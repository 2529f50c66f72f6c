"""WebDataset tar shards: data past what one folder scan and one disk serve.

``write_shards(DATA, OUT)`` (``convnets shard``) scans a class-per-folder dataset once, splits it
(stratified, seeded: the same split a folder run makes), shuffles the training order and writes
``train-NNNNNN.tar`` / ``val-NNNNNN.tar`` of about ``shard_size`` bytes each, plus ``index.json``
(:class:`ShardIndex`: class names, per-class counts, each shard's sample count, which are validation).
Samples hold the original file bytes, or with ``resize`` a JPEG of the decoded base image (smaller
shards, cheaper decoding when streaming).

:class:`ShardStream` streams them for training: ``convnets train OUT/`` (``load_data`` sees the
index). The webdataset library reads the tars (local paths, ``http(s)://``, ``pipe:`` URLs listed in
the index); the split of work is done here rather than with ``split_by_node``/``split_by_worker``,
which hand out whole shards and so give ranks unequal sample counts (a DDP run then hangs or drops
data). Instead every epoch the shards are put in a seeded order, the concatenated samples are cut into
one contiguous range per rank (sizes differ by at most one; the shorter ranges are padded by repeating
their first sample, as ``DistributedSampler`` pads) and each rank's range into whole-batch pieces per
worker. So each training image is seen once per epoch across ranks, every rank steps the same number
of batches, and each worker reads only the shards its range touches, sequentially. A shuffle buffer
mixes the order inside each worker; decoding follows the folder rules (``decode.load_base``) and a
sample that fails to decode is reported (``SkippedImageWarning`` via the trainer) and skipped.

Modules: ``index`` (the format writer and reader share: ``index.json``, how a sample's image is
stored), ``write`` (``write_shards``), ``read`` (``ShardStream``, ``shard_splits``).
"""

from __future__ import annotations

from .index import INDEX_FILE, RAW_PREFIX, ShardIndex, ShardInfo, is_shard_source
from .read import SHUFFLE_BUFFER, ShardStream, plan_positions, shard_splits
from .write import DEFAULT_SHARD_SIZE, parse_size, write_shards

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "INDEX_FILE",
    "RAW_PREFIX",
    "SHUFFLE_BUFFER",
    "ShardIndex",
    "ShardInfo",
    "ShardStream",
    "is_shard_source",
    "parse_size",
    "plan_positions",
    "shard_splits",
    "write_shards",
]
