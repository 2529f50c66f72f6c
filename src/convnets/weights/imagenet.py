"""torchvision's ImageNet weights: from the torch hub cache, else downloaded into it.

Registry-free: the caller names the torchvision architecture (``ModelCfg.torchvision``), so
``models.registry`` can use this module; :func:`convnets.weights.imagenet_weights_url` looks the name up.
"""

from __future__ import annotations

import os
import socket
import urllib.error
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..base.errors import WeightsError

DOWNLOAD_TIMEOUT_S = 10.0  # per socket operation: offline, fail in seconds rather than hang


def imagenet_weights_entry(name: str, torchvision_arch: str | None):
    """torchvision's default ImageNet weights entry (a ``WeightsEnum`` member with ``.url``) for the
    model ``name``, which torchvision calls ``torchvision_arch`` (None: torchvision lacks it)."""
    from torchvision.models import get_model_weights  # start-up: torchvision's model zoo only when asked

    if not torchvision_arch:
        raise WeightsError(
            f"{name} has no ImageNet weights: torchvision does not ship this architecture. Train it "
            f"(`convnets train`) or pass a checkpoint of your own with --weights PATH"
        )
    try:
        return get_model_weights(torchvision_arch).DEFAULT
    except (ValueError, KeyError) as e:
        raise WeightsError(f"{name}: torchvision {torchvision_arch!r} has no pretrained weights ({e})") from e


def _hub_file(url: str) -> Path:
    """Where torch.hub caches ``url`` (``$TORCH_HOME/hub/checkpoints/<file name>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def fetch_imagenet_weights(name: str, torchvision_arch: str | None) -> tuple[Path, Any]:
    """The local file of torchvision's ImageNet weights for ``name``: from the torch hub cache if it
    is there (no network needed), else downloaded into it. Offline this fails within seconds."""
    entry = imagenet_weights_entry(name, torchvision_arch)
    dst = _hub_file(entry.url)
    if dst.is_file():
        return dst, entry
    dst.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(dst.name)  # torchvision names files <arch>-<sha256 prefix>.pth
    # torch.hub's downloader sets no timeout of its own; a default socket timeout bounds each
    # connect/read so an offline or firewalled machine fails at once instead of hanging.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(entry.url, str(dst), match.group(1) if match else None, progress=True)
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsError(
            f"could not download the ImageNet weights for {name} ({entry}) from {entry.url}: {reason}. "
            f"Without network, fetch that file on another machine and either pass it with "
            f"--weights PATH (weights=PATH in Python) or copy it to {dst}, where torchvision caches "
            f"downloads (set TORCH_HOME to move the cache)"
        ) from e
    finally:
        socket.setdefaulttimeout(previous)
    return dst, entry
