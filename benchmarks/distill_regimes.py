"""When does DeiT distillation help a T2T-ViT student? Fractions of the digits, the official augmentations.

``benchmarks/distill_digits.py`` found no gain on the full digits with mild augmentation: the
teacher's argmax equals the label on almost every training image, so it has nothing to add. DeiT's
gain comes where the student is data-starved and the augmentation (RandAugment, mixup, cutmix) makes
the teacher's labels differ from the ground truth. This sweep puts the student in that regime:

* a stratified fraction of the digits training split (fixed seed 0, the same images for every run),
  always evaluated on the full validation split (359 images);
* a ResNet-18 teacher trained on the same fraction with the digits recipe (``--config digits``);
* T2T-ViT-7 students (``t2t_vit_7_distilled``) with the official recipe's augmentations at 32 px:
  RandAugment ``rand-m9-mstd0.5-inc1``, mixup 0.8, cutmix 1.0, label smoothing 0.1, random erasing
  0.25; the digits recipe otherwise (12 epochs, AdamW 1e-3, cosine, crop scale 0.6-1, no flips: a
  flipped 2 is not a 2);
* ``none`` / ``soft`` / ``hard`` per seed, the seed the only other difference (paired differences).

A small fraction gives few optimisation steps per epoch, so each training image is linked
``repeats`` times into the run's train folder, enough for ``--min-images`` images per epoch: every
run gets at least ``12 * min_images / 32`` steps (270 by default; the full split gets 540).

What the teacher adds is measured directly: how often its argmax differs from the label on the
student's augmented training views, without mixup and with mixup/cutmix (against the mixed
target's larger class).

    python benchmarks/distill_regimes.py --large-types none,hard   # about 70 minutes on 2 shared CPU cores
    python benchmarks/distill_regimes.py --fractions 0.05,1.0 --seeds 0,1,2 --large-seeds ''
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_model import run_meta  # noqa: E402
from benchmarks.distill_digits import _run, _stats  # noqa: E402

TYPES = ("none", "soft", "hard")
# The official T2T-ViT / DeiT recipe's augmentation and regularisation flags (the trainer's defaults),
# spelled out because --config digits turns them off.
OFFICIAL_AUG = ["--aa", "rand-m9-mstd0.5-inc1", "--mixup", "0.8", "--cutmix", "1.0", "--smoothing", "0.1"]
OFFICIAL_AUG += ["--reprob", "0.25"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fractions", default="0.05,0.2,1.0", help="fractions of the digits training split")
    p.add_argument("--seeds", default="0,1,2", help="student seeds (T2T-ViT-7)")
    p.add_argument("--types", default=",".join(TYPES), help="distillation types to compare")
    p.add_argument("--large-model", default="t2t_vit_12_distilled", help="the second student")
    p.add_argument("--large-fraction", type=float, default=0.05, help="the fraction the second student runs at")
    p.add_argument("--large-seeds", default="0,1,2", help="seeds of the second student ('' skips it)")
    p.add_argument("--large-types", default=None, help="distillation types of the second student (default: --types)")
    p.add_argument("--teacher-model", default="resnet18", help="timm CNN trained as the teacher")
    p.add_argument("--epochs", type=int, default=12, help="epochs of teacher and students")
    p.add_argument("--min-images", type=int, default=720, help="images per epoch at least (repeats)")
    p.add_argument("--alpha", type=float, default=0.5, help="--distillation-alpha")
    p.add_argument("--tau", type=float, default=1.0, help="--distillation-tau (soft)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine a student step took 0.45 s at 2 threads, 0.14 s at 1)",
    )
    p.add_argument("-j", "--workers", type=int, default=1, help="data-loading processes per run")
    p.add_argument("--views", type=int, default=4, help="augmented passes over a fraction to measure the teacher")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "distill_regimes", help="run folders")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distill_regimes")
    a = p.parse_args(argv)
    a.fractions = [float(f) for f in a.fractions.split(",") if f]
    a.seeds = [int(s) for s in a.seeds.split(",") if s]
    a.large_seeds = [int(s) for s in a.large_seeds.split(",") if s]
    a.types = [t for t in a.types.split(",") if t]
    a.large_types = [t for t in (a.large_types or ",".join(a.types)).split(",") if t]
    bad = sorted(set(a.types + a.large_types) - set(TYPES))
    if bad:
        p.error(f"unknown distillation types: {', '.join(bad)}")
    if any(not 0 < f <= 1 for f in a.fractions + [a.large_fraction]):
        p.error("fractions must lie in (0, 1]")
    return a


def make_fraction(work: Path, fraction: float, min_images: int) -> dict[str, Any]:
    """A dataset folder holding a stratified ``fraction`` of the digits' train split, each image linked
    ``repeats`` times, and the full val split: the same images whatever the seed of the run."""
    from t2tvit.data import dataset_split, list_images

    train = dataset_split("digits", "train")
    root = work / "data" / f"frac{fraction:g}"
    chosen: dict[str, list[Path]] = {}
    for cls in sorted(p.name for p in train.iterdir() if p.is_dir()):
        files = list_images(train / cls)
        random.Random(0).shuffle(files)
        chosen[cls] = files[: max(1, round(fraction * len(files)))]
    n = sum(len(v) for v in chosen.values())
    repeats = max(1, math.ceil(min_images / n))
    if not (root / "done").is_file():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        for cls, files in chosen.items():
            (root / "train" / cls).mkdir(parents=True)
            for f in files:
                for k in range(repeats):
                    (root / "train" / cls / f"r{k}_{f.name}").symlink_to(f.resolve())
        (root / "val").symlink_to(dataset_split("digits", "val").resolve(), target_is_directory=True)
        (root / "done").write_text("")
    return {"root": root, "images": n, "repeats": repeats, "files": chosen}


def teacher_disagreement(teacher_path: Path, files: dict[str, list[Path]], views: int, seed: int = 0) -> dict:
    """How often the teacher's argmax differs from the label on the student's augmented training views.

    The views are what ``t2t distill`` with :data:`OFFICIAL_AUG` feeds the teacher: the trainer's own
    training transform of the student, then timm's Mixup with the trainer's settings (the mixed target's
    larger class is the label there). Each image is seen ``views`` times.
    """
    import timm
    from timm.data import Mixup

    from compress.distill import DistillConfig, build_teacher
    from t2tvit.data import open_rgb
    from t2tvit.train import build_transforms, data_config, parse_args

    args = parse_args(["digits", "--config", "digits", *OFFICIAL_AUG], DistillConfig)
    cfg = data_config(args, timm.create_model("t2t_vit_7_distilled", num_classes=10, img_size=args.img_size))
    train_tf, eval_tf = build_transforms(args, cfg)
    teacher = build_teacher(None, teacher_path, 10, student_mean=cfg["mean"], student_std=cfg["std"])
    mix = Mixup(
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob,
        label_smoothing=args.smoothing,
        num_classes=10,
    )
    items = [(f, int(cls)) for cls, fs in files.items() for f in fs]
    images = {f: open_rgb(f) for f, _ in items}
    torch.manual_seed(seed)
    random.seed(seed)
    with torch.no_grad():  # the clean (eval) view of each training image, for reference
        clean = sum(int(teacher(eval_tf(images[f]).unsqueeze(0)).argmax(1) != c) for f, c in items)
    plain = mixed = total = 0
    for _ in range(views):
        random.shuffle(items)
        for i in range(0, len(items) - 1, 64):
            batch = items[i : i + 64]
            batch = batch[: len(batch) // 2 * 2]  # Mixup needs an even batch
            x = torch.stack([train_tf(images[f]) for f, _ in batch])
            y = torch.tensor([c for _, c in batch])
            with torch.no_grad():
                plain += int((teacher(x).argmax(1) != y).sum())
                xm, ym = mix(x, y)
                mixed += int((teacher(xm).argmax(1) != ym.argmax(1)).sum())
            total += len(batch)
    return {
        "views": total,
        "differs_clean_pct": 100 * clean / len(items),
        "differs_plain_pct": 100 * plain / total,
        "differs_mixed_pct": 100 * mixed / total,
    }


def _teachers(a: argparse.Namespace, fractions: list[float]) -> tuple[dict[float, Any], dict[float, Any]]:
    """Per fraction its dataset folder and its teacher (trained, then measured on augmented views)."""
    from t2tvit.train import main as train_main

    data: dict[float, dict[str, Any]] = {}
    teachers: dict[float, dict[str, Any]] = {}
    for frac in fractions:
        d = data[frac] = make_fraction(a.work, frac, a.min_images)
        common = [str(d["root"]), "--config", "digits", "--log-interval", "100000", "--epochs", str(a.epochs)]
        common += ["--workers", str(a.workers)]
        tdir = a.work / f"teacher-{a.teacher_model}-frac{frac:g}"
        t = _run(train_main, [*common, "--model", a.teacher_model], tdir)
        cache = tdir / "disagreement.json"
        if "differs_clean_pct" not in (json.loads(cache.read_text()) if cache.is_file() else {}):
            cache.write_text(json.dumps(teacher_disagreement(tdir / "best.pth", d["files"], a.views)))
        t |= json.loads(cache.read_text()) | {"path": tdir / "best.pth"}
        teachers[frac] = t
        print(
            f"fraction {frac:g}: {d['images']} images x{d['repeats']}; teacher val top-1 {t['final_top1']:.2f}%, "
            f"argmax != label on {t['differs_clean_pct']:.1f}% of clean, "
            f"{t['differs_plain_pct']:.1f}% of augmented views, "
            f"{t['differs_mixed_pct']:.1f}% with mixup/cutmix",
            flush=True,
        )
    return data, teachers


def _groups(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (student, fraction) and type: top-1 over seeds, and the paired differences to ``none``."""
    groups = []
    for model, frac in dict.fromkeys((r["model"], r["fraction"]) for r in runs):
        mine = [r for r in runs if r["model"] == model and r["fraction"] == frac]
        row: dict[str, Any] = {"model": model, "fraction": frac, "types": {}}
        base = {r["seed"]: r["final_top1"] for r in mine if r["type"] == "none"}
        for kind in dict.fromkeys(r["type"] for r in mine):
            rs = sorted((r for r in mine if r["type"] == kind), key=lambda r: r["seed"])
            s: dict[str, Any] = {"final_top1": _stats([r["final_top1"] for r in rs]), "n": len(rs)}
            if kind != "none" and base:
                diffs = [r["final_top1"] - base[r["seed"]] for r in rs if r["seed"] in base]
                s["paired_diff_vs_none"] = _stats(diffs) | {"wins": sum(x > 0 for x in diffs), "n": len(diffs)}
            row["types"][kind] = s
        groups.append(row)
    return groups


def main(argv: list[str] | None = None) -> int:
    from compress.distill import main as distill_main

    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    start, load_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    fractions = sorted(set(a.fractions + ([a.large_fraction] if a.large_seeds else [])))
    data, teachers = _teachers(a, fractions)  # the teachers first: every student run needs its fraction's

    def student(model: str, frac: float, kind: str, seed: int) -> dict[str, Any]:
        d, t = data[frac], teachers[frac]
        argv = [str(d["root"]), "--config", "digits", "--log-interval", "100000", "--epochs", str(a.epochs)]
        argv += ["--workers", str(a.workers)]
        argv += [*OFFICIAL_AUG, "--model", model, "--teacher-model", a.teacher_model]
        argv += ["--teacher-path", str(t["path"]), "--distillation-alpha", str(a.alpha)]
        argv += ["--distillation-tau", str(a.tau), "--distillation-type", kind, "--seed", str(seed)]
        r = _run(distill_main, argv, a.work / f"{model}-frac{frac:g}-{kind}-seed{seed}")
        print(f"{model} fraction {frac:g} {kind:>4} seed {seed}: final top-1 {r['final_top1']:.2f}%", flush=True)
        return {"model": model, "fraction": frac, "type": kind, "seed": seed, **r}

    small = "t2t_vit_7_distilled"
    plan = [(small, f, k, s) for s in a.seeds for f in a.fractions for k in a.types]  # seed-major
    plan += [(a.large_model, a.large_fraction, k, s) for s in a.large_seeds for k in a.large_types]
    runs = [student(*p) for p in plan]
    groups = _groups(runs)

    meta = run_meta(torch.device("cpu"), time.perf_counter() - start, load_start)
    result = {
        "meta": meta,
        "recipe": {
            "augmentation": " ".join(OFFICIAL_AUG),
            "epochs": a.epochs,
            "min_images": a.min_images,
            "alpha": a.alpha,
            "tau": a.tau,
        },
        "fractions": {
            f"{f:g}": {"images": data[f]["images"], "repeats": data[f]["repeats"]}
            | {k: v for k, v in teachers[f].items() if k != "path"}
            for f in fractions
        },
        "seeds": a.seeds,
        "large_seeds": a.large_seeds,
        "large_types": a.large_types,
        "groups": groups,
        "runs": runs,
    }
    text = _markdown(result, a.teacher_model)
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    a.out.with_suffix(".md").write_text(text)
    print(f"wrote {a.out.with_suffix('.md')} and .json")
    return 0


def _markdown(r: dict[str, Any], teacher_model: str) -> str:
    m, rec = r["meta"], r["recipe"]
    wall = sum(x["wall_s"] for x in r["runs"]) + sum(f["wall_s"] for f in r["fractions"].values())
    lines = [
        "# When does distillation help? Fractions of the digits (`benchmarks/distill_regimes.py`)",
        "",
        f"- command: `{m['command']}`",
        f"- torch {m['torch']}, python {m['python']}, {m['device_name']}, threads {m['threads']}",
        f"- date {m['date']}; training time {wall:.0f} s in all, script wall time {m['elapsed_s']:.0f} s "
        "(runs finished earlier in `--work` are reused, with their recorded wall time)",
        f"- students: `--config digits` (32 px, {rec['epochs']} epochs, AdamW 1e-3, cosine, batch 32, crop scale "
        f"0.6-1, no flips) with the official recipe's augmentation `{rec['augmentation']}`; "
        f"alpha {rec['alpha']}, tau {rec['tau']}",
        f"- teacher: {teacher_model} trained on the same fraction with `--config digits` ({rec['epochs']} epochs, "
        "mild crops, no RandAugment/mixup)",
        f"- a fraction's images are linked `repeats` times so an epoch has at least {rec['min_images']} images "
        "(small fractions get as many steps as that, not 12 epochs of 2 steps); the same images for every seed",
        "- val: the full validation split (359 images), final-epoch top-1 of the averaged heads",
        "- *teacher != label*: share of the fraction's training images where the teacher's argmax is not the "
        "label: on the clean (eval) view, and on the student's augmented views (RandAugment, crop, erasing; then "
        "also mixup/cutmix, against the mixed target's larger class)",
        "",
        "| fraction | train images | repeats | teacher val top-1 | teacher != label: clean | augmented | "
        "augmented + mixup/cutmix |",
        "|---|---|---|---|---|---|---|",
    ]
    for f, d in r["fractions"].items():
        lines.append(
            f"| {f} | {d['images']} | {d['repeats']} | {d['final_top1']:.2f} | {d['differs_clean_pct']:.1f}% | "
            f"{d['differs_plain_pct']:.1f}% | {d['differs_mixed_pct']:.1f}% |"
        )
    lines += [
        "",
        "| student | fraction | type | n | final top-1 mean ± std | min - max | paired diff vs none | wins |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in r["groups"]:
        for kind, s in g["types"].items():
            f, d = s["final_top1"], s.get("paired_diff_vs_none")
            diff = f"{d['mean']:+.2f} ± {d['std']:.2f}" if d else "-"
            wins = f"{d['wins']}/{d['n']}" if d else "-"
            lines.append(
                f"| {g['model'].replace('_distilled', '')} | {g['fraction']:g} | {kind} | {s['n']} | "
                f"{f['mean']:.2f} ± {f['std']:.2f} | {f['min']:.2f} - {f['max']:.2f} | {diff} | {wins} |"
            )
    lines += ["", "| student | fraction | type | seed | final top-1 | best top-1 | wall s |", "|---" * 7 + "|"]
    for x in r["runs"]:
        lines.append(
            f"| {x['model'].replace('_distilled', '')} | {x['fraction']:g} | {x['type']} | {x['seed']} | "
            f"{x['final_top1']:.2f} | {x['best_top1']:.2f} | {x['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
