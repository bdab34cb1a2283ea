"""Deployment: the formats table (`formats`: each kind of file `cgnet export` writes, with its
writer, runner and verification), the runners behind one calling convention (`runners`: eager and
compiled PyTorch, ONNX Runtime, OpenVINO, torch.export programs and legacy TorchScript files;
`mobile`: ExecuTorch and LiteRT), the network simplified for inference (`simplify`), export and
verification (`export`), predictor choice with the export cache (`predictor`), the `cgnet predict`,
`cgnet bench` and `cgnet serve` commands (`predict`, `bench`, `serve`) and the page's in-browser
mode (`web`)."""
