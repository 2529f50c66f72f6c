"""Option lists the library and the CLI share -- what can run a trained model, the TTA modes --
importing nothing, so the CLI builds ``--backend``/``--tta`` while ``convnets --help`` stays free of
numpy and torch. Each list is defined here and only here.

The engines themselves live in :mod:`convnets.deploy.engines` (torch-free, on the run's ONNX export, used
by ``predict`` and the server) and :mod:`convnets.accel.inference` (the PyTorch model, used by evaluate,
ensemble, report and for options the exported path lacks).
"""

# What runs the run's exported model (convnets.deploy.engines), without torch ...
EXPORTED_BACKENDS = ("onnxruntime", "openvino", "int8")
# ... and what runs the PyTorch model (convnets.accel.inference.BACKENDS).
TORCH_BACKENDS = ("torchscript", "eager")
# --backend for the commands that run only the exported model (serve) ...
EXPORTED_PATH_CHOICES = ("auto", *EXPORTED_BACKENDS)
# ... for those that run only the PyTorch model (evaluate, ensemble, report: ONNX Runtime in memory) ...
TORCH_PATH_CHOICES = ("auto", "onnxruntime", *TORCH_BACKENDS)
# ... and for those that can use either (predict).
BACKEND_CHOICES = ("auto", *EXPORTED_BACKENDS, *TORCH_BACKENDS)
#: Test-time augmentation modes and the forward passes each costs per image (deploy/predictor.py).
TTA_COST = {"none": 1, "flip": 2, "10crop": 10}
TTA_MODES = tuple(TTA_COST)
# The views the trainer validates on (`--val-tta`); a run's choice is also its evaluate/predict default.
VAL_TTA_MODES = ("none", "flip")

# Input normalisation (data/pipeline.py applies it): `auto` = the checkpoint's with --weights, else
# `dataset`; the CLI offers the explicit ones.
NORMALIZE_MODES = ("auto", "imagenet", "inception", "dataset", "mean", "none")
NORMALIZE_CHOICES = NORMALIZE_MODES[1:]

# How an image becomes the input size (data/decode.py applies them): the modes config.json stores ...
RESIZE_MODES = ("center-crop", "resize", "letterbox")
# ... and the names `convnets train --resize` takes (what each does to a non-square image).
RESIZE_CHOICES = {"crop": "center-crop", "squash": "resize", "letterbox": "letterbox"}


def resize_mode(name: str) -> str:
    """A stored mode (``center-crop``, ``resize``, ``letterbox``) or a ``--resize`` name (``crop``,
    ``squash``, ``letterbox``) -> the stored mode; ``ValueError`` names the choices."""
    if name in RESIZE_MODES:
        return name
    if name in RESIZE_CHOICES:
        return RESIZE_CHOICES[name]
    raise ValueError(f"resize must be one of {', '.join(RESIZE_CHOICES)}, got {name!r}")


def resize_name(mode: str) -> str:
    """A stored mode -> the ``--resize`` name a user types (``center-crop`` -> ``crop``)."""
    return {v: k for k, v in RESIZE_CHOICES.items()}[resize_mode(mode)]
