"""The names of what can run a trained model, importing nothing: the CLI builds ``--backend``'s
choices from here while ``convnets --help`` stays free of numpy and torch.

The engines themselves live in :mod:`convnets.exported` (torch-free, on the run's ONNX export, used
by ``predict`` and the server) and :mod:`convnets.inference` (the PyTorch model, used by evaluate,
ensemble, report and for options the exported path lacks).
"""

# What runs the run's exported model (convnets.exported), without torch ...
EXPORTED_BACKENDS = ("onnxruntime", "openvino", "int8")
# ... and what runs the PyTorch model (convnets.inference.BACKENDS).
TORCH_BACKENDS = ("torchscript", "eager")
# --backend for commands that can use either (predict) ...
BACKEND_CHOICES = ("auto", *EXPORTED_BACKENDS, *TORCH_BACKENDS)
# ... and for those that run the PyTorch model (evaluate, ensemble, report: ONNX Runtime in memory).
TORCH_PATH_CHOICES = ("auto", "onnxruntime", *TORCH_BACKENDS)
