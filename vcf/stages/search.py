"""Search: rank the rows of features (frames aggregated to shots or videos) against text, image, video or id queries."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vcf.errors import VcfError
from vcf.io.atomic import atomic_write_text
from vcf.io.bigfile import BigFile, open_feature
from vcf.io.collection import Collection, read_imagepath, resolve_collection
from vcf.progress import ProgressCallback, Reporter
from vcf.stages.search_index import faiss_threads, inner_products, is_approximate, load_index, normalize_rows
from vcf.stages.search_query import QueryEncoder, id_vector, query_kind

AGGREGATIONS = ("max", "mean")
RRF_K = 60
TREC_MAX = 1000
# With an index, a frame-level search fetches this many frames per wanted result before aggregating.
CANDIDATES_PER_RESULT = 20


@dataclass(frozen=True)
class Hit:
    """One ranked result.

    Attributes:
        id: Row id, or the shot/video id frames were aggregated to.
        score: Cosine similarity (aggregated), or the reciprocal-rank fusion score of several features.
        frame: The best-scoring frame id of an aggregated result (None for rows searched as they are).
        path: That frame's image file when ``id.imagepath.txt`` lists it.
    """

    id: str
    score: float
    frame: str | None = None
    path: str | None = None


@dataclass
class QueryResult:
    """The ranking of one query."""

    query: str
    kind: str
    results: list[Hit] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """The JSON form: ``{"query", "kind", "results": [{"id", "score", "frame"?, "path"?}]}``."""
        hits = []
        for hit in self.results:
            item: dict[str, object] = {"id": hit.id, "score": hit.score}
            if hit.frame is not None:
                item["frame"] = hit.frame
            if hit.path is not None:
                item["path"] = hit.path
            hits.append(item)
        return {"query": self.query, "kind": self.kind, "results": hits}


def group_of(row_id: str) -> str:
    """The shot or video a frame belongs to: ``<vid>_<n>`` -> ``<vid>``, ``shot<v>_<k>_<n>`` -> ``shot<v>_<k>``."""
    return row_id.rsplit("_", 1)[0]


class FeatureSpace:
    """One feature opened for searching: its normalized rows, their groups and its index when up to date.

    Args:
        coll: The collection.
        feature: The feature's name.
        aggregate: ``max`` or ``mean`` over the frames of a shot/video (frame-level features), or None to
            decide from the feature (frame-level features are aggregated with ``max``).
        use_index: Use ``IndexData/<feature>`` when it is up to date.
    """

    def __init__(self, coll: Collection, feature: str, aggregate: str | None, use_index: bool) -> None:
        from vcf.stages.h5 import is_frame_level

        self.feature = feature
        self.bigfile: BigFile = open_feature(coll, feature)
        if self.bigfile.nr_of_images == 0:
            raise VcfError(f"feature {feature} has no rows")
        self.ids = list(self.bigfile.names)
        self.frame_level = is_frame_level(self.bigfile, feature)
        self.aggregate = (aggregate or "max") if self.frame_level else None
        self._matrix: np.ndarray | None = None
        loaded = load_index(coll, feature, self.bigfile) if use_index else None
        # Only an approximate index is searched through faiss; an exact one gives the same scores as
        # inner_products over the rows in memory, which also serves frame aggregation.
        self.index = loaded if is_approximate(loaded) else None
        self.groups: dict[str, np.ndarray] = {}
        if self.frame_level:
            names, inverse = np.unique([group_of(i) for i in self.ids], return_inverse=True)
            self.group_names = [str(n) for n in names]
            self.group_of_row = inverse
            order = np.argsort(inverse, kind="stable")
            bounds = np.flatnonzero(np.diff(inverse[order])) + 1
            self.groups = {name: rows for name, rows in zip(self.group_names, np.split(order, bounds), strict=True)}
            self.group_order = order
            self.group_starts = np.concatenate([[0], bounds]).astype(np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """All rows, L2-normalized (read on first use)."""
        if self._matrix is None:
            self._matrix = normalize_rows(self.bigfile.matrix())
        return self._matrix

    def names(self) -> set[str]:
        """Row ids and group ids: what a query may name."""
        return set(self.ids) | set(self.groups)

    def rank(self, query: np.ndarray, depth: int) -> list[Hit]:
        """The best ``depth`` results for one query vector."""
        vector = normalize_rows(query.reshape(1, -1))
        if vector.shape[1] != self.bigfile.ndims:
            raise VcfError(f"query vector has {vector.shape[1]} dims; feature {self.feature} has {self.bigfile.ndims}")
        if not self.frame_level:
            if self.index is not None:
                with faiss_threads(1):
                    scores, rows = self.index.search(vector, min(depth, len(self.ids)))
                return [Hit(self.ids[r], float(s)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0]
            scores = inner_products(self.matrix, vector[0])
            top = _top(scores, depth, self.ids)
            return [Hit(self.ids[r], float(scores[r])) for r in top]
        if self.index is not None:
            wanted = min(len(self.ids), depth * CANDIDATES_PER_RESULT)
            with faiss_threads(1):
                _, rows = self.index.search(vector, wanted)
            candidates = np.unique(self.group_of_row[rows[0][rows[0] >= 0]])
        else:
            candidates = np.arange(len(self.group_names))
        return self._aggregate(vector[0], candidates, depth)

    def _aggregate(self, vector: np.ndarray, candidates: np.ndarray, depth: int) -> list[Hit]:
        """Scores the frames of the ``candidates`` groups and reduces them per group (one vectorized pass)."""
        if len(candidates) == len(self.group_names):
            rows, starts = self.group_order, self.group_starts
            scores = inner_products(self.matrix, vector)[rows]
        else:
            parts = [self.groups[self.group_names[g]] for g in candidates]
            rows = np.concatenate(parts)
            starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])[:-1]]).astype(np.int64)
            scores = inner_products(self.matrix[rows], vector)
        ends = np.append(starts[1:], len(rows))
        if self.aggregate == "max":
            group_scores = np.maximum.reduceat(scores, starts)
        else:
            group_scores = np.add.reduceat(scores.astype(np.float64), starts) / (ends - starts)
        names = [self.group_names[g] for g in candidates]
        hits = []
        for t in _top(group_scores, depth, names):
            best = rows[starts[t] + int(np.argmax(scores[starts[t] : ends[t]]))]
            hits.append(Hit(names[t], float(group_scores[t]), self.ids[best]))
        return hits


def _top(scores: np.ndarray, depth: int, names: Sequence[str]) -> list[int]:
    """Positions of the ``depth`` highest scores, best first; ties broken by name for a stable order."""
    depth = min(depth, len(scores))
    if depth <= 0:
        return []
    part = np.argpartition(-scores, depth - 1)[:depth] if depth < len(scores) else np.arange(len(scores))
    return sorted(part.tolist(), key=lambda i: (-float(scores[i]), names[i]))


def fuse(rankings: Sequence[list[Hit]], depth: int) -> list[Hit]:
    """Reciprocal-rank fusion: score ``sum 1 / (60 + rank)`` over the rankings an id appears in."""
    fused: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            fused[hit.id] = fused.get(hit.id, 0.0) + 1.0 / (RRF_K + rank)
            first.setdefault(hit.id, hit)
    order = sorted(fused, key=lambda i: (-fused[i], i))[:depth]
    return [Hit(i, fused[i], first[i].frame, first[i].path) for i in order]


def search(
    collection: str | os.PathLike[str],
    queries: Sequence[str],
    *,
    features: Sequence[str],
    top: int = 10,
    aggregate: str = "max",
    use_index: bool = True,
    weights: str | None = None,
    device: str = "cpu",
    rootpath: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
) -> list[QueryResult]:
    """Ranks the rows of one or more features against each query.

    A query naming an existing file is an image (or a video, by extension) encoded with the feature's model,
    weights and preprocessing (video frames pooled as the feature pools them); one equal to an id of the
    feature (a row, or a video/shot of a frame-level feature) is that vector; anything else is text, encoded by
    the text tower of the feature's ``clip/...`` model. Scores are cosine similarities; frame-level features
    are scored per frame and aggregated to their shot or video. Several features are fused by reciprocal rank.

    Args:
        collection: Collection directory, or its name under ``rootpath``.
        queries: The queries.
        features: Feature names (directories in ``FeatureData``).
        top: Results per query.
        aggregate: ``max`` or ``mean`` over the frames of a shot or video.
        use_index: Use an up-to-date ``IndexData/<feature>`` index (see :func:`vcf.index`); else exact search.
        weights: A weights file for encoding queries instead of the one the manifest records.
        device: Where query models run.
        rootpath: Where named collections live.
        progress: Receives ``queries`` progress events.

    Returns:
        One result per query, in query order.
    """
    if aggregate not in AGGREGATIONS:
        raise VcfError(f"unknown aggregation {aggregate!r}; use one of: {', '.join(AGGREGATIONS)}")
    if not features:
        raise VcfError("no feature to search")
    if top < 1:
        raise VcfError("--top must be >= 1")
    coll = resolve_collection(collection, rootpath)
    spaces = [FeatureSpace(coll, feature, aggregate, use_index) for feature in dict.fromkeys(features)]
    encoders = [QueryEncoder(coll, space.feature, device, weights) for space in spaces]
    paths = _frame_paths(coll) if any(space.frame_level for space in spaces) else {}
    known = set().union(*(space.names() for space in spaces))
    depth = top if len(spaces) == 1 else max(top, TREC_MAX)
    reporter = Reporter(progress)
    reporter.total("queries", len(queries))
    results = []
    for query in queries:
        kind = query_kind(query, known)
        rankings = []
        for space, encoder in zip(spaces, encoders, strict=True):
            rankings.append(space.rank(_encode(query, kind, space, encoder), depth))
        hits = rankings[0][:top] if len(rankings) == 1 else fuse(rankings, top)
        hits = [Hit(h.id, h.score, h.frame, paths.get(h.frame) if h.frame else None) for h in hits]
        results.append(QueryResult(query, kind, hits))
        reporter.advance("queries")
    return results


def _encode(query: str, kind: str, space: FeatureSpace, encoder: QueryEncoder) -> np.ndarray:
    if kind == "image":
        return encoder.encode_image(query)
    if kind == "video":
        return encoder.encode_video(query)
    if kind == "id":
        if query not in space.names():
            raise VcfError(f"id {query!r} is not in feature {space.feature}")
        return id_vector(space.bigfile, query, space.groups)
    return encoder.encode_text(query)


def _frame_paths(coll: Collection) -> dict[str, str]:
    if not coll.imagepath_file.is_file():
        return {}
    return {frame_id: str(path) for frame_id, path in read_imagepath(coll)}


def read_topics(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(topic id, query text)`` pairs of a topics file with one ``<topic id> <query text>`` line each.

    Raises:
        VcfError: The file is missing or a line has no query text.
    """
    topics = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise VcfError(f"cannot read topics file {path}: {exc.strerror or exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.strip().split(None, 1)
        if len(parts) != 2:
            raise VcfError(f"{path}:{number}: expected '<topic id> <query text>', got {line[:80]!r}")
        topics.append((parts[0], parts[1]))
    if not topics:
        raise VcfError(f"topics file {path} lists no topic")
    return topics


def write_trec_run(
    path: str | os.PathLike[str], topics: Sequence[str], results: Sequence[QueryResult], run_name: str
) -> int:
    """Writes a TREC run, ``<topic> Q0 <shot id> <rank> <score> <run name>``, at most 1,000 lines a topic.

    Returns:
        The number of lines written.
    """
    if any(char.isspace() for char in run_name) or not run_name:
        raise VcfError(f"run name {run_name!r} must be one word")
    lines = []
    for topic, result in zip(topics, results, strict=True):
        for rank, hit in enumerate(result.results[:TREC_MAX], start=1):
            lines.append(f"{topic} Q0 {hit.id} {rank} {hit.score:.6f} {run_name}")
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))
    return len(lines)
