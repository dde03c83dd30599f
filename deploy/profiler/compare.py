"""One profile over several models: which model to ship, in which runtime.

:func:`profile_folders` takes the export folders of several models (``t2t export`` of each, with the same
image size and batch settings) and measures every artifact of every folder in one run, with the machinery
of :func:`deploy.profiler.profile_folder`: the timing is interleaved across *all* rows, so a machine that
drifts (another process, the clock) moves every model alike and the comparison holds. Each row is
(model, format, precision) with that model's own parameter and MAC counts, and top-1 agreement against
*that model's* fp32 ``torch`` artifact. :func:`compare_models` exports a list of model names itself (the
lite T2T-ViTs and timm baselines, random weights unless a name is a T2T-ViT checkpoint's) into a work
folder with one set of settings, then profiles them.

The report is the profiler's schema-2 :class:`~deploy.profiler.schema.Report`; its ``model`` holds one
entry per model in ``models``, with the published ImageNet top-1 of :data:`PUBLISHED_TOP1` where known
(marked as published: it is what the model's authors measured with trained weights, not this run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from t2tvit.errors import ConfigError
from t2tvit.models.variants import VARIANTS

from .. import manifest as mf
from ..base import first_line, resolve_formats
from ..manifest import ArtifactEntry, Manifest
from . import variants as var
from .run import Group, ProfileConfig, _counts, _threads, build_report, integrity_summary, measure_groups
from .schema import Report

__all__ = ["BASELINES", "LITE_T2T", "PUBLISHED_TOP1", "compare_models", "profile_folders"]

# ImageNet-1k top-1 (%) at 224 px that each model's authors (or the library whose weights its name loads)
# published, and where. Shown in reports and plots as "published", never as measured here.
_T2T = "T2T-ViT official README (Yuan et al., ICCV 2021)"
_TIMM = "timm results-imagenet.csv (the weights timm's name loads)"
_TV = "torchvision model zoo, classic recipe (timm's a1_in1k recipe reaches 80.4 for resnet50)"
PUBLISHED_TOP1: dict[str, tuple[float, str]] = {
    **{name: (v.paper_top1, _T2T) for name, v in VARIANTS.items() if v.paper_top1 is not None},  # the one table
    "mobilenetv2_100": (72.97, _TIMM),
    "mobilenetv3_large_100": (75.77, _TIMM),
    "efficientnet_b0": (77.69, _TIMM),
    "deit_tiny_patch16_224": (72.2, "DeiT paper (Touvron et al., ICML 2021), Table 1"),
    "resnet18": (69.76, _TV),
    "resnet50": (76.13, _TV),
}
LITE_T2T = ("t2t_vit_7", "t2t_vit_10", "t2t_vit_12", "t2t_vit_14")
# The CNNs the paper compares the lite variants with, the DeiT the seed article deploys, and ResNets.
BASELINES = (
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "deit_tiny_patch16_224",
    "resnet18",
    "resnet50",
)


def profile_folders(
    folders: Sequence[str | Path],
    config: ProfileConfig | None = None,
    *,
    allow_mismatch: bool = False,
    command: str | None = None,
    progress: bool = True,
) -> Report:
    """Profile every artifact of every export folder in one interleaved run; returns the combined report.

    Folders exported at different image sizes or batch settings are refused (a ConfigError, one sentence)
    unless ``allow_mismatch``: a comparison must be like for like. Row names are ``<model>/<format>``.
    """
    from t2tvit.data import image_folder

    config = config or ProfileConfig()
    config.check()
    if not folders:
        raise ConfigError("give at least one export folder to compare")
    paths = [Path(f) for f in folders]
    for p in paths:
        if not mf.exists(p):
            raise ConfigError(f"{p} is not an export folder (no {mf.FILE}); run `t2t export --out {p}` first")
    groups = [_group(p, mf.read(p), config) for p in paths]
    _like_for_like(paths, groups, allow_mismatch)
    _label(groups, paths)
    data = image_folder(config.data) if config.data is not None else None
    if data is not None:
        for g in groups:
            var.data_classes(data, g.info.get("num_classes"))
    with _threads(config.resolved_threads()):
        peaks = measure_groups(groups, data, config, progress)
    for g in groups:
        g.agree()
    return _combined(groups, paths, peaks, config, data, command)


def _group(folder: Path, manifest: Manifest, config: ProfileConfig) -> Group:
    variants = var.collect(folder, manifest, [], config.device, config.formats, config.time_unverified, config.verify)
    return Group(variants, var.model_info(manifest, variants), manifest)


def _settings(manifest: Manifest | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(image size, export batch min/opt/max) of an export: what must match across a comparison."""
    if manifest is None:
        return (), ()
    size = tuple(int(s) for s in manifest.model.get("img_size") or ())
    b = manifest.input.get("batch") or {}
    return size, tuple(int(b[k]) for k in ("min", "opt", "max") if k in b)


def _like_for_like(paths: Sequence[Path], groups: Sequence[Group], allow: bool) -> None:
    seen = [_settings(g.manifest) for g in groups]
    if allow or len(set(seen)) <= 1:
        return
    first = seen[0]
    odd = next(i for i, s in enumerate(seen) if s != first)
    what = "image size" if seen[odd][0] != first[0] else "export batch settings (min, opt, max)"
    k = 0 if what == "image size" else 1
    raise ConfigError(
        f"the export folders differ in {what} ({paths[0]}: {first[k]}, {paths[odd]}: {seen[odd][k]}), so the "
        "comparison would not be like for like; export them with the same --img-size and --batch settings, "
        "or pass --allow-mismatch (allow_mismatch=True) to compare anyway"
    )


def _label(groups: Sequence[Group], paths: Sequence[Path]) -> None:
    """Each group's label (its model name; ``name@folder`` when two folders hold the same model), prefixed
    to its variants' names so every row name is unique across the comparison."""
    names = [str(g.info.get("name") or p.name) for g, p in zip(groups, paths, strict=True)]
    for g, p, name in zip(groups, paths, names, strict=True):
        label = name if names.count(name) == 1 else f"{name}@{p.name}"
        g.info["label"] = label
        for v in g.variants:
            v.name, v.model = f"{label}/{v.name}", label


def _combined(
    groups: Sequence[Group],
    paths: Sequence[Path],
    peaks: tuple[dict[str, Any], dict[str, Any] | None],
    config: ProfileConfig,
    data: Path | None,
    command: str | None,
) -> Report:
    rows, models = [], []
    for g, p in zip(groups, paths, strict=True):
        params, macs = _counts(g.info)
        for v in g.variants:
            row = v.row(macs, *peaks)
            row.model, row.params, row.macs = g.info["label"], params, macs
            rows.append(row)
        published = PUBLISHED_TOP1.get(str(g.info.get("name")))
        models.append(
            {
                "name": g.info["label"],
                "model": g.info.get("name"),
                "num_classes": g.info.get("num_classes"),
                "img_size": list(g.info["img_size"]),
                "params": params,
                "macs_per_image": macs,
                "folder": str(p),
                "source": g.info.get("source"),
                "published_top1": published[0] if published else None,
                "published_source": published[1] if published else None,
                "images": 0 if g.images is None else len(g.images),
            }
        )
    sizes = sorted({int(m["img_size"][0]) for m in models})
    model = {"name": ", ".join(m["name"] for m in models), "models": models}
    n_images = max((m["images"] for m in models), default=0)
    report = build_report(rows, model, sizes[0] if len(sizes) == 1 else sizes, peaks, config, data, n_images, command)
    config.checks.apply(report)
    report.integrity = integrity_summary([v for g in groups for v in g.variants], config.verify)
    report.conclude()
    return report


def compare_models(
    models: Sequence[str],
    work: str | Path,
    config: ProfileConfig | None = None,
    *,
    formats: str | Sequence[str] = "torch,onnx",
    img_size: int = 224,
    num_classes: int | None = None,
    batch: tuple[int, int, int] = (1, 1, 8),
    reuse: bool = True,
    calib_data: str | Path | None = None,
    calib_size: int = 32,
    parity_images: int = 32,
    command: str | None = None,
    progress: bool = True,
) -> Report:
    """Export each model of ``models`` (T2T-ViT names or any timm model: random weights) to ``formats`` under
    ``work/<model>`` with one set of settings, then :func:`profile_folders` them.

    ``reuse``: an existing export of the same model, formats, image size and batch settings is profiled as it
    is (a long comparison can be resumed). A model whose export raised is a failed row per format, with the
    reason; a format that failed is a row in its model's manifest anyway.
    """
    from ..export import export_checkpoint

    fmts = [f.name for f in resolve_formats(formats)]
    names = _check_names(models)
    work = Path(work)
    folders = []
    for name in names:
        out = work / name
        if not (reuse and _reusable(out, name, fmts, img_size, batch)):
            try:
                export_checkpoint(
                    None, formats=fmts, out=out, model=name, num_classes=num_classes, img_size=img_size,
                    batch=batch, calib_data=calib_data, calib_size=calib_size, parity_images=parity_images,
                    progress=progress,
                )  # fmt: skip
            except Exception as e:  # noqa: BLE001 - one model's failure is its rows, not the end of the comparison
                _failed_export(out, name, fmts, img_size, batch, first_line(e))
        folders.append(out)
    # random weights: an int8 artifact that failed parity still runs a trained one's kernels (see ProfileConfig)
    config = dataclasses.replace(config or ProfileConfig(), time_unverified=True)
    return profile_folders(folders, config, command=command, progress=progress)


def _check_names(models: Sequence[str]) -> list[str]:
    """The model names, each a T2T-ViT or a timm model (an unknown one fails now, before any export)."""
    from t2tvit.models.factory import resolve_name

    names = [m.strip() for m in models if m.strip()]
    if not names:
        raise ConfigError("give at least one model name to compare, e.g. t2t_vit_7,mobilenetv2_100")
    for n in names:
        resolve_name(n)  # the factory's unknown-model error, with its suggestions
    if len(set(names)) != len(names):
        raise ConfigError(f"a model is named twice in {','.join(names)}; name each once")
    return names


def _reusable(out: Path, name: str, fmts: Sequence[str], img_size: int, batch: tuple[int, int, int]) -> bool:
    try:
        m = mf.read(out)
    except (OSError, ConfigError):
        return False
    done = [a.format for a in m.artifacts]
    same = _settings(m) == ((img_size, img_size), tuple(batch))
    return m.model_name == name and done == list(fmts) and same


def _failed_export(
    out: Path, name: str, fmts: Sequence[str], img_size: int, batch: tuple[int, int, int], reason: str
) -> None:
    """A manifest whose every artifact failed with ``reason``: the model is in the report, with why."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        model={"model": name, "num_classes": None, "img_size": [img_size, img_size]},
        input={"batch": {"min": batch[0], "opt": batch[1], "max": batch[2]}},
        artifacts=[ArtifactEntry(f, status="failed", reason=f"model export failed: {reason}") for f in fmts],
    )
    mf.write(out, manifest)
