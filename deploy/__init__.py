"""One module per deployment format (TorchScript, lite ``.ptl``, ONNX, TensorRT, ExecuTorch),
each with ``export(...)`` and ``load(...) -> Predictor``, and the table of formats that the
CLI, the tests and the profiler read. Not yet implemented: see the quantize-and-export issue."""
