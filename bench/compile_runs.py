"""Benchmark: whole ``vcf features`` runs eager and compiled: the figures of a ``compile_rule.MEASURED`` entry.

Usage:
    python bench/compile_runs.py --model resnet50 --precision bf16
    python bench/compile_runs.py --model resnet50 --precision bf16 --small 160 --large 1600 --batch-size 32

Unlike ``bench/compile.py`` (the model alone on batches in memory), these are CLI runs over 1280x720 JPEG
frames of real videos, decoding included, each in a fresh process: eager on a small and a large collection
(per-image time with fixed costs cancelled: (large - small) / (images apart)); compiled on the large one with
an empty inductor cache (a first run: its compile), then on both with the cache kept (per-image time). The
compile of a first run is the cold run's seconds minus eager's fixed costs minus the images at the compiled
per-image time. The last lines are the entry for ``vcf.models.compile_rule.MEASURED`` and the run size from
which the automatic choice compiles.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from vcf.io.bigfile import BigFile
from vcf.models.compile_rule import CompileGain
from vcf.models.inference import cpu_kind


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--batch-size", type=int, default=32, help="vcf's default 32")
    parser.add_argument("--small", type=int, default=160, help="images of the small run (default 160)")
    parser.add_argument("--large", type=int, default=1600, help="images of the large run (default 1600)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.small % args.batch_size or args.large % args.batch_size:
        # A last, shorter batch is another shape to compile: the small and large runs would differ by more
        # than their images.
        raise SystemExit("--small and --large must be multiples of --batch-size")
    print(f"machine: {common.machine()}")
    print(f"model {args.model} {args.precision}, batch {args.batch_size}, {args.small} and {args.large} 720p JPEGs")
    with tempfile.TemporaryDirectory(prefix="vcf-bench-compile-runs-") as tmp:
        work = Path(tmp)
        frames = common.write_frame_set(work / "frames", args.large, common.SIZE_720P)
        sizes = {"small": args.small, "large": args.large}
        collections = {k: common.make_image_collection(work / k, frames[:n]) for k, n in sizes.items()}
        weights = common.random_weights(args.model, work / "weights.pth")
        cache = work / "inductor"

        def run(size: str, compiled: bool) -> tuple[float, np.ndarray]:
            argv = [
                sys.executable, "-m", "vcf", "features", str(collections[size]), "--model", args.model,
                "--weights", str(weights), "--precision", args.precision, "--batch-size", str(args.batch_size),
                "--overwrite", "--quiet", "--compile" if compiled else "--no-compile",
            ]  # fmt: skip
            seconds = common.timed(argv, env={"TORCHINDUCTOR_CACHE_DIR": str(cache)})
            return seconds, BigFile(collections[size] / "FeatureData" / f"{args.model},avgpool").matrix()

        with common.BackgroundLoad() as load:
            eager_small, _ = run("small", False)
            eager_large, eager = run("large", False)
            cold_large, compiled = run("large", True)
            warm_small, _ = run("small", True)
            warm_large, _ = run("large", True)
    apart = args.large - args.small
    eager_ms = (eager_large - eager_small) / apart * 1000
    compiled_ms = (warm_large - warm_small) / apart * 1000
    fixed = eager_small - args.small * eager_ms / 1000
    compile_cold = cold_large - fixed - args.large * compiled_ms / 1000
    compile_warm = warm_large - fixed - args.large * compiled_ms / 1000
    cos = (eager * compiled).sum(1) / (np.linalg.norm(eager, axis=1) * np.linalg.norm(compiled, axis=1))
    rows = [
        ["eager", eager_small, eager_large, eager_ms, "", load.cores],
        ["compiled, empty cache", "", cold_large, "", compile_cold, load.cores],
        ["compiled, cache kept", warm_small, warm_large, compiled_ms, compile_warm, load.cores],
    ]
    headers = ["run", f"{args.small} images s", f"{args.large} images s", "ms/img", "compile s", "other load"]
    print(common.table(headers, rows))
    print(f"min cosine compiled / eager over {args.large} images: {cos.min():.6f}")
    cores = os.cpu_count() or 1
    gain = CompileGain(round(eager_ms, 1), round(compiled_ms, 1), round(compile_cold), cores, "bench/compile_runs.py")
    print(f"MEASURED[({args.model!r}, {args.precision!r}, {cpu_kind()!r})] = {gain}")
    needed = gain.break_even(cores)
    print(f"whole runs, compiled / eager per image: {eager_ms / compiled_ms:.2f}x")
    print(common.headline("compiles by default from images (first run, 15 % faster)", needed))


if __name__ == "__main__":
    main()
