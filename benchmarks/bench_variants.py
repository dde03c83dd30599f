"""The lite T2T-ViTs against the CNNs (and the DeiT) they are sold against, in several CPU runtimes, in one report.

``python -m benchmarks.bench_variants [--threads 2] [--batch-sizes 1,8] [--formats ...] [--duration 0.5]
[--work runs/variants_cpu] [--out benchmarks/results/variants_cpu] [--render-only]``

Every model of :data:`deploy.profiler.LITE_T2T` and :data:`deploy.profiler.BASELINES` is exported at 224 px
(1000 classes, seeded random weights: latency does not depend on the weights) to the same formats with the
same settings by :func:`deploy.profiler.compare_models`, then all of their artifacts are profiled in one
process, timed interleaved across every (model, format) row. Accuracy is the *published* ImageNet top-1
(:data:`deploy.profiler.PUBLISHED_TOP1`), marked as such: nothing here is trained.

Formats: ``torch`` (the reference), ``onnx`` and ``onnx-int8-dynamic`` (ONNX Runtime), ``openvino`` and
``openvino-int8`` (NNCF): the CPU runtimes a user picks between. TorchScript, ``.ptl`` and ``torch-int8``
are left out to keep the run under ~25 minutes on 2 cores (TorchScript/.ptl time like eager in the
single-model benchmark, ``benchmarks/results/bench_cpu_formats``; ``torch-int8`` quantizes only
``nn.Linear``, so a CNN's is its fp32 model with an int8 classifier). ``onnx-int8-static`` is left out
for the same reason. Exports are kept in ``--work`` and reused by a rerun with the same settings;
``--render-only`` rewrites the Markdown and plots from the committed ``report.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

__all__ = ["DEFAULT_FORMATS", "main"]

DEFAULT_FORMATS = "torch,onnx,onnx-int8-dynamic,openvino,openvino-int8"


def main(argv: Sequence[str] | None = None) -> int:
    from deploy.profiler import BASELINES, LITE_T2T

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_variants", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join([*LITE_T2T, *BASELINES]))
    p.add_argument("--formats", default=DEFAULT_FORMATS)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration", type=float, default=0.5, help="timed seconds per row per batch size, at least")
    p.add_argument("--min-runs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--work", default="runs/variants_cpu", help="the exports (not committed)")
    p.add_argument("--out", default="benchmarks/results/variants_cpu")
    p.add_argument("--render-only", action="store_true", help="rewrite report.md and the plots from report.json")
    args = p.parse_args(argv)

    from deploy.profiler import ProfileConfig, compare_models
    from deploy.report import read_report, write_report

    if args.render_only:
        print("\n".join(str(x) for x in write_report(read_report(args.out), args.out)))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    config = ProfileConfig(
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
        threads=args.threads,
        duration=args.duration,
        min_runs=args.min_runs,
        warmup=2,
        rounds=args.rounds,
        memory=not args.no_memory,
    )
    t0 = time.perf_counter()
    report = compare_models(
        args.models.split(","),
        args.work,
        config,
        formats=args.formats,
        img_size=args.img_size,
        batch=(1, 1, max(config.batch_sizes)),
        calib_size=16,
        parity_images=16,
        command="python -m benchmarks.bench_variants " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    report.settings["wall_s"] = round(time.perf_counter() - t0, 1)
    print("\n".join(str(x) for x in write_report(report, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
