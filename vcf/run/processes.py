"""One isolated process pool: a hung (timeout) or crashed worker fails its one task, never the run.

A task's function may return a value or be a generator: its items stream back as they come (one message
ahead at most, so memory stays bounded), and the timeout then counts silence rather than the whole task.
Workers die with the parent process.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from vcf.io.atomic import die_with_parent


@dataclass(frozen=True)
class TaskFailed:
    """Returned in place of a result when the task raised, hung or killed its worker."""

    reason: str


# A replacement worker may need this long to start (spawn, imports) on a busy machine before its task's
# own timeout begins.
STARTUP_GRACE = 120.0
HUNG = "timed out after {timeout:g} s (decoder hung)"
SILENT = "timed out: nothing decoded for {timeout:g} s (decoder hung)"


def _worker_loop(
    function: Callable[[Any], Any], connection: Connection, initializer: Callable[[], None] | None
) -> None:
    die_with_parent()
    if initializer is not None:
        initializer()
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            connection.send(("started", None))
            try:
                result = function(task)
                if inspect.isgenerator(result):
                    for item in result:
                        connection.send(("item", item))
                else:
                    connection.send(("item", result))
                message: tuple[str, Any] = ("done", None)
            except Exception as exc:  # a task's own error is data: it is reported, the worker goes on
                debug = os.environ.get("VCF_DEBUG")
                message = ("error", traceback.format_exc() if debug else str(exc) or f"{type(exc).__name__}: ")
            connection.send(message)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, context: Any, function: Callable[[Any], Any], initializer: Callable[[], None] | None) -> None:
        parent_end, child_end = context.Pipe()
        self.connection = parent_end
        self.process = context.Process(target=_worker_loop, args=(function, child_end, initializer), daemon=True)
        self.process.start()
        child_end.close()
        self.task: Any = None
        self.busy = False
        self.active = 0.0
        self.running = False

    def submit(self, task: Any) -> None:
        self.task, self.busy = task, True
        self.active = time.monotonic()
        self.running = False
        self.connection.send(task)

    def deadline(self, timeout: float) -> float:
        return self.active + timeout + (0.0 if self.running else STARTUP_GRACE)

    def receive(self) -> tuple[str, Any] | None:
        """The next message, or None when there is none or the worker is gone."""
        try:
            return self.connection.recv() if self.connection.poll() else None
        except (EOFError, OSError):
            return None

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except (OSError, ValueError):
                self.process.kill()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


def stream_isolated(
    function: Callable[[Any], Any],
    tasks: Iterable[Any],
    *,
    workers: int,
    timeout: float | None = None,
    initializer: Callable[[], None] | None = None,
    context: str = "spawn",
    preload: list[str] | None = None,
    wanted: Callable[[Any], bool] | None = None,
    hung: str = SILENT,
) -> Iterator[tuple[Any, str, Any]]:
    """Runs ``function`` over ``tasks`` in worker processes; yields events as they come.

    Events: ``(task, "item", value)`` for each value a task produces (its return value, or each item of a
    generator), ``(task, "done", None)`` when it ends, ``(task, "failed", reason)`` when it raised, went
    ``timeout`` seconds without a message (``hung`` names it), or its worker died (the worker is replaced),
    and ``(task, "skipped", None)`` for a task ``wanted`` declined just before it would have started.

    Args:
        function: A picklable module-level function of one argument.
        tasks: The tasks (picklable), taken in order as workers free up.
        workers: Number of worker processes (>= 1).
        timeout: Seconds a task may go without a message; None for no limit.
        initializer: Called once in each worker before its first task.
        context: The multiprocessing start method (``spawn`` or ``forkserver``).
        preload: Modules the fork server imports once for all workers.
        wanted: Asked just before a task starts.
        hung: The failure reason of a timed-out task (``{timeout}`` is filled in).
    """
    start = multiprocessing.get_context(context)
    if preload is not None:
        start.set_forkserver_preload(preload)  # type: ignore[attr-defined]
    pending = deque(tasks)
    pool = [_Worker(start, function, initializer) for _ in range(max(1, min(workers, len(pending))))]
    try:
        while True:
            for worker in pool:
                while not worker.busy and pending:
                    task = pending.popleft()
                    if wanted is not None and not wanted(task):
                        yield task, "skipped", None
                    else:
                        worker.submit(task)
            busy = [w for w in pool if w.busy]
            if not busy:
                return
            left = None
            if timeout is not None:
                left = max(0.0, min(w.deadline(timeout) for w in busy) - time.monotonic())
            ready = wait([w.connection for w in busy] + [w.process.sentinel for w in busy], timeout=left)
            for slot, worker in enumerate(pool):
                if not worker.busy:
                    continue
                task = worker.task
                if worker.connection in ready or worker.process.sentinel in ready:
                    message = worker.receive()
                    if message is None and worker.process.is_alive() and worker.connection in ready:
                        continue
                    if message is None:
                        code = worker.process.exitcode
                        worker.stop(kill=True)
                        pool[slot] = _Worker(start, function, initializer)
                        yield task, "failed", f"decoder process crashed (exit code {code})"
                        continue
                    kind, payload = message
                    worker.active, worker.running = time.monotonic(), True
                    if kind == "started":
                        continue
                    if kind != "item":
                        worker.busy = False
                    yield task, "failed" if kind == "error" else kind, payload
                elif timeout is not None and time.monotonic() > worker.deadline(timeout):
                    started = worker.running
                    worker.stop(kill=True)
                    pool[slot] = _Worker(start, function, initializer)
                    if started:
                        yield task, "failed", hung.format(timeout=timeout)
                    else:
                        yield task, "failed", f"worker process did not start within {STARTUP_GRACE + timeout:g} s"
    finally:
        for worker in pool:
            worker.stop(kill=worker.busy)


def run_isolated(
    function: Callable[[Any], Any],
    tasks: Iterable[Any],
    *,
    workers: int,
    timeout: float | None = None,
    initializer: Callable[[], None] | None = None,
) -> Iterator[tuple[Any, Any]]:
    """Runs ``function`` over ``tasks`` in isolated worker processes; yields ``(task, result)`` as they finish.

    A task that raises yields a :class:`TaskFailed` with the message; a task running longer than
    ``timeout`` seconds, or whose worker dies (segfault, OOM kill), yields a TaskFailed and its worker is
    replaced. Workers are started with the ``spawn`` method (no inherited threads or locks).
    """
    results: dict[int, Any] = {}
    for task, kind, payload in stream_isolated(
        function, tasks, workers=workers, timeout=timeout, initializer=initializer, hung=HUNG
    ):
        if kind == "item":
            results[id(task)] = payload
        elif kind == "done":
            yield task, results.pop(id(task))
        else:
            yield task, TaskFailed(str(payload))
