"""``t2t visualize``: PNGs of where a T2T-ViT looks, beside its CNN teacher, and against another artifact.

:func:`visualize` opens the model (a checkpoint, or an eager artifact or export folder) with
:func:`deploy.open`, gives each image the model's own eval preprocessing, and writes per image into
``out/NNN-<image>/``:

* ``attention-class.png`` (and ``attention-distillation.png`` for a distilled student): per backbone
  block the token's attention to the patch grid, averaged over heads and per head, over the image;
* ``rollout.png``: attention rollout of the class (and distillation) token;
* ``t2t-tokens.png``: the T2T module's token maps after each soft split (mean |token| and the first
  channels; the token transformer's attention where the variant has one);
* ``teacher.png`` with ``teacher=``: the CNN teacher's Grad-CAM beside the student's rollouts;
* ``compare-attention.png`` with ``compare=`` an artifact that still exposes attention (the eager
  ``torch-int8`` model): both models' last-block attention and rollout, and their difference.

With ``compare=`` any artifact, ``compare-logits.png`` and ``compare-logits.md`` give per image the
largest logit and probability difference to the model and whether the top-1 agrees; a runtime that
does not expose attention (ONNX, TorchScript, the lite interpreter, ...) gets only these, and the
result's ``notes`` say why in one sentence. The attention comes from the model's own forward
(:mod:`t2tvit.visualize`), never from a re-implementation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from t2tvit.errors import ConfigError
from t2tvit.models.variants import DEFAULT_MODEL

from .base import Predictor
from .predict import _read_image, expand_images, open_predictor, quiet_runtimes

__all__ = ["Visualization", "visualize"]

_CMAP = "inferno"


@dataclass
class Visualization:
    """What :func:`visualize` wrote and found."""

    out: Path
    files: list[Path] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)  # {"image", "folder", "top1", "probability"}
    errors: list[dict[str, str]] = field(default_factory=list)  # {"image", "error"}: unreadable images
    compare: list[dict[str, Any]] = field(default_factory=list)  # per image: logit/probability differences
    notes: list[str] = field(default_factory=list)


def visualize(
    source: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    format: str | None = None,
    compare: str | Path | None = None,
    compare_format: str | None = None,
    teacher: str | Path | None = None,
    model: str | None = None,
    img_size: int | None = None,
    heads: bool = True,
    limit: int = 16,
) -> Visualization:
    """Write the PNGs described in the module docstring for ``images`` (files or folders, at most ``limit``).

    ``source``: a T2T-ViT checkpoint, an eager ``torch``/``torch-int8`` artifact or an export folder
    (``format`` picks its artifact; default ``torch``). ``teacher``: a CNN checkpoint (e.g. the
    ``teacher/best.pth`` of ``t2t compress``). Raises :class:`ConfigError` (one sentence) for a model
    without attention, or when no image can be read.
    """
    from t2tvit.faults import check_output_dir, output_dir

    if limit < 1:
        raise ConfigError("--limit must be at least 1")
    check_output_dir(out)  # before any model is opened
    net, art = _open_t2t(source, format, model, img_size)
    other = _open_compare(compare, compare_format, art) if compare is not None else None
    cam_model = _open_teacher(teacher, art) if teacher is not None else None
    final = Path(out)
    result = Visualization(out=final)
    batch = _read_images(images, art, limit, result)
    with output_dir(final, "--out"):
        # Drawn into a staging folder inside ``out`` and moved into place only when every image is drawn:
        # an interrupted or failed run leaves no half-drawn image folder (and no ``out`` it created).
        result.out = Path(tempfile.mkdtemp(prefix=".visualize-partial-", dir=final))
        try:
            _draw_all(result, net, art, batch, other, cam_model, heads)
        except BaseException:
            shutil.rmtree(result.out, ignore_errors=True)
            raise
        _publish(result, final)
    return result


def _draw_all(
    result: Visualization, net: Any, art: Any, batch: list[tuple], other: Any, cam_model: Any, heads: bool
) -> None:
    names = art.classes
    source_logits, compare_logits = [], []
    with quiet_runtimes():
        for i, (path, x, pixels) in enumerate(batch):
            folder = result.out / f"{i:03d}-{path.stem}"
            folder.mkdir(exist_ok=True)
            look = _inspect(net, x)
            top, prob = _top(look.logits[0].numpy())
            result.images.append(
                {"image": str(path), "folder": str(folder), "top1": _label(top, names), "probability": prob}
            )
            result.files += _draw_model(folder, look, pixels, names, heads)
            if cam_model is not None:
                result.files.append(_draw_teacher(folder, cam_model, x, look, pixels, names))
            if other is not None:
                other_net, predictor = other
                source_logits.append(look.logits[0].numpy())
                compare_logits.append(np.asarray(predictor(x.numpy()), dtype=np.float64)[0])
                if other_net is not None:
                    result.files.append(_draw_compare(folder, look, _inspect(other_net, x), pixels, predictor.format))
    if other is not None:
        _compare_logits(result, [p for p, _, _ in batch], source_logits, compare_logits, other, names)


def _publish(result: Visualization, final: Path) -> None:
    """Move every finished entry of the staging folder ``result.out`` into ``final`` (replacing an
    earlier run's entry of the same name, one rename each) and point the result's paths there."""
    stage = result.out
    for entry in sorted(stage.iterdir()):
        target = final / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(entry, target)
    stage.rmdir()

    def moved(p: str | Path) -> Path:
        return final / Path(p).relative_to(stage)

    result.files = [moved(f) for f in result.files]
    for img in result.images:
        img["folder"] = str(moved(img["folder"]))
    result.out = final


# ---------------------------------------------------------------- opening


def _open_t2t(source: str | Path, format: str | None, model: str | None, img_size: int | None) -> tuple[Any, Any]:
    from t2tvit.visualize import has_attention

    predictor = open_predictor(source, format, model=model, img_size=img_size)
    net = getattr(predictor, "module", None)
    if not has_attention(net):
        raise ConfigError(
            f"{predictor.artifact.path.name} is a {predictor.format} artifact, whose runtime does not expose "
            "attention; visualise its checkpoint or the export folder's torch artifact, and pass this one "
            "with --compare"
        )
    return net, predictor.artifact


def _open_compare(compare: str | Path, fmt: str | None, art: Any) -> tuple[Any, Predictor]:
    from t2tvit.visualize import has_attention

    predictor = open_predictor(compare, fmt)
    other = predictor.artifact
    if tuple(other.img_size) != tuple(art.img_size):
        raise ConfigError(
            f"{other.path.name} takes {other.img_size[0]}x{other.img_size[1]} images but the model takes "
            f"{art.img_size[0]}x{art.img_size[1]}; compare artifacts of the same model"
        )
    net = getattr(predictor, "module", None)
    return (net if has_attention(net) else None), predictor


def _open_teacher(teacher: str | Path, art: Any) -> Any:
    from compress.distill import build_teacher
    from t2tvit.data import eval_transform_for

    if not Path(teacher).is_file():
        raise ConfigError(f"teacher checkpoint {teacher} does not exist; pass the teacher's best.pth")
    t = eval_transform_for(art.model or DEFAULT_MODEL, art.img_size, **art.preprocessing).transforms[-1]
    classes = art.num_classes or len(art.classes or []) or None
    if classes is None:
        raise ConfigError("cannot tell how many classes the model predicts, so the teacher cannot be checked")
    return build_teacher(None, teacher, classes, student_mean=tuple(t.mean.tolist()), student_std=tuple(t.std.tolist()))


def _read_images(images: Sequence[str | Path], art: Any, limit: int, result: Visualization) -> list[tuple]:
    """``(path, (1, 3, H, W) tensor, (H, W, 3) pixels in [0, 1])`` of the first ``limit`` readable images."""
    import torch

    from t2tvit.data import eval_transform_for

    transform = eval_transform_for(art.model or DEFAULT_MODEL, art.img_size, **art.preprocessing)
    norm = transform.transforms[-1]
    mean, std = torch.as_tensor(norm.mean).view(3, 1, 1), torch.as_tensor(norm.std).view(3, 1, 1)
    files, result.errors = expand_images(images)
    batch = []
    for f in files:
        if len(batch) == limit:
            result.notes.append(f"only the first {limit} readable images were drawn (--limit)")
            break
        img, why = _read_image(f)
        if img is None:
            result.errors.append({"image": str(f), "error": why or "cannot be decoded"})
            continue
        x = transform(img)
        pixels = (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # what the model saw
        batch.append((f, x.unsqueeze(0), pixels))
    if not batch:
        first = result.errors[0] if result.errors else {"image": "", "error": "no image given"}
        raise ConfigError(f"cannot read {first['image']}: {first['error']}; pass PNG/JPEG images or a folder of them")
    return batch


def _inspect(net: Any, x: Any) -> Any:
    from t2tvit.visualize import inspect_t2t

    return inspect_t2t(net, x)


def _top(logits: np.ndarray) -> tuple[int, float]:
    z = np.exp(logits - logits.max())
    p = z / z.sum()
    return int(p.argmax()), float(p.max())


def _label(index: int, names: Sequence[str] | None) -> str:
    return names[index] if names and index < len(names) and names[index] else str(index)


# ---------------------------------------------------------------- drawing


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # Agg canvas by default: headless, no pyplot state

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _overlay(ax: Any, pixels: np.ndarray, heat: np.ndarray | None, title: str, vmax: float | None = None) -> Any:
    """``heat`` (any grid) stretched over the image, half transparent; returns the image for a colour bar."""
    h, w = pixels.shape[:2]
    ax.imshow(pixels, extent=(0, w, h, 0))
    im = None
    if heat is not None:
        im = ax.imshow(heat, cmap=_CMAP, alpha=0.6, extent=(0, w, h, 0), vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path)
    return path


def _draw_model(folder: Path, look: Any, pixels: np.ndarray, names: Any, heads: bool) -> list[Path]:
    files = [_draw_attention(folder, look, pixels, t, heads) for t in range(len(look.prefix))]
    return [*files, _draw_rollout(folder, look, pixels, names), _draw_tokens(folder, look, pixels)]


def _draw_attention(folder: Path, look: Any, pixels: np.ndarray, token: int, heads: bool) -> Path:
    from t2tvit.visualize import token_attention

    name = look.prefix[token]
    n_heads = look.blocks[0].shape[1] if heads else 0
    cols = 2 + n_heads
    fig = _figure(max(1.7 * cols + 0.8, 6.0), 1.6 * len(look.blocks) + 0.8)
    axes = fig.subplots(len(look.blocks), cols, squeeze=False)
    for row, (block, attn) in enumerate(zip(look.block_names, look.blocks, strict=True)):
        maps = token_attention(attn, look.grid, token, len(look.prefix))[0].numpy()
        vmax = float(maps.max())
        _overlay(axes[row, 0], pixels, None, f"{block}: image")
        im = _overlay(axes[row, 1], pixels, maps.mean(0), f"{block}: mean of heads", vmax)
        for h in range(n_heads):
            _overlay(axes[row, 2 + h], pixels, maps[h], f"{block}: head {h}", vmax)
        fig.colorbar(im, ax=axes[row, :].tolist(), shrink=0.9, label="attention")
    fig.suptitle(
        f"{name} token's attention to the {look.grid[0]}x{look.grid[1]} patches, per block\n"
        f"(each row of attention sums to 1 over all {attn.shape[-1]} tokens, the prefix tokens not drawn)",
        fontsize=9,
    )
    return _save(fig, folder / f"attention-{name}.png")


def _rollout_maps(look: Any) -> list[tuple[str, np.ndarray]]:
    from t2tvit.visualize import attention_rollout

    roll = attention_rollout(look.blocks)[0]
    p = len(look.prefix)
    return [(n, roll[t, p:].reshape(look.grid).numpy()) for t, n in enumerate(look.prefix)]


def _draw_rollout(folder: Path, look: Any, pixels: np.ndarray, names: Any) -> Path:
    maps = _rollout_maps(look)
    fig = _figure(2.4 * (len(maps) + 1) + 0.8, 2.9)
    axes = fig.subplots(1, len(maps) + 1, squeeze=False)[0]
    top, prob = _top(look.logits[0].numpy())
    _overlay(axes[0], pixels, None, f"input; predicted {_label(top, names)} ({prob:.2f})")
    for ax, (name, m) in zip(axes[1:], maps, strict=True):
        im = _overlay(ax, pixels, m, f"rollout, {name} token")
        fig.colorbar(im, ax=ax, shrink=0.8, label="share of the output")
    fig.suptitle(f"attention rollout through {len(look.blocks)} blocks (residual 0.5)", fontsize=9)
    return _save(fig, folder / "rollout.png")


def _draw_tokens(folder: Path, look: Any, pixels: np.ndarray, channels: int = 6) -> Path:
    stages = ["after soft split 1 + T2T block 1", "after soft split 2 + T2T block 2", "after soft split 3 + project"]
    rows = len(stages) + len(look.token_attention)
    fig = _figure(1.7 * (channels + 2) + 0.8, 1.8 * rows + 0.6)
    axes = fig.subplots(rows, channels + 2, squeeze=False)
    for r, (label, t) in enumerate(zip(stages, look.tokens, strict=True)):
        fmap = t[0].numpy()
        stride = pixels.shape[0] // fmap.shape[1]
        _overlay(axes[r, 0], pixels, None, f"stride {stride}: image")
        im = axes[r, 1].imshow(np.abs(fmap).mean(0), cmap="viridis")
        axes[r, 1].set_title(f"{label}\nmean |token|, {fmap.shape[1]}x{fmap.shape[2]}", fontsize=7)
        fig.colorbar(im, ax=axes[r, 1], shrink=0.8)
        for c in range(channels):
            axes[r, 2 + c].imshow(fmap[c], cmap="RdBu_r", vmin=-np.abs(fmap[c]).max(), vmax=np.abs(fmap[c]).max())
            axes[r, 2 + c].set_title(f"channel {c}", fontsize=8)
        for ax in axes[r, 1:]:
            ax.set_xticks([])
            ax.set_yticks([])
    for k, a in enumerate(look.token_attention):
        r = len(stages) + k
        side = int(round(a.shape[-1] ** 0.5))
        received = a[0, 0].mean(0).reshape(side, side).numpy()  # attention each token receives, on average
        im = _overlay(axes[r, 0], pixels, received, f"token transformer {k + 1}:\nattention received")
        fig.colorbar(im, ax=axes[r, 0], shrink=0.8)
        for ax in axes[r, 1:]:
            ax.set_axis_off()
    note = "" if look.token_attention else " (token Performer: no attention matrix exists, only its tokens)"
    fig.suptitle(f"T2T module token maps{note}; channels on a symmetric blue-red scale", fontsize=9)
    return _save(fig, folder / "t2t-tokens.png")


def _draw_teacher(folder: Path, teacher: Any, x: Any, look: Any, pixels: np.ndarray, names: Any) -> Path:
    from t2tvit.visualize import grad_cam

    cam, logits = grad_cam(teacher.model, teacher.adapt(x))
    cam = cam[0].numpy()
    maps = _rollout_maps(look)
    fig = _figure(2.4 * (len(maps) + 2) + 0.8, 2.9)
    axes = fig.subplots(1, len(maps) + 2, squeeze=False)[0]
    t_top, t_prob = _top(logits[0].numpy())
    s_top, s_prob = _top(look.logits[0].numpy())
    _overlay(axes[0], pixels, None, "input")
    title = f"teacher {teacher.name} Grad-CAM\npredicts {_label(t_top, names)} ({t_prob:.2f})"
    im = _overlay(axes[1], pixels, cam, title)
    fig.colorbar(im, ax=axes[1], shrink=0.8, label="relative")
    for ax, (name, m) in zip(axes[2:], maps, strict=True):
        im = _overlay(ax, pixels, m, f"student rollout, {name} token\npredicts {_label(s_top, names)} ({s_prob:.2f})")
        fig.colorbar(im, ax=ax, shrink=0.8, label="share")
    fig.suptitle("teacher (Grad-CAM on its last stage) beside the student (attention rollout)", fontsize=9)
    return _save(fig, folder / "teacher.png")


def _draw_compare(folder: Path, look: Any, other: Any, pixels: np.ndarray, other_name: str) -> Path:
    from t2tvit.visualize import token_attention

    last = [token_attention(v.blocks[-1], v.grid, 0, len(v.prefix))[0].mean(0).numpy() for v in (look, other)]
    roll = [_rollout_maps(v)[0][1] for v in (look, other)]
    fig = _figure(2.3 * 3 + 1.2, 5.2)
    axes = fig.subplots(2, 3, squeeze=False)
    for r, (label, (a, b)) in enumerate((("last-block class attention", last), ("class-token rollout", roll))):
        vmax = float(max(a.max(), b.max()))
        _overlay(axes[r, 0], pixels, a, f"model: {label}", vmax)
        im = _overlay(axes[r, 1], pixels, b, f"{other_name}: {label}", vmax)
        fig.colorbar(im, ax=axes[r, :2].tolist(), shrink=0.8)
        d = np.abs(a - b)
        im = _overlay(axes[r, 2], pixels, d, f"|difference|, max {d.max():.2g}")
        fig.colorbar(im, ax=axes[r, 2], shrink=0.8)
    fig.suptitle(f"the model against {other_name}, same image, same preprocessing", fontsize=9)
    return _save(fig, folder / "compare-attention.png")


def _compare_logits(
    result: Visualization, paths: list[Path], ref: list[np.ndarray], got: list[np.ndarray], other: Any, names: Any
) -> None:
    net, predictor = other
    if net is None:
        result.notes.append(
            f"{predictor.artifact.path.name} ({predictor.format}) does not expose attention, so its logits and "
            "probabilities are compared per image instead of its maps"
        )
    rows = []
    for path, a, b in zip(paths, ref, got, strict=True):
        pa, pb = np.exp(a - a.max()), np.exp(b - b.max())
        pa, pb = pa / pa.sum(), pb / pb.sum()
        rows.append(
            {
                "image": str(path),
                "top1": _label(int(a.argmax()), names),
                "compare_top1": _label(int(b.argmax()), names),
                "agree": bool(a.argmax() == b.argmax()),
                "max_abs_logit_diff": float(np.abs(a - b).max()),
                "max_abs_prob_diff": float(np.abs(pa - pb).max()),
            }
        )
    result.compare = rows
    fig = _figure(max(6.0, 0.45 * len(rows) + 3), 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    labels = [f"{i:03d}" for i in range(len(rows))]
    panels = ((ax1, "max_abs_logit_diff", "max |logit difference|"), (ax2, "max_abs_prob_diff", "max |prob. diff.|"))
    for ax, key, title in panels:
        colours = ["tab:blue" if r["agree"] else "tab:red" for r in rows]
        ax.bar(labels, [r[key] for r in rows], color=colours)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("image (folder number); red: top-1 differs", fontsize=8)
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    fig.suptitle(f"{predictor.artifact.path.name} ({predictor.format}) against the model, per image", fontsize=9)
    result.files.append(_save(fig, result.out / "compare-logits.png"))
    lines = [
        f"# {predictor.artifact.path.name} ({predictor.format}) against the model",
        "",
        "| # | image | model top-1 | artifact top-1 | agree | max abs logit diff | max abs prob diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        cells = [f"{i:03d}", Path(r["image"]).name, r["top1"], r["compare_top1"], "yes" if r["agree"] else "no"]
        cells += [f"{r['max_abs_logit_diff']:.3g}", f"{r['max_abs_prob_diff']:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    md = result.out / "compare-logits.md"
    md.write_text("\n".join(lines) + "\n")
    result.files.append(md)
