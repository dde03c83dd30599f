"""``t2t``: the toolkit's one command line, with a subcommand per job.

Subcommands import their heavy dependencies (torch, timm) only when they run,
so ``t2t --help`` answers at once. User errors (bad model name, image size,
checkpoint) end in one sentence on stderr and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main", "name_clashes"]

# The import names the distribution installs (pyproject.toml); each package's __init__ carries the marker.
INSTALLED = ("t2tvit", "compress", "deploy", "t2t")
_MARKER = '__toolkit__ = "t2tvit-edge"'


def name_clashes(origins: dict[str, str | None] | None = None) -> dict[str, str]:
    """The installed names that Python resolves to a package that is not this toolkit's, with its location.

    ``deploy`` and ``compress`` are generic names: another distribution installing one overwrites
    ours, or shadows it from an earlier ``sys.path`` entry. Each of our packages' ``__init__.py``
    carries :data:`_MARKER`; its source is read, not imported (so ``t2t --help`` stays instant).
    ``origins``: name -> ``__init__.py`` path, found with ``importlib.util.find_spec`` when None.
    """
    import importlib.util
    from pathlib import Path

    if origins is None:
        origins = {}
        for name in INSTALLED:
            spec = importlib.util.find_spec(name)
            origins[name] = spec.origin if spec is not None else None
    clashes = {}
    for name, origin in origins.items():
        try:
            ours = origin is not None and _MARKER in Path(origin).read_text(encoding="utf-8", errors="replace")
        except OSError:
            ours = False
        if not ours:
            clashes[name] = str(origin)
    return clashes


# The subcommands in --help order; each is the module t2t.<name>_cmd, whose add_parser(sub) declares it.
COMMANDS = ("info", "train", "distill", "export", "predict", "validate", "bench", "verify", "compress", "visualize")


def build_parser() -> argparse.ArgumentParser:
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("t2tvit-edge")
    except PackageNotFoundError:  # running from a source tree that is not installed
        __version__ = "unknown"
    parser = argparse.ArgumentParser(
        prog="t2t",
        description="T2T-ViT edge toolkit: describe, train, distil, compress and export Tokens-to-Token ViTs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"t2t.{name}_cmd").add_parser(sub)
    return parser


# What an interrupt leaves, per command, when the library did not say more (t2tvit.faults.interrupt_note).
INTERRUPTED = {
    "info": "nothing was written",
    "predict": "nothing was written",
    "export": "the export folder's previous contents are intact (artifacts are staged and swapped in whole)",
    "bench": "no report was written and any previous one is intact; run the same command again",
    "verify": "nothing was written",
    "validate": "no report was written and any previous one is intact",
    "visualize": "no image folder was written",
    "compress": "finished stages are kept; run the same command again to continue",
    "train": "no checkpoint was written yet",
    "distill": "no checkpoint was written yet",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, check the outputs the command declares (``set_defaults(outputs=(dest, ...))``) before any
    work, run it; a user's error is one sentence and exit 2, Ctrl-C one ``interrupted; ...`` line and
    exit 130, a warning one line: never a traceback."""
    import warnings

    command = "t2t"
    shown = warnings.showwarning
    try:
        clashes = name_clashes()
        if clashes:
            where = "; ".join(f"`{name}` is {origin}" for name, origin in clashes.items())
            print(
                f"t2t: error: another installed package takes this toolkit's import names ({where}); "
                "install t2tvit-edge in its own virtual environment (python3 -m venv .venv)",
                file=sys.stderr,
            )
            return 2
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        command = f"t2t {args.command}"
        from t2tvit.errors import T2TError
        from t2tvit.faults import check_output_dir

        def one_line(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
            text = (str(message).strip().splitlines() or [category.__name__])[0]
            print(f"{command}: warning: {text}", file=sys.stderr if file is None else file)

        warnings.showwarning = one_line
        try:
            for dest in getattr(args, "outputs", ()):
                if getattr(args, dest, None) is not None:
                    check_output_dir(getattr(args, dest), "--" + dest.replace("_", "-"))
            return args.func(args)
        except T2TError as e:
            print(f"{command}: error: {e}", file=sys.stderr)
            return 2
    except KeyboardInterrupt as e:
        import signal

        before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the line short
        try:
            note = getattr(e, "t2t_note", None) or INTERRUPTED.get(command.removeprefix("t2t "))
            print(f"{command}: interrupted" + (f"; {note}" if note else ""), file=sys.stderr, flush=True)
        finally:
            signal.signal(signal.SIGINT, before)  # main() may be called in a longer-lived process
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
