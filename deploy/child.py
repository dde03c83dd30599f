"""Build an artifact in a child Python process (the converters that must not share the parent's process).

Some converters leave state behind that outlives the conversion: OpenVINO's PyTorch frontend left
objects whose later collection crashed the interpreter (a segmentation fault at the end of
``t2t compress --demo``), and litert-torch starts JAX and prints its own logs. A format module whose
conversion runs here calls :func:`export_in_child` from its ``export`` and ends with
``sys.exit(run_child(_write))`` under ``if __name__ == "__main__"``; ``_write(model, path, fmt, ctx)``
is the in-process conversion, run by the child on a model rebuilt from its registry name and weights.

What crosses the process boundary is a ``torch.save`` file read back with ``weights_only=True``: the
model's spec and state dict, the calibration and validation images, the row's fields and the export settings. The
child's manifest fields come back as JSON. A :class:`~t2tvit.errors.ConfigError` in the child is
exit status 2 and is raised again in the parent with its one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from t2tvit.errors import ConfigError

from .base import ExportContext, Format

__all__ = ["die_with", "export_in_child", "run_child"]

# The ExportContext fields a child's conversion may read (the rest are the parent's bookkeeping).
_CTX_FIELDS = (
    "img_size",
    "batch",
    "qengine",
    "opset",
    "jit",
    "inference_precision",
    "about",
    "max_drop",
    "sensitivity",
)


def export_in_child(module: str, model: Any, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    """Run ``python -m <module> job out`` on ``model`` for the row ``fmt``; returns its manifest fields."""
    import torch

    from .torch_eager import model_spec

    spec = model_spec(model)  # a registered model: the child rebuilds it from its name and weights
    row = {f.name: getattr(fmt, f.name) for f in dataclasses.fields(fmt)}
    with tempfile.TemporaryDirectory(dir=ctx.scratch_dir()) as tmp:
        job = Path(tmp) / "job.pt"
        torch.save(
            {
                "spec": spec,
                "state": model.state_dict(),
                "calib": None if ctx.calib is None else torch.from_numpy(np.ascontiguousarray(ctx.calib)),
                "val": None if ctx.val is None else [torch.from_numpy(np.ascontiguousarray(a)) for a in ctx.val],
                "row": json.dumps(row),
                "ctx": json.dumps({k: getattr(ctx, k) for k in _CTX_FIELDS}),
            },
            job,
        )
        argv = [sys.executable, "-m", module, str(job), str(path)]
        run = subprocess.run(argv, capture_output=True, text=True, preexec_fn=die_with(os.getpid()))
        if run.returncode != 0:
            lines = [ln for ln in (run.stderr or run.stdout).strip().splitlines() if ln.strip()]
            message = lines[-1] if lines else f"the converter process exited with status {run.returncode}"
            raise (ConfigError if run.returncode == 2 else RuntimeError)(message)
        return json.loads((Path(tmp) / "extra.json").read_text())


def die_with(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the converter die with the process that started it (Linux: the kernel sends
    SIGKILL when the parent goes, ``prctl(PR_SET_PDEATHSIG)``); elsewhere the child's own watchdog does it."""
    if not sys.platform.startswith("linux"):
        return None

    def arm() -> None:
        import ctypes

        pr_set_pdeathsig = 1
        with_errno = ctypes.CDLL(None, use_errno=True)
        with_errno.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def _watch_parent(parent: int, interval: float = 1.0) -> None:
    """In the child: exit when the parent is gone (where PR_SET_PDEATHSIG does not exist)."""

    def watch() -> None:
        import time

        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="t2t-parent-watchdog", daemon=True).start()


Writer = Callable[[Any, Path, Format, ExportContext], dict[str, Any]]


def run_child(write: Writer, argv: list[str] | None = None) -> int:
    """The child's side of :func:`export_in_child`: ``argv`` is ``[job, out]`` (default ``sys.argv[1:3]``)."""
    import torch

    import t2tvit

    job_path, out = argv if argv is not None else sys.argv[1:3]
    if argv is None and not sys.platform.startswith("linux"):
        _watch_parent(os.getppid())
    job = torch.load(job_path, map_location="cpu", weights_only=True)
    spec = job["spec"]
    model = t2tvit.build_model(spec["model"], num_classes=spec["num_classes"], img_size=tuple(spec["img_size"]))
    model.load_state_dict(job["state"])
    row = json.loads(job["row"])
    fmt = Format(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()})
    c = json.loads(job["ctx"])
    calib = job["calib"].numpy() if job["calib"] is not None else None
    val = tuple(a.numpy() for a in job["val"]) if job.get("val") is not None else None
    ctx = ExportContext(**{**c, "img_size": tuple(c["img_size"]), "batch": tuple(c["batch"])}, calib=calib, val=val)
    try:
        extra = write(model.eval(), Path(out), fmt, ctx)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    (Path(job_path).parent / "extra.json").write_text(json.dumps(extra))
    return 0
