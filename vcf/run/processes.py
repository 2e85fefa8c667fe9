"""A process pool that isolates each task: a hang (timeout) or a native crash fails one item, not the run."""

from __future__ import annotations

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


class _TaskStarted:
    """Sent by a worker as it begins a task: the timeout counts from there, not from the worker's start-up."""


# A replacement worker may need this long to start (spawn, imports) on a busy machine before its task's
# own timeout begins.
STARTUP_GRACE = 120.0


def _worker_loop(
    function: Callable[[Any], Any], connection: Connection, initializer: Callable[[], None] | None
) -> None:
    die_with_parent()
    if initializer is not None:
        initializer()
    while True:
        try:
            task = connection.recv()
        except EOFError:
            return
        if task is None:
            return
        connection.send(_TaskStarted)
        try:
            result: Any = function(task)
        except Exception as exc:  # a task's own error is data: it is reported, the worker goes on
            result = TaskFailed(f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))
            if os.environ.get("VCF_DEBUG"):
                result = TaskFailed(traceback.format_exc())
        connection.send(result)


class _Worker:
    def __init__(self, context: Any, function: Callable[[Any], Any], initializer: Callable[[], None] | None) -> None:
        parent_end, child_end = context.Pipe()
        self.connection = parent_end
        self.process = context.Process(target=_worker_loop, args=(function, child_end, initializer), daemon=True)
        self.process.start()
        child_end.close()
        self.task: Any = None
        self.started = 0.0
        self.running = False

    def submit(self, task: Any) -> None:
        self.task = task
        self.started = time.monotonic()
        self.running = False
        self.connection.send(task)

    def deadline(self, timeout: float) -> float:
        return self.started + timeout + (0.0 if self.running else STARTUP_GRACE)

    def receive(self) -> Any:
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


def run_isolated(
    function: Callable[[Any], Any],
    tasks: Iterable[Any],
    *,
    workers: int,
    timeout: float | None = None,
    initializer: Callable[[], None] | None = None,
) -> Iterator[tuple[Any, Any]]:
    """Runs ``function`` over ``tasks`` in worker processes; yields ``(task, result)`` as they finish.

    A task that raises yields a :class:`TaskFailed` with the message; a task running longer than
    ``timeout`` seconds, or whose worker dies (segfault, OOM kill), yields a TaskFailed and its worker
    is replaced. Workers are started with the ``spawn`` method (no inherited threads or locks) and
    die with the parent process.

    Args:
        function: A picklable module-level function of one argument.
        tasks: The tasks (picklable).
        workers: Number of worker processes (>= 1).
        timeout: Seconds one task may take; None for no limit.
        initializer: Called once in each worker before its first task.
    """
    context = multiprocessing.get_context("spawn")
    pending = deque(tasks)
    pool = [_Worker(context, function, initializer) for _ in range(max(1, min(workers, len(pending))))]
    idle = list(pool)
    busy: dict[Connection, _Worker] = {}
    try:
        while pending or busy:
            while idle and pending:
                worker = idle.pop()
                worker.submit(pending.popleft())
                busy[worker.connection] = worker
            wait_for = None
            if timeout is not None:
                wait_for = max(0.0, min(w.deadline(timeout) for w in busy.values()) - time.monotonic())
            sentinels = {w.process.sentinel: w for w in busy.values()}
            ready = wait([*busy.keys(), *sentinels.keys()], timeout=wait_for)
            finished: set[int] = set()
            for item in ready:
                worker = busy.get(item) if isinstance(item, Connection) else sentinels.get(item)  # type: ignore[arg-type]
                if worker is None or id(worker) in finished:
                    continue
                result = worker.receive()
                if result is _TaskStarted:
                    worker.started, worker.running = time.monotonic(), True
                    if not worker.connection.poll():
                        continue
                    result = worker.receive()
                finished.add(id(worker))
                del busy[worker.connection]
                if result is None:
                    code = worker.process.exitcode
                    worker.stop(kill=True)
                    yield worker.task, TaskFailed(f"decoder process crashed (exit code {code})")
                    worker = _Worker(context, function, initializer)
                else:
                    yield worker.task, result
                idle.append(worker)
            if timeout is not None:
                now = time.monotonic()
                for connection, worker in list(busy.items()):
                    if now > worker.deadline(timeout):
                        del busy[connection]
                        worker.stop(kill=True)
                        reason = (
                            f"timed out after {timeout:g} s (decoder hung)"
                            if worker.running
                            else f"worker process did not start within {STARTUP_GRACE + timeout:g} s"
                        )
                        yield worker.task, TaskFailed(reason)
                        idle.append(_Worker(context, function, initializer))
    finally:
        for worker in [*idle, *busy.values()]:
            worker.stop(kill=bool(busy))
