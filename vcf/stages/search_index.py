"""Nearest-neighbour indexes of features (faiss): exact inner product when small, IVF above, recorded in a manifest."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vcf.errors import VcfError
from vcf.io.atomic import (
    OutputLock,
    clean_stale_temps,
    manifest_text,
    publish,
    read_manifest,
    remove_path,
    temp_sibling,
    writing,
)
from vcf.io.bigfile import BigFile, open_feature
from vcf.io.collection import Collection, resolve_collection
from vcf.progress import ProgressCallback, Reporter

# Up to this many rows an exact search is fast enough (8.5 ms for one 512-d query at 100,000 rows on 2 busy cores).
EXACT_MAX_ROWS = 200_000
KINDS = ("auto", "exact", "ivf", "hnsw")
TARGET_RECALL = 0.95
# ``auto`` keeps an IVF index only when it reaches the target recall probing at most this share of its lists.
MAX_PROBED_SHARE = 0.25
RECALL_PROBES = 200
NPROBE_STEPS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
EF_SEARCH_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# HNSW graph: 32 links a node and a build beam of 40 (faiss' default) reach recall@10 0.95 at efSearch 32 on
# 100,000 clustered 512-d vectors; the graph costs 256 bytes a row on top of the vectors, and its build is slow
# (about a minute per 100,000 rows on 2 cores), which is why ``auto`` takes IVF.
HNSW_LINKS = 32
HNSW_EF_CONSTRUCTION = 40
TRAIN_PER_LIST = 64
# k-means cost grows with lists x training rows: above this many rows the lists get fewer (39 is faiss' minimum).
TRAIN_MAX_ROWS = 160_000
KMEANS_ITERATIONS = 10
CHUNK_ROWS = 65_536
SEED = 1234
INDEX_FILE = "index.faiss"


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero), so inner products are cosines."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, np.float32(1e-12))


def inner_products(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Scores of every row of ``matrix`` against one ``vector`` (float32, exact).

    faiss' SIMD kernel on one thread reads the rows at memory speed: 1.2 to 2.8 times faster than numpy's BLAS
    matrix-vector product on the same contiguous rows (8.5 ms against 10 to 24 ms for 100,000 x 512 on 2 busy
    cores, see docs/PERFORMANCE.md).
    """
    import faiss

    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    vector = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    if matrix.ndim != 2 or matrix.shape[1] != len(vector):
        raise VcfError(f"cannot score a {len(vector)}-d vector against rows of shape {matrix.shape}")
    scores = np.empty(len(matrix), dtype=np.float32)
    faiss.fvec_inner_products_ny(
        faiss.swig_ptr(scores), faiss.swig_ptr(vector), faiss.swig_ptr(matrix), len(vector), len(matrix)
    )
    return scores


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest ``scores`` (each row of a 2-d array), best first."""
    k = min(k, scores.shape[-1])
    part = np.argpartition(scores, scores.shape[-1] - k, axis=-1)[..., -k:]
    order = np.argsort(-np.take_along_axis(scores, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


@contextmanager
def faiss_threads(count: int) -> Iterator[None]:
    """Runs faiss with ``count`` OpenMP threads, then restores the previous count.

    One query is best answered on one thread: splitting it costs an OpenMP barrier per search, which on busy
    cores takes longer than the search itself (faiss' flat scan of 100,000 x 512 rows for one query: 12 ms on
    one thread, 48 ms on two). The thread count is process-wide, so concurrent searches share it.
    """
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def iter_normalized(bigfile: BigFile, rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """The feature's rows, normalized, in chunks."""
    matrix = bigfile.matrix()
    for start in range(0, bigfile.nr_of_images, rows):
        yield normalize_rows(matrix[start : start + rows])


def feature_stamp(bigfile: BigFile) -> dict[str, Any]:
    """What identifies the content of a feature: its description plus the binary file's size and mtime."""
    stat = os.stat(bigfile.binary_file)
    return {**bigfile.describe(), "bin_stat": [stat.st_size, stat.st_mtime_ns]}


def choose_kind(rows: int, kind: str = "auto") -> str:
    """``exact`` up to :data:`EXACT_MAX_ROWS` rows, ``ivf`` above, unless asked otherwise."""
    if kind not in KINDS:
        raise VcfError(f"unknown index kind {kind!r}; use one of: {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return "exact" if rows <= EXACT_MAX_ROWS else "ivf"


def ivf_lists(rows: int) -> int:
    """IVF list count: about 2 sqrt(rows), a power of two, at most rows / 39 (faiss' training minimum).

    More lists make probing cheaper but training (k-means over lists * 64 rows) slower. On 1,000,000 clustered
    512-d rows (docs/PERFORMANCE.md) 2,048 lists reach recall@10 0.96 probing one list (0.12 ms) where 1,024
    need 96 probes (11 ms), for a build of under 3 minutes on 2 cores instead of one.
    """
    target = 2 ** round(math.log2(max(1.0, 2 * math.sqrt(rows))))
    return int(max(1, min(target, rows // 39)))


def build_exact(dim: int, chunks: Iterator[np.ndarray]) -> Any:
    """A flat inner-product index holding every chunk."""
    import faiss

    index = faiss.IndexFlatIP(dim)
    for chunk in chunks:
        index.add(chunk)
    return index


def build_ivf(matrix: np.ndarray, lists: int | None = None) -> Any:
    """An IVF-flat inner-product index of normalized ``matrix``, trained on a fixed-seed sample of its rows."""
    import faiss

    rows, dim = matrix.shape
    lists = lists or ivf_lists(rows)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(SEED)
    sample = rng.choice(rows, size=min(rows, lists * TRAIN_PER_LIST, TRAIN_MAX_ROWS), replace=False)
    index.cp.seed = SEED
    index.cp.niter = KMEANS_ITERATIONS
    index.train(np.ascontiguousarray(matrix[np.sort(sample)]))
    for start in range(0, rows, CHUNK_ROWS):
        index.add(np.ascontiguousarray(matrix[start : start + CHUNK_ROWS]))
    return index


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the true top ``k`` ids found in the first ``k`` ids returned."""
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k


def tune_nprobe(
    index: Any, matrix: np.ndarray, queries: np.ndarray, k: int = 10, max_nprobe: int | None = None
) -> tuple[int, float]:
    """The smallest probe count whose recall@k against exact search reaches :data:`TARGET_RECALL`.

    Stops at ``max_nprobe`` (default: the last of :data:`NPROBE_STEPS`) or at every list, and then returns the
    last count tried and its recall.
    """
    truth = top_rows(queries @ matrix.T, k)
    limit = min(index.nlist, max_nprobe or NPROBE_STEPS[-1])
    nprobe, recall = 1, 0.0
    for nprobe in [n for n in NPROBE_STEPS if n < limit] + [limit]:
        index.nprobe = nprobe
        _, found = index.search(queries, k)
        recall = recall_at(found, truth, k)
        if recall >= TARGET_RECALL:
            break
    return nprobe, recall


def build_hnsw(matrix: np.ndarray) -> Any:
    """An HNSW graph (flat vectors) of normalized ``matrix`` for inner product."""
    import faiss

    graph = faiss.IndexHNSWFlat(matrix.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    for start in range(0, len(matrix), CHUNK_ROWS):
        graph.add(np.ascontiguousarray(matrix[start : start + CHUNK_ROWS]))
    return graph


def tune_ef_search(graph: Any, matrix: np.ndarray, queries: np.ndarray, k: int = 10) -> tuple[int, float]:
    """The smallest efSearch whose recall@k against exact search reaches :data:`TARGET_RECALL` (else the last)."""
    truth = top_rows(queries @ matrix.T, k)
    ef, recall = EF_SEARCH_STEPS[0], 0.0
    for ef in EF_SEARCH_STEPS:
        graph.hnsw.efSearch = ef
        _, found = graph.search(queries, k)
        recall = recall_at(found, truth, k)
        if recall >= TARGET_RECALL:
            break
    return ef, recall


def approximate_ivf(matrix: np.ndarray, probes: np.ndarray, auto: bool) -> tuple[Any, dict[str, Any], str | None]:
    """IVF index, its probe count tuned; the reason to refuse it under ``auto`` (None to keep it)."""
    built = build_ivf(matrix)
    # auto rejects an index needing more than MAX_PROBED_SHARE of its lists: no need to probe further.
    most = max(1, int(built.nlist * MAX_PROBED_SHARE)) if auto else None
    nprobe, recall = tune_nprobe(built, matrix, probes, max_nprobe=most)
    built.nprobe = nprobe
    settings = {"lists": int(built.nlist), "nprobe": nprobe, "recall_at_10": round(recall, 4)}
    ok = recall >= TARGET_RECALL and nprobe <= built.nlist * MAX_PROBED_SHARE
    return built, settings, None if ok else f"ivf reached recall {recall:.3f} at nprobe {nprobe} of {built.nlist} lists"


def approximate_hnsw(matrix: np.ndarray, probes: np.ndarray, auto: bool) -> tuple[Any, dict[str, Any], str | None]:
    """HNSW graph, its efSearch tuned; the reason to refuse it under ``auto`` (None to keep it)."""
    built = build_hnsw(matrix)
    ef, recall = tune_ef_search(built, matrix, probes)
    built.hnsw.efSearch = ef
    settings = {"links": HNSW_LINKS, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": ef}
    settings["recall_at_10"] = round(recall, 4)
    return built, settings, None if recall >= TARGET_RECALL else f"hnsw reached recall {recall:.3f} at efSearch {ef}"


APPROXIMATE = {"ivf": approximate_ivf, "hnsw": approximate_hnsw}


def is_approximate(loaded: Any) -> bool:
    """Whether a loaded faiss index is approximate (IVF or HNSW), not a flat exact one."""
    return hasattr(loaded, "nprobe") or hasattr(loaded, "hnsw")


@dataclass
class IndexResult:
    """What :func:`index` did.

    Attributes:
        index_dir: ``IndexData/<feature>/``.
        kind: ``exact``, ``ivf`` or ``hnsw``.
        rows: Vectors indexed.
        settings: The index parameters written to the manifest (lists, probes, measured recall).
        up_to_date: The index existed and matched the feature; nothing was done.
        seconds: Build time.
    """

    index_dir: Path
    kind: str
    rows: int
    settings: dict[str, Any] = field(default_factory=dict)
    up_to_date: bool = False
    seconds: float = 0.0


def index(
    collection: str | os.PathLike[str],
    feature: str,
    *,
    kind: str = "auto",
    rootpath: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> IndexResult:
    """Builds a faiss index of a feature under ``IndexData/<feature>/`` for :func:`vcf.search`.

    Rows are L2-normalized, so scores are cosine similarities. ``auto`` takes an exact flat index up to
    :data:`EXACT_MAX_ROWS` rows and an IVF index above, its probe count tuned on sample rows to reach
    recall@10 >= 0.95 against exact search; the manifest records the choice and the measured recall.

    Args:
        collection: Collection directory, or its name under ``rootpath``.
        feature: A feature directory in ``FeatureData``.
        kind: ``auto``, ``exact``, ``ivf`` or ``hnsw`` (an HNSW graph, efSearch tuned like IVF's probes).
        rootpath: Where named collections live.
        overwrite: Rebuild even when an up-to-date index exists.
        progress: Receives ``rows`` progress events.

    Returns:
        What was built.
    """
    import faiss

    coll = resolve_collection(collection, rootpath)
    bigfile = open_feature(coll, feature)
    chosen = choose_kind(bigfile.nr_of_images, kind)
    if bigfile.nr_of_images == 0:
        raise VcfError(f"feature {feature} has no rows to index")
    out_dir = coll.index_dir(feature)
    stamp = feature_stamp(bigfile)
    coll.index_root.mkdir(parents=True, exist_ok=True)
    with OutputLock(coll.index_root / f".{feature}.lock"):
        clean_stale_temps(coll.index_root)
        existing = read_manifest(out_dir)
        if not overwrite and existing and existing.get("feature") == stamp and existing.get("requested") == kind:
            return IndexResult(out_dir, existing["kind"], bigfile.nr_of_images, existing.get("settings", {}), True)
        reporter = Reporter(progress)
        reporter.total("rows", bigfile.nr_of_images)
        started = time.perf_counter()
        settings: dict[str, Any] = {"metric": "inner_product", "normalized": True}
        if chosen == "exact":
            built = build_exact(bigfile.ndims, iter_normalized(bigfile))
        else:
            matrix = np.concatenate(list(iter_normalized(bigfile)))
            rng = np.random.default_rng(SEED)
            probes = matrix[rng.choice(len(matrix), size=min(len(matrix), RECALL_PROBES), replace=False)]
            built, tuned, refused = APPROXIMATE[chosen](matrix, probes, kind == "auto")
            settings.update(tuned)
            if kind == "auto" and refused:
                # Vectors without cluster structure: the index would scan most of the rows for the recall asked,
                # so an exact search is as fast, and exact.
                settings["exact_because"] = refused
                chosen, built = "exact", build_exact(bigfile.ndims, iter([matrix]))
        reporter.advance("rows", bigfile.nr_of_images)
        seconds = time.perf_counter() - started
        manifest = {"stage": "index", "requested": kind, "kind": chosen, "feature": stamp, "settings": settings}
        tmp = temp_sibling(out_dir)
        tmp.mkdir(parents=True)
        try:
            with writing(out_dir):
                faiss.write_index(built, str(tmp / INDEX_FILE))
                (tmp / "manifest.json").write_text(manifest_text(manifest), encoding="utf-8")
                publish(tmp, out_dir, overwrite=True)
        finally:
            remove_path(tmp)
    return IndexResult(out_dir, chosen, bigfile.nr_of_images, settings, False, seconds)


def load_index(coll: Collection, feature: str, bigfile: BigFile) -> Any | None:
    """The feature's faiss index when it exists and is up to date with the feature, else None."""
    out_dir = coll.index_dir(feature)
    manifest = read_manifest(out_dir)
    if not manifest or manifest.get("feature") != feature_stamp(bigfile) or not (out_dir / INDEX_FILE).is_file():
        return None
    import faiss

    loaded = faiss.read_index(str(out_dir / INDEX_FILE))
    settings = manifest.get("settings", {})
    if settings.get("nprobe"):
        loaded.nprobe = int(settings["nprobe"])
    if settings.get("ef_search"):
        loaded.hnsw.efSearch = int(settings["ef_search"])
    return loaded
