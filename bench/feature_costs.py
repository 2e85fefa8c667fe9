"""Helpers of bench/features.py: the marginal rate of a run (fixed costs cancelled) and a run's peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import common

PAGE = os.sysconf("SC_PAGE_SIZE")


def marginal_rate(large_images: int, large_seconds: float, small_images: int, small_seconds: float) -> float:
    """Images per second once started: (large - small images) / (large - small seconds).

    Start-up (imports, model loading, the first batch's warm-up) and the final write cost about the same in
    both runs, so the difference is the steady pipeline alone.
    """
    if large_seconds <= small_seconds or large_images <= small_images:
        return float("nan")
    return (large_images - small_images) / (large_seconds - small_seconds)


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (loader workers, the fork server)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(entry)
        children.setdefault(int(fields[1]), []).append(child)
        rss[child] = int(fields[21]) * PAGE
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo.extend(children.get(current, []))
    return total


def peak_rss_of_run(argv: list[str], interval: float = 0.05) -> tuple[float, int]:
    """Runs ``argv`` and samples the summed RSS of its process tree.

    Returns:
        The wall seconds and the peak summed resident bytes.

    Raises:
        SystemExit: The command failed.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(common.ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{err[-2000:]}")
    return time.perf_counter() - start, peak


def cli_features(collection: Path, model: str, precision: str, batch_size: int, weights: Path | None) -> list[str]:
    """The ``vcf features`` command line of a run with the library's default workers."""
    argv = [sys.executable, "-m", "vcf", "features", str(collection), "--model", model, "--precision", precision]
    argv += ["--batch-size", str(batch_size), "--device", "cpu", "--overwrite", "-q"]
    return argv + (["--weights", str(weights)] if weights is not None else [])
