"""Search benchmark: exact search and faiss IVF and HNSW indexes of random and of clustered unit vectors.

Usage: python bench/search.py [--rows 100000] [--data random clustered] [--dim 512]
       python bench/search.py --rows 1000000 --data clustered     (one input at 1M rows: about 4 minutes)

Two inputs: ``random`` (uniformly random unit vectors: no neighbourhood structure, the worst case of any
approximate index) and ``clustered`` (unit vectors drawn around a few thousand random centres with Gaussian
noise, closer to real embeddings, which gather around concepts). Queries are 100 fresh vectors of the same
kind, none of them in the data; recall@10 is against the exact top 10 of the same queries.

For each input and size: exact search as ``vcf search`` does it (faiss' SIMD inner products of the rows held
in memory, on one thread, then ``argpartition``) and as numpy's BLAS matrix-vector product; the IVF index
``vcf index`` builds above its exact limit (probe count tuned on 200 sample rows, stopping where ``auto``
rejects it), then other probe counts; an HNSW graph up to ``--hnsw-max-rows`` rows (its build is the
slowest: measure it at 100,000 rows and extrapolate). One query runs on one faiss thread, as ``vcf search``
runs it; a batch of 100 on every core.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BackgroundLoad, headline, lscpu_model, self_peak_rss, table
from vcf.stages.search_index import (
    MAX_PROBED_SHARE,
    RECALL_PROBES,
    SEED,
    TARGET_RECALL,
    build_ivf,
    faiss_threads,
    inner_products,
    recall_at,
    top_rows,
    tune_nprobe,
)

SINGLE_QUERIES = 30
BATCH = 100
BATCHES = 3
IVF_SWEEP = (1, 8, 16, 32, 64, 128)
EF_SWEEP = (16, 32, 64, 128, 256, 512)
BLOCK = 100_000

HEADERS = [
    "data",
    "rows",
    "index",
    "build s",
    "MiB",
    "1 query p50 ms",
    "p99 ms",
    "100 queries p50 ms",
    "p99 ms",
    "recall@10",
]


def random_unit(rows: int, dim: int, seed: int) -> np.ndarray:
    """Uniformly random unit vectors."""
    rng = np.random.default_rng(seed)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, BLOCK):
        block = rng.standard_normal((min(BLOCK, rows - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def clustered_unit(rows: int, centres: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Unit vectors ``centre + noise * N(0, I/dim)`` around centres chosen uniformly, normalized."""
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, BLOCK):
        count = min(BLOCK, rows - start)
        block = centres[rng.integers(0, len(centres), count)]
        block += rng.standard_normal((count, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
        out[start : start + count] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def make_data(kind: str, rows: int, dim: int, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(data, queries) of one kind."""
    if kind == "random":
        return random_unit(rows, dim, SEED), random_unit(BATCH, dim, SEED + 1)
    centres = random_unit(args.centres, dim, SEED + 2)
    return clustered_unit(rows, centres, args.noise, SEED), clustered_unit(BATCH, centres, args.noise, SEED + 1)


def latencies(
    single: Callable[[np.ndarray], object], batch: Callable[[np.ndarray], object] | None, queries: np.ndarray
) -> list[str]:
    """p50 and p99 ms of one query (one faiss thread) and of a batch of 100 (every thread)."""
    times = []
    with faiss_threads(1):
        for query in queries[:SINGLE_QUERIES]:
            started = time.perf_counter()
            single(query)
            times.append((time.perf_counter() - started) * 1000)
    cells = [f"{v:.2f}" for v in np.percentile(times, [50, 99])]
    if batch is None:
        return [*cells, "-", "-"]
    times = []
    for _ in range(BATCHES):
        started = time.perf_counter()
        batch(queries[:BATCH])
        times.append((time.perf_counter() - started) * 1000)
    return cells + [f"{v:.0f}" for v in np.percentile(times, [50, 99])]


def exact_rows(kind: str, data: np.ndarray, queries: np.ndarray) -> list[list[object]]:
    mib = f"{data.nbytes / 2**20:.0f}"
    found = np.stack([top_rows(inner_products(data, q), 10) for q in queries])
    return [
        [
            kind,
            len(data),
            "exact, vcf search (faiss inner products, 1 thread)",
            "-",
            mib,
            *latencies(lambda q: top_rows(inner_products(data, q), 10), lambda b: top_rows(b @ data.T, 10), queries),
            f"{recall_at(found, top_rows(queries @ data.T, 10)):.3f}",
        ],
        [
            kind,
            len(data),
            "exact, numpy BLAS product",
            "-",
            mib,
            *latencies(lambda q: top_rows(data @ q, 10), None, queries),
            "1.000",
        ],
    ]


def ivf_rows(
    kind: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> tuple[list[list[object]], str]:
    """The IVF index `vcf index` builds (auto: tuned, kept or refused), then a probe sweep."""
    rows, dim = data.shape
    started = time.perf_counter()
    ivf = build_ivf(data, args.ivf_lists)
    rng = np.random.default_rng(SEED)
    probes = data[rng.choice(rows, size=RECALL_PROBES, replace=False)]
    most = max(1, int(ivf.nlist * MAX_PROBED_SHARE))
    nprobe, tuned_recall = tune_nprobe(ivf, data, probes, max_nprobe=most)
    build = time.perf_counter() - started
    kept = "ivf" if tuned_recall >= TARGET_RECALL and nprobe <= most else "exact"
    mib = f"{(ivf.ntotal * (dim * 4 + 8) + ivf.nlist * dim * 4) / 2**20:.0f}"
    out = []
    for probe_count in sorted({nprobe, *(n for n in IVF_SWEEP if n <= ivf.nlist)}):
        ivf.nprobe = probe_count
        _, found = ivf.search(queries, 10)
        tuned = probe_count == nprobe
        label = f"IVF{ivf.nlist}, nprobe {probe_count}" + (f" (tuned; auto keeps {kept})" if tuned else "")
        out.append(
            [
                kind,
                rows,
                label,
                f"{build:.1f}" if tuned else "",
                mib,
                *latencies(lambda q: ivf.search(q[None], 10), lambda b: ivf.search(b, 10), queries),
                f"{recall_at(found, truth):.3f}",
            ]
        )
    summary = f"IVF{ivf.nlist}: tuned nprobe {nprobe} (sample recall {tuned_recall:.3f}); auto keeps {kept}"
    return out, summary


def hnsw_rows(
    kind: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, m: int, ef_construction: int
) -> list[list[object]]:
    """An HNSW graph (flat storage), efSearch swept until recall@10 reaches 0.99."""
    import faiss

    rows, dim = data.shape
    started = time.perf_counter()
    graph = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = ef_construction
    graph.add(data)
    build = time.perf_counter() - started
    mib = f"{(rows * dim * 4 + rows * m * 2 * 4 * 1.07) / 2**20:.0f}"  # vectors + level-0 links (+ upper levels)
    out = []
    for ef in EF_SWEEP:
        graph.hnsw.efSearch = ef
        _, found = graph.search(queries, 10)
        recall = recall_at(found, truth)
        out.append(
            [
                kind,
                rows,
                f"HNSW{m} (efC {ef_construction}), efSearch {ef}",
                f"{build:.1f}" if not out else "",
                mib,
                *latencies(lambda q: graph.search(q[None], 10), lambda b: graph.search(b, 10), queries),
                f"{recall:.3f}",
            ]
        )
        if recall >= 0.99:
            break
    return out


def run(kind: str, rows: int, args: argparse.Namespace) -> tuple[list[list[object]], float]:
    started = time.perf_counter()
    data, queries = make_data(kind, rows, args.dim, args)
    truth = top_rows(queries @ data.T, 10)
    gap = np.take_along_axis(queries @ data.T, truth, axis=1)
    print(
        f"{kind}, {rows} rows: made in {time.perf_counter() - started:.0f} s; cosine of a query's 1st / 10th "
        f"neighbour {gap[:, 0].mean():.3f} / {gap[:, 9].mean():.3f}",
        flush=True,
    )
    found = exact_rows(kind, data, queries)
    ivf, summary = ivf_rows(kind, data, queries, truth, args)
    print(f"{kind}, {rows} rows: {summary}", flush=True)
    found += ivf
    if rows <= args.hnsw_max_rows:
        found += hnsw_rows(kind, data, queries, truth, args.hnsw_m, args.ef_construction)
    tuned = next(float(r[-1]) for r in ivf if "tuned" in str(r[2]))
    return found, tuned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--data", nargs="+", choices=("random", "clustered"), default=["random", "clustered"])
    parser.add_argument("--centres", type=int, default=4000, help="cluster centres of the clustered input")
    parser.add_argument("--noise", type=float, default=1.25, help="noise norm around a centre (unit centres)")
    parser.add_argument("--ivf-lists", type=int, default=None, help="IVF lists (default: as vcf index)")
    parser.add_argument("--hnsw-max-rows", type=int, default=200_000, help="build HNSW graphs up to this size")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=40)
    args = parser.parse_args()
    import faiss

    print(f"CPU: {lscpu_model()}, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)", flush=True)
    all_rows: list[list[object]] = []
    recall = {}
    with BackgroundLoad() as load:
        for kind in args.data:
            for rows in args.rows:
                found, recall[kind] = run(kind, rows, args)
                all_rows += found
                print(table(HEADERS, found), flush=True)
    print(f"\nall inputs and sizes, {args.dim} dims:")
    print(table(HEADERS, all_rows))
    print(f"peak RSS {self_peak_rss() / 2**30:.2f} GiB; other processes kept {load.cores:.2f} cores busy")
    for kind, value in recall.items():
        print(headline(f"search_ivf_tuned_recall_at_10_{kind}_largest", value))


if __name__ == "__main__":
    main()
