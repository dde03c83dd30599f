"""The toolkit's one progress display: a live rich bar when stderr is a terminal, plain lines otherwise.

Training, export, the profiler and the benchmark scripts all report progress through
:class:`Progress`, so a log file or CI output gets readable lines (never bar redraws) and a
terminal gets one bar that disappears when done. ``rich`` is imported only when a bar is shown.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["Progress"]


class Progress:
    """``total`` steps; ``step(msg)`` advances and describes, ``update(done, info)`` sets the position.

    ``enabled=False`` shows nothing. Without a terminal, ``step`` prints ``[prefix done/total] msg``
    and ``update`` prints every ``every`` steps (and the last one). ``info`` adds a field column
    (loss, lr, ... for training) and ``eta`` the time left instead of the time spent.
    """

    def __init__(
        self,
        total: int,
        description: str = "",
        *,
        enabled: bool = True,
        info: bool = False,
        every: int = 1,
        prefix: str = "",
        eta: bool = False,
        transient: bool = True,
    ) -> None:
        self.total, self.done, self.description = total, 0, description
        self.enabled, self.every, self.prefix = enabled, max(1, every), prefix
        self.bar: Any = None
        self.task: Any = None
        if not enabled:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
            columns += [TextColumn("{task.fields[info]}")] if info else []
            columns += [TimeRemainingColumn() if eta else TimeElapsedColumn()]
            self.bar = RichProgress(*columns, console=console, transient=transient)
            self.task = self.bar.add_task(description, total=total, info="")

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def step(self, msg: str, advance: int = 1) -> None:
        """Advance by ``advance`` (0: only say what is happening now) and show ``msg``."""
        self.done += advance
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, advance=advance, description=msg)
        else:
            where = f"{self.prefix} {self.done}/{self.total}".strip()
            print(f"[{where}] {msg}", file=sys.stderr, flush=True)

    def update(self, done: int, info: str = "") -> None:
        """Set the position to ``done`` with an ``info`` text (a training step's loss and rate)."""
        self.done = done
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=done, info=info)
        elif done % self.every == 0 or done == self.total:
            print(f"{self.description} [{done}/{self.total}] {info}", flush=True)
