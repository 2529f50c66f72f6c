"""Running a trained run folder: `predictor` (Classifier, TTA, predict), `evaluate` (metrics, ensembles),
`export` (ONNX/TorchScript, with torch; `quantize`: int8), `export_record` (export.json: is model.onnx the
run's?) and `engines` (the exported model on ONNX Runtime or OpenVINO, without torch).
"""
