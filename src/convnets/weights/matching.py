"""Matching a state dict to a model, by key and shape.

Two mismatches are made on purpose and reported (``warnings.warn``) rather than refused:

- a classifier head of another size when ``num_classes`` differs (transfer learning): every other
  tensor is loaded and the new head keeps its fresh initialisation;
- a first convolution with another number of input channels: for ``in_chans=1`` the RGB filters
  are summed over the input channels, otherwise they are tiled and rescaled (timm's
  ``adapt_input_conv`` practice), so a grey image gives the same activations as its RGB copy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..base.errors import CheckpointMismatchError


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


def fitting_kwargs(
    build: Callable[..., nn.Module],
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
    ``build(num_classes=, in_chans=, **kwargs)`` builds the architecture with random weights;
    ``transfer_head`` checks the model after ``reset_classifier`` (a run trained with a new head).

    Candidates are built on the meta device, so trying one costs no memory and little time.
    """
    candidates = [dict(kwargs)] + [{**layout, **kwargs} for layout in layouts]
    if "aux_logits" not in kwargs and not any(k.startswith("aux") for k in state):
        # torchvision's GoogLeNet checkpoint has no side classifiers: build without them.
        candidates = [{**c, "aux_logits": False} for c in candidates] + candidates
    for candidate in candidates:
        try:
            with torch.device("meta"):
                model = build(num_classes=num_classes, in_chans=in_chans, **candidate)
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
