"""One behaviour however a job runs: locally, as a shard, or on Ray (worker default, decoder threads, disk-full
stop, temporaries cleaned)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from videos import write_index_video

import vcf.run.local as local
from vcf.errors import VcfError
from vcf.io.atomic import DISK_FULL, TMP_MARK
from vcf.run import schedule
from vcf.run.engines import LocalEngine, RayEngine
from vcf.run.processes import TaskFailed
from vcf.stages.features import features
from vcf.stages.frames import decoder_threads, frames

TINY = "test_tiny2d"
RAY = pytest.param("ray", marks=pytest.mark.ray)
MODES = ["local", "shard", RAY]


@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[None]:
    """A local Ray cluster of 2 CPUs, started only when a Ray case runs (the engine keeps a caller's connection)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def scale_out(mode: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if mode == "ray":
        request.getfixturevalue("ray_cluster")
        return {"engine": "ray"}
    return {"shard": "0/1"} if mode == "shard" else {}


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    root = tmp_path / "drift"
    for number, count in enumerate([12, 7, 9]):
        write_index_video(root / "VideoData" / f"v{number}.avi", count, fps=10)
    return root


def record_map(monkeypatch: pytest.MonkeyPatch, seen: list, outcome=None):  # type: ignore[no-untyped-def]
    """Wraps both engines' ``map``: records the tasks a stage hands over; ``outcome(task)`` may replace a result."""
    for engine in (LocalEngine, RayEngine):
        original = engine.map

        def wrapped(self, function, tasks, _original=original, **options):  # type: ignore[no-untyped-def]
            seen.extend(tasks)
            for task, result in _original(self, function, tasks, **options):
                yield task, (outcome(task, result) if outcome is not None else result)

        monkeypatch.setattr(engine, "map", wrapped)


@pytest.mark.parametrize("mode", MODES)
def test_decoder_threads_are_set_in_every_mode(
    mode: str, videos: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    seen: list = []
    record_map(monkeypatch, seen)
    frames(videos, workers=2, **scale_out(mode, request))
    assert len(seen) == 3
    assert {task.decoder_threads for task in seen} == {decoder_threads(2, 3)}
    assert decoder_threads(2, 3) == max(1, (os.cpu_count() or 1) // 2)


@pytest.mark.parametrize("mode", MODES)
def test_a_full_disk_stops_the_run_in_every_mode(
    mode: str, videos: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    full = f"{DISK_FULL} {videos / 'ImageData' / 'v0'}; free space and run again to resume"

    def disk_full(task, result):  # type: ignore[no-untyped-def]
        return TaskFailed(full) if task.video_id == "v0" else result

    record_map(monkeypatch, [], disk_full)
    with pytest.raises(VcfError, match="no space left on device"):
        frames(videos, workers=1, **scale_out(mode, request))
    assert not (videos / "id.imagepath.txt").exists()
    assert not (videos / ".vcf-shards" / "frames" / "0-of-1" / "part.json").exists()


@pytest.mark.parametrize("mode", MODES)
def test_temporaries_of_killed_workers_are_removed_in_every_mode(
    mode: str, videos: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    # What a worker killed mid-video leaves: its temporary frame directory, named with its (dead) pid.
    leftover = videos / "ImageData" / f".v1{TMP_MARK}-{2**22 + 7}"

    def killed_worker(task, result):  # type: ignore[no-untyped-def]
        leftover.mkdir(parents=True, exist_ok=True)
        return result

    record_map(monkeypatch, [], killed_worker)
    frames(videos, workers=1, **scale_out(mode, request))
    assert not leftover.exists()
    assert not [p for p in (videos / "ImageData").iterdir() if TMP_MARK in p.name]


@pytest.mark.parametrize("mode", MODES)
def test_loader_workers_default_is_the_same_in_every_mode(
    mode: str, videos: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    frames(videos, workers=1)
    jobs: list = []
    for engine in (LocalEngine, RayEngine):
        original = engine.image_batches

        def recording(self, job, batches, _original=original):  # type: ignore[no-untyped-def]
            jobs.append(job.workers)
            return _original(self, job, batches)

        monkeypatch.setattr(engine, "image_batches", recording)
    loaders: list[int] = []
    make_loader = local._make_loader

    def counting(dataset, batches, workers, device):  # type: ignore[no-untyped-def]
        loaders.append(workers)
        return make_loader(dataset, batches, workers, device)

    monkeypatch.setattr(local, "_make_loader", counting)
    monkeypatch.setattr(local, "default_workers", lambda device: 0)  # as on a 2-core CPU
    # Waiting for decoding always counts as the larger cost, and loaders always repay their start.
    monkeypatch.setattr(schedule, "LOADER_START_SECONDS", float("-inf"))
    monkeypatch.setattr(schedule, "LOADER_SWITCH_SHARE", -1.0)
    options = {"model": TINY, "layers": ["avgpool"], "precision": "fp32", "batch_size": 2}
    features(videos, **options, **scale_out(mode, request))
    assert jobs == [None]  # no --workers: the engine's default, whatever the mode
    if mode != "ray":  # Ray preprocesses in its own tasks; locally one loader schedule serves a shard too
        # 7 frames (3 + 2 + 2 at two a second), 4 batches: 3 decoded here and timed, the last by loader processes.
        assert loaders == [0, os.cpu_count() or 1]
