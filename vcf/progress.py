"""Progress reporting from the library to whoever shows it (the CLI uses rich)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """One progress update.

    Attributes:
        task: What is counted, e.g. ``"videos"`` or ``"frames"``.
        advance: How many items finished since the last event of this task.
        total: The task's total when it is known or changes, else None.
        description: A short text to show beside the bar (e.g. the current video).
    """

    task: str
    advance: int = 0
    total: int | None = None
    description: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """A callback that ignores every event."""


class Reporter:
    """Small helper that stages use to send events to an optional callback."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback or no_progress

    def total(self, task: str, total: int, description: str | None = None) -> None:
        """Announces (or corrects) the number of items of ``task``."""
        self._callback(ProgressEvent(task=task, total=total, description=description))

    def advance(self, task: str, n: int = 1, description: str | None = None) -> None:
        """Reports that ``n`` more items of ``task`` are done."""
        self._callback(ProgressEvent(task=task, advance=n, description=description))
