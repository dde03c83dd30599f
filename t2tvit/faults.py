"""The toolkit's fault policy in library form: outputs checked before work, no empty folders left
behind, and a note on what an interrupt left intact.

* :func:`check_output_dir` refuses (one :class:`ConfigError` sentence) an output folder that cannot be
  made: a path through a file (``--out afile.txt/sub``), a file where the folder should be, or a parent
  this process cannot write (tested by creating a probe, so read-only filesystems count even for root).
* :func:`output_dir` makes the folder and, when the block fails or is interrupted, removes what it made
  if nothing worth keeping was written there.
* :func:`interrupts_deferred` holds Ctrl-C until a short write has finished, then raises it.
* :func:`interrupt_note` attaches to a ``KeyboardInterrupt`` passing through it one clause saying what
  is intact or how to resume; ``t2t``'s dispatch prints it in the one ``interrupted; ...`` line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import ConfigError

__all__ = ["check_output_dir", "interrupt_note", "interrupts_deferred", "output_dir"]


def _nearest_existing(path: Path) -> tuple[Path, list[Path]]:
    """The deepest existing ancestor of ``path`` (or ``path`` itself) and the folders below it to create."""
    missing: list[Path] = []
    p = path
    while not p.exists() and not p.is_symlink():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    return p, list(reversed(missing))


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """``path`` if it is, or can be made, a folder this process can write; else a one-sentence refusal.

    Nothing is created except a probe folder, removed at once.
    """
    path = Path(path)
    base, _ = _nearest_existing(path.absolute())
    if not base.is_dir():
        where = "is a file" if base == path.absolute() else f"goes through {base}, which is a file"
        raise ConfigError(f"{flag} {path} {where}; choose a folder path")
    try:
        probe = tempfile.mkdtemp(prefix=".t2t-write-probe-", dir=base)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        msg = f"{flag} {path} cannot be written ({base}: {reason}); choose a folder you can write"
        raise ConfigError(msg) from None
    os.rmdir(probe)
    return path


def _remove_unused(made: list[Path], keep_if_holds: Callable[[Path], bool]) -> None:
    """Remove the folders in ``made`` (deepest first) that hold nothing but empty folders and files
    for which ``keep_if_holds`` is False."""
    import shutil

    for folder in reversed(made):
        if not folder.is_dir():
            continue
        files = [p for p in folder.rglob("*") if not p.is_dir()]
        if any(keep_if_holds(p) for p in files):
            return
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def output_dir(path: str | Path, flag: str = "--output", *, disposable: tuple[str, ...] = ()) -> Iterator[Path]:
    """Make ``path`` (and missing parents) for the block; if the block raises (an error or Ctrl-C),
    remove the folders it made unless they hold a file other than the ``disposable`` names (e.g. a
    run's ``args.json``): an early error leaves no empty output folder, a run that wrote something
    keeps it. A folder that cannot be made is refused in one sentence (:func:`check_output_dir`)."""
    path = check_output_dir(path, flag)
    _, made = _nearest_existing(path.absolute())
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag} {path} cannot be made ({e.strerror}); choose a folder you can write") from None
    try:
        yield path
    except BaseException:
        _remove_unused(made, lambda p: p.name not in disposable)
        raise


@contextlib.contextmanager
def interrupt_note(note: str | Callable[[], str]) -> Iterator[None]:
    """Attach ``note`` (or, when callable, what it returns at the moment of the interrupt) to a
    ``KeyboardInterrupt`` raised in the block, unless an inner block already attached one."""
    try:
        yield
    except KeyboardInterrupt as e:
        if not getattr(e, "t2t_note", None):
            try:
                e.t2t_note = note() if callable(note) else note  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - the note must never replace the interrupt
                pass
        raise


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block has finished, then raise the ``KeyboardInterrupt``.

    For short writes that an interrupt must not cut: ``torch.save`` into a file object calls the file's
    ``write`` from C++, and a ``KeyboardInterrupt`` raised there comes out as a ``RuntimeError``
    ("unexpected pos ...") and a broken file. Outside the main thread, or where SIGINT is not Python's
    default handler, the block runs unchanged."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    arrived: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if arrived:
        raise KeyboardInterrupt
