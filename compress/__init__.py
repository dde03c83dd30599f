"""What makes a T2T-ViT smaller or cheaper: DeiT distillation (``distill``, to come) and int8
quantization (:mod:`compress.quantize`: dynamic int8 in PyTorch, calibration images, int8 ONNX).
Depends on :mod:`t2tvit` only."""
