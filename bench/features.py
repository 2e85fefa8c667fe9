"""Benchmark: pure model throughput vs ``vcf features`` end to end over real JPEG frames (and videos).

Usage:
    python bench/features.py --model resnet50 --precision fp32
    python bench/features.py --model resnet152 --precision fp32 --batch-size 32
    python bench/features.py --model resnet50 --precision bf16 --device cuda --batch-size 256

The pure figure runs the same ``vcf.models.inference.Inference`` (batch size, precision, channels_last,
inference_mode) on preprocessed uint8 batches already in memory. The end-to-end figure is one call
of ``vcf.stages.features.features`` (model load, read, decode, preprocess, infer, write) over JPEG frames of
real videos, at their native sizes and upscaled to 1280x720. Models without local weights run with
random weights (same speed). The last line is the headline: the worst end-to-end / pure ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import feature_costs

from vcf.io.bigfile import BigFile, BigFileWriter
from vcf.io.preprocess import FrameTransform, read_rgb
from vcf.models import build_extractor, get_model
from vcf.models.inference import Inference, Normalization, resolve_device, resolve_precision
from vcf.models.weights import cached_path, file_sha256
from vcf.stages.features import features

# Images per run at most: enough for a minute of CPU inference; a GPU run reads the frames several times over.
MAX_IMAGES = {"cpu": 1024, "cuda": 20000}
# Distinct preprocessed batches the pure run cycles through.
PURE_BATCHES = 16
# Where each library run decoded its images (the run's summary), by collection.
DECODING: dict[Path, str | None] = {}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="registry name (default resnet50)")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16, fp16 or auto (default fp32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=None, help="images per run (default: ~--seconds of work)")
    parser.add_argument("--seconds", type=float, default=60, help="target length of each run when --images is unset")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the library's)")
    parser.add_argument("--layer", default="avgpool")
    parser.add_argument("--sets", default="native,720p", help="frame sets to run: native, 720p (comma-separated)")
    parser.add_argument("--no-video", action="store_true", help="skip the --from-video mode even when available")
    parser.add_argument("--no-fast-decode", action="store_true", help="skip the --fast-decode run")
    parser.add_argument(
        "--device-decode",
        choices=("auto", "on", "off"),
        default="auto",
        help="also run --decode-on-device over the 720p JPEGs (auto: on a CUDA device)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="run everything N times, keep each best (noisy machines)")
    parser.add_argument(
        "--small-batches", type=int, default=1, help="batches of the small run whose time is subtracted (default 1)"
    )
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-memory run of the vcf features CLI")
    return parser.parse_args()


def model_weights(record, layer: str, workdir: Path) -> tuple[torch.nn.Module, Path | None, str]:
    """The extractor used for the pure run and the weights file the library run must load.

    Returns:
        ``(extractor, weights path or None for the model's own weights, description)``.
    """
    source = record.weights
    cached = cached_path(record)
    if source.builtin or source.packaged is not None or (cached is not None and cached.is_file()):
        extractor, _ = build_extractor(record, [layer])
        return extractor, None, "published weights"
    extractor, _ = build_extractor(record, [layer], pretrained=False)
    path = workdir / f"{record.name.replace('/', '_')}-random.pth"
    torch.save(extractor.model.state_dict(), path)
    # The library memoizes weight hashes in the weights cache; keep the bench's throwaway file out of it.
    torch.hub.set_dir(str(workdir / "hub"))
    file_sha256(path)  # a real run finds the hash memoized after its first use
    return extractor, path, "random weights (no local copy of the published ones)"


def preprocessed_batches(items, transform: FrameTransform, batch_size: int, pin: bool) -> list[torch.Tensor]:
    """The first frames decoded and preprocessed, as up to PURE_BATCHES uint8 batches ready for Inference."""
    crops = [transform(read_rgb(path)) for _, path in items[: batch_size * PURE_BATCHES]]
    batches = [torch.cat(crops[i : i + batch_size]) for i in range(0, len(crops), batch_size)]
    return [b.pin_memory() for b in batches] if pin else batches


def pure_outputs(
    inference: Inference, batches: list[torch.Tensor], images: int
) -> tuple[float, int, dict[str, np.ndarray]]:
    """Runs the model alone on ``images`` images, cycling through the batches, after one warm-up batch.

    Returns:
        The seconds it took, the images it ran, and its outputs for the distinct batches.
    """
    inference(batches[0])
    steps = max(1, -(-images // batches[0].shape[0]))
    outputs = []
    done = 0
    start = time.perf_counter()
    for step in range(steps):
        batch = batches[step % len(batches)]
        result = inference(batch)
        done += batch.shape[0]
        if step < len(batches):
            outputs.append(result)
    seconds = time.perf_counter() - start
    return seconds, done, {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def probe_rate(inference: Inference, batch_size: int, shape: tuple[int, ...]) -> float:
    """A quick throughput estimate on random pixels, to size the runs."""
    batch = torch.randint(0, 256, (batch_size, *shape), dtype=torch.uint8)
    inference(batch)
    start = time.perf_counter()
    inference(batch)
    return batch_size / (time.perf_counter() - start)


class Progress:
    """Records when images finish, to tell the steady rate from the start-up cost."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.events: list[tuple[float, int]] = []

    def __call__(self, event) -> None:
        if event.task == "images" and event.advance:
            self.events.append((time.perf_counter(), event.advance))

    def first_batch_s(self) -> float:
        return self.events[0][0] - self.start if self.events else math.nan

    def steady_rate(self) -> float:
        """Images per second from the end of the first batch to the last one."""
        if len(self.events) < 2:
            return math.nan
        images = sum(n for _, n in self.events[1:])
        return images / (self.events[-1][0] - self.events[0][0])


def run_library(collection: Path, args, weights: Path | None, **extra) -> tuple[float, Progress, Path]:
    """One ``features`` call from scratch; returns its wall time, its progress record and the feature directory.

    Where it decoded is left in ``DECODING[collection]``."""
    shutil.rmtree(collection / "FeatureData", ignore_errors=True)
    progress = Progress()
    result = features(
        collection,
        model=args.model,
        layers=[args.layer],
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        weights=weights,
        overwrite=True,
        progress=progress,
        **extra,
    )
    elapsed = time.perf_counter() - progress.start
    DECODING[collection] = getattr(result, "decoding", None)
    return elapsed, progress, result.feature_dirs[args.layer]


def step_costs(items, transform: FrameTransform, inference: Inference, batch_size: int, dim: int) -> dict[str, float]:
    """Milliseconds per image of each pipeline step, each measured alone (decode and preprocess on one thread)."""
    sample = items[: min(len(items), 64)]
    fast = None
    if "fast_decode" in inspect.signature(FrameTransform).parameters:
        fast = FrameTransform(transform.resize, transform.crop, transform.interpolation.value, fast_decode=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    clock = common.Clock()
    crops = []
    try:
        for _, path in sample:
            with clock("read"):
                data = np.fromfile(path, dtype=np.uint8)
            with clock("decode"):
                rgb = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            if fast is not None:
                with clock("read + decode, --fast-decode"):
                    fast.read(path)
            with clock("preprocess"):
                crops.append(transform(rgb))
        with clock("collate"):
            for i in range(0, len(crops), batch_size):
                torch.cat(crops[i : i + batch_size])
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(-1)
    batch = torch.cat((crops * math.ceil(batch_size / len(crops)))[:batch_size])
    norm = inference.normalization
    from vcf.io.preprocess import normalize

    for _ in range(2):
        with clock("transfer"), torch.inference_mode():
            x = normalize(batch.to(inference.device), norm.mean, norm.std, norm.value_scale)
            x = x.contiguous(memory_format=torch.channels_last)
            if inference.device.type == "cuda":
                torch.cuda.synchronize()
    costs = {k: v / len(sample) * 1000 for k, v in clock.totals.items() if k != "transfer"}
    costs["transfer"] = clock.totals["transfer"] / 2 / batch_size * 1000
    rows = np.random.default_rng(0).standard_normal((len(items), dim)).astype(np.float32)
    with common.temp_dir("vcf-bench-write-") as tmp:
        start = time.perf_counter()
        np.savez(tmp / "chunk.npz", rows=rows)
        with BigFileWriter(tmp / "out", dim) as writer:
            writer.append([i for i, _ in items], np.load(tmp / "chunk.npz")["rows"])
        costs["write"] = (time.perf_counter() - start) / len(items) * 1000
    return costs


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1) + 1e-30)


def from_video_available() -> bool:
    """Whether the library has the --from-video mode of ``features``."""
    return (
        importlib.util.find_spec("vcf.stages.videofeatures") is not None
        and "from_video" in inspect.signature(features).parameters
    )


@dataclass
class Timing:
    """The best of the repeats of one run."""

    label: str
    images: int
    seconds: float = math.inf
    steady: float = math.nan
    first_batch: float = math.nan
    load: float = math.nan

    def add(self, seconds: float, progress: Progress | None, load: common.BackgroundLoad) -> None:
        if seconds < self.seconds:
            self.seconds, self.load = seconds, load.cores
            if progress is not None:
                self.steady, self.first_batch = progress.steady_rate(), progress.first_batch_s()

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def main() -> None:
    args = parse_args()
    torch_device = resolve_device(args.device)
    args.precision = resolve_precision(args.precision, torch_device)
    args.device = str(torch_device)
    record = get_model(args.model)
    if record.kind != "2d":
        raise SystemExit(f"{args.model} is a video model; this benchmark runs image models")
    print(f"machine: {common.machine()}")
    print(
        f"model {record.name}, layer {args.layer}, precision {args.precision}, device {args.device}, "
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, workers "
        f"{'library default' if args.workers is None else args.workers}"
    )
    pre = record.preprocess
    transform = FrameTransform(pre.resize, pre.crop, pre.interpolation)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    fast = not args.no_fast_decode and "fast_decode" in inspect.signature(features).parameters and "720p" in sets
    video = not args.no_video and from_video_available()

    with common.temp_dir("vcf-bench-features-") as work:
        extractor, weights, weights_note = model_weights(record, args.layer, work)
        print(f"weights: {weights_note}")
        inference = Inference(extractor, Normalization(tuple(pre.mean), tuple(pre.std)), torch_device, args.precision)
        if args.images is None:
            rate = probe_rate(inference, args.batch_size, record.input_shape)
            batches = max(2, round(rate * args.seconds / args.batch_size))
            args.images = min(MAX_IMAGES.get(torch_device.type, 1024), batches * args.batch_size)
            print(f"probe: {rate:.1f} img/s -> {args.images} images per run")

        start = time.perf_counter()
        frame_sets = {
            name: common.write_frame_set(
                work / f"frames-{name}", args.images, None if name == "native" else common.SIZE_720P
            )
            for name in sets
        }
        collections = {name: common.make_image_collection(work / f"coll-{name}", frame_sets[name]) for name in sets}
        print(
            f"frame sets written in {time.perf_counter() - start:.1f} s: "
            + ", ".join(f"{k} {len(v)} JPEGs" for k, v in frame_sets.items())
        )
        video_collection = work / "coll-videos"
        every = 1
        if video:
            (video_collection / "VideoData").mkdir(parents=True)
            total = 0
            for path in common.real_videos():
                os.symlink(path, video_collection / "VideoData" / path.name)
                total += int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT))
            every = max(1, total // args.images)

        where = "720p" if "720p" in sets else sets[0]
        small_count = min(len(frame_sets[where]) - 1, args.batch_size * args.small_batches)
        small_collection = common.make_image_collection(work / "coll-small", frame_sets[where][:small_count])
        small_run = Timing(f"vcf features, JPEG {where}, first {small_count} images", small_count)

        first = frame_sets[sets[0]]
        batches = preprocessed_batches(first, transform, args.batch_size, pin=torch_device.type == "cuda")
        pure = Timing("pure model (Inference on in-memory uint8 batches)", len(first))
        jpeg = {name: Timing(f"vcf features, JPEG {name}", len(frame_sets[name])) for name in sets}
        fast_run = Timing("vcf features --fast-decode, JPEG 720p", len(frame_sets.get("720p", [])))
        on_device = "720p" in sets and (
            args.device_decode == "on" or (args.device_decode == "auto" and torch_device.type == "cuda")
        )
        device_run = Timing("vcf features --decode-on-device, JPEG 720p", len(frame_sets.get("720p", [])))
        video_run = Timing(f"vcf features --from-video --every {every}", 0)
        outputs: dict[str, np.ndarray] = {}
        for repeat in range(args.repeat):
            with common.BackgroundLoad() as load:
                seconds, pure.images, pure_out = pure_outputs(inference, batches, len(first))
            pure.add(seconds, None, load)
            for name in sets:
                with common.BackgroundLoad() as load:
                    elapsed, progress, out_dir = run_library(collections[name], args, weights)
                jpeg[name].add(elapsed, progress, load)
                outputs[name] = BigFile(out_dir).read_array([i for i, _ in frame_sets[name]])
            with common.BackgroundLoad() as load:
                elapsed, progress, _ = run_library(small_collection, args, weights)
            small_run.add(elapsed, progress, load)
            if fast:
                with common.BackgroundLoad() as load:
                    elapsed, progress, out_dir = run_library(collections["720p"], args, weights, fast_decode=True)
                fast_run.add(elapsed, progress, load)
                outputs["fast"] = BigFile(out_dir).read_array([i for i, _ in frame_sets["720p"]])
            if on_device:
                with common.BackgroundLoad() as load:
                    elapsed, progress, out_dir = run_library(collections["720p"], args, weights, decode_on_device=True)
                device_run.add(elapsed, progress, load)
                outputs["device"] = BigFile(out_dir).read_array([i for i, _ in frame_sets["720p"]])
            if video:
                with common.BackgroundLoad() as load:
                    elapsed, progress, out_dir = run_library(
                        video_collection, args, weights, from_video=True, every=every
                    )
                video_run.images = BigFile(out_dir).nr_of_images
                video_run.add(elapsed, progress, load)
            if args.repeat > 1:
                print(f"  repeat {repeat + 1}/{args.repeat} done")

        marginal = feature_costs.marginal_rate(jpeg[where].images, jpeg[where].seconds, small_count, small_run.seconds)
        fixed = Timing(f"vcf features, JPEG {where}, fixed costs cancelled (large - small run)", 1)
        fixed.seconds, fixed.load = 1 / marginal, max(jpeg[where].load, small_run.load)
        timings = [pure, *jpeg.values(), small_run, fixed]
        timings += ([fast_run] if fast else []) + ([device_run] if on_device else [])
        timings += [video_run] if video else []
        rows = [[t.label, t.images, t.rate, t.steady, t.first_batch, t.rate / pure.rate, t.load] for t in timings]
        rows[0][3] = rows[0][4] = ""
        rows[[t.label for t in timings].index(fixed.label)][1] = jpeg[where].images - small_count
        print()
        print(f"best of {args.repeat} run(s) each; 'other load' is the cores other processes kept busy meanwhile")
        print(
            common.table(
                ["run", "images", "img/s", "steady img/s", "first batch s", "ratio to pure", "other load"], rows
            )
        )

        for name in sets:
            print(f"decoding, JPEG {name}: {DECODING.get(collections[name])}")
        dim = pure_out[args.layer].shape[1]
        costs = step_costs(frame_sets[where], transform, inference, args.batch_size, dim)
        costs["model (pure)"] = 1000 / pure.rate
        wall = 1000 / jpeg[where].rate
        print()
        print(f"where the time goes, JPEG {where} (ms per image; read, decode, preprocess and collate measured alone")
        print("on one thread: in a run they happen between batches or in loader workers beside the model):")
        step_rows = [[step, ms, 100 * ms / wall] for step, ms in costs.items()]
        step_rows.append(["end to end, wall", wall, 100.0])
        print(common.table(["step", "ms/img", "% of end-to-end wall"], step_rows))

        print()
        caveat = "" if weights is None else " (random weights: fidelity figures mean little)"
        if args.precision in ("bf16", "fp16"):
            reference = Inference(extractor, inference.normalization, torch_device, "fp32")
            count = min(len(batches), 2)
            ref = np.concatenate([reference(b)[args.layer] for b in batches[:count]])
            cos = cosine(pure_out[args.layer][: len(ref)], ref)
            print(
                f"{args.precision} vs fp32 features, {len(ref)} images: cosine mean {cos.mean():.5f}, "
                f"min {cos.min():.5f}{caveat}"
            )
        if fast:
            cos = cosine(outputs["fast"], outputs["720p"])
            print(
                f"--fast-decode vs exact decoding, JPEG 720p: cosine mean {cos.mean():.5f}, min {cos.min():.5f}{caveat}"
            )
        if on_device:
            cos = cosine(outputs["device"], outputs["720p"])
            print(
                f"--decode-on-device vs OpenCV decoding, JPEG 720p: cosine mean {cos.mean():.5f}, "
                f"min {cos.min():.5f}{caveat}"
            )
        rows_compared = len(pure_out[args.layer])
        same = cosine(outputs[sets[0]][:rows_compared], pure_out[args.layer]).min()
        print(f"library vs pure features (JPEG {sets[0]}): min cosine {same:.6f}")

        rss = None
        if not args.no_rss:
            shutil.rmtree(collections[where] / "FeatureData", ignore_errors=True)  # else it is up to date
            argv = feature_costs.cli_features(collections[where], record.name, args.precision, args.batch_size, weights)
            with common.BackgroundLoad() as load:
                rss_seconds, rss = feature_costs.peak_rss_of_run(argv)
            print(
                f"vcf features CLI, JPEG {where}, {jpeg[where].images} images, default workers: peak RSS of its "
                f"processes {rss / 2**30:.2f} GiB, {rss_seconds:.1f} s wall (other load {load.cores:.2f})"
            )

    print()
    for timing in timings[1:]:
        print(f"ratio end-to-end / pure, {timing.label}: {timing.rate / pure.rate:.3f}")
    label = f"features {record.name} {args.precision} {args.device}: end-to-end / pure (worst JPEG set)"
    print(common.headline(label, min(t.rate for t in jpeg.values()) / pure.rate))
    label = f"features {record.name} {args.precision} {args.device}: fixed costs cancelled / pure (JPEG {where})"
    print(common.headline(label, fixed.rate / pure.rate))
    if rss is not None:
        print(common.headline(f"features {record.name} {args.precision}: peak RSS GiB", rss / 2**30))


if __name__ == "__main__":
    main()
