"""Deployment: one module per artifact format and the orchestration that reads their one table.

* :mod:`deploy.base` -- the :class:`~deploy.base.Predictor` contract and the format table (``FORMATS``);
  each format is one module here (``torch_eager``, ``torchscript``, ``ptl``, ``onnx``, ``tensorrt``,
  ``executorch``) with ``export`` and ``load``;
* :func:`export_checkpoint` / :func:`export_all` -- every requested format, verified, with a manifest
  (:class:`~deploy.manifest.Manifest` of :class:`~deploy.manifest.ArtifactEntry` records, :mod:`deploy.manifest`);
* :func:`open` -- any artifact file, export folder or training checkpoint as a Predictor, and
  :func:`predict_images` -- image files through it with the model's own preprocessing;
* :func:`validate` -- top-1/top-5 and per-class accuracy of a checkpoint, an artifact or an export folder on a
  labelled folder, and each artifact's drop from the fp32 model (``t2t validate``, :mod:`deploy.validation`);
* :mod:`deploy.profiler` -- latency, memory, MAC rate and accuracy of every artifact (``t2t bench``),
  :mod:`deploy.report` -- its report files;
* :mod:`deploy.pipeline` -- teacher -> student -> export -> verify -> report (``t2t compress``).

Submodules import their heavy dependencies (torch, the runtimes) only when used.
"""

__toolkit__ = "t2tvit-edge"  # read (not imported) by t2t.cli.name_clashes: is this package ours?

from .base import FORMATS, Format, Predictor, get_format, resolve_formats
from .export import Export, export_all, export_checkpoint, verify_artifacts, verify_export, verify_folder
from .manifest import ArtifactEntry, Manifest
from .predict import open_predictor, predict_images, read_class_names
from .validation import ValidationReport, validate

open = open_predictor  # noqa: A001 - deploy.open(path) is the one entry point, like io.open

__all__ = [
    "FORMATS",
    "ArtifactEntry",
    "Export",
    "Format",
    "Manifest",
    "Predictor",
    "ValidationReport",
    "export_all",
    "export_checkpoint",
    "get_format",
    "open",
    "open_predictor",
    "predict_images",
    "read_class_names",
    "resolve_formats",
    "validate",
    "verify_artifacts",
    "verify_export",
    "verify_folder",
]
