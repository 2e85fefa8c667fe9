"""Builds the synthetic videos of toydata/VideoData (the real webm is copied from the original toolbox)."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np


def moving_shapes(path: Path, seconds: float, fps: int, size: tuple[int, int], seed: int) -> None:
    """A short clip of coloured shapes moving over a gradient, encoded as MPEG-4 part 2."""
    rng = np.random.default_rng(seed)
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    base = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    shapes = [
        (
            rng.integers(0, width),
            rng.integers(0, height),
            rng.integers(-6, 7),
            rng.integers(-6, 7),
            tuple(int(c) for c in rng.integers(0, 256, 3)),
        )
        for _ in range(5)
    ]
    for t in range(int(seconds * fps)):
        frame = base.copy()
        for x, y, dx, dy, colour in shapes:
            centre = (int(x + dx * t) % width, int(y + dy * t) % height)
            cv2.circle(frame, centre, 18, colour, -1)
        writer.write(frame)
    writer.release()


def main(video_dir: str) -> None:
    out = Path(video_dir)
    out.mkdir(parents=True, exist_ok=True)
    moving_shapes(out / "shapes_a.mp4", seconds=4, fps=25, size=(320, 240), seed=1)
    moving_shapes(out / "shapes_b.mp4", seconds=3, fps=30, size=(256, 144), seed=2)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "toydata/VideoData")
