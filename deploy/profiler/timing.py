"""Interleaved timing: every variant measured in rounds, its order rotated every round.

Timing one artifact after another lets the drift of a shared machine (other tenants, turbo,
thermals; 1.3-1.7x between runs here) land on whichever ran last. Each of ``rounds`` rounds gives
every variant a chunk of its runs instead, in an order rotated every round, so the drift hits
them all alike.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..base import first_line

__all__ = ["interleave_schedule", "make_timer", "run_interleaved"]


def interleave_schedule(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of the variants in each round: rotated by one every round, so each one runs first,
    last and in between equally often (``[[a, b, c], [b, c, a], [c, a, b], [a, b, c], ...]``)."""
    names = list(names)
    if not names:
        return [[] for _ in range(rounds)]
    return [names[r % len(names) :] + names[: r % len(names)] for r in range(rounds)]


def run_interleaved(
    steps: Mapping[str, Callable[[], float]],
    *,
    rounds: int,
    min_runs: int,
    duration: float,
    warmup: int = 0,
    on_round: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Time every step interleaved; returns per name its samples and, for the steps that raised, why.

    Each step runs once per call and returns its own latency in ms (so CPU and CUDA steps time
    themselves correctly). After ``warmup`` untimed calls each, every round runs each step (in the
    order of :func:`interleave_schedule`) for a chunk of at least ``ceil(min_runs / rounds)`` calls
    and at least ``duration / rounds`` seconds. A step that raises is dropped from later rounds and
    keeps the samples it had.
    """
    samples: dict[str, list[float]] = {name: [] for name in steps}
    errors: dict[str, str] = {}
    schedule = interleave_schedule(list(steps), rounds)
    for name in schedule[0] if schedule else []:
        try:
            for _ in range(warmup):
                steps[name]()
        except Exception as e:  # noqa: BLE001 - one variant's failure must not stop the others
            errors[name] = first_line(e)
    chunk_runs = max(1, math.ceil(min_runs / max(1, rounds)))
    chunk_s = duration / max(1, rounds)
    for r, order in enumerate(schedule):
        gc.collect()
        for name in order:
            if name in errors:
                continue
            step, out = steps[name], samples[name]
            n, t0 = 0, time.perf_counter()
            try:
                while n < chunk_runs or time.perf_counter() - t0 < chunk_s:
                    out.append(float(step()))
                    n += 1
            except Exception as e:  # noqa: BLE001
                errors[name] = first_line(e)
        if on_round is not None:
            on_round(r, rounds)
    return samples, errors


def make_timer(predictor: Any, images: np.ndarray, device: str) -> Callable[[], float]:
    """One call of ``predictor`` on ``images``, timed in ms.

    CPU: ``perf_counter`` around the call. CUDA: CUDA events around the call with synchronisation
    before and after (the predictors take and return host arrays, so the copies are included: what a
    caller of ``predict`` pays). The CUDA path has not been run on this project's CPU-only test
    machines.
    """
    import torch

    if device == "cuda" and torch.cuda.is_available():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_step() -> float:
            torch.cuda.synchronize()
            start.record()
            predictor(images)
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return cuda_step

    def cpu_step() -> float:
        t0 = time.perf_counter_ns()
        predictor(images)
        return (time.perf_counter_ns() - t0) / 1e6

    return cpu_step
