"""Benchmark: ``torch.compile`` (inductor) against eager for one model, in bf16 and fp32, on the CPU.

Usage:
    python bench/compile.py --model resnet50 --batches 12
    python bench/compile.py --model resnext101_32x8d --precisions bf16

Each run is a fresh process running ``vcf.models.inference.Inference`` (the one ``vcf features`` uses) on the
same random uint8 batches: eager; compiled with an empty inductor cache (the first run of a model, compile
included); compiled again with the cache the first run left (every later run). A run's time counts from
before the model is placed to the last batch, so a compiled run's first batch carries its compile. The
verdict: compiling is worth making the default where the first compiled run of that size is at least 15 %
faster than eager, with features equal within the cosine a manifest records.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

WIN = 1.15
# The lowest cosine to eager features that still counts as the same features (bf16 rounding and fused
# kernels move values by far less).
MIN_COSINE = 0.999


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--precisions", default="bf16,fp32", help="comma-separated (default bf16,fp32)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=12, help="batches per run (default 12)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def child(args: argparse.Namespace) -> None:
    """One run in this process: prints its timings as JSON, saves its features next to it."""
    import numpy as np
    import torch

    from vcf.models import build_extractor, get_model
    from vcf.models.inference import Inference, Normalization

    mode, precision, out = args.child.split(":", 2)
    record = get_model(args.model)
    torch.manual_seed(0)  # the same random weights in every run's process
    extractor, _ = build_extractor(record, ["avgpool"], pretrained=False)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (args.batch_size, *record.input_shape), dtype=torch.uint8, generator=generator)
    pre = record.preprocess
    start = time.perf_counter()
    inference = Inference(
        extractor,
        Normalization(tuple(pre.mean), tuple(pre.std)),
        torch.device("cpu"),
        precision,
        compile_model=mode != "eager",
    )
    first = inference(batch)["avgpool"]
    first_s = time.perf_counter() - start
    for _ in range(args.batches - 1):
        inference(batch)
    total = time.perf_counter() - start
    np.save(out, first)
    steady = (total - first_s) / max(args.batches - 1, 1)
    print(json.dumps({"total_s": total, "first_batch_s": first_s, "steady_batch_s": steady}))


def run(args: argparse.Namespace, mode: str, precision: str, out: Path, cache: Path) -> dict[str, float]:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
    env["PYTHONPATH"] = os.pathsep.join([str(common.ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    argv = [sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size)]
    argv += ["--batches", str(args.batches), "--child", f"{mode}:{precision}:{out}"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} {precision} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    import numpy as np

    print(f"machine: {common.machine()}")
    print(f"model {args.model}, batch {args.batch_size}, {args.batches} batches per run")
    rows, verdicts = [], []
    with tempfile.TemporaryDirectory(prefix="vcf-bench-compile-") as tmp:
        work = Path(tmp)
        for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
            cache = work / f"inductor-{precision}"
            results, outputs = {}, {}
            with common.BackgroundLoad() as load:
                for mode in ("eager", "compiled, first run", "compiled, cached"):
                    out = work / f"{precision}-{mode.split(',')[0]}-{len(results)}.npy"
                    results[mode] = run(
                        args, mode.split(",")[0] if mode == "eager" else "compiled", precision, out, cache
                    )
                    outputs[mode] = np.load(out)
            images = args.batch_size * args.batches
            eager = results["eager"]
            for mode, timing in results.items():
                a, b = outputs[mode].astype(np.float64), outputs["eager"].astype(np.float64)
                cos = ((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min()
                rows.append(
                    [
                        precision,
                        mode,
                        timing["total_s"],
                        timing["first_batch_s"],
                        args.batch_size / timing["steady_batch_s"],
                        eager["total_s"] / timing["total_s"],
                        cos,
                        load.cores,
                    ]
                )
            first = results["compiled, first run"]
            cos_first = rows[-2][6]
            wins = eager["total_s"] >= WIN * first["total_s"] and cos_first >= MIN_COSINE
            verdicts.append(
                f"{precision}: {images} images, eager {eager['total_s']:.1f} s vs compiled first run "
                f"{first['total_s']:.1f} s: compile {'WINS' if wins else 'does not win'} by the 15 % rule"
            )
    print(
        common.table(
            [
                "precision",
                "run",
                "total s",
                "first batch s",
                "steady img/s",
                "eager / this",
                "min cosine",
                "other load",
            ],
            rows,
        )
    )
    for verdict in verdicts:
        print(verdict)


if __name__ == "__main__":
    main()
