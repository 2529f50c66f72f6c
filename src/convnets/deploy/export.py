"""Export a trained run for deployment: ONNX or TorchScript, normalisation inside the graph.

The exported graph takes what a camera or an image decoder gives: RGB (or grey) pixels scaled to
[0, 1] at the run's image size, any batch size. It subtracts the run's mean and divides by its std
itself, so the caller never needs to know how the network was trained, and BatchNorm has been
folded into the preceding convolutions (inference-only arithmetic: one conv instead of conv + BN).

Folding is ``convnets.accel.inference.fold_batchnorm``: conv -> BN pairs found from a ``torch.fx`` trace of
the data flow (neighbours inside an ``nn.Sequential`` when a model cannot be traced), merged with
``torch.nn.utils.fusion.fuse_conv_bn_eval``.

After writing, the file is loaded back with its own runtime (onnxruntime / ``torch.jit.load``), run
on random inputs of a batch size different from the traced one (which checks the dynamic batch
axis) and compared with the original, unfolded PyTorch model: the largest absolute difference of
the logits must be within ``atol``.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..accel.inference import count_batchnorm, write_onnx
from ..accel.inference import fold_batchnorm as fold_in_place
from ..base.atomic import make_like_new_file
from ..base.errors import output_file
from ..base.runs import ONNX_FILE
from ..data.decode import CROP_RATIO, LETTERBOX_FILL, base_size, resize_name
from ..weights import load_run
from .export_record import ExportError, record_export, weights_fingerprint

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportResult",
    "NormalizedModel",
    "export_model",
    "export_run",
    "fold_batchnorm",
    "write_onnx",
]

EXPORT_FORMATS = ("onnx", "torchscript")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


class NormalizedModel(nn.Module):
    """``model((x - mean) / std)``: the deployed graph takes pixels in [0, 1]."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, dict]:
    """Return an eval-mode copy with BatchNorm folded into the convolutions, and what was done.

    The folding is ``convnets.accel.inference.fold_batchnorm`` (pairs found from a torch.fx trace of the
    data flow, falling back to neighbours in an ``nn.Sequential``; the arithmetic is
    ``torch.nn.utils.fusion.fuse_conv_bn_eval``). The info dict has ``method``,
    ``batchnorm_before`` and ``batchnorm_after`` (BN layers left, e.g. one not preceded by a conv).
    """
    folded = copy.deepcopy(model).eval()
    before = count_batchnorm(folded)
    fold_in_place(folded)
    info = {
        "method": "convnets.accel.inference.fold_batchnorm (torch.fx data flow + fuse_conv_bn_eval)",
        "batchnorm_before": before,
        "batchnorm_after": count_batchnorm(folded),
    }
    return folded, info


@dataclass
class ExportResult:
    path: Path
    labels_path: Path
    format: str
    max_abs_diff: float
    atol: float
    fold: dict
    input_shape: list  # ["batch", C, H, W]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"], d["labels_path"] = str(self.path), str(self.labels_path)
        return d


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    try:
        import onnxruntime as ort  # optional: onnxruntime (convnets[export])
    except ImportError as e:
        raise ExportError("checking an ONNX export needs onnxruntime: pip install 'convnets[export]'") from e
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def _write_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still works
        traced = torch.jit.trace(module, example)
        traced.save(str(path))


def _run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            return loaded(x)


def preprocess_description(resize: str, size: tuple[int, int]) -> dict:
    """What a deployment must do to an image before the graph, for ``model.onnx.json``."""
    name = resize_name(resize)
    h, w = size
    how = {
        "crop": f"scale the image to cover {base_size(size, resize)[1]}x{base_size(size, resize)[0]} "
        f"(shorter side / {CROP_RATIO}), keeping its aspect ratio, then take the central {w}x{h}",
        "squash": f"resize to {w}x{h}, not keeping the aspect ratio",
        "letterbox": f"scale the long side to fit {w}x{h}, keeping the aspect ratio, and pad the rest "
        f"evenly with RGB {list(LETTERBOX_FILL)}",
    }[name]
    out = {"resize": name, "steps": how + "; bilinear; EXIF orientation applied; RGB uint8 / 255"}
    if name == "letterbox":
        out["fill"] = list(LETTERBOX_FILL)
    return out


# Opsets the TorchScript-based exporter writes these CNNs in: below 11 it cannot export adaptive
# pooling or a dynamic batch (opset 1 failed with an exporter traceback).
MIN_OPSET = 11


def max_opset() -> int:
    """The newest opset torch's TorchScript-based exporter writes (20 in torch 2.14)."""
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET  # optional: a private name

        return int(ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except ImportError:  # a private name: keep working if it moves
        return 20


def check_export_options(format: str, atol: float, opset: int) -> None:
    """Refuse bad options before any work (``ValueError`` naming the option)."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(EXPORT_FORMATS)}")
    if not atol >= 0:  # also NaN
        raise ValueError(f"--atol must be a number >= 0, got {atol!r}")
    if format == "onnx" and not MIN_OPSET <= opset <= max_opset():
        raise ValueError(f"--opset must be {MIN_OPSET}-{max_opset()} (what this torch exports), got {opset}")


def export_model(
    model: nn.Module,
    out: str | Path,
    *,
    format: str,
    image_size: tuple[int, int],
    in_chans: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    class_names: list[str],
    atol: float = 1e-4,
    opset: int = 17,
    resize: str = "center-crop",
) -> ExportResult:
    """Fold BN, wrap with normalisation, write ``out`` (+ ``out.labels.txt``) and check parity.
    ``out.json`` describes the input, including ``resize``: how an image must be brought to the
    input size before the graph (the run's mode, ``data/decode.py``).

    Raises :class:`ExportError` when the exported model differs from PyTorch by more than ``atol``
    (the file is kept so it can be inspected).
    """
    check_export_options(format, atol, opset)
    out = output_file(out, "--out")  # a folder there, or a read-only one: refused before the export
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    reference = NormalizedModel(model, mean, std).eval()
    folded, fold_info = fold_batchnorm(model)
    deployed = NormalizedModel(folded, mean, std).eval()

    h, w = image_size
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, in_chans, h, w, generator=generator)
    # A different batch size from the traced one: proves the batch axis is really dynamic.
    check = torch.rand(3, in_chans, h, w, generator=generator)

    # Written to a temporary name and renamed, so a failed export never leaves a half-written file.
    fd, tmp_name = tempfile.mkstemp(suffix=_SUFFIX[format], dir=out.parent, prefix=".export-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        make_like_new_file(tmp)  # the user's umask, not mkstemp's 0600 (a server may run as another user)
        with torch.no_grad():
            if format == "onnx":
                try:
                    write_onnx(deployed, example, tmp, opset)
                except ImportError as e:  # the export extra is not installed
                    raise ExportError(str(e)) from e
                except Exception as e:  # noqa: BLE001 - the exporter's own failure, told in one line
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise ExportError(f"ONNX export at --opset {opset} failed: {first}") from e
            else:
                _write_torchscript(deployed, example, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)

    with torch.inference_mode():
        expected = reference(check)
    got = _run_onnx(out, check) if format == "onnx" else _run_torchscript(out, check)
    if got.shape != expected.shape:
        raise ExportError(
            f"{out}: exported output shape {tuple(got.shape)} != PyTorch {tuple(expected.shape)}"
        )
    max_diff = float((got - expected).abs().max())

    labels_path = out.with_name(out.name + ".labels.txt")
    labels_path.write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
    meta_path = out.with_name(out.name + ".json")
    meta_path.write_text(
        json.dumps(
            {
                "input": {
                    "layout": "NCHW",
                    "shape": ["batch", in_chans, h, w],
                    "range": [0.0, 1.0],
                    "channels": "RGB" if in_chans == 3 else ("grey" if in_chans == 1 else in_chans),
                },
                "preprocess": preprocess_description(resize, (h, w)),
                "normalization_in_graph": {"mean": list(mean), "std": list(std)},
                "output": "logits (apply softmax for probabilities)",
                "class_names": class_names,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    result = ExportResult(out, labels_path, format, max_diff, atol, fold_info, ["batch", in_chans, h, w])
    if not max_diff <= atol:  # also catches NaN
        raise ExportError(
            f"{out}: exported {format} model differs from PyTorch by {max_diff:.3g} (> --atol {atol:g})"
        )
    return result


def export_run(
    run_dir: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    *,
    atol: float = 1e-4,
    opset: int = 17,
) -> ExportResult:
    """Export a run folder (``convnets export``); ``out`` defaults to ``RUN_DIR/model.onnx|.pt``."""
    run_dir = Path(run_dir)
    check_export_options(format, atol, opset)
    out = Path(out) if out is not None else run_dir / f"model{_SUFFIX[format]}"
    own = format == "onnx" and out.resolve() == (run_dir / ONNX_FILE).resolve()
    fingerprint = weights_fingerprint(run_dir) if own else None  # of the weights about to be loaded
    model, config = load_run(run_dir)
    mean, std = config.normalization()
    result = export_model(
        model,
        out,
        format=format,
        image_size=config.image_size,
        in_chans=config.in_chans,
        mean=mean,
        std=std,
        class_names=list(config.class_names),
        atol=atol,
        opset=opset,
        resize=config.resize,
    )
    if own:  # the run's own model.onnx: export.json records it (hash, shape, classes) as the run's
        record_export(run_dir, fingerprint, result.max_abs_diff, opset, config)
    return result
