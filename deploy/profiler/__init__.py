"""The latency profiler (``t2t bench``), in parts:

* :mod:`~deploy.profiler.stats` -- percentiles and the distribution-free interval of the median;
* :mod:`~deploy.profiler.timing` -- interleaved, rotated rounds and the per-call timer;
* :mod:`~deploy.profiler.peak` -- the machine's peak GEMM rate per precision, measured by the same process;
* :mod:`~deploy.profiler.memory` -- peak memory in a process of its own per artifact;
* :mod:`~deploy.profiler.variants` -- which artifacts, loaded through their format rows, accuracy;
* :mod:`~deploy.profiler.checks` -- the user's limits that mark rows and set the exit status;
* :mod:`~deploy.profiler.schema` -- the typed report and its one schema version;
* :mod:`~deploy.profiler.run` -- the orchestration, :func:`profile_folder`;
* :mod:`~deploy.profiler.compare` -- several models in one interleaved run, :func:`profile_folders` and
  :func:`compare_models`, with the published top-1 of the lite T2T-ViTs and their baselines.

:mod:`deploy.report` writes a report as Markdown, JSON, CSV and plots. Benchmark scripts import
the profiler; the profiler imports no benchmark script.
"""

from .checks import Checks
from .compare import BASELINES, LITE_T2T, PUBLISHED_TOP1, compare_models, profile_folders
from .peak import measure_peak, peak_rate
from .run import ProfileConfig, device_name, profile_folder
from .schema import SCHEMA, Report, Row
from .stats import CI_LEVEL, latency_stats, median_ci, median_ci_ranks, percentile
from .timing import interleave_schedule, make_timer, run_interleaved
from .variants import load_labelled

__all__ = [
    "BASELINES",
    "CI_LEVEL",
    "LITE_T2T",
    "PUBLISHED_TOP1",
    "SCHEMA",
    "Checks",
    "compare_models",
    "ProfileConfig",
    "Report",
    "Row",
    "device_name",
    "interleave_schedule",
    "latency_stats",
    "load_labelled",
    "make_timer",
    "measure_peak",
    "peak_rate",
    "median_ci",
    "median_ci_ranks",
    "percentile",
    "profile_folder",
    "profile_folders",
    "run_interleaved",
]
