"""Checkpoint loading: torchvision files, safetensors, run folders and ``"imagenet"``.

Loading never executes code: ``.safetensors`` files are read with safetensors, everything else
with ``torch.load(..., weights_only=True)``, which refuses pickles that hold anything but tensors
and plain containers.

A checkpoint is matched to a model by key and shape. Two mismatches are made on purpose and
reported (``warnings.warn``) rather than refused:

- a classifier head of another size when ``num_classes`` differs (transfer learning): every other
  tensor is loaded and the new head keeps its fresh initialisation;
- a first convolution with another number of input channels: for ``in_chans=1`` the RGB filters
  are summed over the input channels, otherwise they are tiled and rescaled (timm's
  ``adapt_input_conv`` practice), so a grey image gives the same activations as its RGB copy.

Every loaded model carries ``model.pretrained_cfg`` (``mean``, ``std``, ``input_size``,
``source``) -- the normalisation the weights expect, which the data and training layers read.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import urllib.error
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base.atomic import atomic_write
from .base.errors import ConvnetsError, error_text
from .base.runs import CONFIG_FILE, WEIGHTS_FILE, RunConfig, RunFolderError
from .models.base import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD

__all__ = [
    "CheckpointMismatchError",
    "WeightsError",
    "create_pretrained",
    "imagenet_weights_url",
    "load_run",
    "load_weights_file",
    "load_state_dict_into",
    "save_state_dict",
]

NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "inception": (INCEPTION_MEAN, INCEPTION_STD)}
DOWNLOAD_TIMEOUT_S = 10.0  # per socket operation: offline, fail in seconds rather than hang
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile


class WeightsError(ConvnetsError, ValueError):
    """A checkpoint that cannot be found, read or used; the message names the file."""


class RunLoadError(WeightsError, RunFolderError):
    """A run folder that cannot be loaded (missing, not a run, bad config.json, newer schema): a
    ``RunFolderError`` that ``load_run``'s callers may also catch as a WeightsError."""


class CheckpointMismatchError(WeightsError):
    """The checkpoint's tensors do not fit the model (missing/unexpected keys, other shapes)."""


# --- reading checkpoints -------------------------------------------------------------------


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
        from safetensors import SafetensorError, safe_open

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


# --- matching a state dict to a model ------------------------------------------------------


def _head_prefixes(model: nn.Module) -> list[str]:
    """Module prefixes of the output layers: the classifier and any Linear of the same width
    (GoogLeNet's side classifiers), i.e. what changes with ``num_classes``."""
    get = getattr(model, "get_classifier", None)
    try:
        head = get() if get is not None else None
    except NotImplementedError:
        head = None
    if not isinstance(head, nn.Linear):
        return []
    return [
        name + "."
        for name, m in model.named_modules()
        if m is head or (isinstance(m, nn.Linear) and m.out_features == head.out_features)
    ]


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """A (out, C, k, k) filter bank for ``in_chans`` input channels (timm's practice): summed over
    the channels for 1 (a grey image = R = G = B gives the same response), else tiled and rescaled."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def _fmt_shape(t: torch.Tensor | torch.Size) -> str:
    return "[" + ", ".join(map(str, tuple(t.shape if isinstance(t, torch.Tensor) else t))) + "]"


def _list(items: list[str], limit: int = 5) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _mismatches(
    model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in model_state if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model_state]
    shapes = [k for k in state if k in model_state and tuple(state[k].shape) != tuple(model_state[k].shape)]
    return missing, unexpected, shapes


def load_state_dict_into(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    allow_new_head: bool = True,
    adapt_in_chans: bool = True,
) -> list[str]:
    """Load ``state`` into ``model``; returns the keys deliberately not loaded (a replaced head).

    Raises :class:`CheckpointMismatchError` naming the first missing keys, unexpected keys and shape
    mismatches (checkpoint shape vs model shape) when the tensors do not fit.
    """
    state = dict(state)
    if hasattr(model, "adapt_state_dict"):  # timm/torchvision wrappers: the library's own key layout
        state = model.adapt_state_dict(state)
    model_state = model.state_dict()
    missing, unexpected, shapes = _mismatches(model_state, state)
    notes: list[str] = []

    first = _first_conv(model)
    key = f"{first[0]}.weight" if first else None
    if adapt_in_chans and key in shapes and state[key].dim() == 4:
        have, want = state[key], model_state[key]
        if have.shape[0] == want.shape[0] and have.shape[2:] == want.shape[2:]:
            state[key] = adapt_input_conv(want.shape[1], have.to(want.dtype))
            shapes.remove(key)
            how = "summed over the input channels" if want.shape[1] == 1 else "tiled and rescaled"
            notes.append(f"{key}: {have.shape[1]}-channel filters {how} for in_chans={want.shape[1]}")

    dropped: list[str] = []
    heads = tuple(_head_prefixes(model))
    if allow_new_head and heads:
        head_shapes = [k for k in shapes if k.startswith(heads)]
        if head_shapes and len(head_shapes) == len(shapes) and not missing and not unexpected:
            changes = [f"{k} {_fmt_shape(state[k])} -> {_fmt_shape(model_state[k])}" for k in head_shapes]
            dropped = [k for k in state if k.startswith(heads)]
            for k in dropped:
                del state[k]
            shapes = []
            notes.append(
                f"classifier head replaced for the new number of classes ({', '.join(changes)}): "
                f"not loaded from {source}: {', '.join(dropped)}"
            )

    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(
                f"{len(shapes)} shape mismatch(es): "
                + _list(
                    [
                        f"{k} checkpoint {_fmt_shape(state[k])} vs model {_fmt_shape(model_state[k])}"
                        for k in shapes
                    ]
                )
            )
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_list(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_list(unexpected)}")
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointMismatchError(f"{source} does not fit {name}: " + "; ".join(parts))

    full = {k: state.get(k, v) for k, v in model_state.items()}  # keeps the fresh head / bn counters
    model.load_state_dict(full, strict=True)
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return dropped


# --- torchvision's ImageNet weights -----------------------------------------------------------


def imagenet_weights_url(name: str):
    """torchvision's default ImageNet weights entry (a ``WeightsEnum`` member with ``.url``) for ``name``."""
    from torchvision.models import get_model_weights

    from .models import get_model_cfg

    tv_name = get_model_cfg(name).torchvision
    if not tv_name:
        raise WeightsError(
            f"{name} has no ImageNet weights: torchvision does not ship this architecture. Train it "
            f"(`convnets train`) or pass a checkpoint of your own with --weights PATH"
        )
    try:
        return get_model_weights(tv_name).DEFAULT
    except (ValueError, KeyError) as e:
        raise WeightsError(f"{name}: torchvision {tv_name!r} has no pretrained weights ({e})") from e


def _hub_file(url: str) -> Path:
    """Where torch.hub caches ``url`` (``$TORCH_HOME/hub/checkpoints/<file name>``)."""
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def fetch_imagenet_weights(name: str) -> tuple[Path, Any]:
    """The local file of torchvision's ImageNet weights for ``name``: from the torch hub cache if it
    is there (no network needed), else downloaded into it. Offline this fails within seconds."""
    entry = imagenet_weights_url(name)
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


# --- building a model around a checkpoint -----------------------------------------------------


def _run_dir_of(weights: str | os.PathLike) -> Path | None:
    """The run folder ``weights`` names (the folder, or its model.safetensors), else None."""
    path = Path(weights)
    if path.is_dir():
        return path
    if path.name == WEIGHTS_FILE and (path.parent / CONFIG_FILE).is_file():
        return path.parent
    return None


def _fitting_kwargs(
    name: str,
    state: Mapping[str, torch.Tensor],
    num_classes: int,
    in_chans: int,
    kwargs: dict,
    layouts: list[dict],
    transfer_dropout: float | None = None,
    transfer_head: bool = False,
) -> dict:
    """The first builder kwargs (user's, then with each alternative layout, e.g. torchvision's
    GoogLeNet) whose model has the checkpoint's keys and shapes, apart from the head and first conv.
    ``transfer_head`` checks the model after ``reset_classifier`` (a run trained with a new head).

    Candidates are built on the meta device, so trying one costs no memory and little time.
    """
    from .models import create_model

    candidates = [dict(kwargs)] + [{**layout, **kwargs} for layout in layouts]
    if "aux_logits" not in kwargs and not any(k.startswith("aux") for k in state):
        # torchvision's GoogLeNet checkpoint has no side classifiers: build without them.
        candidates = [{**c, "aux_logits": False} for c in candidates] + candidates
    for candidate in candidates:
        try:
            with torch.device("meta"):
                model = create_model(name, num_classes=num_classes, in_chans=in_chans, **candidate)
                if transfer_head:
                    dropout = {} if transfer_dropout is None else {"dropout": transfer_dropout}
                    model.reset_classifier(num_classes, **dropout)
        except (TypeError, ValueError):  # the builder has no such option (aux_logits on a ResNet)
            continue
        model_state = model.state_dict()
        missing, unexpected, shapes = _mismatches(model_state, state)
        first = _first_conv(model)
        allowed = tuple(_head_prefixes(model)) + ((f"{first[0]}.weight",) if first else ())
        if not missing and not unexpected and all(k.startswith(allowed) for k in shapes):
            return candidate
    return dict(kwargs)


def _effective_normalization(
    source: tuple[tuple[float, ...], tuple[float, ...]],
    in_chans: int,
    mean: Any = None,
    std: Any = None,
    normalize: str | None = None,
) -> tuple[list[float], list[float]]:
    """mean/std the model should be fed: explicit values > ``normalize`` > the checkpoint's own."""
    if normalize is not None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
        source = NORMALIZATIONS[normalize]
    m = list(mean) if mean is not None else list(source[0])
    s = list(std) if std is not None else list(source[1])
    if len(m) != in_chans and len(m) == 3 and in_chans == 1:
        # filters summed over RGB see grey = R = G = B: one averaged statistic per channel
        m, s = [sum(m) / 3], [sum(s) / 3]
    elif len(m) != in_chans and len(m) in (1, 3):
        m = (m * in_chans)[:in_chans] if len(m) == 1 else [m[i % 3] for i in range(in_chans)]
        s = (s * in_chans)[:in_chans] if len(s) == 1 else [s[i % 3] for i in range(in_chans)]
    if len(m) != in_chans or len(s) != in_chans:
        raise ValueError(f"mean/std need {in_chans} values (one per input channel), got {m} / {s}")
    return [float(v) for v in m], [float(v) for v in s]


def create_pretrained(
    name: str,
    weights: str | os.PathLike,
    num_classes: int = 1000,
    in_chans: int = 3,
    *,
    mean: Any = None,
    std: Any = None,
    normalize: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build ``name`` and load ``weights``: a torchvision state dict (``.pth``, e.g. from its hub
    cache), a ``.safetensors`` file, a run folder (or its ``model.safetensors``), or ``"imagenet"``
    (torchvision's default ImageNet weights, downloaded or taken from the hub cache).

    A different ``num_classes`` replaces the head, ``in_chans`` other than the checkpoint's adapts
    the first convolution (both with a warning). ``mean``/``std`` or ``normalize="imagenet"|
    "inception"`` override the normalisation stored in ``model.pretrained_cfg``.
    """
    from .models import create_model, get_model_cfg

    cfg = get_model_cfg(name)
    layouts = [cfg.extra["torchvision_kwargs"]] if cfg.extra.get("torchvision_kwargs") else []
    source_norm = (tuple(cfg.mean), tuple(cfg.std))
    input_hw = list(cfg.input_size[1:])

    if name.startswith("timm/") and isinstance(weights, str) and not _is_local(weights):
        # "imagenet" or a timm pretrained tag ("a1_in1k"): timm's weights from the Hugging Face hub
        from .models.external import fetch_timm_weights

        path, tag_cfg, source = fetch_timm_weights(name, weights)
        state, _ = load_weights_file(path)
        source_norm = (tuple(tag_cfg.mean), tuple(tag_cfg.std))
        input_hw = list(tag_cfg.input_size[1:])
    elif isinstance(weights, str) and weights.lower() == "imagenet":
        path, entry = fetch_imagenet_weights(name)
        state, _ = load_weights_file(path)
        preprocess = entry.transforms()
        source_norm = (tuple(preprocess.mean), tuple(preprocess.std))
        input_hw = [preprocess.crop_size[0]] * 2
        kwargs = {**(layouts[0] if layouts else {}), **kwargs}  # the layout the file was trained in
        layouts = []
        source = f"imagenet: torchvision {entry} ({path.name})"
    elif (run_dir := _run_dir_of(weights)) is not None:
        return _from_run(name, run_dir, num_classes, in_chans, kwargs, mean, std, normalize)
    else:
        path = Path(weights)
        state, metadata = load_weights_file(path)
        saved = json.loads(metadata.get("pretrained_cfg", "{}"))
        if "mean" in saved and "std" in saved:
            source_norm = (tuple(saved["mean"]), tuple(saved["std"]))
        source = str(path)

    kwargs = _fitting_kwargs(name, state, num_classes, in_chans, kwargs, layouts)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    load_state_dict_into(model, state, source=source)
    m, s = _effective_normalization(source_norm, in_chans, mean, std, normalize)
    model.pretrained_cfg = {
        "mean": m,
        "std": s,
        "input_size": [in_chans, *input_hw],
        "source": source,
        "num_classes": num_classes,
        "model_kwargs": kwargs,
    }
    return model


def _is_local(weights: str) -> bool:
    """A path (file or run folder) rather than a name such as "imagenet" or a timm tag."""
    suffixes = (".safetensors", ".pth", ".pt", ".bin")
    return os.sep in weights or Path(weights).exists() or Path(weights).suffix in suffixes


def _from_run(
    name: str, run_dir: Path, num_classes: int, in_chans: int, kwargs: dict, mean, std, normalize
) -> nn.Module:
    """A run folder's model as a starting point: same architecture, new head/in_chans if asked."""
    config = _read_config(run_dir)
    if config.model != name:
        raise WeightsError(f"{run_dir} holds a {config.model} model, not {name}")
    model, config = load_run(run_dir, in_chans=in_chans, **kwargs)
    if num_classes != config.num_classes:
        dropout = config.head_dropout
        model.reset_classifier(num_classes, **({} if dropout is None else {"dropout": dropout}))
        warnings.warn(
            f"classifier head replaced: {run_dir} was trained for {config.num_classes} classes, "
            f"the new head has {num_classes} (freshly initialised)",
            stacklevel=3,
        )
    m, s = _effective_normalization(
        (tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"])),
        in_chans,
        mean,
        std,
        normalize,
    )
    model.pretrained_cfg.update(mean=m, std=s, num_classes=num_classes)
    return model.train()


# --- run folders ------------------------------------------------------------------------------


def _read_config(run_dir: Path) -> RunConfig:
    try:
        return RunConfig.read(run_dir)
    except RunFolderError as e:
        raise RunLoadError(str(e)) from None


def load_run(
    run_dir: str | os.PathLike, device: str | torch.device = "cpu", **overrides
) -> tuple[nn.Module, RunConfig]:
    """Rebuild a trained model from its run folder: ``(model in eval mode, RunConfig)``.

    The architecture comes from ``config.json`` (``model``, ``num_classes``, ``in_chans``,
    ``model_kwargs``; ``head == "transfer"`` means the head was replaced with ``reset_classifier``),
    the weights from ``model.safetensors``, loaded strictly. ``overrides`` are extra builder kwargs
    (``in_chans`` here adapts the first convolution). Raises :class:`RunLoadError` for a folder that
    is not a loadable run.
    """
    from .models import create_model, get_model_cfg

    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    weights_path = run_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise RunLoadError(f"{run_dir} is not a run folder: {WEIGHTS_FILE} is missing")
    run_chans = config.in_chans
    in_chans = int(overrides.pop("in_chans", run_chans))
    model_kwargs = {**config.model_kwargs, **overrides}
    num_classes = config.num_classes
    transfer, dropout = config.head == "transfer", config.head_dropout
    try:
        cfg = get_model_cfg(config.model)
    except (KeyError, ImportError) as e:  # an unknown name, or a timm/ model without timm installed
        raise RunLoadError(f"{run_dir / CONFIG_FILE}: model: {error_text(e)}") from None
    state, _ = load_weights_file(weights_path)
    # A run fine-tuned from torchvision's GoogLeNet has its layout (tv_layout, no side heads) even if
    # config.json's model_kwargs do not say so: rebuild the layout the weights have.
    layouts = [cfg.extra["torchvision_kwargs"]] if cfg.extra.get("torchvision_kwargs") else []
    model_kwargs = _fitting_kwargs(
        config.model, state, num_classes, run_chans, model_kwargs, layouts, dropout, transfer
    )
    model = create_model(config.model, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
    if transfer:
        model.reset_classifier(num_classes, **({} if dropout is None else {"dropout": dropout}))
    load_state_dict_into(
        model, state, source=str(weights_path), allow_new_head=False, adapt_in_chans=in_chans != run_chans
    )

    m, s = _effective_normalization((config.mean or cfg.mean, config.std or cfg.std), in_chans)
    model.pretrained_cfg = {
        "mean": m,
        "std": s,
        "input_size": [in_chans, *config.image_size],
        "source": str(run_dir),
        "num_classes": num_classes,
        "model_kwargs": model_kwargs,
        "class_names": list(config.class_names),
    }
    return model.to(device).eval(), config


def save_state_dict(
    model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None
) -> Path:
    """Write a model's weights to ``path`` as safetensors, atomically (temp file + ``os.replace``),
    so an interrupted save never leaves a truncated checkpoint. Tensors that share memory (tied
    weights) are written as separate copies, which safetensors requires. ``model.pretrained_cfg``
    (mean/std) travels in the file's metadata, so ``weights=FILE`` restores the normalisation."""
    from safetensors.torch import save_file

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
