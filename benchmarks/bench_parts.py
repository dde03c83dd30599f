"""Where the time goes: each of our optimisations against what it replaces, one part at a time.

``bench_model.py`` compares whole models; this script isolates the parts, so that each speed
claim in docs/performance.md ("Speed") and the issue notes has a reproducible number behind it:

* soft split 3x3/2 of a token map (fwd+bwd into a LayerNorm): ours vs ``nn.Unfold`` + transposes;
* soft split 7x7/4 of images (fwd): ours vs ``nn.Unfold`` + transpose;
* token Performer (fwd at batch 1; fwd+bwd at batch 16): ours vs the official einsum formulation;
* the Performer core with the official ``+ 1e-8`` (reproduced exactly, as a null feature) vs the
  same core without it (the release before);
* backbone attention at 197 tokens (fwd+bwd, batch 16): SDPA vs explicit softmax attention;
* whole ``t2t_vit_7`` forward at batch 1: frozen TorchScript with ``optimize_for_inference``
  (oneDNN) vs eager — what an exported CPU artifact can gain;
* ``t2t_vit_7`` training step with the Performer's dropout switched off vs on: an upper bound on
  what any faster CPU dropout could buy (not a configuration anyone should train with);
* loading ``t2t_vit_24`` from a checkpoint: meta-device build + adopted tensors vs init + copy.

Each pair is timed interleaved (``benchmarks.bench_model.interleave``): per round one block of
each, alternating the order; the ratio is the median of per-round ratios, "a" over "b".
Usage: ``python -m benchmarks.bench_parts [--threads 2] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

# name -> (what "a" is, what "b" is, builder returning the two step functions)
Case = tuple[str, str, Callable[[], dict[str, Callable[[], Any]]]]


def _fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        fn(x).backward(torch.ones(()))

    return step


def _infer(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[], Any]:
    def step() -> Any:
        with torch.inference_mode():
            return fn(x)

    return step


def soft_split_tokens() -> dict[str, Callable[[], Any]]:
    from t2tvit.models import SoftSplit

    x = torch.randn(16, 56, 56, 64, requires_grad=True)
    ours, ln = SoftSplit(3, 2, 1, channels_last=True), torch.nn.LayerNorm(576)

    def official(t: torch.Tensor) -> torch.Tensor:  # tokens -> NCHW map -> unfold -> tokens
        B, H, W, C = t.shape
        m = t.reshape(B, H * W, C).transpose(1, 2).reshape(B, C, H, W)
        return F.unfold(m, 3, padding=1, stride=2).transpose(1, 2)

    return {
        "ours": _fwd_bwd(lambda t: ln(ours(t)).sum(), x),
        "ref": _fwd_bwd(lambda t: ln(official(t)).sum(), x),
    }


def soft_split_images() -> dict[str, Callable[[], Any]]:
    from t2tvit.models import SoftSplit

    x = torch.randn(16, 3, 224, 224)
    ours, ln = SoftSplit(7, 4, 2, channels_last=False), torch.nn.LayerNorm(147)

    official = lambda t: F.unfold(t, 7, padding=2, stride=4).transpose(1, 2)  # noqa: E731
    return {"ours": _infer(lambda t: ln(ours(t)), x), "ref": _infer(lambda t: ln(official(t)), x)}


def _performers() -> tuple[torch.nn.Module, torch.nn.Module]:
    from benchmarks.reference import RefTokenPerformer
    from t2tvit.models import TokenPerformer

    ours = TokenPerformer(147, 64)
    ref = RefTokenPerformer(147, 64)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def performer_forward() -> dict[str, Callable[[], Any]]:
    ours, ref = (m.eval() for m in _performers())
    u = torch.randn(1, 3136, 147)
    return {"ours": _infer(ours, u), "ref": _infer(ref, u)}


def performer_train() -> dict[str, Callable[[], Any]]:
    ours, ref = (m.train() for m in _performers())
    u = torch.randn(16, 3136, 147)
    return {"ours": _fwd_bwd(lambda t: ours(t).sum(), u), "ref": _fwd_bwd(lambda t: ref(t).sum(), u)}


def _core_without_eps(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The Performer core of the previous release: the ratio N / D without the official epsilon."""
    wk = k @ w.t() - 0.5 * (k * k).sum(dim=-1, keepdim=True)
    log_k = torch.logsumexp(wk, dim=1, keepdim=True)
    attn_k = torch.exp(wk - log_k)
    attn_q = torch.softmax(q @ w.t() + log_k, dim=-1)
    return attn_q @ (attn_k.transpose(1, 2) @ v)


def _performer_core_eps(batch: int, train: bool) -> Callable[[], dict[str, Callable[[], Any]]]:
    """The core with the official 1e-8 (a softmax over m + 1 features) vs without it (over m), on
    the 3,136 tokens of a 224 px image: inference at batch 1, forward + backward at batch 16."""

    def build() -> dict[str, Callable[[], Any]]:
        from t2tvit.models.layers import _performer_core_fp32

        ours = _performers()[0]
        with torch.no_grad():
            k, q, v = ours.kqv(ours.norm1(torch.randn(batch, 3136, 147))).split(64, dim=-1)
        q.requires_grad_(train)

        def step(core: Callable[..., torch.Tensor]) -> Callable[[], Any]:
            if train:
                return _fwd_bwd(lambda t: core(t, k, v, ours.w).sum(), q)
            return _infer(lambda t: core(t, k, v, ours.w), q)

        return {"ours": step(_performer_core_fp32), "ref": step(_core_without_eps)}

    return build


def attention_train() -> dict[str, Callable[[], Any]]:
    from benchmarks.reference import RefAttention
    from t2tvit.models import Attention

    ours, ref = Attention(256, 4), RefAttention(256, 4)
    ref.load_state_dict(ours.state_dict())
    h = torch.randn(16, 197, 256, requires_grad=True)
    return {"ours": _fwd_bwd(lambda t: ours(t).sum(), h), "ref": _fwd_bwd(lambda t: ref(t).sum(), h)}


def frozen_torchscript() -> dict[str, Callable[[], Any]]:
    import timm

    import t2tvit  # noqa: F401  (registers the variants with timm)

    model = timm.create_model("t2t_vit_7").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model)))
        assert (frozen(x) - model(x)).abs().max() <= 1e-4
    return {"ours": _infer(frozen, x), "ref": _infer(model, x)}


def dropout_upper_bound() -> dict[str, Callable[[], Any]]:
    import timm

    import t2tvit  # noqa: F401  (registers the variants with timm)

    models = {k: timm.create_model("t2t_vit_7").train() for k in ("ours", "ref")}
    models["ours"].load_state_dict(models["ref"].state_dict())
    for mod in models["ours"].tokens_to_token.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    x, y = torch.randn(16, 3, 224, 224), torch.randint(0, 1000, (16,))

    def step_fn(m: torch.nn.Module) -> Callable[[], None]:
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad])

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()

        return step

    return {k: step_fn(m) for k, m in models.items()}


def checkpoint_load() -> dict[str, Callable[[], Any]]:
    import timm

    import t2tvit

    path = Path(tempfile.mkdtemp()) / "t2t_vit_24.pth.tar"
    torch.save({"state_dict_ema": timm.create_model("t2t_vit_24").state_dict()}, path)

    def init_and_copy() -> None:
        t2tvit.load_checkpoint(timm.create_model("t2t_vit_24"), path)

    return {"ours": lambda: t2tvit.create_model("t2t_vit_24", checkpoint=path), "ref": init_and_copy}


CASES: dict[str, Case] = {
    "soft_split_tokens": ("ours", "nn.Unfold + transposes", soft_split_tokens),
    "soft_split_images": ("ours", "nn.Unfold + transpose", soft_split_images),
    "performer_forward_b1": ("ours", "official einsum", performer_forward),
    "performer_train_b16": ("ours", "official einsum", performer_train),
    "performer_core_eps_b1": ("with the official 1e-8", "without it (before)", _performer_core_eps(1, False)),
    "performer_core_eps_b16_train": ("with the official 1e-8", "without it (before)", _performer_core_eps(16, True)),
    "attention_train_b16": ("SDPA", "explicit softmax", attention_train),
    "t2t_vit_7_frozen_ts_b1": ("frozen TorchScript", "eager", frozen_torchscript),
    "t2t_vit_7_train_no_t2t_dropout": ("T2T dropout off", "on (as trained)", dropout_upper_bound),
    "load_t2t_vit_24": ("meta build + adopt", "init + copy", checkpoint_load),
}


def main(argv: list[str] | None = None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.bench_model import Progress, device_name, interleave

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_parts", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=list(CASES), metavar="CASE", help="run only these: " + ", ".join(CASES))
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds per case (default: 9)")
    p.add_argument("--block-s", type=float, default=0.5, help="target seconds per timed block (default: 0.5)")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "bench_parts_cpu",
        help="output path stem; .md and .json are written",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    names = a.only or list(CASES)
    rows = []
    with Progress(len(names) * a.rounds) as prog:
        for name in names:
            what_a, what_b, build = CASES[name]
            n, times = interleave(build(), lambda: None, a.rounds, 2, a.block_s, prog, name)
            ratios = [x / y for x, y in zip(times["ours"], times["ref"], strict=True)]
            rows.append(
                {
                    "case": name,
                    "a": what_a,
                    "b": what_b,
                    "iters_per_block": n,
                    "a_ms": 1e3 * statistics.median(times["ours"]),
                    "b_ms": 1e3 * statistics.median(times["ref"]),
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
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_end": round(os.getloadavg()[0], 2),
    }
    lines = [
        "# Parts benchmark: each optimisation against what it replaces",
        "",
        f"- command: `{meta['command']}`",
        f"- torch {meta['torch']}, {meta['device']}, {a.threads} threads, {meta['date']}, "
        f"load average at end {meta['load_average_end']}",
        "- time ratio a / b = median over interleaved rounds (below 1: a is faster)",
        "",
        "| case | a | b | a (ms) | b (ms) | a / b | range |",
        "|---|---|---|---:|---:|---:|---|",
        *(
            f"| {r['case']} | {r['a']} | {r['b']} | {r['a_ms']:.2f} | {r['b_ms']:.2f} | {r['ratio']:.3f} | "
            f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f} |"
            for r in rows
        ),
        "",
    ]
    print("\n".join(lines))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text("\n".join(lines))
    a.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
