"""``t2t bench``: latency, throughput, memory, size, MAC rate and accuracy of every exported artifact.

Only argparse and t2t.flags are imported at module level; torch, the runtimes and the profiler load when the
command runs, so ``t2t --help`` stays instant.
"""

from __future__ import annotations

import argparse

from t2t import flags

__all__ = ["add_check_flags", "add_parser", "checks_from", "parse_batch_sizes"]


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,8"`` -> ``(1, 8)``; anything but positive integers is a ConfigError naming the fix."""
    from t2tvit.errors import ConfigError

    try:
        sizes = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(b < 1 for b in sizes):
        raise ConfigError(f"--batch-sizes takes comma-separated positive integers (e.g. 1,8), not {text!r}")
    return sizes


def add_check_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The user's checks (also on ``t2t compress``): a row that misses one is marked and the exit status is 1."""
    p.add_argument(
        "--max-latency-ms",
        type=float,
        default=None,
        metavar="MS",
        help="check: every artifact's p50 at the smallest batch size is at most MS milliseconds",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        metavar="F",
        help="check: every artifact agrees with the fp32 torch artifact on at least this share of top-1 "
        "decisions (0.99 = 99%%)",
    )
    p.add_argument(
        "--min-top1",
        type=float,
        default=None,
        metavar="PCT",
        help="check: every artifact's top-1 accuracy on --data is at least PCT percent",
    )


def checks_from(args: argparse.Namespace) -> object:
    """The :class:`deploy.profiler.Checks` the check flags ask for."""
    from deploy.profiler import Checks

    return Checks(args.max_latency_ms, args.min_agreement, args.min_top1)


SUMMARY = "profile every artifact of an export folder: latency, throughput, memory, MAC rate, accuracy"
DESCRIPTION = (
    "Profile every artifact listed in ARTIFACTS_DIR/manifest.json (and/or --files) in one process:\n"
    "load time, first inference, then warm-up and timed runs per batch size (at least --min-runs runs\n"
    "and --duration seconds per artifact), interleaved round-robin so machine drift hits every artifact\n"
    "alike. Reports latency mean/std/min/p50/p90/p95/p99 with a 95% distribution-free interval of the\n"
    "median, throughput, peak memory (a process of its own per artifact), file size, MAC rate against\n"
    "this machine's measured peak GEMM rate, and with --data top-1/top-5 accuracy and top-1 agreement\n"
    "with the fp32 torch artifact. Artifacts that failed at export, cannot run here or fail to load\n"
    "are rows with their reason. Writes report.md, report.json, report.csv and plots to --out."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = flags.command(sub, "bench", SUMMARY, DESCRIPTION)
    p.add_argument(
        "artifacts",
        nargs="*",
        default=None,
        metavar="ARTIFACTS_DIR",
        help="export folder written by `t2t export` (holds manifest.json); optional with --files; "
        "several folders (one per model) give one comparison report",
    )
    p.add_argument(
        "--batch-sizes",
        default="1",
        metavar="B[,B...]",
        help="comma-separated batch sizes to time, e.g. 1,8 (default: 1)",
    )
    flags.add(
        p,
        "--threads",
        help="threads of every runtime (PyTorch intra-op, ONNX Runtime, OpenVINO, LiteRT, ExecuTorch; "
        "default: the CPU count, at most 4)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="timed seconds per artifact per batch size, at least (default: 2.0)",
    )
    p.add_argument(
        "--min-runs", type=int, default=10, help="timed runs per artifact per batch size, at least (default: 10)"
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per artifact before timing (default: 3)")
    p.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved rounds: each gives every artifact a chunk of its runs, order rotated (default: 5)",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR|digits",
        help="labelled images (DIR/<class>/<image>, classes in sorted order as in training) for top-1/top-5 "
        "and agreement; 'digits' (or 'digits-hard': 224 px over clutter) is a bundled validation split "
        "(default: no accuracy)",
    )
    p.add_argument(
        "--max-images", type=int, default=500, help="at most this many --data images, a fixed sample (default: 500)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess per artifact (faster)")
    flags.add(
        p,
        "--no-verify",
        help="time artifacts whose files no longer match the sha256 their manifest recorded (files you changed "
        "on purpose); by default such a row fails and the exit status is 1",
    )
    add_check_flags(p)
    p.add_argument(
        "--files",
        nargs="+",
        default=None,
        metavar="F",
        help="artifact files to profile besides (or instead of) the manifest's; the format comes from the name "
        "(model-<format><suffix>, as `t2t export` writes) or a FORMAT=PATH prefix",
    )
    flags.add(
        p, "--formats", help="only these: comma-separated names or groups (all, cpu, gpu, builtin); default: every one"
    )
    flags.add(p, "--device", default="cpu", help="where formats that can run on both run (default: cpu)")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="report folder (default: ARTIFACTS_DIR/bench, or ./bench with --files)",
    )
    flags.add(p, "--json")
    from t2t.compare_cmd import add_flags

    add_flags(p)
    p.set_defaults(func=_cmd_bench, outputs=("out",))


def _cmd_bench(args: argparse.Namespace) -> int:
    import json
    import shlex
    import sys
    from pathlib import Path

    from deploy import manifest
    from t2t import compare_cmd
    from t2tvit.errors import ConfigError
    from t2tvit.faults import check_output_dir

    batch_sizes = parse_batch_sizes(args.batch_sizes)
    comparing = compare_cmd.is_comparison(args)
    folder = Path(args.artifacts[0]) if len(args.artifacts or []) == 1 else None
    if not args.artifacts and not args.files and not args.models:
        raise ConfigError("give an export folder (ARTIFACTS_DIR), artifact files with --files, or --models")
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"artifacts folder {folder} does not exist; run `t2t export --out {folder}` first")
    if folder is not None and not manifest.exists(folder) and not args.files:
        raise ConfigError(f"{folder} has no {manifest.FILE}; run `t2t export --out {folder}` or pass --files")
    if args.formats:
        from deploy.base import resolve_formats

        resolve_formats(args.formats)  # unknown names fail before anything is measured
    if args.data is not None:
        from t2tvit.data import existing_folder

        existing_folder(args.data, "--data folder")

    from deploy.profiler import ProfileConfig, profile_folder
    from deploy.report import print_table, write_report

    config = flags.from_flags(
        ProfileConfig, args, batch_sizes=batch_sizes, memory=not args.no_memory, checks=checks_from(args),
        verify=not args.no_verify,
    )  # fmt: skip
    command = shlex.join(["t2t", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("t2t", "__main__.py") else None
    if comparing:
        out = Path(args.out) if args.out else (Path(args.work) / "bench" if args.models else Path("bench"))
    else:
        out = Path(args.out) if args.out else (folder / "bench" if folder is not None else Path("bench"))
    check_output_dir(out)  # before the profiling run, not after it
    if comparing:
        report = compare_cmd.run(args, config, command)
    else:
        report = profile_folder(folder, config, files=args.files or [], command=command, progress=not args.json)
    written = write_report(report, out)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_table(report)
        from rich.console import Console

        Console(stderr=True).print(f"wrote {', '.join(str(p) for p in written)}", soft_wrap=True, highlight=False)
    changed = bool((report.integrity or {}).get("failures"))  # a file that changed after export: a failed row
    return 0 if (report.checks is None or report.checks["passed"]) and not changed else 1
