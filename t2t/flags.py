"""What the command modules share: the flags several commands take, declared once so that each means the
same everywhere, and the step from parsed flags to the library's typed settings."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

# flag -> (its names, argparse keywords). A command may change the default and the help that says it.
_SHARED: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "--batch-size": (
        ("-b", "--batch-size"),
        {"type": int, "default": 32, "help": "images per forward pass (default: 32)"},
    ),
    "--device": (
        ("--device",),
        {
            "choices": ("cpu", "cuda"),
            "default": None,
            "help": "where to run (default: cpu, or cuda for formats that need a GPU, e.g. TensorRT)",
        },
    ),
    "--threads": (
        ("--threads",),
        {"type": int, "default": None, "help": "intra-op threads of the runtimes (default: each runtime's own)"},
    ),
    "--no-verify": (
        ("--no-verify",),
        {
            "action": "store_true",
            "help": "run an artifact whose files no longer match the sha256 its export manifest recorded (a file "
            "you changed on purpose); by default it is refused",
        },
    ),
    "--model": (
        ("--model",),
        {"default": None, "help": "variant name, for a checkpoint that does not record it (e.g. an official .pth.tar)"},
    ),
    "--img-size": (
        ("--img-size",),
        {
            "type": int,
            "default": None,
            "help": "input size, for a checkpoint (default: the one it was trained at) or a file that records none; "
            "an exported artifact has a fixed input size",
        },
    ),
    "images": (
        ("images",),
        {"metavar": "IMAGE", "nargs": "+", "help": "image files, or folders (every image under them)"},
    ),
    "--num-classes": (
        ("--num-classes",),
        {
            "type": int,
            "default": None,
            "help": "classes of the head (default: the checkpoint's, else 1000; another count than the "
            "checkpoint's needs --new-head)",
        },
    ),
    "--new-head": (
        ("--new-head",),
        {
            "action": "store_true",
            "help": "with --checkpoint and a --num-classes other than its own: an untrained head of that size "
            "instead of the trained one",
        },
    ),
    "--json": (("--json",), {"action": "store_true", "help": "print JSON instead of the table"}),
    "MODEL": (
        ("target",),
        {
            "metavar": "MODEL",
            "help": "a training checkpoint (.pth), an artifact file or an export folder (holding manifest.json)",
        },
    ),
    "--format": (
        ("--format",),
        {"default": None, "metavar": "NAME", "help": "which artifact of an export folder MODEL is"},
    ),
    "--formats": (
        ("--formats",),
        {
            "default": None,
            "metavar": "NAMES",
            "help": "comma-separated artifacts of an export folder (default: every one built ok)",
        },
    ),
}


def command(
    sub: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    examples: str | None = None,
    **options: Any,
) -> argparse.ArgumentParser:
    """Subcommand ``t2t name``: ``summary`` is its line in ``t2t --help``; ``description`` and ``examples``
    (the epilog) are shown as written, line breaks kept, by ``t2t name --help``; ``options`` go to argparse
    (``add_help=False`` for a command with a help action of its own)."""
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **options,
    )


def add(p: argparse.ArgumentParser | argparse._ArgumentGroup, *flags: str, **changes: Any) -> None:
    """Add the shared ``flags`` to ``p``, each as :data:`_SHARED` declares it; ``changes`` (``default``,
    ``help``) apply to every flag of the call, so a flag a command means differently gets a call of its own."""
    for flag in flags:
        names, declared = _SHARED[flag]
        p.add_argument(*names, **(declared | changes))


def opening(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of :func:`deploy.open_predictor` that the shared flags a command took give."""
    kwargs = {key: getattr(args, key) for key in ("device", "threads", "model", "img_size") if hasattr(args, key)}
    if hasattr(args, "no_verify"):
        kwargs["verify"] = not args.no_verify
    return kwargs


def from_flags(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The settings dataclass ``cls`` from parsed flags: each field from the flag of its name, ``overrides``
    for the fields whose flag says it another way (``--no-memory`` for ``memory``)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(given | overrides))
