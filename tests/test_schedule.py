"""Where images are decoded: the choice made from the first batches' timings, for every run length."""

from __future__ import annotations

import os
import threading
import time

import pytest

from vcf.run.idle_threads import IDLE_WAIT_SECONDS, decoded_ahead
from vcf.run.schedule import LOADER_START_SECONDS, LOADER_SWITCH_SHARE, ProbeCosts, choose_decoding


def probe(decode_ms: float, wait_ms: float, model_ms: float, images: int = 48) -> ProbeCosts:
    return ProbeCosts(decode_ms / 1000 * images, wait_ms / 1000 * images, model_ms / 1000 * images, images)


def loader_saving(decode_ms: float, wait_ms: float, remaining: int, cores: int) -> float:
    """Seconds loaders could save over the rest: the wait, down to the decoding's CPU time spread over the cores."""
    return remaining * (wait_ms - decode_ms / cores) / 1000


def test_a_long_run_that_waits_for_decoding_switches_to_loaders() -> None:
    # The model waits 10 ms an image for 12 ms of decoding that 2 cores could do in 6 beside it.
    remaining = 1 + int(LOADER_START_SECONDS / loader_saving(12.0, 10.0, 1, 2))
    choice = choose_decoding(probe(12.0, 10.0, 25.0), remaining, cores=2)
    assert choice.workers == 2
    assert choice.decode_ms == pytest.approx(12.0) and choice.model_ms == pytest.approx(25.0)
    assert choice.wait_ms == pytest.approx(10.0)
    assert "2 loader process(es)" in choice.describe() and "10.0 ms/img waited for" in choice.describe()


def test_too_short_a_rest_stays_in_process() -> None:
    remaining = int(LOADER_START_SECONDS / loader_saving(12.0, 10.0, 1, 2)) - 1
    choice = choose_decoding(probe(12.0, 10.0, 25.0), remaining, 2)
    assert choice.workers == 0
    assert "in the model's process" in choice.describe()


def test_decoding_hidden_beside_the_model_stays_in_process() -> None:
    # A light model: 12.5 ms of decoding per image, of which the model waits 3.9 (less than loaders could
    # reach, 12.5 / 2): however long the run, loaders would save nothing.
    assert choose_decoding(probe(12.5, 3.9, 18.9), 10**7, 2).workers == 0


def test_heavy_model_waiting_little_stays_in_process() -> None:
    wait = 0.9 * LOADER_SWITCH_SHARE * 150.0  # just under the share of a 150 ms/img model
    assert choose_decoding(probe(40.0, wait, 150.0), 10**7, 2).workers == 0


def test_one_core_never_switches() -> None:
    assert choose_decoding(probe(50.0, 50.0, 10.0), 10**6, 1).workers == 0


def test_a_run_within_the_probe_batches_reports_its_costs() -> None:
    choice = choose_decoding(probe(50.0, 20.0, 10.0, images=8), 0, 2)
    assert choice.workers == 0 and choice.decode_ms == pytest.approx(50.0) and choice.wait_ms == pytest.approx(20.0)


class SlowItems:
    """Items that take a known time to make, recording the scheduling class of the thread that made each."""

    def __init__(self, seconds: float, stuck_in_threads: bool = False) -> None:
        self.seconds = seconds
        self.stuck_in_threads = stuck_in_threads  # in the pool's threads, an item takes ten seconds
        self.policies: dict[int, list[int]] = {}

    def __call__(self, index: int) -> str:
        stuck = self.stuck_in_threads and threading.current_thread() is not threading.main_thread()
        time.sleep(10 if stuck else self.seconds)
        self.policies.setdefault(index, []).append(os.sched_getscheduler(0))
        return f"item {index}"


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling classes")
def test_batches_are_made_ahead_by_idle_priority_threads() -> None:
    items = SlowItems(IDLE_WAIT_SECONDS / 5)
    batches = [[0, 1], [2, 3], [4, 5]]
    started = time.perf_counter()
    waits = []
    for number, batch in enumerate(decoded_ahead(items, batches, threads=2)):
        waits.append(time.perf_counter() - started)
        assert batch == [f"item {index}" for index in batches[number]]
        time.sleep(0.5)  # the model's turn: the next batch is made meanwhile
        started = time.perf_counter()
    # Only the first batch is waited for; the others were ready when the model finished the one before.
    assert waits[0] >= IDLE_WAIT_SECONDS / 5 and max(waits[1:]) < IDLE_WAIT_SECONDS / 5
    assert items.policies == {index: [os.SCHED_IDLE] for index in range(6)}
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the consumer's thread keeps its class


def test_threads_that_get_no_cpu_hold_the_consumer_up_once_a_batch() -> None:
    # As beside a busy process of normal priority: the idle-class threads make no progress.
    items = SlowItems(0.01, stuck_in_threads=True)
    batches = [[0, 1, 2, 3], [4, 5, 6, 7]]
    started = time.perf_counter()
    made = list(decoded_ahead(items, batches, threads=2))
    assert made == [[f"item {index}" for index in batch] for batch in batches]
    # Each batch: one wait of IDLE_WAIT_SECONDS, then its four items made here (not the threads' ten seconds).
    assert time.perf_counter() - started < 2 * (IDLE_WAIT_SECONDS + 4 * 0.01) + 1.0
