"""A run's own data, read back from its config.json: the source it trained on, and its train/validation
split reproduced without augmentation and normalised with the run's statistics (what evaluate and the
trust fits read)."""

from __future__ import annotations

from pathlib import Path

from ..base.runs import RunConfig
from .pipeline import DataSplits, load_data


def load_run_splits(
    config: RunConfig, data: str | Path | None = None, *, batch_size: int = 64, own_source: bool = True
) -> DataSplits:
    """``data`` (default: the run's own source) as train/validation loaders without augmentation,
    normalised with the run's statistics; with ``own_source`` the run's own split, reproduced from
    config.json (evaluate and the trust fits both read a run's data this way)."""
    if data is None:
        data = run_data_source(config)
    mean, std = config.normalization()
    return load_data(
        str(data),
        image_size=config.image_size,
        in_chans=config.in_chans,
        val_split=config.data.val_split if config.data is not None else 0.2,
        seed=config.data.seed if config.data is not None else 0,
        batch_size=batch_size,
        augment="none",
        normalize="auto",  # with mean and std given: exactly the run's statistics
        mean=mean,
        std=std,
        num_workers=0,
        data_root=config.options.get("data_root"),
        resize=config.resize,  # the run's mode on any data: what predict and serve do too
        split=config.split if own_source else None,
    )


def run_data_source(config: RunConfig) -> str:
    """The data the run trained on (its config.json), whose validation split ``evaluate`` uses by default."""
    if config.data is None or not config.data.source:
        raise ValueError("config.json does not say which data the run was trained on: give DATA")
    return str(config.data.source)
