"""Shared fixtures: small real datasets cut from the bundled digits."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from t2tvit.data import bundled_dataset_path


@pytest.fixture(scope="session")
def digits_subset(tmp_path_factory) -> Callable[[int, int], Path]:
    """``make(train_per_class, val_per_class)``: a folder with the first images of each digit class.

    Small real datasets run the trainer's loop in seconds; each size is written once per session
    and must be copied before a test changes it.
    """
    made: dict[tuple[int, int], Path] = {}

    def make(train_per_class: int, val_per_class: int) -> Path:
        key = (train_per_class, val_per_class)
        if key not in made:
            digits = bundled_dataset_path()
            root = tmp_path_factory.mktemp(f"digits_{train_per_class}_{val_per_class}")
            for split, per_class in (("train", train_per_class), ("val", val_per_class)):
                for cls in range(10):
                    dst = root / split / str(cls)
                    dst.mkdir(parents=True)
                    for f in sorted((digits / split / str(cls)).iterdir())[:per_class]:
                        shutil.copy(f, dst / f.name)
            made[key] = root
        return made[key]

    return make
