"""Build an artifact in a child Python process (the converters that must not share the parent's process).

Some converters leave state behind that outlives the conversion: OpenVINO's PyTorch frontend left
objects whose later collection crashed the interpreter (a segmentation fault at the end of
``t2t compress --demo``), and litert-torch starts JAX and prints its own logs. A format module whose
conversion runs here calls :func:`export_in_child` from its ``export`` and ends with
``sys.exit(run_child(_write))`` under ``if __name__ == "__main__"``; ``_write(model, path, fmt, ctx)``
is the in-process conversion, run by the child on a model rebuilt from its registry name and weights.

A child costs ~5 s of interpreter start and imports (torch, timm, the converter) before it converts
anything. Inside :func:`converters` (the exporter wraps its loop over the rows in it), one child per
module serves every conversion of that module in turn, so the three OpenVINO rows of an export start one
process, not three; it ends with the block. A child whose conversion failed other than with a
``ConfigError`` is not reused: the next conversion starts a fresh one.

What crosses the process boundary is a ``torch.save`` file read back with ``weights_only=True``: the
model's spec and state dict, the calibration and validation images, the row's fields and the export settings. The
child's manifest fields come back as JSON. A :class:`~t2tvit.errors.ConfigError` in the child is
exit status 2 and is raised again in the parent with its one-line message.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from t2tvit.errors import ConfigError

from .base import ExportContext, Format, last_line

__all__ = ["converters", "die_with", "export_in_child", "run_child"]

_DONE_MARK = "T2T-CONVERSION-DONE "  # a serving child's answer to one job: the mark, then JSON on one line
# module -> its serving child, inside converters() (per thread: a thread starts outside any block)
_SERVING: contextvars.ContextVar[dict[str, _Server] | None] = contextvars.ContextVar("t2t_converters", default=None)

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
        serving = _SERVING.get()
        if serving is None:
            argv = [sys.executable, "-m", module, str(job), str(path)]
            run = subprocess.run(argv, capture_output=True, text=True, preexec_fn=die_with(os.getpid()))
            died = f"the converter process exited with status {run.returncode}"
            code, message = run.returncode, last_line(run.stderr or run.stdout, died)
        else:
            server = serving.get(module)
            if server is None or not server.alive():
                server = serving[module] = _Server(module)
            code, message = server.convert(job, path)
        if code != 0:
            raise (ConfigError if code == 2 else RuntimeError)(message)
        return json.loads((Path(tmp) / "extra.json").read_text())


@contextlib.contextmanager
def converters() -> Iterator[None]:
    """Inside this block, :func:`export_in_child` keeps one serving child per converter module and sends it
    each conversion; the children end with the block (nested blocks share the outermost one's)."""
    if _SERVING.get() is not None:
        yield
        return
    servers: dict[str, _Server] = {}
    token, ended = _SERVING.set(servers), False
    try:
        yield
        ended = True
    finally:
        _SERVING.reset(token)
        for server in servers.values():  # an interrupted export does not wait for a conversion to finish
            server.close(kill=not ended)


class _Server:
    """A child ``python -m <module> --serve``: it reads ``job<TAB>out`` lines on stdin and answers each with
    one :data:`_DONE_MARK` line on stdout (what a one-shot child says by its exit status and last line)."""

    def __init__(self, module: str) -> None:
        self.log = tempfile.TemporaryFile("w+", errors="replace")  # its stderr: a converter may write a lot
        argv = [sys.executable, "-m", module, "--serve"]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, errors="replace",
            preexec_fn=die_with(os.getpid()),
        )  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None

    def convert(self, job: Path, out: Path) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(f"{job}\t{out}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died: said below, from what it wrote on stderr
        for line in self.proc.stdout:
            _, mark, answer = line.partition(_DONE_MARK)
            if mark:
                done = json.loads(answer)
                if done["code"] not in (0, 2):  # it ends after a failure (not reused): wait for it here
                    self.close()
                return int(done["code"]), str(done["message"])
        code = self.proc.wait()  # it died before answering (a crash in the converter)
        self.log.seek(0)
        said = last_line(self.log.read(), "")
        return (code if code not in (0, 2) else 1), f"the converter process exited with status {code}" + (
            f": {said}" if said else ""
        )

    def close(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


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
    """The child's side of :func:`export_in_child`: ``argv`` (default ``sys.argv[1:]``) is ``[job, out]``, or
    ``["--serve"]`` for a serving child (:class:`_Server`) that converts each job it reads on stdin."""
    args = argv if argv is not None else sys.argv[1:]
    if argv is None and not sys.platform.startswith("linux"):
        _watch_parent(os.getppid())
    if args[:1] != ["--serve"]:
        return _convert(write, *args[:2])[0]
    for line in sys.stdin:
        job_path, out = line.rstrip("\n").split("\t")
        try:
            code, message = _convert(write, job_path, out)
        except Exception as e:  # noqa: BLE001 - said to the parent; this process is not reused after it
            import traceback

            traceback.print_exc()
            code, message = 1, f"{type(e).__name__}: {e}".strip().splitlines()[-1]
        sys.stdout.flush()
        print("\n" + _DONE_MARK + json.dumps({"code": code, "message": message}), flush=True)
        if code not in (0, 2):
            return code
    return 0


def _convert(write: Writer, job_path: str, out: str) -> tuple[int, str]:
    """One conversion: the job file's model and settings through ``write`` into ``out``; ``(0, "")``, or
    ``(2, sentence)`` for a ``ConfigError`` (the sentence also on stderr)."""
    import torch

    import t2tvit

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
        return 2, str(e)
    (Path(job_path).parent / "extra.json").write_text(json.dumps(extra))
    return 0, ""
