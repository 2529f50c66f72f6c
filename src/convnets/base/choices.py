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
