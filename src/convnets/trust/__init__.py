"""Trusting a trained model: calibration (`calibration`), "none of these" flags (`ood`), error analysis
(`analysis`), why it decided (`explain`: Grad-CAM), and fitting and applying them on a run (`fit`).

Training fits the temperature and the OOD detector at its end (`fit.calibrate_run`); `deploy` applies them
to every answer (`fit.RunTrust`).
"""
