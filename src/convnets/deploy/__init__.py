"""Running a trained run folder: `predictor` (Classifier, TTA, predict), `evaluate` (metrics, ensembles),
`export` (ONNX/TorchScript, `quantize`: int8) and the exported model's engines (`exported`: ONNX Runtime,
OpenVINO, without torch).
"""
