"""The user's own checks on a report: a latency ceiling, an agreement floor, an accuracy floor.

A report is the user's: their numbers, and the limits *they* ask for. Each check applies to every
row that ran (``ok``); a row that misses one, or lacks the number the check needs, is marked with
one sentence per miss (``Row.checks``), and ``Report.checks["passed"]`` is False, which makes
``t2t bench`` and ``t2t compress`` exit with status 1, so a CI pipeline can fail on a regression.
Skipped and failed rows are not judged: they have their own status and reason; but a row whose file
changed after export (``Report.integrity["failures"]``) fails the checks, as it was asked for and not measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from t2tvit.errors import ConfigError

from .schema import Report

__all__ = ["Checks"]


@dataclass(frozen=True)
class Checks:
    """Limits on every measured row; None: not checked.

    ``max_latency_ms``: p50 at the smallest timed batch size, in milliseconds. ``min_agreement``: top-1
    agreement with the fp32 ``torch`` artifact, a fraction (0.99 = 99%). ``min_top1``: top-1 accuracy
    on the labelled data, in percent (needs data).
    """

    max_latency_ms: float | None = None
    min_agreement: float | None = None
    min_top1: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def check_settings(self, has_data: bool) -> None:
        """One-sentence :class:`ConfigError` for limits that cannot be judged."""
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise ConfigError(f"--max-latency-ms must be positive, not {self.max_latency_ms}")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"--min-agreement is a fraction between 0 and 1 (0.99 = 99%), not {self.min_agreement}")
        if self.min_top1 is not None and not 0 <= self.min_top1 <= 100:
            raise ConfigError(f"--min-top1 is a percentage between 0 and 100, not {self.min_top1}")
        if self.min_top1 is not None and not has_data:
            raise ConfigError("--min-top1 needs labelled images to measure accuracy on; pass --data DIR|digits")

    def apply(self, report: Report) -> None:
        """Mark the rows of ``report`` that miss a limit and record the verdict in ``report.checks``."""
        if not self.any:
            return
        sizes = sorted(int(b) for b in report.settings.get("batch_sizes") or [1])
        failures = []
        for row in report.rows:
            if row.status != "ok":
                continue
            row.checks = self._misses(row.latency, row.agreement, row.top1, sizes)
            failures += [f"{row.name}: {miss}" for miss in row.checks]
        # a file that changed after export was not judged, and the checks cannot pass without it
        changed = (report.integrity or {}).get("failures") or []
        failures += [
            f"{name}: its file changed after export (sha256 differs), so it was not measured" for name in changed
        ]
        report.checks = {k: v for k, v in asdict(self).items() if v is not None}
        report.checks.update(passed=not failures, failures=failures)

    def _misses(
        self, latency: dict[str, Any], agreement: float | None, top1: float | None, sizes: list[int]
    ) -> list[str]:
        out = []
        if self.max_latency_ms is not None:
            batch = next((b for b in sizes if str(b) in latency), None)
            p50 = latency[str(batch)]["p50_ms"] if batch is not None else None
            if p50 is None:
                out.append("latency not measured")
            elif p50 > self.max_latency_ms:
                out.append(f"p50 {p50:.3g} ms > {self.max_latency_ms:g} ms at batch {batch}")
        if self.min_agreement is not None:
            if agreement is None:
                out.append("agreement with fp32 not measured")
            elif agreement < self.min_agreement:
                out.append(f"agreement {agreement:.3f} < {self.min_agreement:g}")
        if self.min_top1 is not None:
            if top1 is None:
                out.append("top-1 not measured")
            elif top1 < self.min_top1:
                out.append(f"top-1 {top1:.2f}% < {self.min_top1:g}%")
        return out
