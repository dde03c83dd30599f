"""What the command modules share to turn parsed flags into the library's typed settings."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def from_flags(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The settings dataclass ``cls`` from parsed flags: each field from the flag of its name, ``overrides``
    for the fields whose flag says it another way (``--no-memory`` for ``memory``)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(given | overrides))
