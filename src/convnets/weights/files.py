"""Checkpoint files: read without executing code, write atomically.

``.safetensors`` files are read with safetensors, everything else with ``torch.load(...,
weights_only=True)``, which refuses pickles that hold anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base.atomic import atomic_write
from ..base.errors import WeightsError

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside the usual training-checkpoint wrappers."""
    if isinstance(obj, nn.Module):  # cannot happen with weights_only, but be explicit
        obj = obj.state_dict()
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}}
        if _is_state_dict(obj):
            break
        if not isinstance(obj, Mapping):
            raise WeightsError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            keys = ", ".join(map(str, list(obj)[:8]))
            raise WeightsError(
                f"{path}: no state dict found (top-level keys: {keys}); expected tensors, or one of "
                f"{', '.join(_WRAPPER_KEYS)} holding them"
            )
        obj = inner
    if not _is_state_dict(obj):
        raise WeightsError(f"{path}: no state dict of tensors found")
    state = dict(obj)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_weights_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a ``.safetensors`` or torch (``.pth``/``.pt``/``.bin``) file into ``(state_dict, metadata)``
    on the CPU without executing code. ``metadata`` is the safetensors header's (empty otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open  # start-up: safetensors on first use

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from e
        if not state:
            raise WeightsError(f"{path}: the safetensors file holds no tensors")
        return _unwrap(state, path), metadata
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False; show only the line naming the refused object
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln), lines[0] if lines else "")
        # weights_only refuses any global outside torch's allow-list *before* calling it.
        raise WeightsError(
            f"{path}: refused to load: the file holds Python objects beyond tensors, and unpickling "
            f"them could run arbitrary code. Re-save only the state dict "
            f"(torch.save(model.state_dict(), ...)) or convert it to .safetensors. Detail: {detail}"
        ) from e
    except Exception as e:  # noqa: BLE001 - whatever the unpickler makes of a text file or noise
        detail = f"{type(e).__name__}: {e}" if isinstance(e, (KeyError, IndexError, TypeError)) else str(e)
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint (.pt/.pth) or .safetensors file ({detail})"
        ) from e
    return _unwrap(obj, path), {}


def save_state_dict(
    model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None
) -> Path:
    """Write a model's weights to ``path`` as safetensors, atomically (temp file + ``os.replace``),
    so an interrupted save never leaves a truncated checkpoint. Tensors that share memory (tied
    weights) are written as separate copies, which safetensors requires. ``model.pretrained_cfg``
    (mean/std) travels in the file's metadata, so ``weights=FILE`` restores the normalisation."""
    from safetensors.torch import save_file  # start-up: safetensors on first use

    source = model.state_dict() if isinstance(model, nn.Module) else model
    state: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, tensor in source.items():
        t = tensor.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages or not t.is_contiguous():
            t = t.contiguous().clone()
        storages.add(t.untyped_storage().data_ptr())
        state[key] = t
    meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(pretrained_cfg, dict) and "pretrained_cfg" not in meta:
        meta["pretrained_cfg"] = json.dumps(
            {k: pretrained_cfg[k] for k in ("mean", "std", "input_size") if k in pretrained_cfg}
        )
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))
