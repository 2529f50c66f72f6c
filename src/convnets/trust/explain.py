"""Why did the model decide that: Grad-CAM heat maps (Selvaraju et al. 2017) for every model family.

Grad-CAM weights the channels of a late feature map by the gradient of the class score, sums them
and keeps the positive part: where in the image the evidence for that class is. At the default
layer the maps are computed here through the ``ConvNet`` contract (one forward; Captum would need a
second one to learn the predicted class first, 1.9x the time in ``bench/explain.py``); at any other
layer (``--layer``) they are Captum's :class:`captum.attr.LayerGradCam` (the ``explain`` extra).
The test suite checks that both give the same maps at the default layer.

The layer is the **last convolutional stage**: the module whose output is the model's
``forward_features(x)`` (the ``ConvNet`` contract in ``models/base.py``), per family:

=====================================  =====================================
family                                 target layer
=====================================  =====================================
lenet5, alexnet, vgg*                  ``features`` (the conv stack)
mobilenet_v1/v2, efficientnet_b*       ``features`` (ends with the 1x1 head conv)
resnet*                                ``layer4``
cifar resnets (and their plain twins)  ``layer3``
googlenet (inception v1)               ``inception5b``
timm/NAME                              its ``forward_features`` output
torchvision/NAME                       ``feature_map_module()`` (e.g. ``body.layer4``)
=====================================  =====================================

A model whose ``forward_features`` is not the last spatial map (a wrapped torchvision network: it
pools inside its own forward) names the module that gives it, ``ConvNet.feature_map_module()``;
the map is then read there, still in one forward (a hook keeps that module's output).

``target_layer(model, name)`` picks any other module by its dotted name (an earlier stage gives a
finer, less class-specific map).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..base.errors import os_error_message, output_dir
from ..base.plots import pyplot, save_figure
from ..base.runs import RunConfig

if TYPE_CHECKING:  # torch is imported where it is used: the pictures do without it
    import torch
    from torch import nn

# Longest image-name stem in an overlay's name: "<stem>.gradcam.png" (+ "-N") within 255 bytes.
MAX_STEM_BYTES = 255 - len(".gradcam.png") - 4

__all__ = [
    "Explanation",
    "GradCamResult",
    "explain_files",
    "grad_cam",
    "overlay",
    "overlays",
    "save_overlay",
    "target_layer",
]

# Model class name -> the attribute holding its last conv stage (see the table above). Looked up
# along the class's MRO, so subclasses (e.g. a plain CIFAR ResNet) inherit their parent's entry.
_LAST_STAGE = {
    "FCHeadConvNet": "features",  # LeNet-5, AlexNet, VGG
    "FeaturesClassifierNet": "features",  # MobileNet v1/v2, EfficientNet
    "ResNet": "layer4",
    "CifarResNet": "layer3",
    "GoogLeNet": "inception5b",
}


def target_layer(model: nn.Module, name: str | None = None) -> nn.Module:
    """The layer Grad-CAM reads: ``name`` (a dotted module name such as ``"layer3"``) when given,
    else the model's last conv stage (the module whose output is ``forward_features``)."""
    from torch import nn  # start-up: torch on first use

    if name:
        try:
            return model.get_submodule(name)
        except AttributeError:
            known = ", ".join(n for n, _ in model.named_children())
            raise ValueError(
                f"--layer: {type(model).__name__} has no module {name!r} (top level: {known})"
            ) from None
    module = _feature_map_module(model)
    if module is not None:
        return module
    for cls in type(model).__mro__:
        attr = _LAST_STAGE.get(cls.__name__)
        if attr is not None:
            return getattr(model, attr)
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module):
        return features
    raise ValueError(
        f"no default Grad-CAM layer for {type(model).__name__}: pass a layer name "
        f"(one of {', '.join(n for n, _ in model.named_children())})"
    )


def _feature_map_module(model: nn.Module) -> nn.Module | None:
    """The model's own answer to "which module gives the last spatial map", when forward_features
    does not (``ConvNet.feature_map_module``)."""
    ask = getattr(model, "feature_map_module", None)
    return ask() if callable(ask) else None


@dataclass
class GradCamResult:
    heatmaps: np.ndarray  # (N, H, W) float32 in [0, 1], at the input's resolution
    classes: list[int]  # the class each map explains
    predicted: list[int]  # the model's top class
    probs: np.ndarray  # (N, K) softmax probabilities


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    target_class: int | Sequence[int] | None = None,
    *,
    layer: nn.Module | str | None = None,
) -> GradCamResult:
    """Grad-CAM maps of a normalised batch ``images`` (N, C, H, W) for ``target_class`` (one class
    for all, one per image, or ``None``: each image's predicted class), read at ``layer`` (default:
    the last conv stage).

    Each map is upsampled bilinearly to (H, W) and scaled to [0, 1] by its own maximum (an all-zero
    map, no positive evidence anywhere, stays zero).
    """
    import torch  # start-up: torch on first use
    import torch.nn.functional as F  # start-up: torch on first use

    model = model.eval()
    size = tuple(images.shape[-2:])
    # Gradients even when the caller is inside torch.inference_mode / no_grad.
    with torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone()
        if layer is None:
            feature_map = _feature_map_module(model)
            # One forward gives the activations, the logits and (before any backward) the predicted
            # class. Captum's LayerGradCam needs the target class before its own forward: for
            # "explain the prediction" that is a second forward, 1.9x the time in bench/explain.py.
            if feature_map is None:
                # The last conv stage is the ConvNet contract's forward_features output: the trunk
                # runs without building a graph.
                with torch.no_grad():
                    activations = model.forward_features(x)
                activations.requires_grad_(True)
                logits = model.forward_head(activations).float()
            else:
                # The model pools inside forward_features: keep the output of the module it names.
                kept: list[torch.Tensor] = []
                handle = feature_map.register_forward_hook(lambda m, i, out: kept.append(out))
                try:
                    logits = model(x.requires_grad_(True)).float()
                finally:
                    handle.remove()
                activations = kept[-1]
            probs, classes, predicted = _targets(logits, target_class)
            score = logits.gather(1, torch.tensor(classes).view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(score, activations)
            cam = (grads.mean((2, 3), keepdim=True) * activations).sum(1, keepdim=True).clamp_min(0)
            cam = F.interpolate(cam.detach().float(), size=size, mode="bilinear", align_corners=False)
        else:
            try:
                from captum.attr import LayerAttribution, LayerGradCam  # optional: captum
            except ImportError as e:
                raise ImportError(
                    "Grad-CAM at a chosen layer needs Captum: pip install 'convnets[explain]'"
                ) from e
            module = layer if isinstance(layer, torch.nn.Module) else target_layer(model, layer)
            with torch.no_grad():
                probs, classes, predicted = _targets(model(x).float(), target_class)
            cam = LayerGradCam(model, module).attribute(
                x.requires_grad_(True), target=classes, relu_attributions=True
            )
            cam = LayerAttribution.interpolate(cam.detach(), size, interpolate_mode="bilinear")
    maps = cam.sum(1).float().clamp_min(0)  # (N, H, W); one channel already, the sum drops it
    peak = maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return GradCamResult((maps / peak).cpu().numpy(), classes, predicted, probs.detach().cpu().numpy())


def _targets(logits: torch.Tensor, target_class: int | Sequence[int] | None):
    """(softmax probabilities, the class each map explains, the predicted classes)."""
    import torch  # start-up: torch on first use

    probs = torch.softmax(logits.detach(), 1)
    predicted = probs.argmax(1).tolist()
    n, num_classes = probs.shape
    if target_class is None:
        classes = list(predicted)
    elif isinstance(target_class, int):
        classes = [int(target_class)] * n
    else:
        classes = [int(c) for c in target_class]
    if len(classes) != n or not all(0 <= c < num_classes for c in classes):
        raise ValueError(f"target_class: need {n} class indices in [0, {num_classes})")
    return probs, classes, predicted


# --- pictures --------------------------------------------------------------------------------------


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """uint8 (H, W, C) image with a [0, 1] (H, W) heat map blended over it -> uint8 (H, W, 3).

    The map's colour is weighted by the map itself, so cold regions keep the image visible."""
    from matplotlib import colormaps  # start-up: matplotlib on first use

    base = image.astype(np.float32) / 255.0
    if base.ndim == 2:
        base = base[..., None]
    if base.shape[2] == 1:
        base = np.repeat(base, 3, axis=2)
    heat = np.clip(heatmap, 0, 1).astype(np.float32)
    colour = colormaps[cmap](heat)[..., :3].astype(np.float32)
    weight = alpha * (0.25 + 0.75 * heat)[..., None]
    return (np.clip((1 - weight) * base + weight * colour, 0, 1) * 255).round().astype(np.uint8)


def save_overlay(path: str | os.PathLike, image: np.ndarray, heatmap: np.ndarray, caption: str = "") -> Path:
    """The image and its overlay side by side, with ``caption`` above (a PNG, written atomically)."""

    fig, axes = pyplot().subplots(1, 2, figsize=(6.4, 3.6))
    for ax, arr, title in zip(axes, (image, overlay(image, heatmap)), ("input", "Grad-CAM")):
        ax.imshow(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr, cmap="gray")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if caption:
        fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    return Path(save_figure(fig, path))


def overlays(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    target_class: int | Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Grad-CAM overlays of images in [0, 1] (N, C, H, W), as (3, H, W) float arrays in [0, 1] (the
    layout the report's image grid takes); the model sees them normalised with ``mean``/``std``."""
    import torch  # start-up: torch on first use

    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    cam = grad_cam(model, (images - m) / s, target_class)
    pictures = (images.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return [overlay(p, h).transpose(2, 0, 1).astype(np.float32) / 255 for p, h in zip(pictures, cam.heatmaps)]


# --- run folders and files ---------------------------------------------------------------------------


@dataclass
class Explanation:
    """One explained image: what the model predicted, which class the map shows, and the PNG."""

    file: str
    predicted: str | None = None
    prob: float | None = None
    explained: str | None = None  # the class the heat map is for
    explained_prob: float | None = None
    path: str | None = None  # the overlay PNG
    error: str | None = None
    peak: tuple[int, int] | None = field(default=None, repr=False)  # (row, col) of the map's maximum

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None and k != "peak"}


def explain_files(
    run_dir: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    class_name: str | None = None,
    layer: str | None = None,
    batch_size: int = 16,
    model: nn.Module | None = None,
    option: str = "--out",
) -> list[Explanation]:
    """Grad-CAM overlays for image files (folders searched recursively) with a trained run:
    ``OUT_DIR/<image name>.gradcam.png`` per image, for the predicted class or ``class_name``.

    An unreadable file (or an overlay that cannot be written) gets an :class:`Explanation` with
    ``error`` and the rest go on. ``option`` names ``out_dir`` in errors (``--explain`` for predict).
    """
    import torch  # start-up: torch on first use

    from ..data.decode import ImageReadError  # start-up: PIL on first use
    from ..data.images import expand_paths, read_image, to_input  # start-up: PIL on first use

    config = RunConfig.read(run_dir)
    if class_name is not None and class_name not in config.class_names:
        raise ValueError(
            f"--class: {class_name!r} is not one of the run's classes ({', '.join(config.class_names)})"
        )
    if model is None:
        from ..weights import load_run  # start-up: torch on first use

        model, _ = load_run(run_dir)
    out_dir = output_dir(out_dir, option)  # before the model runs: a file or read-only folder is refused
    out_dir.mkdir(parents=True, exist_ok=True)
    mean, std = config.normalization()
    names = config.class_names
    target = names.index(class_name) if class_name is not None else None
    files = expand_paths(paths)
    used: set[str] = set()
    results: list[Explanation] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        views, rows = [], []
        for f in chunk:
            try:
                views.append(read_image(f, config.image_size, config.in_chans, config.resize))
                rows.append(Explanation(f))
            except ImageReadError as e:
                results.append(Explanation(f, error=str(e)))
        if not views:
            continue
        x = torch.from_numpy(to_input(np.stack(views), mean, std))
        cam = grad_cam(model, x, target, layer=layer)
        for i, (row, view) in enumerate(zip(rows, views)):
            pred, cls = cam.predicted[i], cam.classes[i]
            row.predicted, row.prob = names[pred], float(cam.probs[i, pred])
            row.explained, row.explained_prob = names[cls], float(cam.probs[i, cls])
            heat = cam.heatmaps[i]
            row.peak = tuple(int(v) for v in np.unravel_index(heat.argmax(), heat.shape))
            caption = f"predicted {row.predicted} {row.prob:.2f}"
            if cls != pred:
                caption += f"; map for {row.explained} {row.explained_prob:.2f}"
            out = out_dir / _unique_name(Path(row.file).stem, used)
            try:
                row.path = str(save_overlay(out, view, heat, caption))
            except OSError as e:  # e.g. the disk filled up: this image's row says so, the rest go on
                row.error = f"cannot write {out}: {os_error_message(e)}"
            results.append(row)
    order = {f: i for i, f in enumerate(files)}
    return sorted(results, key=lambda r: order[r.file])


def _unique_name(stem: str, used: set[str]) -> str:
    raw = os.fsencode(stem)
    if len(raw) > MAX_STEM_BYTES:  # file systems allow 255 bytes a name: keep the start, made unique
        stem = os.fsdecode(raw[: MAX_STEM_BYTES - 9]) + "-" + hashlib.sha1(raw).hexdigest()[:8]
    name, n = f"{stem}.gradcam.png", 1
    while name in used:  # two inputs with the same file name from different folders
        n += 1
        name = f"{stem}-{n}.gradcam.png"
    used.add(name)
    return name
