"""Datasets, transforms and loaders for training, evaluation, calibration and benchmarks.

* ImageNet-style folders (``ROOT/train/<class>/*.jpg``, ``ROOT/val/<class>/*.jpg``) through
  :class:`SafeImageFolder`, which turns a sample that cannot be decoded or whose transform
  raises into a :class:`SkippedSample` instead of crashing the epoch;
* a small *real* dataset that ships with the toolkit, so demos and tests run offline:
  scikit-learn's 1,797 handwritten digits (8x8, 10 classes) written out once as an image
  folder, upscaled to 64x64 (:func:`bundled_dataset_path`);
* timm's transforms (RandAugment, random erasing), with the RandAugment ops that today's
  Pillow refuses repaired (:func:`repair_augment_ops`), and samplers for DDP (:func:`build_loader`).

A batch from :func:`build_loader` is ``(images, targets, skipped)``: the third item lists the
:class:`SkippedSample` records dropped from that batch (file, reason, error), so the trainer's
main process can count them per epoch and name each file once, even when the samples are
decoded in worker processes that forget everything at the end of each epoch.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .errors import ConfigError

__all__ = [
    "BUNDLED_IMG_SIZE",
    "HARD_IMG_SIZE",
    "IMAGE_EXTENSIONS",
    "SKIP_REASONS",
    "SafeImageFolder",
    "ShardSampler",
    "SkippedSample",
    "build_loader",
    "build_transform",
    "BUNDLED_DATASETS",
    "bundled_dataset_path",
    "dataset_path",
    "dataset_split",
    "existing_folder",
    "image_folder",
    "in_batches",
    "collate_skip",
    "eval_transform_for",
    "find_split",
    "list_images",
    "open_rgb",
    "posterize",
    "repair_augment_ops",
    "set_epoch",
    "to_rgb",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
BUNDLED_IMG_SIZE = 64  # side of the written digit images; the trainer resizes to --img-size
HARD_IMG_SIZE = 224  # side of the digits-hard images
# Dataset names that select a bundled dataset wherever a dataset folder is asked for (DATA, --data,
# --calib-data, --classes), unless a folder of that name exists.
BUNDLED_DATASETS = ("digits", "digits-hard")


def in_batches(fn: Callable[[np.ndarray], Any], images: np.ndarray, size: int, *, min_batch: int = 1) -> np.ndarray:
    """``fn`` (images -> logits) over ``images`` in chunks of at most ``size``, as float64; a chunk smaller than
    ``min_batch`` (a fixed-batch artifact's last one) is zero-padded and the padding's outputs dropped."""
    size = max(int(size), int(min_batch), 1)
    out = []
    for start in range(0, len(images), size):
        chunk = images[start : start + size]
        n = len(chunk)
        if n < min_batch:
            chunk = np.concatenate([chunk, np.zeros((min_batch - n, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(fn(chunk), dtype=np.float64)[:n])
    return np.concatenate(out)


def _cache_root() -> Path:
    env = os.environ.get("T2TVIT_DATA")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "t2tvit"


def bundled_dataset_path(root: str | Path | None = None, name: str = "digits") -> Path:
    """Folder of a bundled dataset (``train/`` and ``val/``), created on first use.

    Both are drawn from the 1,797 images of scikit-learn's ``load_digits`` (shipped inside
    scikit-learn, so nothing is downloaded), split 80/20 per class with a fixed seed: 1,438 for
    training and 359 for validation, the same split for both.

    - ``digits``: each 8x8 digit (grey levels 0..16) upscaled to 48x48 with nearest-neighbour and
      centred on a 64x64 black RGB PNG, so that centre crops at evaluation never cut into the digit.
      Clean and easy: the models of the quick start agree with their int8 files on nearly every image.
    - ``digits-hard``: the same digits as 224x224 RGB JPEGs: each digit smoothly upscaled to a random
      size (144-186 px), shifted off centre, in a random light colour and contrast over a smooth colour
      field with random strokes and blobs, plus sensor noise (:func:`_render_hard`). A model trained on
      ``digits`` keeps part of its accuracy there (the quick start's student: 95% -> 71%) with many
      images near its decision boundary, where int8 rows' differences show; a model sees the images
      resized to its own input, as it would any photo.

    The folders live in ``$T2TVIT_DATA`` or ``~/.cache/t2tvit`` unless ``root`` is given. Each is
    written to a temporary folder and renamed into place, so concurrent first uses (several DDP ranks,
    parallel tests) never see a half-written dataset.
    """
    if name not in _BUNDLED:
        raise ConfigError(f"no bundled dataset {name!r}; the bundled ones are {', '.join(BUNDLED_DATASETS)}")
    folder, write = _BUNDLED[name]
    root = Path(root) if root is not None else _cache_root()
    target = root / folder
    if (target / "train").is_dir() and (target / "val").is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        write(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first; its copy is identical
            if not (target / "val").is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _bundled_name(data: str | Path) -> bool:
    return str(data) in BUNDLED_DATASETS and not Path(data).is_dir()


def dataset_path(data: str | Path) -> Path:
    """The folder ``data`` names: a bundled dataset's name (``digits``, ``digits-hard``), else the path itself."""
    return bundled_dataset_path(name=str(data)) if _bundled_name(data) else Path(data)


def dataset_split(data: str | Path, split: str) -> Path:
    """``split`` (``train`` or ``val``) of the dataset ``data`` names (see :func:`dataset_path`)."""
    return find_split(dataset_path(data), split)


def image_folder(data: str | Path) -> Path:
    """A folder of images as given, or for a bundled dataset's name its validation split: what
    ``--data`` and ``--calib-data`` read labelled or calibration images from."""
    return dataset_split(data, "val") if _bundled_name(data) else Path(data)


def existing_folder(data: str | Path, what: str = "data folder") -> Path:
    """:func:`image_folder` of ``data`` when it is a folder, else a ConfigError saying what ``data`` may be."""
    folder = image_folder(data)
    if not folder.is_dir():
        bundled = " or ".join(BUNDLED_DATASETS)
        raise ConfigError(f"{what} {folder} does not exist; pass a folder of <class>/<image> files, {bundled}")
    return folder


def _digit_split() -> Iterator[tuple[str, int, int, np.ndarray]]:
    """``(split, class, index, 8x8 uint8 image)`` of every scikit-learn digit, in the bundled 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    for cls in range(10):
        idx = np.flatnonzero(digits.target == cls)
        rng.shuffle(idx)
        n_val = int(round(0.2 * len(idx)))
        for split, chosen in (("val", idx[:n_val]), ("train", idx[n_val:])):
            for i in chosen:
                yield split, cls, int(i), images[i]


def _write_digits(out: Path) -> None:
    from PIL import Image

    scale, side = 6, BUNDLED_IMG_SIZE
    pad = (side - 8 * scale) // 2
    for split, cls, i, image in _digit_split():
        folder = out / split / str(cls)
        folder.mkdir(parents=True, exist_ok=True)
        canvas = np.zeros((side, side), np.uint8)
        canvas[pad : pad + 8 * scale, pad : pad + 8 * scale] = np.kron(image, np.ones((scale, scale), np.uint8))
        Image.fromarray(canvas, "L").convert("RGB").save(folder / f"{i:04d}.png")


def _write_digits_hard(out: Path) -> None:
    for split, cls, i, image in _digit_split():
        folder = out / split / str(cls)
        folder.mkdir(parents=True, exist_ok=True)
        _render_hard(image, np.random.default_rng([1, i])).save(folder / f"{i:04d}.jpg", quality=90)  # a photo's format


# digits-hard's random draws per image: [low, high) ranges, and the brightest a clutter colour gets
_HARD = {
    "field": 80, "strokes": (2, 7), "stroke_width": (1, 6), "blobs": (0, 3), "blob_radius": (8, 28),
    "clutter": 180, "size": (144, 187), "contrast": (0.6, 1.0), "offset": 16, "noise": (2, 12),
}  # fmt: skip


def _render_hard(digit: np.ndarray, rng: np.random.Generator, side: int = HARD_IMG_SIZE) -> Any:
    """One ``digits-hard`` image: the 8x8 ``digit`` over clutter, drawn with ``rng`` (:func:`bundled_dataset_path`)."""
    from PIL import Image, ImageDraw

    h = _HARD

    def colour(top: int) -> tuple[int, ...]:
        return tuple(int(c) for c in rng.integers(40, top, 3))

    # a smooth colour field (a 4x4 grid of dim colours, bicubically upscaled), strokes and blobs
    field = rng.uniform(0, h["field"], (4, 4, 3)).astype(np.uint8)
    canvas = Image.fromarray(field, "RGB").resize((side, side), Image.BICUBIC)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(*h["strokes"])):
        ends = tuple(int(v) for v in rng.integers(0, side, 4))
        draw.line(ends, fill=colour(h["clutter"]), width=int(rng.integers(*h["stroke_width"])))
    for _ in range(rng.integers(*h["blobs"])):
        x, y, r = (int(v) for v in (*rng.integers(0, side, 2), rng.integers(*h["blob_radius"])))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour(h["clutter"]))
    # the digit: smoothly upscaled, off centre, in a light colour at a random contrast
    size = int(rng.integers(*h["size"]))
    alpha = np.asarray(Image.fromarray(digit, "L").resize((size, size), Image.BILINEAR), np.float32) / 255.0
    alpha = alpha[..., None] * rng.uniform(*h["contrast"])
    shift = min((side - size) // 2, h["offset"])
    x, y = (int((side - size) // 2 + v) for v in rng.integers(-shift, shift + 1, 2))
    pixels = np.asarray(canvas, np.float32)
    patch = pixels[y : y + size, x : x + size]
    pixels[y : y + size, x : x + size] = patch * (1 - alpha) + rng.uniform(170, 255, 3) * alpha
    pixels += rng.normal(0, rng.uniform(*h["noise"]), pixels.shape)  # sensor noise
    return Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8), "RGB")


# bundled name -> (its cache folder, renamed whenever the written images change; what writes it)
_BUNDLED = {"digits": ("digits-v1", _write_digits), "digits-hard": ("digits-hard-v1", _write_digits_hard)}


def find_split(root: str | Path, split: str) -> Path:
    """``root/split`` of an ImageNet-style dataset, with a clear error when it is missing."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"dataset folder {root} does not exist; pass a folder holding train/ and val/")
    path = root / split
    if not path.is_dir():
        alt = {"val": ("validation", "valid"), "train": ("training",)}.get(split, ())
        for name in alt:
            if (root / name).is_dir():
                return root / name
        raise ConfigError(
            f"dataset folder {root} has no {split}/ subfolder; lay it out as {root}/{split}/<class>/<image>"
        )
    return path


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


# Pillow modes holding more than 8 bits per sample, and the divisor that maps their full range to 0..255.
# ``convert("RGB")`` clips them instead (a 16-bit grey of 4096, 1/16 of full scale, would become white).
_WIDE_MODES = {"I;16": 257.0, "I;16L": 257.0, "I;16B": 257.0, "I;16N": 257.0, "I": 257.0}


def to_rgb(im: Any) -> Any:
    """``im`` as an 8-bit RGB PIL image, the same way for every reader of the toolkit.

    16-bit greyscale (Pillow's ``I;16*`` and ``I`` modes, as 16-bit PNG/TIFF/PGM open) is scaled from
    0..65535 to 0..255, not clipped; 16-bit RGB(A) PNGs already open as 8-bit RGB(A) (Pillow keeps the
    high byte). Palette images with a transparent colour go through RGBA so Pillow does not warn; as
    with every image with alpha, the colour stored under a transparent pixel is kept (what training on
    the same file saw). Everything else is Pillow's own ``convert("RGB")``.
    """
    from PIL import Image

    if im.mode in _WIDE_MODES or im.mode == "F":  # F: 32-bit float grey, already on the 0..255 scale
        grey = np.asarray(im, dtype=np.float64) / _WIDE_MODES.get(im.mode, 1.0)
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("P", "PA") and (im.mode == "PA" or "transparency" in im.info):
        return im.convert("RGBA").convert("RGB")
    if im.mode == "RGB":
        return im.copy()
    return im.convert("RGB")


def _read_rgb(path: str | Path) -> Any:
    """Decode ``path`` fully (Pillow opens lazily) and return it as :func:`to_rgb` does; raises what the
    decoder raises (an unreadable file, a decompression bomb over ``Image.MAX_IMAGE_PIXELS``...)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


def open_rgb(path: str | Path, warn: bool = True) -> Any:
    """The image at ``path`` as an RGB PIL image (:func:`to_rgb`), or None (with a warning naming it) if
    it cannot be decoded: a corrupt or foreign file, a decompression bomb, any decoder failure."""
    try:
        return _read_rgb(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure (incl. DecompressionBombError) skips this file
        if warn:
            warnings.warn(f"skipping unreadable image {path}: {_describe(e)}", RuntimeWarning, stacklevel=3)
        return None


SKIP_REASONS = ("unreadable", "transform")  # why a sample was skipped: its file, or its transform


@dataclass(frozen=True)
class SkippedSample:
    """A sample dropped from its batch: which file, why (``"unreadable"`` or ``"transform"``), the error.

    Returned by :class:`SafeImageFolder` in place of ``(image, target)`` and gathered by
    :func:`collate_skip`; plain data, so it crosses from loader workers to the trainer, which
    counts it and names the file once (:class:`t2tvit.engine.SkipGuard`).
    """

    path: str
    reason: str
    error: str

    def __post_init__(self) -> None:
        if self.reason not in SKIP_REASONS:  # the trainer counts skips per reason; an unknown one would be lost
            raise ValueError(f"SkippedSample reason must be one of {SKIP_REASONS}, not {self.reason!r}")

    def __str__(self) -> str:
        what = "unreadable image" if self.reason == "unreadable" else "image whose transform failed"
        return f"skipped {what} {self.path}: {self.error}"


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class SafeImageFolder(Dataset):
    """``ROOT/<class>/<image>`` like torchvision's ``ImageFolder``, tolerant of bad samples.

    A sample whose file cannot be decoded, or whose transform raises (any ``Exception``: a
    library augmentation meeting an image it was not written for, a corrupt file that decodes
    to nonsense), yields a :class:`SkippedSample` naming the file and the error instead of an
    exception: in a loader worker, an exception kills the whole run, and a multi-day DDP run
    must not die of one sample. :func:`collate_skip` drops it from the batch; the trainer counts
    it per epoch and names it once. Classes are the sorted sub-folder names; ``class_to_idx``
    can force another order (e.g. a validation split missing a class).
    """

    def __init__(self, root: str | Path, transform: Any = None, class_to_idx: dict[str, int] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"image folder {self.root} does not exist")
        classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise ConfigError(f"image folder {self.root} has no class sub-folders; lay it out as <class>/<image>")
        self.class_to_idx = dict(class_to_idx) if class_to_idx else {c: i for i, c in enumerate(classes)}
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.__getitem__)
        self.samples: list[tuple[str, int]] = []
        for c in classes:
            if c not in self.class_to_idx:
                raise ConfigError(f"{self.root}/{c} is a class the training split does not have")
            self.samples += [(str(p), self.class_to_idx[c]) for p in list_images(self.root / c)]
        if not self.samples:
            raise ConfigError(f"image folder {self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | SkippedSample:
        path, target = self.samples[index]
        try:
            img = _read_rgb(path)
        except Exception as e:  # noqa: BLE001 - any decoder failure (incl. decompression bombs) skips this file
            return SkippedSample(path, "unreadable", _describe(e))
        if self.transform is not None:
            try:
                img = self.transform(img)
            except Exception as e:  # noqa: BLE001 - one sample's augmentation must not end the run
                return SkippedSample(path, "transform", _describe(e))
        return img, target


def collate_skip(
    batch: Sequence[tuple[Any, int] | SkippedSample | None],
) -> tuple[torch.Tensor, torch.Tensor, list[SkippedSample]]:
    """Stack the good samples; the third item lists the skipped ones (a bare None counts as unreadable)."""
    good = [b for b in batch if b is not None and not isinstance(b, SkippedSample)]
    skipped = [
        b if isinstance(b, SkippedSample) else SkippedSample("<unnamed sample>", "unreadable", "dataset returned None")
        for b in batch
        if b is None or isinstance(b, SkippedSample)
    ]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([b[0] for b in good])
    targets = torch.as_tensor([b[1] for b in good], dtype=torch.long)
    return images, targets, skipped


def posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's RandAugment posterize, keeping Pillow's old meaning of 0 bits: a black image.

    timm's ``PosterizeIncreasing`` asks for ``4 - int(magnitude / 10 * 4)`` bits, which is 0 at
    the top magnitude; with ``rand-m9-mstd0.5`` the magnitude is drawn from N(9, 0.5) and clipped
    at 10, so about 0.15% of training samples ask for 0 bits (24 of the 20,000 samples of
    ``tests/test_data.py``). Pillow used to mask every bit then (``i & ~(2**8 - 1) == 0``: a black
    image, which is what the official recipe trained on); Pillow 13's ``ImageOps.posterize``
    raises ``ValueError`` instead and kills a loader worker. 1..7 bits are Pillow's own
    posterize, 8 or more the image itself (as timm does); fewer than 1 (only reachable with
    ``mmax`` > 10) is black, as before.
    """
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep >= 1:
        return ImageOps.posterize(img, bits_to_keep)
    return img.point([0] * 256 * len(img.getbands()))


# timm RandAugment / AutoAugment / AugMix op names whose function breaks under today's libraries,
# and the function that restores its old behaviour.
_REPAIRED_OPS: dict[str, Any] = {
    "Posterize": posterize,
    "PosterizeIncreasing": posterize,
    "PosterizeOriginal": posterize,
}


def _augment_ops(transform: Any) -> Iterator[Any]:
    """Every timm ``AugmentOp`` inside ``transform``: Compose, RandAugment, AutoAugment policies, AugMix."""
    from timm.data.auto_augment import AugmentOp

    if isinstance(transform, AugmentOp):
        yield transform
        return
    if isinstance(transform, (list, tuple)):
        for item in transform:
            yield from _augment_ops(item)
        return
    for attr in ("transforms", "ops", "policy"):
        children = getattr(transform, attr, None)
        if isinstance(children, (list, tuple)):
            yield from _augment_ops(children)


def repair_augment_ops(transform: Any) -> int:
    """Give the timm augmentation ops inside ``transform`` the fixed functions of ``_REPAIRED_OPS``.

    Done on the built transform rather than on timm's module tables, so importing the toolkit
    changes nothing for other timm users, and every transform :func:`build_transform` returns
    is repaired however timm built it. Only posterize needs it: every other RandAugment /
    AutoAugment / AugMix op runs on the RGB images the loaders feed it (any file mode after
    :func:`open_rgb`'s conversion, 1x1 and 1x1000 images, constant images), which
    ``tests/test_data.py`` checks. Returns how many ops were repaired.
    """
    repaired = 0
    for op in _augment_ops(transform):
        fixed = _REPAIRED_OPS.get(op.name)
        if fixed is not None:
            op.aug_fn = fixed
            repaired += 1
    return repaired


def build_transform(
    is_training: bool,
    img_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 0.9,
    interpolation: str = "bicubic",
    auto_augment: str | None = None,
    re_prob: float = 0.0,
    hflip: float = 0.5,
    scale: Sequence[float] = (0.08, 1.0),
    color_jitter: float | None = None,
) -> Any:
    """timm's train (random-resized crop, flip, RandAugment, random erasing) or eval transform.

    The training transform's augmentation ops are repaired for today's Pillow
    (:func:`repair_augment_ops`).
    """
    from timm.data import create_transform

    if is_training:
        transform = create_transform(
            img_size,
            is_training=True,
            scale=tuple(scale),
            hflip=hflip,
            auto_augment=None if auto_augment in (None, "", "none") else auto_augment,
            color_jitter=color_jitter,
            re_prob=re_prob,
            re_mode="pixel",
            interpolation=interpolation,
            mean=tuple(mean),
            std=tuple(std),
        )
        repair_augment_ops(transform)
        return transform
    return create_transform(
        img_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation, mean=tuple(mean), std=tuple(std)
    )


# What timm's resolve_data_config falls back to for a model without a pretrained_cfg.
_EVAL_DEFAULTS: dict[str, Any] = {
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.9,
    "interpolation": "bicubic",
}


def _model_cfg(model: Any) -> dict[str, Any]:
    if isinstance(model, str):
        from timm.models import get_pretrained_cfg

        from . import models  # noqa: F401 - registers the T2T-ViT variants with timm

        cfg = get_pretrained_cfg(model)
        if cfg is None:
            raise ConfigError(f"unknown model {model!r}; `t2t info --list` shows every T2T-ViT variant")
        return cfg.to_dict()
    if isinstance(model, Mapping):
        return dict(model)
    if hasattr(model, "to_dict"):  # a timm PretrainedCfg
        return model.to_dict()
    return dict(getattr(model, "pretrained_cfg", None) or {})


def eval_transform_for(
    model: Any,
    img_size: int | Sequence[int] | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
) -> Any:
    """The eval transform of ``model`` at ``img_size``: resize, centre crop, normalise.

    The one definition of "the model's preprocessing", shared by the trainer's validation set,
    calibration and parity images and ``t2t predict``,
    so an artifact sees exactly the pixels its model was validated on. ``model`` is a registered
    model name (its timm ``pretrained_cfg`` is read; nothing is built), a cfg mapping, or a model
    with a ``pretrained_cfg``. ``img_size`` defaults to the cfg's input size; the keyword arguments
    override the cfg (e.g. the trainer's ``--crop-pct`` / ``--interpolation``; None keeps it).
    """
    cfg = _EVAL_DEFAULTS | {k: v for k, v in _model_cfg(model).items() if v is not None}
    overrides = {"mean": mean, "std": std, "crop_pct": crop_pct, "interpolation": interpolation}
    cfg |= {k: v for k, v in overrides.items() if v is not None}
    if img_size is None:
        img_size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    if isinstance(img_size, Sequence) and not isinstance(img_size, str):
        size = tuple(int(s) for s in img_size)
        img_size = size[0] if len(set(size)) == 1 else size
    return build_transform(
        False,
        img_size,
        mean=cfg["mean"],
        std=cfg["std"],
        crop_pct=cfg["crop_pct"],
        interpolation=cfg["interpolation"],
    )


class _QuietWhenTheReceiverLeft:
    """A loader worker's ``sys.excepthook`` that stays quiet when the process receiving a batch hung up.

    A worker hands each batch's shared memory over a socket served by a thread of its own
    (``multiprocessing.resource_sharer``), which reports any error through ``sys.excepthook``. When Ctrl-C
    lands in the main process while it is connecting to that socket, the worker's thread sees the
    connection drop (``EOFError`` / ``ConnectionError``) and would print a traceback under the main
    process's one-line report. Every other error is reported as before."""

    def __init__(self, report: Callable[..., Any]):
        self.report = report

    def __call__(self, kind: type[BaseException], error: BaseException, tb: Any) -> None:
        if issubclass(kind, (EOFError, ConnectionError)) and any(
            frame.filename.endswith(f"multiprocessing{os.sep}resource_sharer.py") for frame in traceback.extract_tb(tb)
        ):
            return
        self.report(kind, error, tb)


def _seed_worker(worker_id: int) -> None:
    # Each worker of each rank draws from its own stream, derived from torch's per-worker seed
    # (itself derived from the loader's generator), so augmentations are reproducible.
    import random
    import signal

    # Ctrl-C reaches the whole process group: the main process reports it in one line and shuts the
    # workers down; a worker that handled it too would print its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = _QuietWhenTheReceiverLeft(sys.excepthook)

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class ShardSampler(torch.utils.data.Sampler[int]):
    """Rank ``r`` of ``w`` takes indices ``r, r+w, r+2w, ...`` in order: no padding, no repeats.

    For evaluation under DDP, where ``DistributedSampler`` would pad the last shard with
    repeated images and bias the accuracy; metrics are summed across ranks instead.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


class _EpochTagged(torch.utils.data.Sampler):
    """A training sampler whose indices carry the epoch: ``(epoch, index)``, read by :class:`_EpochSeeded`."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class _EpochSeeded(Dataset):
    """The training set as persistent loader workers must see it: reseeded at each epoch's first batch.

    Workers that live across epochs (``persistent_workers``) are seeded once, so epoch ``e``'s
    augmentations would depend on every epoch before it and a resumed run could not repeat the
    uninterrupted one. Each worker instead reseeds Python, NumPy and torch from
    (seed, rank, epoch, worker id) when the epoch its indices carry changes. In the main process
    (``workers=0``) nothing is reseeded: that process's generators are the run's own, checkpointed.
    """

    def __init__(self, dataset: Dataset, seed: int, rank: int):
        self.dataset, self.seed, self.rank = dataset, seed, rank
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # classes, samples, transform... of the wrapped set
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, tagged: tuple[int, int]) -> Any:
        epoch, index = tagged
        info = torch.utils.data.get_worker_info()
        if info is not None and epoch != self._epoch:
            import random

            self._epoch = epoch
            seed = (((self.seed * 1_000_003 + self.rank) * 10_007 + epoch) * 1_009 + info.id) % 2**32
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        return self.dataset[index]


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    training: bool,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader yielding ``(images, targets, skipped)``, sharded over ``world_size`` ranks.

    Training shuffles with a ``DistributedSampler`` (also for one process) whose order
    depends only on ``seed`` and the epoch, and drops the last incomplete batch. Call
    :func:`set_epoch` before each epoch: the workers (kept alive across epochs and
    validation passes, as timm does) reseed from (seed, rank, epoch, worker) at its first
    batch, which is what makes a resumed run repeat the uninterrupted one.
    Evaluation visits every image exactly once across ranks. ``pin_memory``: page-locked
    batches for fast, asynchronous copies to a CUDA device (give it only when training on one).
    """
    if training:
        sampler: Any = _EpochTagged(
            DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        )
        dataset = _EpochSeeded(dataset, seed, rank)
    else:
        sampler = ShardSampler(len(dataset), rank, world_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skip,
        pin_memory=pin_memory,
        drop_last=training,
        worker_init_fn=_seed_worker,
        generator=torch.Generator(),
        persistent_workers=workers > 0,
    )
    loader.seed, loader.rank = seed, rank  # read by set_epoch
    set_epoch(loader, 0)
    return loader


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Make the loader's shuffling and worker seeds a function of (seed, rank, epoch) only."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    seed, rank = getattr(loader, "seed", 0), getattr(loader, "rank", 0)
    loader.generator.manual_seed((seed * 1_000_003 + rank * 10_007 + epoch) % 2**63)
