"""Export trained detectors to ONNX and TorchScript inside a Triton model repository."""
