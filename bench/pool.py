"""Benchmark: pool, concat and to-h5 on a large synthetic BigFile against one sequential read of feature.bin.

Usage:
    python bench/pool.py
    python bench/pool.py --rows 200000 --dim 2048 --warm

Builds, in a temporary directory, a frame-level BigFile of ``--rows`` x ``--dim`` float32 (200k x 2048
is 1.6 GB; ``--frames-per-video`` frames per video) and a second, smaller feature of the same ids for
concat. Each stage runs in its own process; its time (the library call, without interpreter start) and
its peak RSS (``wait4``'s ``ru_maxrss``) are reported. By default the page cache of the inputs is
dropped before every run (``posix_fadvise``), as for a collection larger than memory; ``--warm`` keeps
it. Stages that write as much as they read are also compared to a plain copy (read, write, fsync).
The last line is the headline: the worst stage time / sequential read time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from vcf.io.bigfile import BigFileWriter

FEATURE = "synth,avgpool"
SMALL = "synth_small,avgpool"

# Each child prints the seconds its library call took; imports and interpreter start are not counted.
READ = """
import os, sys, time
import numpy as np
path = sys.argv[1]
buffer = np.empty(64 << 20, dtype=np.uint8)
start = time.perf_counter()
with open(path, "rb", buffering=0) as handle:
    while handle.readinto(buffer):
        pass
print(time.perf_counter() - start)
"""

COPY = """
import os, sys, time
import numpy as np
src, dst = sys.argv[1], sys.argv[2]
buffer = np.empty(64 << 20, dtype=np.uint8)
start = time.perf_counter()
with open(src, "rb", buffering=0) as source, open(dst, "wb", buffering=0) as target:
    while True:
        n = source.readinto(buffer)
        if not n:
            break
        target.write(memoryview(buffer)[:n])
    os.fsync(target.fileno())
print(time.perf_counter() - start)
"""

STAGE = """
import sys, time
from vcf.stages.concat import concat
from vcf.stages.h5 import to_h5
from vcf.stages.pool import pool
collection, stage = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if stage.startswith("pool-"):
    pool(collection, sys.argv[3], method=stage[5:], overwrite=True)
elif stage == "concat":
    concat(collection, sys.argv[3], overwrite=True)
elif stage == "to-h5-per-video":
    to_h5(collection, sys.argv[3], output=sys.argv[4], per_video=True, overwrite=True)
elif stage == "to-h5-matrix":
    to_h5(collection, sys.argv[3], output=sys.argv[4], per_video=False, overwrite=True)
print(time.perf_counter() - start)
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--small-dim", type=int, default=512, help="dims of the second feature for concat")
    parser.add_argument("--frames-per-video", type=int, default=50)
    parser.add_argument("--warm", action="store_true", help="keep the inputs in the page cache")
    parser.add_argument("--tmp", default=None, help="where the temporary collection goes (default: $TMPDIR)")
    return parser.parse_args()


def write_synthetic(directory: Path, rows: int, dim: int, per_video: int, seed: int) -> None:
    """A frame-level BigFile of random rows with ids ``v<k>_<n>``."""
    rng = np.random.default_rng(seed)
    step = max(1, (64 << 20) // (dim * 4))
    manifest = {"level": "frame", "synthetic": True}
    with BigFileWriter(directory, dim, manifest=manifest) as writer:
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            ids = [f"v{i // per_video:06d}_{i % per_video}" for i in range(start, stop)]
            writer.append(ids, rng.random((stop - start, dim), dtype=np.float32))


def main() -> None:
    args = parse_args()
    print(f"machine: {common.machine()}")
    size = args.rows * args.dim * 4
    print(
        f"input: {args.rows} x {args.dim} float32 ({size / 1e9:.2f} GB), {args.frames_per_video} frames per video; "
        f"second feature {args.rows} x {args.small_dim}; page cache {'warm' if args.warm else 'dropped'}"
    )
    rows: list[list[object]] = []
    ratios: dict[str, float] = {}
    with common.temp_dir("vcf-bench-pool-", args.tmp) as work:
        collection = work / "coll"
        features = collection / "FeatureData"
        start = time.perf_counter()
        write_synthetic(features / FEATURE, args.rows, args.dim, args.frames_per_video, 0)
        write_synthetic(features / SMALL, args.rows, args.small_dim, args.frames_per_video, 1)
        print(f"synthetic features written in {time.perf_counter() - start:.1f} s")
        big = features / FEATURE / "feature.bin"
        small = features / SMALL / "feature.bin"

        def cold(*paths: Path) -> None:
            if not args.warm:
                for path in paths:
                    common.drop_file_cache(path)

        def child(name: str, code: str, *argv: str, inputs: tuple[Path, ...] = (big,)) -> tuple[float, int]:
            cold(*inputs)
            if args.warm:
                common.run_child(READ, *map(str, inputs))  # the first read fills the cache for every run
            with common.BackgroundLoad() as load:
                _, rss, out = common.run_child(code, *argv)
            seconds = float(out.strip().splitlines()[-1])
            note = f" (background load {load.cores:.2f} cores)" if load.cores > 0.3 else ""
            print(f"  {name}: {seconds:.2f} s, peak RSS {rss / 2**20:.0f} MiB{note}")
            return seconds, rss

        read_s, read_rss = child("sequential read", READ, str(big))
        small_read_s = child("sequential read, second feature", READ, str(small), inputs=(small,))[0]
        copy_target = work / "copy.bin"
        copy_s, copy_rss = child("copy (read + write + fsync)", COPY, str(big), str(copy_target))
        copy_target.unlink()
        rows.append(["sequential read of feature.bin", read_s, 1.0, "", read_rss / 2**20])
        rows.append(["plain copy of feature.bin (read, write, fsync)", copy_s, copy_s / read_s, 1.0, copy_rss / 2**20])

        stages = [
            ("pool mean", ("pool-mean", FEATURE), (big,), None),
            ("pool max", ("pool-max", FEATURE), (big,), None),
            (f"concat {args.dim}+{args.small_dim}", ("concat", f"{FEATURE}+{SMALL}"), (big, small), copy_s),
            ("to-h5 per video", ("to-h5-per-video", FEATURE, str(work / "f.h5")), (big,), copy_s),
            ("to-h5 matrix", ("to-h5-matrix", FEATURE, str(work / "m.h5")), (big,), copy_s),
        ]
        for name, argv, inputs, copy_ref in stages:
            seconds, rss = child(name, STAGE, str(collection), *argv, inputs=inputs)
            reference = read_s + (small_read_s if len(inputs) > 1 else 0.0)
            ratios[name] = seconds / reference
            copy_ratio = ""
            if copy_ref is not None:
                # A copy of the output's bytes: the stage's own input/output floor.
                copy_ratio = seconds / (copy_ref * ((args.dim + args.small_dim) / args.dim if len(inputs) > 1 else 1))
            rows.append([name, seconds, ratios[name], copy_ratio, rss / 2**20])
            for out in (
                features / f"mean_{FEATURE}",
                features / f"max_{FEATURE}",
                features / f"{FEATURE}+{SMALL}",
                work / "f.h5",
                work / "m.h5",
            ):
                if out.is_dir():
                    shutil.rmtree(out, ignore_errors=True)
                else:
                    out.unlink(missing_ok=True)

    print()
    print(common.table(["stage", "s", "/ sequential read of inputs", "/ plain copy", "peak RSS MiB"], rows))
    print()
    for name, ratio in ratios.items():
        print(f"ratio {name} / sequential read: {ratio:.2f}")
    print(common.headline("pool/concat/to-h5: worst stage time / sequential read of its inputs", max(ratios.values())))


if __name__ == "__main__":
    main()
