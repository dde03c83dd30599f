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

Speed: the epsilon costs one more logsumexp over (tokens x features); the Performer core with it
is timed against the core without it (the previous release), interleaved, at batch 1 (inference)
and batch 16 (forward + backward), on the 3,136 tokens of a 224 px image.

Usage: ``python -m benchmarks.faithful [--threads 2] [--images 4] [--out benchmarks/results/faithful]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
from collections.abc import Callable
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


def _core_without_eps(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The Performer core of the previous release: the ratio N / D without the official epsilon."""
    wk = k @ w.t() - 0.5 * (k * k).sum(dim=-1, keepdim=True)
    log_k = torch.logsumexp(wk, dim=1, keepdim=True)
    attn_k = torch.exp(wk - log_k)
    attn_q = torch.softmax(q @ w.t() + log_k, dim=-1)
    return attn_q @ (attn_k.transpose(1, 2) @ v)


def speed_cases() -> dict[str, Callable[[], dict[str, Callable[[], Any]]]]:
    from t2tvit.models import TokenPerformer
    from t2tvit.models.layers import _performer_core_fp32

    def make(batch: int, train: bool) -> Callable[[], dict[str, Callable[[], Any]]]:
        def build() -> dict[str, Callable[[], Any]]:
            torch.manual_seed(0)
            p = perturb_(TokenPerformer(147, 64))
            u = torch.randn(batch, 3136, 147)
            with torch.no_grad():
                k, q, v = p.kqv(p.norm1(u)).split(64, dim=-1)
            if train:
                q.requires_grad_(True)

            def step(core: Callable[..., torch.Tensor]) -> Callable[[], None]:
                def run() -> None:
                    if train:
                        q.grad = None
                        core(q, k, v, p.w).sum().backward()
                    else:
                        with torch.inference_mode():
                            core(q, k, v, p.w)

                return run

            return {"ours": step(_performer_core_fp32), "ref": step(_core_without_eps)}

        return build

    return {"performer_core_b1_infer": make(1, False), "performer_core_b16_fwd_bwd": make(16, True)}


def main(argv: list[str] | None = None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.bench_model import Progress, device_name, interleave

    p = argparse.ArgumentParser(prog="python -m benchmarks.faithful", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    p.add_argument("--images", type=int, default=4, help="random images per model (default: 4)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds per speed case (default: 9)")
    p.add_argument("--block-s", type=float, default=0.5, help="target seconds per timed block (default: 0.5)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "faithful", help="output stem")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    cases = speed_cases()
    with Progress(len(MODELS) + len(cases) * a.rounds) as prog:
        for name, size in MODELS:
            rows.append(numerics(name, size, a.images))
            prog.log(f"{name}@{size}: ours {rows[-1]['ours_fp32']:.1e}", advance=1)
        speed = []
        for case, build in cases.items():
            n, times = interleave(build(), lambda: None, a.rounds, 2, a.block_s, prog, case)
            ratios = [x / y for x, y in zip(times["ours"], times["ref"], strict=True)]
            speed.append(
                {
                    "case": case,
                    "with_eps_ms": 1e3 * statistics.median(times["ours"]),
                    "without_eps_ms": 1e3 * statistics.median(times["ref"]),
                    "ratio": statistics.median(ratios),
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                }
            )
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
        f"- every trainable tensor perturbed by N(0, 0.02), seed 0; {a.images} random images per model",
        "- each column: max |logit difference| from the official formula evaluated in float64, "
        "divided by its largest |logit|",
        "",
        "| model | px | ours fp32 | official code fp32 | official formula without its 1e-8 | ours fp16 autocast | "
        "ours bf16 autocast | smallest Performer D | top-1 = oracle (ours / without 1e-8) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *(
            f"| {r['model']} | {r['img_size']} | {r['ours_fp32']:.1e} | {r['official_fp32']:.1e} | "
            f"{r['official_without_eps']:.1e} | {r['ours_fp16']:.1e} | {r['ours_bf16']:.1e} | "
            f"{r['min_denominator']:.1e} | {r['top1_agree_fp32']:.0%} / {r['top1_agree_without_eps']:.0%} |"
            for r in rows
        ),
        "",
        "## What the epsilon costs: the Performer core with it vs without it (interleaved, median of ratios)",
        "",
        "| case | with 1e-8 (ms) | without (ms) | time ratio | range |",
        "|---|---:|---:|---:|---|",
        *(
            f"| {s['case']} | {s['with_eps_ms']:.2f} | {s['without_eps_ms']:.2f} | {s['ratio']:.3f} | "
            f"{s['ratio_min']:.3f}-{s['ratio_max']:.3f} |"
            for s in speed
        ),
        "",
    ]
    print("\n".join(lines))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text("\n".join(lines))
    a.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "numerics": rows, "speed": speed}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
