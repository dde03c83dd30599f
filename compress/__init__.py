"""What makes a T2T-ViT smaller or cheaper: DeiT distillation (:mod:`compress.distill`) and int8
quantization (:mod:`compress.quantize`: dynamic int8 in PyTorch, calibration images, int8 ONNX).
Depends on :mod:`t2tvit` only."""

__toolkit__ = "t2tvit-edge"  # read (not imported) by t2t.cli.name_clashes: is this package ours?
