"""``t2t bench`` over several models: several export folders, or ``--models`` exported with one set of settings.

The flags and the call; the work is :func:`deploy.profiler.profile_folders` / :func:`deploy.profiler.compare_models`.
Only argparse is imported at module level.
"""

from __future__ import annotations

import argparse

__all__ = ["add_flags", "is_comparison", "run"]


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "comparing models",
        "several ARTIFACTS_DIRs, or --models: one report over (model, format, precision), timed interleaved",
    )
    g.add_argument(
        "--models",
        default=None,
        metavar="M[,M...]",
        help="export these models (T2T-ViT names or any timm model, e.g. mobilenetv2_100; random weights) to "
        "--formats (default: fp32 eager and ONNX) with the same settings under --work, then compare them",
    )
    g.add_argument(
        "--work", default="runs/compare", metavar="DIR", help="where --models are exported (default: runs/compare)"
    )
    g.add_argument("--img-size", type=int, default=224, help="image size of the --models exports (default: 224)")
    g.add_argument(
        "--export-batch",
        default="1,1,8",
        metavar="MIN,OPT,MAX",
        help="batch range of the --models exports (ONNX, OpenVINO dynamic axes; default: 1,1,8)",
    )
    g.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="compare export folders of different image sizes or batch settings anyway (refused by default)",
    )
    g.add_argument(
        "--time-unverified",
        action="store_true",
        help="also time artifacts that were built but failed their parity check (random-weight int8); "
        "always on with --models, whose weights are random",
    )


def is_comparison(args: argparse.Namespace) -> bool:
    return bool(args.models) or len(args.artifacts or []) > 1


def run(args: argparse.Namespace, config: object, command: str | None) -> object:
    """The combined report of the folders or ``--models`` (``config``: the :class:`ProfileConfig` of the flags)."""
    from deploy.profiler import compare_models, profile_folders
    from t2tvit.errors import ConfigError

    if args.models and args.artifacts:
        raise ConfigError("give export folders or --models, not both")
    if args.files:
        raise ConfigError("--files profiles one model's artifacts; compare models with export folders or --models")
    progress = not args.json
    if not args.models:
        return profile_folders(
            args.artifacts, config, allow_mismatch=args.allow_mismatch, command=command, progress=progress
        )
    try:
        batch = tuple(int(b) for b in args.export_batch.split(","))
    except ValueError:
        batch = ()
    if len(batch) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ConfigError(f"--export-batch takes MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, not {args.export_batch!r}")
    return compare_models(
        args.models.split(","),
        args.work,
        config,
        **({"formats": args.formats} if args.formats else {}),  # default: compare_models' own
        img_size=args.img_size,
        batch=batch,
        command=command,
        progress=progress,
    )
