"""Open anything the toolkit writes as a :class:`~deploy.base.Predictor`, and predict image files with it.

:func:`open_predictor` (``deploy.open``) takes an artifact file, an export folder (with a format
name, else its default) or a training checkpoint, resolves it (:func:`deploy.artifacts.resolve`),
loads it through its format row and attaches what it found out as ``predictor.artifact``.
:func:`predict_images` runs image files through it with the model's own eval preprocessing
(:func:`t2tvit.data.eval_transform_for`, the function the trainer's validation set, calibration
and parity checks use), so an artifact sees exactly the pixels its model was validated on.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from t2tvit.data import in_batches
from t2tvit.errors import ConfigError, T2TError
from t2tvit.models.variants import DEFAULT_MODEL  # whose preprocessing a file naming no model gets

from .artifacts import Artifact, check_integrity, resolve
from .base import FORMATS, Format, Predictor

__all__ = ["Predictions", "open_predictor", "predict_images", "read_class_names"]


@contextlib.contextmanager
def quiet_runtimes() -> Iterator[None]:
    """Hide the runtimes' own deprecation notices (TorchScript, the lite interpreter, quantized
    tensors): they concern PyTorch's roadmap, not the user's images."""
    with warnings.catch_warnings():
        for category in (UserWarning, FutureWarning, DeprecationWarning):
            warnings.simplefilter("ignore", category)
        yield


def open_predictor(
    path: str | Path,
    format: str | Format | None = None,
    *,
    device: str | None = None,
    threads: int | None = None,
    model: str | None = None,
    img_size: int | None = None,
    verify: bool = True,
) -> Predictor:
    """A Predictor for an artifact file, an export folder (``format`` picks the artifact) or a checkpoint.

    ``verify``: an artifact its export folder's manifest lists is refused when it no longer matches the
    sha256 recorded at export (tampered, truncated, a companion missing); False for a file changed on purpose.

    ``device``: default cpu, or cuda for formats that need a GPU. ``model`` / ``img_size``: only for a
    checkpoint that does not record them (or to run it at another size). The returned predictor's
    ``artifact`` holds the model name, input size, class names and preprocessing it will be fed with.
    Raises :class:`~t2tvit.errors.ConfigError` (one sentence) for anything a user can get wrong.
    """
    art = resolve(path, format, model=model, img_size=img_size)
    if device not in (None, "cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', not {device!r}")
    if verify:
        check_integrity(art)
    else:
        art.verified = False if art.sha256 else None
    with quiet_runtimes():
        try:
            predictor = _load(art, device or (art.fmt.device_for() if art.fmt is not None else "cpu"), threads)
        except T2TError:
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: one sentence, not a traceback
            what = art.fmt.name if art.fmt is not None else "a checkpoint"
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ConfigError(f"{art.path} could not be loaded as {what} ({type(e).__name__}: {first})") from None
    declared = predictor.input_hw
    if declared is not None and art.img_size not in (None, declared):
        raise ConfigError(f"{art.path.name} takes {declared[0]}x{declared[1]} images; drop --img-size")
    art.img_size = art.img_size or declared
    if art.img_size is None:
        raise ConfigError(f"cannot tell the input size of {art.path.name} (no manifest beside it); pass --img-size")
    predictor.artifact = art
    return predictor


def _load(art: Artifact, device: str, threads: int | None) -> Predictor:
    if art.fmt is not None:
        return art.fmt.load(art.path, device, threads)
    import t2tvit

    from .torch_eager import TorchPredictor

    model = t2tvit.create_model(art.model, checkpoint=art.path, img_size=art.img_size).eval()
    art.img_size = tuple(int(s) for s in model.img_size)
    art.num_classes = int(model.num_classes)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device cuda was asked for but no CUDA GPU is visible on this machine")
    predictor = TorchPredictor(model.to(device), FORMATS["torch"], art.path, device)
    predictor.format = "checkpoint"
    return predictor


@dataclass
class Predictions:
    """What :func:`predict_images` returns: per readable image its top classes, and the unreadable ones."""

    results: list[dict[str, Any]] = field(default_factory=list)  # {"image", "top": [(index, p)], "num_classes"}
    errors: list[dict[str, str]] = field(default_factory=list)  # {"image", "error"}

    def labelled(self, names: Sequence[str] | None) -> list[dict[str, Any]]:
        """The results with class names (None where ``names`` has none for an index)."""

        def label(i: int) -> str | None:
            return names[i] if names is not None and i < len(names) and names[i] else None

        return [
            {"image": r["image"], "top": [{"index": i, "class": label(i), "probability": p} for i, p in r["top"]]}
            for r in self.results
        ]


def expand_images(images: Sequence[str | Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Files in the order given (a folder: every image under it, sorted); an empty folder is an error."""
    from t2tvit.data import list_images

    files: list[Path] = []
    errors: list[dict[str, str]] = []
    for raw in images:
        p = Path(raw)
        if p.is_dir():
            found = list_images(p)
            if not found:
                errors.append({"image": str(raw), "error": "folder holds no images"})
            files += found
        else:
            files.append(p)  # a missing file is reported where it is read, in order
    return files, errors


def _read_image(path: Path) -> tuple[Any, str | None]:
    """The RGB image, or None and why (the toolkit's one tolerant reader, its warning turned into the reason)."""
    from t2tvit.data import open_rgb

    if not path.is_file():
        return None, "no such file"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = open_rgb(path)
    if img is not None:
        return img, None
    msg = next((str(w.message) for w in caught if "unreadable image" in str(w.message)), "")
    return None, msg.split(f"{path}: ", 1)[-1] or "cannot be decoded"


def predict_images(
    predictor: Predictor,
    images: Sequence[str | Path],
    *,
    topk: int = 5,
    batch_size: int = 32,
    on_error: Callable[[dict[str, str]], None] | None = None,
) -> Predictions:
    """Top-``topk`` (index, probability) of each image file (folders: every image under them), in batches.

    ``predictor`` comes from :func:`open_predictor` (its ``artifact`` says the preprocessing). A batch
    smaller than the artifact's minimum (a fixed-batch artifact) is padded with zeros whose outputs
    are dropped. ``on_error(record)`` is called as each unreadable file is met; the others are still
    predicted. Probabilities are the softmax of the logits.
    """
    from t2tvit.data import eval_transform_for

    if topk < 1 or batch_size < 1:
        raise ConfigError("--topk and --batch-size must be at least 1")
    art: Artifact | None = predictor.artifact
    if art is None or art.img_size is None:
        raise ConfigError("predict_images needs a predictor from deploy.open (it knows the preprocessing)")
    transform = eval_transform_for(art.model or DEFAULT_MODEL, art.img_size, **art.preprocessing)
    min_batch = max(art.batch[0] if art.batch else 1, int(predictor.min_batch))
    batch = max(min(batch_size, art.batch[2]) if art.batch else batch_size, min_batch)
    files, errors = expand_images(images)
    out = Predictions(errors=list(errors))
    for err in errors:
        if on_error is not None:
            on_error(err)
    with quiet_runtimes():
        for start in range(0, len(files), batch):
            _predict_batch(predictor, transform, files[start : start + batch], topk, min_batch, out, on_error)
    return out


def _predict_batch(
    predictor: Predictor,
    transform: Any,
    files: list[Path],
    topk: int,
    min_batch: int,
    out: Predictions,
    on_error: Callable[[dict[str, str]], None] | None,
) -> None:
    arrays, good = [], []
    for f in files:
        img, why = _read_image(f)
        if img is None:
            out.errors.append({"image": str(f), "error": why or "cannot be decoded"})
            if on_error is not None:
                on_error(out.errors[-1])
            continue
        arrays.append(np.asarray(transform(img), dtype=np.float32))
        good.append(f)
    if not arrays:
        return
    logits = in_batches(predictor, np.stack(arrays), len(arrays), min_batch=min_batch)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    k = min(topk, probs.shape[1])
    for f, p in zip(good, probs, strict=True):
        top = np.argsort(-p, kind="stable")[:k]
        out.results.append({"image": str(f), "top": [(int(i), float(p[i])) for i in top], "num_classes": len(p)})


def read_class_names(spec: str | Path) -> list[str]:
    """Class names from a text file (one per line), a dataset folder (its ``train/`` sub-folders, sorted
    as the trainer sorts them), or a bundled dataset's name (``digits``)."""
    from t2tvit.data import dataset_path

    path = dataset_path(spec)
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read class names from {path} ({e}); pass a UTF-8 text file") from None
        while names and not names[-1]:
            names.pop()
        if not names:
            raise ConfigError(f"class-name file {path} is empty; write one class name per line")
        return names
    if path.is_dir():
        root = next((path / s for s in ("train", "training") if (path / s).is_dir()), path)
        names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not names:
            raise ConfigError(f"{root} has no class sub-folders; pass a dataset folder laid out as train/<class>/")
        return names
    raise ConfigError(
        f"--classes {spec} is neither a file, a folder nor 'digits'; pass a text file with one name per line"
    )
