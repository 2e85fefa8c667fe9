"""Items made by threads of the idle scheduling class, a batch ahead of their consumer, never holding it up long."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# How long the consumer waits for an item before making the rest of its batch itself: threads of the idle class
# get almost no CPU while another process of normal priority keeps the cores busy.
IDLE_WAIT_SECONDS = 0.05


def idle_priority() -> None:
    """Puts the calling thread in Linux's idle scheduling class: it runs on cores that nothing else wants."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux: the thread keeps the normal priority
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def decoded_ahead(make: Callable[[int], Any], batches: Sequence[Sequence[int]], threads: int) -> Iterator[list[Any]]:
    """``[make(i) for i in batch]`` for each batch, made by ``threads`` idle-class threads while the caller uses the
    batch before.

    The threads take the cores only when the caller's own threads leave them (a model's threads at their
    synchronisation points, between layers, while the host code runs): unlike a loader process or a thread of
    normal priority, they never stall them. What they have not made when the caller wants the batch is made
    on every core while it waits; and once an item keeps it waiting longer than :data:`IDLE_WAIT_SECONDS`
    (the cores are busy with other work), the caller makes the rest of that batch itself, at its own priority.
    ``make`` must release the GIL for its heavy work (OpenCV's decoding and torch's resizing do) and be pure:
    an item may be made twice, and the second result is dropped.
    """
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vcf-decode", initializer=idle_priority)
    ahead: tuple[Sequence[int], list[Future[Any]]] | None = None
    try:
        for batch in batches:
            submitted = [pool.submit(make, index) for index in batch]
            if ahead is not None:
                yield _gathered(make, *ahead)
            ahead = batch, submitted
        if ahead is not None:
            yield _gathered(make, *ahead)
    finally:
        # Not waiting: a thread still making an item that is no longer needed finishes it on idle cores.
        pool.shutdown(wait=False, cancel_futures=True)


def _gathered(make: Callable[[int], Any], batch: Sequence[int], futures: list[Future[Any]]) -> list[Any]:
    items = []
    patient = True
    for index, future in zip(batch, futures, strict=True):
        if patient:
            try:
                items.append(future.result(timeout=IDLE_WAIT_SECONDS))
                continue
            except TimeoutError:
                patient = False
        future.cancel()  # a thread that started it may finish it too; that result is not used
        items.append(future.result() if future.done() and not future.cancelled() else make(index))
    return items
