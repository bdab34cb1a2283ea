"""Deployment: runners for PyTorch / ONNX Runtime / OpenVINO / TorchScript (`runners`), export
and verification (`export`), predictor choice with the export cache (`predictor`), and the
`cgnet predict` and `cgnet bench` commands."""
