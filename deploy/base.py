"""The Predictor contract and the one table of deployment formats.

Every runtime (PyTorch eager, TorchScript, the lite interpreter, ONNX Runtime, TensorRT,
ExecuTorch) is wrapped by a :class:`Predictor`: built from a file, it takes a batch of NCHW
float32 images and returns float32 logits as a numpy array, and it says what it is (format,
precision, device, file size). The parity checks, ``t2t export``, the profiler and
``t2t predict`` talk to this protocol only.

:data:`FORMATS` is the table that the CLI (argument validation, ``--help``), the exporter, the
verifier, the profiler, ``deploy.open`` and the tests all read; nothing outside ``deploy/`` names a
format or a format module. Adding a format is adding one module and one row:

* the module (the row's ``module``) has ``export(model, path, fmt, ctx) -> dict`` (extra manifest
  fields) and ``load(path, fmt, device="cpu") -> Predictor`` (with a ``threads=`` keyword when the
  row's ``threads`` is ``"load"``), and optionally ``describe(path) -> dict | None``: what a file
  with the row's suffix says about itself (``{"format": row name, "model": name, "img_size": (h, w)}``,
  any of them None) or None when the file is not this module's kind (see :func:`deploy.artifacts.identify`);
  and optionally ``check_context(ctx)``: raise a ConfigError before anything is written when the export
  asks for a setting this machine cannot honour (OpenVINO's bf16 inference precision on a CPU without it);
* the row (:class:`Format`) says everything the orchestration needs: suffix, precision, devices,
  optional packages and how to install them, the packages recorded as tool versions, whether the
  artifact accepts only its export's batch range, how its threads are set, which runtime modules to
  import before a load is timed or memory is measured, how its CUDA memory is seen, and which companion
  files (an OpenVINO IR's ``.bin``) belong to the artifact, so its size and sha256 cover them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import platform
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from t2tvit.errors import CheckpointError, ConfigError

__all__ = [
    "FORMATS",
    "FORMAT_GROUPS",
    "ExportContext",
    "Format",
    "Predictor",
    "first_line",
    "last_line",
    "get_format",
    "require_artifact",
    "resolve_formats",
    "sha256_file",
    "tool_versions",
]


def tool_versions(packages: Iterable[str] = ("torch", "timm", "onnx", "onnxscript", "onnxruntime")) -> dict[str, str]:
    """Installed versions of ``packages`` (read from package metadata: nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in ("t2tvit-edge", *packages):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def last_line(text: str | None, default: str) -> str:
    """What a process said last (the error line of a traceback): the last non-empty line of ``text``, else
    ``default``."""
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else default


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters): how one artifact's failure is told
    in a manifest entry or a report row without a traceback."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def require_artifact(path: str | Path, weights: str | None = None) -> Path:
    """``path`` as a Path, after checking that the artifact is there, and with ``weights`` (a companion suffix
    such as ``.bin``) its weights file beside it; a CheckpointError in one sentence when one is missing."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"artifact {path} does not exist; run `t2t export` first")
    if weights is not None and not path.with_suffix(weights).is_file():
        name = path.with_suffix(weights).name
        raise CheckpointError(f"{path.name} needs its weights file {name} beside it, which is missing")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ExportContext:
    """What every format's ``export(model, path, fmt, ctx) -> dict`` may use.

    ``model`` is the fp32 eval-mode PyTorch model (a distilled student already averages its two
    heads in eval). ``export`` writes ``path`` and returns extra manifest fields (opset, the
    reason an optional optimisation was unavailable, engine layer precisions, ...); a ``precision``
    among them replaces the row's for this artifact and its parity threshold (an fp32 OpenVINO IR that
    computes in bf16). Formats
    built from another artifact (ONNX int8 and TensorRT from the fp32 ONNX) find it in
    ``built``, filled in table order by the exporter.
    """

    img_size: tuple[int, int]  # (H, W)
    batch: tuple[int, int, int] = (1, 1, 32)  # min, opt, max batch for dynamic shapes / TensorRT profiles
    calib: np.ndarray | None = None  # (N, 3, H, W) float32 real images, normalised, for static int8
    qengine: str = "qnnpack"  # PyTorch quantized engine for the int8 .ptl / TorchScript / eager formats
    opset: int = 18
    workspace_mib: int = 1024  # TensorRT builder workspace limit
    timing_cache: Path | None = None  # TensorRT timing cache file, reused across builds
    built: dict[str, Path] = field(default_factory=dict)  # format name -> artifact already written
    jit: str = "trace"  # how TorchScript / .ptl capture the model: "trace" or "script"
    scratch: Path | None = None  # folder for intermediate files that are not artifacts (see scratch_dir)
    # OpenVINO's load-time compute precision, recorded: auto (the loading CPU's fastest native one), f32, bf16, f16
    inference_precision: str = "auto"
    # what each artifact records about itself where its format has a place (deploy.manifest.about)
    about: dict[str, Any] = field(default_factory=dict)
    # an accuracy budget for the int8 rows that take it: points of top-1 against fp32 on ``val``
    max_drop: float | None = None
    sensitivity: bool = False  # also rank every quantizable layer and write the table and plot (deploy.budget)
    val: tuple[np.ndarray, np.ndarray] | None = None  # labelled validation images (normalised) and labels
    fits: dict[str, Any] = field(default_factory=dict)  # budget fits made this run, shared by rows (deploy.budget)

    def scratch_dir(self) -> Path:
        """A folder for intermediate files (e.g. the fp32 ONNX behind an int8 ONNX when ``onnx`` itself
        was not requested). The exporter sets ``scratch`` and removes it; otherwise a temporary
        folder is made and removed when the process exits."""
        if self.scratch is None:
            import atexit
            import shutil
            import tempfile

            self.scratch = Path(tempfile.mkdtemp(prefix="t2t-export-"))
            atexit.register(shutil.rmtree, self.scratch, True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        return self.scratch

    def example(self, n: int = 1) -> Any:
        """A fixed random batch of the model's input shape (for tracing and export)."""
        import torch

        return torch.randn(n, 3, *self.img_size, generator=torch.Generator().manual_seed(0))


class Predictor(ABC):
    """A loaded artifact that maps images to logits.

    Subclasses set the attributes below in ``__init__`` and implement :meth:`predict`.
    """

    format: str  # row name in FORMATS, e.g. "onnx-int8-static"
    precision: str  # "fp32", "fp16" or "int8"
    device: str  # "cpu" or "cuda"
    path: Path  # the artifact file
    min_batch: int = 1  # smallest batch the loaded program accepts (TensorRT's profile minimum)
    artifact: Any = None  # what deploy.open found out about the file (deploy.artifacts.Artifact)

    @property
    def input_hw(self) -> tuple[int, int] | None:
        """The (H, W) the loaded program itself declares, when it fixes one (TensorRT, ExecuTorch)."""
        return None

    @abstractmethod
    def predict(self, images: np.ndarray) -> np.ndarray:
        """``images``: float32 ``(N, 3, H, W)`` normalised as in training; returns float32 ``(N, classes)``."""

    def __call__(self, images: Any) -> np.ndarray:
        if hasattr(images, "detach"):  # a torch tensor
            images = images.detach().cpu().numpy()
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"a Predictor takes (N, 3, H, W) float32 images, not shape {tuple(images.shape)}")
        return np.asarray(self.predict(images), dtype=np.float32)

    @property
    def file_bytes(self) -> int:
        row = FORMATS.get(self.format)
        return row.size(self.path) if row is not None else self.path.stat().st_size

    @property
    def runtime_notes(self) -> list[str]:
        """Load-time settings worth a line in a report (e.g. OpenVINO's inference precision or its fallback)."""
        return []

    @property
    def name(self) -> str:
        return f"{self.format} ({self.precision}, {self.device})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.path}>"


@dataclass(frozen=True)
class Format:
    """One row of the format table (the Ultralytics exporter's idea)."""

    name: str  # CLI name, e.g. "ptl-int8"
    module: str  # module under deploy/ with export() and load()
    precision: str  # "fp32", "fp16" or "int8"
    suffix: str  # artifact file suffix
    cpu: bool  # runs on a CPU
    gpu: bool  # runs on (or needs) a CUDA GPU
    description: str
    requires: tuple[str, ...] = ()  # importable modules it needs beyond the base install
    install_hint: str = ""  # what to install when they are missing
    needs_gpu: bool = False  # cannot be built or run without a CUDA GPU
    options: dict[str, Any] = field(default_factory=dict)  # format-specific export() keywords
    tools: tuple[str, ...] = ("torch",)  # packages that build or run it (the manifest's tool versions)
    bounded_batch: bool = False  # runs only its export's batch range (ONNX's dynamic axis, a TensorRT profile)
    threads: str = "torch"  # "torch": torch.set_num_threads governs it; "load": load(..., threads=N)
    runtime_imports: tuple[str, ...] = ()  # runtime modules imported before a timed load or a memory baseline
    cuda_memory: str = "torch"  # "torch": PyTorch's allocator holds its CUDA memory; "device": free memory drops
    companions: tuple[str, ...] = ()  # suffixes of files that belong to the artifact (an IR's .bin weights)
    bundle: bool = False  # the artifact is a folder (a Core ML .mlpackage): size and sha256 walk it
    runs_on: tuple[str, ...] = ()  # the systems (platform.system()) its runtime runs on; empty: any
    runtime: str = ""  # the runtime a user runs it with (a report's verdict names the best row of each); "": module
    # options of a second recipe the export tries, once, when the artifact of ``options`` misses parity (openvino-int8
    # on the one-hot deploy graph); the manifest records the miss and the recipe that was kept
    fallback_options: dict[str, Any] = field(default_factory=dict)
    # the format options of deploy.settings.ExportConfig this row takes (``--qengine`` given for rows none of
    # which takes it is refused, not ignored); every row takes the common ones (batch, calibration, parity)
    settings: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        """Artifact file name inside the export folder."""
        return f"model-{self.name}{self.suffix}"

    def files(self, path: str | Path) -> list[Path]:
        """The artifact's files: ``path`` and its companions (same stem), in that order."""
        path = Path(path)
        return [path, *(path.with_suffix(s) for s in self.companions)]

    def exists(self, path: str | Path) -> bool:
        """Whether the artifact is there: a file, or for a ``bundle`` row a folder."""
        path = Path(path)
        return path.is_dir() if self.bundle else path.is_file()

    def _members(self, path: str | Path) -> list[Path]:
        """The files whose bytes make the artifact: its files, or every file inside a bundle (sorted)."""
        path = Path(path)
        if self.bundle:
            return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else []
        return self.files(path)

    def size(self, path: str | Path) -> int:
        """Bytes on disk of the artifact and its companions (the ones present), or of a bundle's files."""
        return sum(f.stat().st_size for f in self._members(path) if f.is_file())

    def digest(self, path: str | Path) -> str:
        """sha256 of the artifact: of the file alone, or with companions (or a bundle's files) of every file's
        name and bytes in order (a missing companion counts as empty, so its absence changes the digest)."""
        if not self.companions and not self.bundle:
            return sha256_file(Path(path))
        h = hashlib.sha256()
        for f in self._members(path):
            h.update((f.relative_to(path).as_posix() if self.bundle else f.name).encode() + b"\0")
            if f.is_file():
                h.update(sha256_file(f).encode())
        return h.hexdigest()

    def runtime_name(self) -> str:
        """The runtime family the row belongs to (``runtime``, else its module's name)."""
        return self.runtime or self.module.rsplit(".", 1)[-1]

    def missing(self) -> str | None:
        """Why this format cannot be built on this machine, or None if it can."""
        absent = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if absent:
            hint = f"; install with: {self.install_hint}" if self.install_hint else ""
            return f"{', '.join(absent)} not installed{hint}"
        if self.needs_gpu:
            import torch

            if not torch.cuda.is_available() and not _pycuda_gpu():
                return "needs a CUDA GPU; none is visible on this machine"
        return None

    def not_here(self) -> str | None:
        """Why this machine cannot run the artifact although it can build it (Core ML off macOS), or None."""
        if self.runs_on and platform.system() not in self.runs_on:
            where = " and ".join(self.runs_on).replace("Darwin", "macOS/iOS")
            return f"{self.name} runs only on {where}, not on {platform.system()}"
        return None

    def impl(self) -> ModuleType:
        """The module implementing ``export`` and ``load`` (imported on first use)."""
        return importlib.import_module(self.module)

    def device_for(self, wanted: str | None = None) -> str:
        """Where it runs: ``wanted`` when it can run there, else its own device (a GPU-only format: cuda)."""
        if wanted == "cuda" and self.gpu:
            return "cuda"
        if wanted == "cpu" and self.cpu:
            return "cpu"
        return "cpu" if self.cpu else "cuda"

    def load(self, path: str | Path, device: str | None = None, threads: int | None = None) -> Predictor:
        """The module's ``load`` on its device; ``threads`` reaches the runtimes whose row says ``"load"``."""
        device = device or self.device_for()
        if threads and self.threads == "load":
            return self.impl().load(Path(path), self, device=device, threads=int(threads))
        return self.impl().load(Path(path), self, device=device)

    def describe(self, path: str | Path) -> dict[str, Any] | None:
        """What ``path`` says about itself through the module's ``describe`` hook (None without one)."""
        hook = getattr(self.impl(), "describe", None)
        return hook(Path(path)) if hook is not None else None


def _pycuda_gpu() -> bool:
    if importlib.util.find_spec("pycuda") is None:
        return False
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:  # noqa: BLE001 - any driver failure means "no usable GPU"
        return False


_TRT_HINT = 'pip install "t2tvit-edge[tensorrt]" on a machine with a CUDA GPU and NVIDIA driver'
_ET_HINT = 'pip install "t2tvit-edge[executorch]"'
# The phone runtimes' converters (and ncnn's runtime), light enough for the README's install (the test extra).
_MOBILE_HINT = 'pip install "t2tvit-edge[mobile]"'
# What the runtimes' rows share (see the Format fields).
_PTL: dict[str, Any] = {
    "runtime_imports": ("torch.jit.mobile",),
    "runtime": "PyTorch lite interpreter",
    "settings": ("jit",),
}
_EAGER: dict[str, Any] = {"runtime": "PyTorch eager"}
_TS: dict[str, Any] = {"runtime": "TorchScript", "settings": ("jit",)}
_BUDGET = ("max_drop", "sensitivity")  # the int8 rows that keep an accuracy budget (deploy.budget)
_QENGINE = ("jit", "qengine", *_BUDGET)  # the TorchScript and .ptl int8 rows quantize for the PyTorch engine first
_ORT: dict[str, Any] = {
    "settings": ("opset",),
    "tools": ("torch", "onnx", "onnxscript", "onnxruntime"),
    "bounded_batch": True,
    "threads": "load",
    "runtime_imports": ("onnxruntime", "onnx"),
    "cuda_memory": "device",
    "runtime": "ONNX Runtime",
}
_TRT: dict[str, Any] = {
    "settings": ("opset",),  # built from the fp32 ONNX
    "tools": ("torch", "onnx", "tensorrt", "tensorrt-cu13"),  # the extra installs tensorrt-cu13
    "bounded_batch": True,
    "threads": "none",
    "runtime_imports": ("tensorrt",),
    "cuda_memory": "device",
    "runtime": "TensorRT",
}
_OV: dict[str, Any] = {
    "settings": ("inference_precision",),
    "tools": ("torch", "openvino", "nncf"),
    "bounded_batch": True,
    "threads": "load",
    "runtime_imports": ("openvino",),
    "companions": (".bin",),
    "runtime": "OpenVINO",
}
_LITERT_HINT = "pip install --no-deps -r requirements-litert.txt (from the repository, after the README's install)"
_LITERT: dict[str, Any] = {
    "requires": ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"),
    "install_hint": _LITERT_HINT,
    "tools": ("torch", "litert-torch-nightly", "ai-edge-litert-nightly", "ai-edge-quantizer-nightly"),
    "threads": "load",
    "runtime_imports": ("ai_edge_litert.interpreter",),
    "runtime": "LiteRT",
}
_NCNN: dict[str, Any] = {
    "requires": ("ncnn", "pnnx"),
    "install_hint": _MOBILE_HINT,
    "tools": ("torch", "pnnx", "ncnn"),
    "threads": "load",
    "runtime_imports": ("ncnn",),
    "companions": (".bin", ".json"),
    "runtime": "ncnn",
}
_COREML: dict[str, Any] = {
    "requires": ("coremltools",),
    "install_hint": _MOBILE_HINT,
    "tools": ("torch", "coremltools"),
    "threads": "none",
    "bundle": True,
    "runs_on": ("Darwin",),
    "runtime": "Core ML",
}
_ET: dict[str, Any] = {
    "tools": ("torch", "executorch"),
    "bounded_batch": True,
    "threads": "load",
    "runtime_imports": ("executorch.runtime", "executorch.extension.pybindings.portable_lib"),
    "runtime": "ExecuTorch",
}

FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format(
            "torch", "deploy.torch_eager", "fp32", ".pt", True, True, "PyTorch eager, fp32 (the reference)", **_EAGER
        ),
        Format(
            "torch-int8",
            "deploy.torch_eager",
            "int8",
            ".pt",
            True,
            False,
            "PyTorch eager, dynamic int8 quantization of nn.Linear",
            settings=("qengine", *_BUDGET),
            **_EAGER,
        ),
        Format("torchscript", "deploy.torchscript", "fp32", ".pt", True, True, "TorchScript, frozen, fp32", **_TS),
        Format(
            "torchscript-int8",
            "deploy.torchscript",
            "int8",
            ".pt",
            True,
            False,
            "TorchScript, frozen, dynamic int8",
            **(_TS | {"settings": _QENGINE}),
        ),
        Format("ptl", "deploy.ptl", "fp32", ".ptl", True, False, "mobile lite-interpreter file, fp32", **_PTL),
        Format(
            "ptl-int8",
            "deploy.ptl",
            "int8",
            ".ptl",
            True,
            False,
            "mobile lite-interpreter file, dynamic int8",
            **(_PTL | {"settings": _QENGINE}),
        ),
        Format("onnx", "deploy.onnx", "fp32", ".onnx", True, True, "ONNX, dynamic batch, fp32", **_ORT),
        Format(
            "onnx-int8-dynamic",
            "deploy.onnx",
            "int8",
            ".onnx",
            True,
            False,
            "ONNX Runtime dynamic int8 quantization",
            options={"quantization": "dynamic"},
            **(_ORT | {"settings": ("opset", *_BUDGET)}),
        ),
        Format(
            "onnx-int8-static",
            "deploy.onnx",
            "int8",
            ".onnx",
            True,
            True,
            "ONNX Runtime static int8 (QDQ, symmetric, per-channel weights, calibrated on real images)",
            options={"quantization": "static"},
            **(_ORT | {"settings": ("opset", *_BUDGET)}),
        ),
        Format(
            "openvino",
            "deploy.openvino",
            "fp32",
            ".xml",
            True,
            False,
            "OpenVINO IR (.xml + .bin), fp32 weights; inference precision set at load (f32 default)",
            **_OV,
        ),
        Format(
            "openvino-fp16",
            "deploy.openvino",
            "fp16",
            ".xml",
            True,
            False,
            "OpenVINO IR, fp16-compressed weights (half the file; computed in the inference precision)",
            options={"fp16_weights": True},
            **_OV,
        ),
        Format(
            "openvino-int8",
            "deploy.openvino",
            "int8",
            ".xml",
            True,
            False,
            "OpenVINO IR, int8 by NNCF post-training quantization on real calibration images",
            options={"int8": True, "t2t_form": "channel_major"},  # measured: deploy/openvino.py INT8_KEEP_FLOAT
            # its second recipe, tried when the first misses parity (why: deploy/openvino.py, INT8_KEEP_FLOAT)
            fallback_options={"t2t_form": "one_hot", "keep_float": ("soft_split",)},
            **(_OV | {"settings": ("inference_precision", "max_drop")}),  # NNCF's accuracy control
        ),
        Format(
            "tflite",
            "deploy.litert",
            "fp32",
            ".tflite",
            True,
            False,
            "LiteRT (TensorFlow Lite) flatbuffer, fp32, batch 1: Android's runtime (XNNPACK on CPU)",
            **_LITERT,
        ),
        Format(
            "tflite-fp16",
            "deploy.litert",
            "fp16",
            ".tflite",
            True,
            False,
            "LiteRT flatbuffer, fp16 weights (half the file; fp32 compute on CPUs without fp16 arithmetic)",
            options={"quantize": "fp16"},
            **_LITERT,
        ),
        Format(
            "tflite-int8",
            "deploy.litert",
            "int8",
            ".tflite",
            True,
            False,
            "LiteRT flatbuffer, dynamic-range int8 (int8 weights, activations quantized at run time)",
            options={"quantize": "dynamic"},
            settings=_BUDGET,
            **_LITERT,
        ),
        Format(
            "tensorrt",
            "deploy.tensorrt",
            "fp32",
            ".engine",
            False,
            True,
            "TensorRT engine, fp32",
            ("tensorrt",),
            _TRT_HINT,
            needs_gpu=True,
            **_TRT,
        ),
        Format(
            "tensorrt-fp16",
            "deploy.tensorrt",
            "fp16",
            ".engine",
            False,
            True,
            "TensorRT engine, fp16",
            ("tensorrt",),
            _TRT_HINT,
            needs_gpu=True,
            **_TRT,
        ),
        Format(
            "tensorrt-int8",
            "deploy.tensorrt",
            "int8",
            ".engine",
            False,
            True,
            "TensorRT engine, int8 from the QDQ ONNX",
            ("tensorrt",),
            _TRT_HINT,
            needs_gpu=True,
            **(_TRT | {"settings": ("opset", *_BUDGET)}),
        ),
        Format(
            "executorch",
            "deploy.executorch",
            "fp32",
            ".pte",
            True,
            False,
            "ExecuTorch .pte, XNNPACK delegate, fp32",
            ("executorch",),
            _ET_HINT,
            **_ET,
        ),
        Format(
            "executorch-int8",
            "deploy.executorch",
            "int8",
            ".pte",
            True,
            False,
            "ExecuTorch .pte, XNNPACK delegate, int8",
            ("executorch",),
            _ET_HINT,
            settings=_BUDGET,
            **_ET,
        ),
        Format(
            "coreml",
            "deploy.coreml",
            "fp16",
            ".mlpackage",
            True,
            False,
            "Core ML .mlpackage (ML program), fp16 compute; runs on macOS/iOS only, checked structurally elsewhere",
            **_COREML,
        ),
        Format(
            "coreml-int8",
            "deploy.coreml",
            "int8",
            ".mlpackage",
            True,
            False,
            "Core ML .mlpackage, int8 weights (linear symmetric, per channel), fp16 compute; macOS/iOS only",
            options={"int8": True},
            settings=_BUDGET,  # fitted in PyTorch on the package's int8 weights (deploy/coreml.py)
            **_COREML,
        ),
        Format("ncnn", "deploy.ncnn", "fp32", ".param", True, False, "ncnn .param + .bin (pnnx), fp32", **_NCNN),
        Format(
            "ncnn-fp16",
            "deploy.ncnn",
            "fp16",
            ".param",
            True,
            False,
            "ncnn .param + .bin (pnnx), fp16 weights and storage (x86: fp32 arithmetic)",
            options={"fp16": True},
            **_NCNN,
        ),
    ]
}

FORMAT_GROUPS: dict[str, list[str]] = {
    "all": list(FORMATS),
    "cpu": [n for n, f in FORMATS.items() if f.cpu],
    "gpu": [n for n, f in FORMATS.items() if f.gpu],
    # what the base install builds and runs on any CPU: no optional extra, no GPU
    "builtin": [n for n, f in FORMATS.items() if f.cpu and not f.requires and not f.needs_gpu],
    # the phone runtimes the README's install (its test extra, through the mobile extra) provides
    "mobile": [n for n, f in FORMATS.items() if f.install_hint == _MOBILE_HINT],
    # LiteRT's rows, which the README's quick start installs (requirements-litert.txt, --no-deps)
    "litert": [n for n, f in FORMATS.items() if f.install_hint == _LITERT_HINT],
}


def get_format(name: str | Format) -> Format:
    """The table row of ``name`` (a row passes through, so callers may take either)."""
    if isinstance(name, Format):
        return name
    try:
        return FORMATS[name]
    except KeyError:
        valid = ", ".join([*FORMATS, *FORMAT_GROUPS])
        raise ConfigError(f"unknown format {name!r}; choose from: {valid}") from None


def resolve_formats(spec: str | list[str]) -> list[Format]:
    """``"all"``, ``"cpu"``, ``"gpu"`` or comma-separated names -> formats in table order, no repeats."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        for n in FORMAT_GROUPS[name] if name in FORMAT_GROUPS else [get_format(name).name]:
            if n not in chosen:
                chosen.append(n)
    if not chosen:
        raise ConfigError("no formats given; choose from: " + ", ".join([*FORMATS, *FORMAT_GROUPS]))
    return [FORMATS[n] for n in FORMATS if n in chosen]
