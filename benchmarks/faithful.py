"""How faithful is our model to the official T2T-ViT code, and what does faithfulness cost?

Numerics, per variant: every trainable tensor of an official-format model is perturbed by
N(0, 0.02), so the weights look trained (fresh initialisations never bring the token Performer's
denominators near the official ``+ 1e-8``). The oracle is :mod:`benchmarks.reference` (the
official formulation, key for key) evaluated in float64. Reported, as max |difference| over the
logits divided by the largest |logit| of the oracle:

* ours in fp32, and the official formulation run in fp32 (what the official code itself gets);
* the official formula *without* its epsilon: how much the epsilon decides the logits;
* ours under fp16 and bf16 autocast (the Performer core stays fp32 by design);
* the smallest Performer denominator ``D`` seen, and top-1 agreement with the oracle.

What the epsilon costs in time is a case of ``benchmarks/bench_parts.py`` (``performer_core_eps_*``).

Usage: ``python -m benchmarks.faithful [--threads 2] [--images 4] [--out benchmarks/results/faithful]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]

MODELS = [
    ("t2t_vit_7", 224),
    ("t2t_vit_10", 224),
    ("t2t_vit_12", 224),
    ("t2t_vit_14", 224),
    ("t2t_vit_t_14", 224),
    ("t2t_vit_14", 384),
    ("t2t_vit_dense", 224),
    ("t2t_vit_14_se", 224),
    ("t2t_vit_16_ghost", 224),
    ("t2t_vit_7_distilled", 224),
]


def perturb_(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def _smallest_denominators(ref: torch.nn.Module) -> tuple[list[float], list[Any]]:
    """Hooks recording min D of every reference Performer (the official ``prm_exp`` route)."""
    seen: list[float] = []

    def hook(mod: torch.nn.Module, inputs: tuple[torch.Tensor], _out: torch.Tensor) -> None:
        k, q, _ = mod.kqv(mod.norm1(inputs[0])).split(mod.emb, dim=-1)
        seen.append((mod.prm_exp(q) @ mod.prm_exp(k).sum(1).unsqueeze(-1)).min().item())

    handles = [m.register_forward_hook(hook) for m in ref.modules() if hasattr(m, "prm_exp")]
    return seen, handles


def numerics(name: str, size: int, images: int) -> dict[str, Any]:
    import timm

    import t2tvit  # noqa: F401  (registers the variants with timm)
    from benchmarks.reference import reference_model

    torch.manual_seed(0)  # the Performers' random features
    ours = perturb_(timm.create_model(name, img_size=size)).eval()
    ref = reference_model(name, img_size=size).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        official32 = ref(x).double()
        ref64 = ref.double()
        seen, handles = _smallest_denominators(ref64)
        exact = ref64(x.double())
        for h in handles:
            h.remove()
        for m in ref64.modules():
            if hasattr(m, "epsilon"):
                m.epsilon = 0.0
        no_eps = ref64(x.double())
        fp32 = ours(x).double()
        with torch.autocast("cpu", dtype=torch.float16):
            fp16 = ours(x).double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = ours(x).double()
    scale = exact.abs().max().item()

    def rel(y: torch.Tensor) -> float:
        return (y - exact).abs().max().item() / scale

    top1 = exact.argmax(1)
    return {
        "model": name,
        "img_size": size,
        "ours_fp32": rel(fp32),
        "official_fp32": rel(official32),
        "official_without_eps": rel(no_eps),
        "ours_fp16": rel(fp16),
        "ours_bf16": rel(bf16),
        "min_denominator": min(seen) if seen else None,
        "top1_agree_fp32": float((fp32.argmax(1) == top1).float().mean()),
        "top1_agree_without_eps": float((no_eps.argmax(1) == top1).float().mean()),
    }


def _e(x: float | None) -> str:
    """One significant figure, or "-" where the model has no token Performer (``t2t_vit_t_*``)."""
    return "-" if x is None else f"{x:.1e}"


def main(argv: list[str] | None = None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.bench_model import Progress, device_name

    p = argparse.ArgumentParser(prog="python -m benchmarks.faithful", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    p.add_argument("--images", type=int, default=4, help="random images per model (default: 4)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "faithful", help="output stem")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    with Progress(len(MODELS)) as prog:
        for name, size in MODELS:
            rows.append(numerics(name, size, a.images))
            prog.log(f"{name}@{size}: ours {rows[-1]['ours_fp32']:.1e}", advance=1)
    meta = {
        "command": shlex.join(sys.orig_argv),
        "torch": torch.__version__,
        "device": device_name(torch.device("cpu")),
        "threads": a.threads,
        "images": a.images,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_end": round(os.getloadavg()[0], 2),
    }
    lines = [
        "# Faithfulness to the official T2T-ViT formula, on weights that look trained",
        "",
        f"- command: `{meta['command']}`",
        f"- torch {meta['torch']}, {meta['device']}, {a.threads} threads, {meta['date']}, "
        f"load average at end {meta['load_average_end']}",
        "- models built under seed 0, every trainable tensor then perturbed by N(0, 0.02), seed 0; "
        f"{a.images} random images per model",
        "- each column: max |logit difference| from the official formula evaluated in float64, "
        "divided by its largest |logit|",
        "",
        "| model | px | ours fp32 | official code fp32 | official formula without its 1e-8 | ours fp16 autocast | "
        "ours bf16 autocast | smallest Performer D | top-1 = oracle (ours / without 1e-8) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *(
            f"| {r['model']} | {r['img_size']} | {r['ours_fp32']:.1e} | {r['official_fp32']:.1e} | "
            f"{r['official_without_eps']:.1e} | {r['ours_fp16']:.1e} | {r['ours_bf16']:.1e} | "
            f"{_e(r['min_denominator'])} | {r['top1_agree_fp32']:.0%} / {r['top1_agree_without_eps']:.0%} |"
            for r in rows
        ),
        "",
        "The epsilon's cost in time: the `performer_core_eps_*` cases of "
        "[bench_parts_cpu.md](bench_parts_cpu.md) (`python -m benchmarks.bench_parts`).",
        "",
    ]
    print("\n".join(lines))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text("\n".join(lines))
    a.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "numerics": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
