"""The Ray engine: the local engine's bytes on a local cluster and through an address, killed workers retried."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from videos import write_index_video

from vcf.progress import ProgressEvent
from vcf.stages.features import features
from vcf.stages.frames import frames
from vcf.stages.merge import merge

# Ray nodes bind to 127.0.0.1 only (Ray reads this when imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

TINY = "test_tiny2d"
INDEX_FILES = ["id.imagepath.txt", "id.videopath.txt", "id.videometa.txt", "VideoSets/rc.txt", "frames.failures.txt"]
BIGFILE_FILES = ["feature.bin", "id.txt", "shape.txt", "manifest.json"]


def files(root: Path, names: list[str]) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in names if (root / name).is_file()}


def frame_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "ImageData").rglob("*")) if p.is_file()}


def feature_files(root: Path, layer: str = "avgpool") -> dict[str, bytes]:
    found = files(root / "FeatureData" / f"{TINY},{layer}", BIGFILE_FILES)
    return {**found, **files(root, ["features.failures.txt"])}


def descendants(title: str) -> list[int]:
    """Pids of this test's processes whose title starts with ``ray::<title>`` (Ray names its workers so)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(f"ray::{title}".encode()):
                continue
            pid = int(entry.name)
            while pid > 1 and pid != os.getpid():
                pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if pid == os.getpid():
            found.append(int(entry.name))
    return found


@contextmanager
def killing_one(title: str) -> Iterator[list[int]]:
    """SIGKILLs the first worker of this test titled ``ray::<title>`` seen while the block runs; yields its pid."""
    killed: list[int] = []
    finished = threading.Event()

    def kill_one() -> None:
        while not finished.is_set() and not killed:
            for pid in descendants(title):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.002)

    killer = threading.Thread(target=kill_one)
    killer.start()
    try:
        yield killed
    finally:
        finished.set()
        killer.join()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray cluster of 2 CPUs started by this process, used by the engine (it keeps a caller's connection)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    root = tmp_path / "rc"
    for number, (count, fps) in enumerate([(25, 10), (13, 6), (40, 10), (31, 10)]):
        write_index_video(root / "VideoData" / f"v{number}.avi", count, fps=fps)
    (root / "VideoData" / "empty.mp4").write_bytes(b"")
    return root


def test_ray_frames_equal_local_despite_a_killed_decoder(local_ray: None, collection: Path) -> None:
    for number in range(3):  # long enough for a decoder to be caught at work
        write_index_video(collection / "VideoData" / f"w{number}.avi", 120, fps=10, size=(320, 240))
    frames(collection, workers=1, every=1)
    reference, reference_frames = files(collection, INDEX_FILES), frame_files(collection)
    for name in INDEX_FILES:
        (collection / name).unlink()
    shutil.rmtree(collection / "ImageData")

    events: list[ProgressEvent] = []
    with killing_one("_run_task") as killed:
        result = frames(collection, engine="ray", every=1, progress=events.append)
    assert killed, "no decoder was seen at work"
    assert [item for item, _ in result.failures] == ["empty"] and result.extracted == 7
    assert files(collection, INDEX_FILES) == reference and frame_files(collection) == reference_frames
    assert sum(e.advance for e in events if e.task == "videos") == 8
    assert not [p for p in (collection / "ImageData").iterdir() if p.name.startswith(".")]


def test_ray_features_equal_local_despite_a_killed_model_actor(local_ray: None, collection: Path) -> None:
    frames(collection, workers=1)
    options = {"model": TINY, "layers": ["avgpool"], "precision": "fp32", "batch_size": 2}
    features(collection, workers=0, **options)
    expected = feature_files(collection)
    shutil.rmtree(collection / "FeatureData")
    killed: list[int] = []
    advanced: list[int] = []

    def kill_model_actor(event: ProgressEvent) -> None:
        if event.task == "images":
            advanced.append(event.advance)
        if event.task == "images" and event.advance and not killed:
            killed.extend(descendants("_ModelActor"))
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    result = features(collection, engine="ray", progress=kill_model_actor, **options)
    assert killed, "no model actor was killed"
    rows = len((collection / "id.imagepath.txt").read_text().splitlines())
    assert result.computed == sum(advanced) == rows
    assert feature_files(collection) == expected


def test_ray_from_video_equals_local_despite_a_killed_decoder(local_ray: None, collection: Path) -> None:
    for number in range(2):  # long enough for a decoder to be caught at work
        write_index_video(collection / "VideoData" / f"w{number}.avi", 150, fps=10, size=(320, 240))
    options = {"model": TINY, "layers": ["avgpool"], "precision": "fp32", "batch_size": 4, "every": 2}
    single = features(collection, from_video=True, workers=0, **options)
    expected = feature_files(collection)
    shutil.rmtree(collection / "FeatureData")
    (collection / "features.failures.txt").unlink()

    events: list[ProgressEvent] = []
    with killing_one("_decode_batches") as killed:
        result = features(collection, from_video=True, engine="ray", progress=events.append, **options)
    assert killed, "no decoder was seen at work"
    assert [item for item, _ in result.failures] == ["empty"]
    assert result.computed == single.computed == sum(e.advance for e in events if e.task == "frames")
    assert feature_files(collection) == expected


def test_ray_csv_and_from_video_shards_equal_local(local_ray: None, collection: Path, tmp_path: Path) -> None:
    options = {"model": TINY, "layers": ["fc"], "precision": "fp32", "batch_size": 3}
    videos = sorted((collection / "VideoData").iterdir())
    lines = ["video_path,feature_path", *(f"{v},{v.stem}.npy" for v in videos)]
    outputs = {}
    for engine in ("local", "ray"):
        (tmp_path / engine).mkdir()
        csv = tmp_path / engine / "in.csv"
        csv.write_text("\n".join(lines) + "\n")
        result = features(csv=csv, engine=engine, workers=0 if engine == "local" else None, **options)
        assert [Path(item).name for item, _ in result.failures] == ["empty.mp4"]
        outputs[engine] = {p.name: p.read_bytes() for p in sorted((tmp_path / engine).glob("*.npy"))}
    assert len(outputs["local"]) == 4 and outputs["ray"] == outputs["local"]

    features(collection, from_video=True, workers=0, **options)
    expected = feature_files(collection, "fc")
    shutil.rmtree(collection / "FeatureData")
    (collection / "features.failures.txt").unlink()
    features(collection, from_video=True, engine="ray", shard="0/2", **options)
    features(collection, from_video=True, workers=0, shard="1/2", **options)
    merge(collection)
    assert feature_files(collection, "fc") == expected


def test_unreachable_cluster_is_a_one_line_error() -> None:
    from vcf.errors import VcfError
    from vcf.run.ray_engine import _probe

    with pytest.raises(VcfError, match=r"^cannot connect to the Ray cluster at 127\.0\.0\.1:1: [^\n]*$"):
        _probe("127.0.0.1:1")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)


def test_cli_shard_on_a_cluster_started_with_ray_start(collection: Path) -> None:
    """`ray start --head` in a subprocess, shard 0/2 through the CLI on it, shard 1/2 locally, merged."""
    frames(collection, workers=1)
    options = {"model": TINY, "layers": ["fc"], "precision": "fp32", "batch_size": 3}
    features(collection, workers=0, **options)
    expected = feature_files(collection, "fc")
    shutil.rmtree(collection / "FeatureData")
    (collection / "features.failures.txt").unlink(missing_ok=True)

    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="vcfray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            "--block",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 60)
        command = [sys.executable, "-m", "vcf", "features", str(collection), "--model", TINY, "--layer", "fc"]
        command += ["--precision", "fp32", "--batch-size", "3", "--shard", "0/2", "--engine", "ray"]
        command += ["--ray-address", f"127.0.0.1:{port}", "--quiet"]
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stderr[-2000:]
        features(collection, workers=0, shard="1/2", **options)
        merge(collection)
        assert feature_files(collection, "fc") == expected
    finally:
        head.send_signal(signal.SIGTERM)  # --block: the head stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
