"""Search index benchmark: exact and IVF faiss indexes of random unit vectors (build, memory, latency, recall@10).

Usage: python bench/search.py [--rows 100000 1000000] [--dim 512]

For each size: the exact flat inner-product index and the IVF index ``vcf index`` builds above its exact limit
(probe count tuned on sample rows, as ``vcf index`` does), then a sweep of probe counts. Queries are fresh
random unit vectors; recall@10 is measured against exact search of the same queries. faiss uses every core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BackgroundLoad, headline, machine, self_peak_rss, table
from vcf.stages.search_index import (
    MAX_PROBED_SHARE,
    RECALL_PROBES,
    SEED,
    TARGET_RECALL,
    build_exact,
    build_ivf,
    recall_at,
    tune_nprobe,
)

SINGLE_QUERIES = 30
BATCH = 100
BATCHES = 3
SWEEP = (32, 128)


def random_unit(rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 100_000):
        block = rng.standard_normal((min(100_000, rows - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def latencies(index: object, queries: np.ndarray) -> tuple[float, float, float, float]:
    """(p50, p99) ms of one query, (p50, p99) ms of a batch of 100."""
    single = []
    for query in queries[:SINGLE_QUERIES]:
        started = time.perf_counter()
        index.search(query[None], 10)  # type: ignore[attr-defined]
        single.append((time.perf_counter() - started) * 1000)
    batch = []
    for n in range(BATCHES):
        block = queries[(n * BATCH) % len(queries) :][:BATCH]
        started = time.perf_counter()
        index.search(block, 10)  # type: ignore[attr-defined]
        batch.append((time.perf_counter() - started) * 1000)
    return (*np.percentile(single, [50, 99]), *np.percentile(batch, [50, 99]))  # type: ignore[return-value]


def run(rows: int, dim: int) -> tuple[list[list[object]], float]:
    data = random_unit(rows, dim, SEED)
    queries = random_unit(BATCH, dim, SEED + 1)
    result_rows: list[list[object]] = []

    started = time.perf_counter()
    exact = build_exact(dim, iter([data]))
    exact_build = time.perf_counter() - started
    _, truth = exact.search(queries, 10)
    p50, p99, b50, b99 = latencies(exact, queries)
    result_rows.append(
        [
            rows,
            "exact (flat IP)",
            f"{exact_build:.1f}",
            f"{exact.ntotal * dim * 4 / 2**20:.0f}",
            "-",
            f"{p50:.2f}",
            f"{p99:.2f}",
            f"{b50:.1f}",
            f"{b99:.1f}",
            "1.000",
        ]
    )
    del exact

    # What `vcf search` does without an index: one matrix-vector product over the normalized rows (BLAS).
    single = []
    for query in queries[:SINGLE_QUERIES]:
        started = time.perf_counter()
        scores = data @ query
        np.argpartition(-scores, 9)[:10]
        single.append((time.perf_counter() - started) * 1000)
    p50, p99 = np.percentile(single, [50, 99])
    result_rows.append(
        [
            rows,
            "exact (numpy, no index)",
            "-",
            f"{data.nbytes / 2**20:.0f}",
            "-",
            f"{p50:.2f}",
            f"{p99:.2f}",
            "-",
            "-",
            "1.000",
        ]
    )

    started = time.perf_counter()
    ivf = build_ivf(data)
    rng = np.random.default_rng(SEED)
    probes = data[rng.choice(rows, size=RECALL_PROBES, replace=False)]
    nprobe, _ = tune_nprobe(ivf, data, probes)
    ivf_build = time.perf_counter() - started
    ivf_mib = (ivf.ntotal * (dim * 4 + 8) + ivf.nlist * dim * 4) / 2**20
    tuned_recall = 0.0
    for probe_count in sorted({nprobe, *(n for n in SWEEP if n <= ivf.nlist)}):
        ivf.nprobe = probe_count
        _, found = ivf.search(queries, 10)
        recall = recall_at(found, truth)
        p50, p99, b50, b99 = latencies(ivf, queries)
        label = f"IVF{ivf.nlist}, nprobe {probe_count}" + (" (tuned)" if probe_count == nprobe else "")
        build = f"{ivf_build:.1f}" if probe_count == nprobe else ""
        result_rows.append(
            [
                rows,
                label,
                build,
                f"{ivf_mib:.0f}",
                probe_count,
                f"{p50:.2f}",
                f"{p99:.2f}",
                f"{b50:.1f}",
                f"{b99:.1f}",
                f"{recall:.3f}",
            ]
        )
        if probe_count == nprobe:
            tuned_recall = recall
    tuned_share = nprobe / ivf.nlist
    kept = "ivf" if tuned_recall >= TARGET_RECALL and tuned_share <= MAX_PROBED_SHARE else "exact"
    print(f"{rows} rows: tuned nprobe {nprobe} of {ivf.nlist} lists; `vcf index` (auto) keeps: {kept}")
    return result_rows, tuned_recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    import faiss

    print(f"machine: {machine()}, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)")
    all_rows: list[list[object]] = []
    recall = 0.0
    with BackgroundLoad() as load:
        for rows in args.rows:
            found, recall = run(rows, args.dim)
            all_rows += found
            print(table(HEADERS, found), flush=True)
    print(f"\nall sizes, {args.dim} dims:")
    print(table(HEADERS, all_rows))
    print(f"peak RSS {self_peak_rss() / 2**30:.2f} GiB; other processes kept {load.cores:.2f} cores busy")
    print(headline("search_ivf_recall_at_10_largest", recall))


HEADERS = [
    "rows",
    "index",
    "build s",
    "MiB",
    "nprobe",
    "1 query p50 ms",
    "p99 ms",
    "100 queries p50 ms",
    "p99 ms",
    "recall@10",
]


if __name__ == "__main__":
    main()
