"""The default training transform under today's Pillow: posterize repaired, unusual images survive."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import t2tvit
from t2tvit.data import SafeImageFolder, SkippedSample, build_transform, posterize, repair_augment_ops
from t2tvit.train import build_parser, build_transforms, data_config

NORM = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _old_pillow_posterize(img: Image.Image, bits: int) -> Image.Image:
    """Pillow <= 10's ``ImageOps.posterize``, verbatim in effect: mask the low ``8 - bits`` bits of
    every channel through a lookup table (L and RGB only). With 0 bits the mask clears them all."""
    mask = ~(2 ** (8 - bits) - 1)
    lut = [i & mask for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _random_rgb(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_posterize_keeps_old_pillow_results_and_zero_bits_is_black(mode: str) -> None:
    img = _random_rgb(np.random.default_rng(0), (17, 9)).convert(mode)
    with pytest.raises(ValueError, match="bits must be between"):
        ImageOps.posterize(img, 0)  # what Pillow 13 does, and what killed the training runs
    black = posterize(img, 0)
    assert black.mode == mode and black.size == img.size
    assert not np.asarray(black).any()  # every channel 0, as old Pillow produced
    assert np.array_equal(np.asarray(black), np.asarray(_old_pillow_posterize(img, 0)))
    for bits in range(1, 9):
        ours = np.asarray(posterize(img, bits))
        assert np.array_equal(ours, np.asarray(_old_pillow_posterize(img, bits))), bits
        if bits < 8:
            assert np.array_equal(ours, np.asarray(ImageOps.posterize(img, bits))), bits
    assert np.array_equal(np.asarray(posterize(img, -2)), np.asarray(black))  # mmax > 10 asks for fewer than 0


def test_repair_reaches_every_posterize_op_and_leaves_timm_alone() -> None:
    import timm.data.auto_augment as aa

    policies = ["rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5", "original-mstd0.5", "v0r", "augmix-m5-w4-d2"]
    for policy in policies:
        transform = build_transform(True, 32, **NORM, auto_augment=policy)
        ops = list(t2tvit.data._augment_ops(transform))
        assert ops, policy
        posterizes = [op for op in ops if op.name.startswith("Posterize")]
        assert posterizes and all(op.aug_fn is posterize for op in posterizes), policy
        assert all(op.aug_fn is aa.NAME_TO_OP[op.name] for op in ops if op not in posterizes), policy
    assert aa.NAME_TO_OP["PosterizeIncreasing"] is aa.posterize  # timm itself is not patched
    # The timm op at its top magnitude now gives the black image instead of raising.
    op = aa.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    img = _random_rgb(np.random.default_rng(1), (8, 8))
    with pytest.raises(ValueError):
        op(img)
    assert repair_augment_ops([op]) == 1
    assert not np.asarray(op(img)).any()


def _unusual_rgb_images(rng: np.random.Generator) -> list[Image.Image]:
    sizes = [(1, 1), (1, 2), (2, 1), (1, 97), (97, 1), (3, 500), (500, 3), (7, 5), (32, 32)]
    images = []
    for size in sizes:
        images += [
            _random_rgb(rng, size),
            Image.new("RGB", size, (0, 0, 0)),
            Image.new("RGB", size, (255, 255, 255)),
            Image.new("RGB", size, (128, 64, 200)),
        ]
    return images


def test_every_augment_op_runs_on_unusual_rgb_images() -> None:
    """Every RandAugment / AutoAugment / AugMix op, repaired, at every magnitude, on tiny, thin and
    constant RGB images (what the loaders feed them: every file is converted to RGB first)."""
    import timm.data.auto_augment as aa

    rng = np.random.default_rng(0)
    images = _unusual_rgb_images(rng)
    ops = [aa.AugmentOp(name, prob=1.0, magnitude=m) for name in aa.NAME_TO_OP for m in (0, 3, 5, 7, 9, 10)]
    beyond = {**aa._HPARAMS_DEFAULT, "magnitude_max": 15}  # `mmax15`: levels past 10 (e.g. -2 posterize bits)
    ops += [aa.AugmentOp(name, prob=1.0, magnitude=15, hparams=beyond) for name in aa.NAME_TO_OP]
    repair_augment_ops(ops)
    random.seed(0)
    for op in ops:
        for img in images:
            out = op(img)
            assert out.mode == "RGB" and out.size == img.size, (op, img.size)


# Files a real dataset holds: every mode a decoder can hand back, odd sizes, constant content.
_MODES_AND_FORMATS = [
    ("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("P", "GIF"), ("RGBA", "PNG"), ("RGBA", "WEBP"),
    ("RGB", "JPEG"), ("RGB", "BMP"), ("L", "JPEG"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("YCbCr", "TIFF"),
    ("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF"), ("PA", "TIFF"), ("LAB", "TIFF"), ("RGB", "PPM"),
]  # fmt: skip
_SIZES = [(1, 1), (2, 3), (1, 300), (300, 1), (4, 1000), (1000, 4), (9, 7), (48, 40), (64, 64), (200, 150)]
_SUFFIX = {"PNG": ".png", "GIF": ".png", "WEBP": ".webp", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "PPM": ".ppm"}


def _varied_image(rng: np.random.Generator, mode: str, size: tuple[int, int], content: str) -> Image.Image:
    w, h = size
    if content == "black":
        rgb = np.zeros((h, w, 3), np.uint8)
    elif content == "white":
        rgb = np.full((h, w, 3), 255, np.uint8)
    elif content == "gradient":
        rgb = np.broadcast_to(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], (h, w, 3)).copy()
    else:
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if mode in ("I;16", "I", "F"):
        wide = rgb[..., 0].astype(np.uint16) * 257  # the 16-bit range a scientific camera writes
        if mode == "I;16":
            return Image.frombytes("I;16", size, wide.astype("<u2").tobytes())
        return Image.fromarray(wide.astype(np.int32 if mode == "I" else np.float32))
    return Image.fromarray(rgb, "RGB").convert(mode)


@pytest.fixture(scope="module")
def varied_folder(tmp_path_factory) -> Path:
    """A seeded image folder of every mode / size / content mix above, written in real file formats."""
    root = tmp_path_factory.mktemp("varied") / "train"
    rng = np.random.default_rng(0)
    contents = ["noise", "black", "white", "gradient"]
    for i, (mode, fmt) in enumerate(_MODES_AND_FORMATS):
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        for j, size in enumerate(_SIZES):
            img = _varied_image(rng, mode, size, contents[(i + j) % len(contents)])
            img.save(folder / f"{mode.replace(';', '_')}-{fmt}-{size[0]}x{size[1]}{_SUFFIX[fmt]}", format=fmt)
    return root


@pytest.mark.slow
def test_default_train_transform_survives_20000_varied_samples(varied_folder: Path) -> None:
    # Exactly the trainer's transform: `t2t train`'s parser defaults (RandAugment rand-m9-mstd0.5-inc1,
    # random erasing 0.25, colour jitter, flips, crops) through the trainer's own builder and data
    # config, and the trainer's dataset decoding each file; only the image size is small, for speed.
    args = build_parser().parse_args(["data", "--img-size", "32"])
    assert args.aa == "rand-m9-mstd0.5-inc1" and args.reprob == 0.25 and args.model == "t2t_vit_14"
    with torch.device("meta"):
        model = t2tvit.create_model(args.model, img_size=args.img_size, num_classes=10)
    train_transform, _ = build_transforms(args, data_config(args, model))
    zero_bits = 0
    for op in t2tvit.data._augment_ops(train_transform):
        if op.name.startswith("Posterize"):

            def counted(img, bits, _fn=op.aug_fn, **kw):
                nonlocal zero_bits
                zero_bits += bits < 1
                return _fn(img, bits, **kw)

            op.aug_fn = counted
    # Every file decodes through the trainer's dataset (each mode converted to RGB) ...
    decoded = SafeImageFolder(varied_folder)
    images = [decoded[i] for i in range(len(decoded))]
    assert len(images) == len(_MODES_AND_FORMATS) * len(_SIZES)
    assert not [s for s in images if isinstance(s, SkippedSample)]
    # ... and the transform meets them 20,000 times, on one thread as in a loader worker.
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    order = np.random.default_rng(0).integers(0, len(images), 20_000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        for index in order:
            image, path = train_transform(images[index][0]), decoded.samples[index][0]
            assert image.shape == (3, 32, 32) and torch.isfinite(image).all(), path
        elapsed = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    # ~0.15% of samples draw a 0-bit posterize (PosterizeIncreasing at magnitude >= 10), which raised before.
    print(f"\n20,000 samples of the default train transform in {elapsed:.1f} s; 0-bit posterize: {zero_bits}")
    assert 10 <= zero_bits <= 60


def test_the_harder_bundled_set_is_the_digits_split_at_224_px_over_clutter(digits: Path, tmp_path, monkeypatch):
    from t2tvit.data import HARD_IMG_SIZE, bundled_dataset_path, dataset_split
    from t2tvit.errors import ConfigError

    hard = bundled_dataset_path(tmp_path, name="digits-hard")
    assert bundled_dataset_path(tmp_path, name="digits-hard") == hard  # found again, not rewritten
    for split in ("train", "val"):  # the same source digits in the same split: none of val trained on
        mine = sorted(p.relative_to(hard / split).with_suffix("") for p in (hard / split).rglob("*.jpg"))
        theirs = sorted(p.relative_to(digits / split).with_suffix("") for p in (digits / split).rglob("*.png"))
        assert mine == theirs and len(mine) == {"train": 1438, "val": 359}[split]
    image = Image.open(next((hard / "val" / "3").iterdir()))
    assert image.mode == "RGB" and image.size == (HARD_IMG_SIZE, HARD_IMG_SIZE)
    pixels = np.asarray(image, np.float32)
    assert pixels[..., 0].std() > 20 and np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 5  # clutter, colour
    with pytest.raises(ConfigError, match="the bundled ones are digits, digits-hard"):
        bundled_dataset_path(tmp_path, name="cifar")
    monkeypatch.setenv("T2TVIT_DATA", str(tmp_path))
    assert dataset_split("digits-hard", "val") == hard / "val"  # the name, wherever a dataset is asked for
