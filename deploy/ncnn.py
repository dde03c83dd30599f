"""ncnn artifacts (Tencent's runtime for Android CPU/Vulkan): ``ncnn`` (fp32) and ``ncnn-fp16`` (fp16 storage).

* Converted by ``pnnx`` (the converter ncnn ships) from a TorchScript trace of :func:`deploy.graph.deploy_graph`,
  the model rewritten with operators pnnx converts (soft splits, 4-D attention, the Performer's shared
  weight; see that module), proven equal to the model on the calibration images at export.
* The artifact is ``model-<row>.param`` (the graph, text) with companions ``.bin`` (the weights) and
  ``.json`` (what the graph cannot say: row, model, input size, classes); the row's ``companions`` make
  the manifest's size and sha256 cover all three. pnnx's own side files (its ``.pnnx.param``, Python and
  ONNX renderings) are written to scratch and dropped.
* **Batch**: an ncnn ``Extractor`` runs one image, so the artifact is fixed at batch 1 and :meth:`NcnnPredictor.predict`
  loops over the batch, one extractor per image (a batch of N costs N calls).
* **fp16**: ``ncnn-fp16`` stores its weights as fp16 (pnnx ``fp16=1``, half the ``.bin``) and loads with
  ncnn's ``use_fp16_storage/packed/arithmetic`` on. On x86 ncnn has no fp16 arithmetic (that is ARMv8.2
  and Vulkan): it keeps fp16 weights and converts them to fp32 with F16C, and computes in fp32. On a phone
  the same file also computes in fp16. ``ncnn`` (fp32) turns all three options off, which ncnn enables
  by default.
* **Threads**: ncnn's ``Option.num_threads`` (the row's ``threads="load"``); default: ncnn's own choice
  (the physical big cores).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from t2tvit.errors import CheckpointError, ConfigError

from . import manifest as mf
from .base import ExportContext, Format, Predictor, require_artifact
from .child import die_with

__all__ = ["NcnnPredictor", "describe", "export", "load"]

_MAGIC = "7767517"  # the first line of every ncnn .param file
_FP16_TAG = 0x01306B47  # the tag ncnn writes before an fp16 weight blob in the .bin


def _side(path: Path) -> Path:
    return path.with_suffix(".json")


def export(model: nn.Module, path: Path, fmt: Format, ctx: ExportContext) -> dict[str, Any]:
    """Trace the converter-ready model at batch 1 and convert it with pnnx to ``path`` (+ ``.bin``, ``.json``)."""
    import shutil

    import torch
    from pnnx import EXEC_PATH

    from .graph import checked_graph
    from .torch_eager import model_spec

    captured, record = checked_graph(model, "ncnn", ctx)
    extra: dict[str, Any] = {"deploy_graph": record}
    fp16 = bool(fmt.options.get("fp16"))
    h, w = ctx.img_size
    with tempfile.TemporaryDirectory(dir=ctx.scratch_dir()) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Path(tmp)
        torch.jit.trace(captured, ctx.example(1)).save(str(t / "model.pt"))
        names = {k: str(t / f"out.{k}") for k in ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx", "ncnnpy")}
        argv = [EXEC_PATH, str(t / "model.pt"), f"inputshape=[1,3,{h},{w}]f32", f"fp16={int(fp16)}"]
        argv += [
            f"ncnnparam={t / 'model.param'}",
            f"ncnnbin={t / 'model.bin'}",
            *(f"{k}={v}" for k, v in names.items()),
        ]
        run = subprocess.run(
            argv, capture_output=True, text=True, cwd=tmp, check=False, preexec_fn=die_with(os.getpid())
        )
        if run.returncode != 0 or not (t / "model.param").is_file():
            lines = [ln for ln in (run.stderr + run.stdout).splitlines() if ln.strip()]
            raise RuntimeError(f"pnnx failed ({run.returncode}): {lines[-1] if lines else 'no output'}")
        unsupported = _unsupported(t / "model.param")
        if unsupported:
            raise RuntimeError(f"pnnx left operators ncnn cannot run: {', '.join(unsupported)}")
        shutil.move(t / "model.param", path)
        shutil.move(t / "model.bin", path.with_suffix(".bin"))
    spec = model_spec(model)
    side = {"format": fmt.name, "model": spec.get("model"), "img_size": [h, w], "num_classes": spec.get("num_classes")}
    _side(path).write_text(json.dumps({**side, "fp16_weights": fp16, "batch": 1, mf.ABOUT_KEY: ctx.about}) + "\n")
    extra.update(
        converter="pnnx (TorchScript trace of deploy.graph.deploy_graph)",
        weights="fp16" if fp16 else "fp32",
        batch="fixed 1: one ncnn extractor per image; predict loops over a batch",
    )
    if fp16:
        extra["compute"] = "x86: fp16 storage, fp32 arithmetic (ncnn computes fp16 only on ARMv8.2 / Vulkan)"
    return extra


def _unsupported(param: Path) -> list[str]:
    """Layer types pnnx passed through untranslated (``torch.*``, ``F.*``, ``Tensor.*``, ``pnnx.*``, ``aten::*``)."""
    kinds = {ln.split()[0] for ln in param.read_text().splitlines()[2:] if ln.strip()}
    return sorted(k for k in kinds if "." in k or "::" in k)


def _read_side(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(_side(path).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _is_param(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().strip() == _MAGIC
    except OSError:
        return False


def _fp16_weights(weights: Path, window: int = 1 << 22) -> bool:
    """Whether a weight blob in the first ``window`` bytes carries ncnn's fp16 tag (fp32 blobs carry 0; untagged
    data such as a ``MemoryData`` table comes first, so the tag is searched for, 4-byte aligned)."""
    try:
        with open(weights, "rb") as f:
            data = f.read(window)
    except OSError:
        return False
    tag = _FP16_TAG.to_bytes(4, "little")
    at = data.find(tag)
    while at != -1 and at % 4:
        at = data.find(tag, at + 1)
    return at != -1


def describe(path: Path) -> dict[str, Any] | None:
    """The format row hook: an ncnn ``.param`` (its magic line), the row and input size from its ``.json``,
    else the row from the weights' blob tags (fp16 or fp32)."""
    if not _is_param(path):
        return None
    info = _read_side(path) or {}
    name = info.get("format")
    if name not in ("ncnn", "ncnn-fp16"):
        name = "ncnn-fp16" if _fp16_weights(path.with_suffix(".bin")) else "ncnn"
    size = info.get("img_size")
    return mf.read_about(info.get(mf.ABOUT_KEY)) | {
        "format": name,
        "model": info.get("model"),
        "img_size": tuple(size) if isinstance(size, list) and len(size) == 2 else None,
        "num_classes": info.get("num_classes"),
    }


class NcnnPredictor(Predictor):
    """An ``ncnn.Net``; each image of a batch runs through its own extractor (the artifact's batch is 1)."""

    def __init__(self, net: Any, fmt: Format, path: Path, hw: tuple[int, int] | None, threads: int):
        self.net, self.format, self.precision, self.path, self.device = net, fmt.name, fmt.precision, Path(path), "cpu"
        self._hw, self.threads = hw, threads

    @property
    def input_hw(self) -> tuple[int, int] | None:
        return self._hw

    @property
    def runtime_notes(self) -> list[str]:
        fp16 = self.net.opt.use_fp16_storage
        return [f"ncnn {self.threads} threads, fp16 storage {'on (x86: fp32 arithmetic)' if fp16 else 'off'}"]

    def predict(self, images: np.ndarray) -> np.ndarray:
        import ncnn

        if self._hw is not None and tuple(images.shape[2:]) != self._hw:
            h, w = self._hw
            raise ConfigError(
                f"{self.path.name} takes {h}x{w} images, not {images.shape[2]}x{images.shape[3]}; "
                "resize the images or export at that size"
            )
        out = []
        for image in images:
            ex = self.net.create_extractor()
            image = np.ascontiguousarray(image)  # ncnn.Mat wraps this memory: keep it alive until extract
            ex.input("in0", ncnn.Mat(image))
            ret, mat = ex.extract("out0")
            if ret != 0:
                raise RuntimeError(f"ncnn could not run {self.path.name} (extract returned {ret})")
            out.append(np.array(mat, dtype=np.float32).reshape(-1))
        return np.stack(out)


@contextlib.contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 2 in the block; the list gets its lines."""
    said: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            said += [ln.strip() for ln in tmp.read().decode("utf-8", "replace").splitlines() if ln.strip()]


def _why(said: list[str], sep: str = ": ") -> str:
    return f"{sep}{said[-1][:200]}" if said else ""


def load(path: Path, fmt: Format, device: str = "cpu", threads: int | None = None) -> NcnnPredictor:
    """An ``ncnn.Net`` of ``path`` and its ``.bin``, fp16 storage as the row says, ``threads`` ncnn threads."""
    import ncnn

    if device != "cpu":
        raise ConfigError(f"ncnn artifacts run on the CPU here, not on {device!r}")
    path = require_artifact(path, weights=".bin")
    weights = path.with_suffix(".bin")
    if not _is_param(path):
        raise CheckpointError(f"{path} is not an ncnn .param file (its first line is not {_MAGIC})")
    net = ncnn.Net()
    fp16 = bool(fmt.options.get("fp16"))
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = fp16
    net.opt.use_vulkan_compute = False
    n = int(threads) if threads else ncnn.get_physical_big_cpu_count()
    net.opt.num_threads = n
    with _native_stderr() as said:  # ncnn prints its reasons to the C stderr: fold them into the sentence
        parsed = net.load_param(str(path)) == 0
        read = parsed and net.load_model(str(weights)) == 0
    if not parsed:
        raise CheckpointError(
            f"{path} could not be parsed by ncnn{_why(said)}; re-export it (t2t export --formats ncnn)"
        )
    if not read:
        raise CheckpointError(
            f"{weights} could not be read by ncnn (truncated or not this graph's weights{_why(said, '; ')})"
        )
    size = (_read_side(path) or {}).get("img_size")
    hw = (int(size[0]), int(size[1])) if isinstance(size, list) and len(size) == 2 else None
    return NcnnPredictor(net, fmt, path, hw, n)
