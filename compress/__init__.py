"""What makes a T2T-ViT smaller or cheaper: DeiT distillation (``distill``) and int8
quantization (``quantize``). Depends on :mod:`t2tvit` only. Not yet implemented: see the
project's open issues for distillation and quantize-and-export."""
