"""``merge``: the parts of a sharded run checked (a public plan that ``check`` uses too) and assembled."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vcf.errors import VcfError
from vcf.io import collection as layout
from vcf.io.atomic import OutputLock, lock_owner, remove_path
from vcf.io.bigfile import BigFile, BigFileWriter
from vcf.io.collection import PART_RECORD, Collection, videos_digest
from vcf.progress import ProgressCallback, Reporter
from vcf.run.partition import Shard, assign_videos, video_key
from vcf.sampling import Sampling
from vcf.stages.frame_files import FrameSettings, discover_videos
from vcf.stages.frames import FRAME_UNITS
from vcf.stages.outputs import bigfile_ok, read_part_manifest
from vcf.stages.shots import write_shots_index

# Manifest fields that describe one file rather than the computation; they differ between a part and the whole.
_FILE_FIELDS = ("format", "shape", "vcf_version", "shard", "failures")
_PART_NAME = re.compile(r"^(\d+)-of-(\d+)$")

# A merge plan: the rows it will write, and the function that writes them once every plan checked out.
Plan = tuple[int, Callable[[], None]]


@dataclass
class MergeResult:
    """What :func:`merge` did.

    Attributes:
        collection: The collection directory.
        merged: For ``shots``, ``frames`` and each feature name merged: the number of shards.
        rows: Frames listed in id.imagepath.txt (``frames``), or rows of each merged feature.
        dims: Values per row of each merged feature.
        failures: Items listed as failed, per merged output.
        up_to_date: Features named that have no parts but whose output exists.
    """

    collection: Path
    merged: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    up_to_date: list[str] = field(default_factory=list)


def merge(
    collection: str | os.PathLike[str],
    feature: str | None = None,
    *,
    rootpath: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
) -> MergeResult:
    """Assembles the parts of sharded runs into the normal outputs, as a single run writes them.

    Shots parts become id.shots.txt and shots.failures.txt (their ShotData/<vid>.msb files are
    already in place); frames parts become id.imagepath.txt, id.videopath.txt, id.videometa.txt, VideoSets/,
    ImageSets/ and frames.failures.txt; the parts of a feature become its BigFile (rows in
    id.imagepath.txt order, the single run's manifest) and features.failures.txt. Each file
    appears atomically, and the parts are removed once everything is written. Nothing is written
    unless every shard of every output concerned is complete.

    Args:
        collection: Collection directory, or its name under ``rootpath``.
        feature: Merge only this feature (e.g. ``resnet50,avgpool``); default: the shots, the frames and every
            feature that has parts.
        rootpath: Where named collections live.
        progress: Receives ``rows`` events: the videos of the frames, then the rows of each feature.

    Returns:
        A MergeResult.

    Raises:
        VcfError: Nothing to merge, or shards missing, running, interrupted or made from other
            input (the message lists them and the command that completes them).

    Example:
        >>> vcf.merge("toydata", "resnet50,avgpool")  # doctest: +SKIP
    """
    coll = layout.resolve_collection(collection, rootpath)
    reporter = Reporter(progress)
    result = MergeResult(collection=coll.root)
    do_shots = feature is None and has_parts(coll.stage_shard_root("shots"))
    do_frames = feature is None and has_parts(coll.frames_shard_root)
    if feature is not None:
        coll.feature_dir(feature)
        names = [feature]
    else:
        root = coll.feature_shard_root
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        names = [n for n in found if not n.startswith(".") and has_parts(root / n)]
    if not do_shots and not do_frames and not names:
        raise VcfError(
            f"nothing to merge in {coll.root}: no shard parts; run `vcf shots`, `vcf frames` or `vcf features` "
            "with --shard first"
        )
    plans: list[tuple[int, Callable[[], None]]] = []
    if do_shots:
        plans.append(plan_shots(coll, result, reporter))
    if do_frames:
        plans.append(plan_frames(coll, result, reporter))
    for name in names:
        part_root = coll.feature_shard_root / name
        if not has_parts(part_root):
            if coll.feature_dir(name).is_dir():
                result.up_to_date.append(name)
                continue
            raise VcfError(
                f"nothing to merge for {name}: no parts under {part_root}; run `vcf features --shard K/N` first"
            )
        plans.append(plan_feature(coll, name, result, reporter))
    # Progress counts videos for the frames and rows for each feature.
    reporter.total("rows", sum(count for count, _ in plans))
    for _, write in plans:  # every output was checked before the first is written
        write()
    _tidy(coll.feature_shard_root)
    _tidy(coll.shard_root)
    return result


def has_parts(root: Path) -> bool:
    return root.is_dir() and any(_PART_NAME.match(p.name) for p in root.iterdir() if p.is_dir())


def _shard_count(root: Path, what: str) -> int:
    counts = sorted({int(m[2]) for p in root.iterdir() if p.is_dir() and (m := _PART_NAME.match(p.name))})
    if len(counts) > 1:
        raise VcfError(
            f"cannot merge {what}: {root} holds parts of runs split {' and '.join(map(str, counts))} ways; "
            "remove the parts of the abandoned split"
        )
    return counts[0]


def _lock_state(locks: Iterable[Path]) -> str:
    """Why a shard has no part, from what its lock file says."""
    state = "not run"
    for lock in locks:
        if lock_owner(lock) is not None:
            return "running"
        try:
            recorded = lock.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            continue
        state = f"interrupted (process {recorded} died)" if recorded else "failed or not finished"
    return state


def _missing_error(what: str, missing: list[str], command: str) -> VcfError:
    return VcfError(
        f"cannot merge {what}: {len(missing)} shard(s) not complete: {'; '.join(missing)}; "
        f"run `{command}` for each and merge again"
    )


def plan_frames(coll: Collection, result: MergeResult, reporter: Reporter) -> tuple[int, Callable[[], None]]:
    root = coll.frames_shard_root
    count = _shard_count(root, "frames")
    first = _read_record(coll.frames_part_dir(Shard(0, count).name) / PART_RECORD) or {}
    # The parts say which kind of unit they hold (a video's frames, or its frames grouped by shot).
    units = FRAME_UNITS[first.get("units", "videos")](FrameSettings(Sampling()), coll, bool(first.get("keyframe")))
    videos, naming = units.discover(coll)
    expected = assign_videos(videos, count)
    records = _video_parts(coll, "frames", expected)
    for key in ("units", "settings", "relative_paths"):
        if len({json.dumps(r.get(key), sort_keys=True) for r in records}) > 1:
            raise VcfError(f"cannot merge frames: the shards were run with different {key.replace('_', ' ')}")

    def write_index(done: dict[str, Any]) -> int:
        records_done = {video_id: units.from_json(data) for video_id, data in done.items()}
        return units.write_indexes(coll, videos, records_done, bool(records[0]["relative_paths"]))

    return len(videos), _video_parts_writer(
        coll, "frames", coll.frames_lock, records, naming, write_index, len(videos), (result, reporter)
    )


def _video_parts(coll: Collection, stage: str, expected: list[list[str]]) -> list[dict[str, Any]]:
    """The part records of a stage whose units are videos, each shard's over the videos it was assigned.

    Raises:
        VcfError: Some shards are missing, or were run over other videos.
    """
    records: list[dict[str, Any]] = []
    missing: list[str] = []
    count = len(expected)
    for index in range(count):
        spec = Shard(index, count)
        record = _read_record(coll.stage_part_dir(stage, spec.name) / PART_RECORD)
        if record is None:
            missing.append(f"{spec} {_lock_state([coll.stage_shard_lock(stage, spec.name)])}")
        elif record.get("videos") != expected[index]:
            missing.append(f"{spec} was run over other videos (VideoData changed since); rerun it")
        else:
            records.append(record)
    if missing:
        raise _missing_error(stage, missing, f"vcf {stage} {coll.root} --shard K/{count}")
    return records


def _video_parts_writer(
    coll: Collection,
    stage: str,
    lock: Path,
    records: list[dict[str, Any]],
    naming: list[tuple[str, str]],
    write_index: Callable[[dict[str, Any]], int],
    videos: int,
    outcome: tuple[MergeResult, Reporter],
) -> Callable[[], None]:
    """What merging the video parts of ``stage`` writes: its index files (``write_index`` of every part's
    finished videos), its failures file, and the result's counts; then the parts are removed."""
    result, reporter = outcome

    def write() -> None:
        with OutputLock(lock):
            total = write_index({video: data for record in records for video, data in record["done"].items()})
            failures = sorted([*naming, *(tuple(f) for r in records for f in r["failures"])])
            layout.write_failures(coll.failures_file(stage), failures)  # type: ignore[arg-type]
            reporter.advance("rows", videos, description=stage)
        remove_path(coll.stage_shard_root(stage))
        result.merged[stage] = len(records)
        result.rows[stage] = total
        result.failures[stage] = len(failures)

    return write


def plan_shots(coll: Collection, result: MergeResult, reporter: Reporter) -> tuple[int, Callable[[], None]]:
    root = coll.stage_shard_root("shots")
    count = _shard_count(root, "shots")
    videos, naming = discover_videos(coll)
    records = _video_parts(coll, "shots", assign_videos(videos, count))
    if len({json.dumps(r["manifest"], sort_keys=True) for r in records}) > 1:
        raise VcfError("cannot merge shots: the shards were run with different settings; rerun them alike")

    def write_index(done: dict[str, Any]) -> int:
        spans = {video: [(int(a), int(b)) for a, b in shot_spans] for video, shot_spans in done.items()}
        return write_shots_index(coll, videos, spans)

    return len(videos), _video_parts_writer(
        coll, "shots", coll.shots_lock, records, naming, write_index, len(videos), (result, reporter)
    )


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def plan_feature(
    coll: Collection, name: str, result: MergeResult, reporter: Reporter
) -> tuple[int, Callable[[], None]]:
    root = coll.feature_shard_root / name
    count = _shard_count(root, name)
    manifests = [read_part_manifest(root / Shard(index, count).name) for index in range(count)]
    from_videos = any(((m or {}).get("input") or {}).get("source") == "videos" for m in manifests)
    # What the parts must have been made from: the index's rows, or (--from-video) the videos of VideoData.
    if from_videos:
        videos, _ = discover_videos(coll)
        input_sha, source = videos_digest(coll, videos), "other videos (VideoData changed since)"
        assigned = assign_videos(videos, count)
    else:
        index_bytes = coll.imagepath_file.read_bytes() if coll.imagepath_file.is_file() else b""
        lines = index_bytes.decode("utf-8").splitlines()
        ids = [i for i, _ in layout.parse_id_value_lines(coll.imagepath_file, lines)]
        input_sha, source = hashlib.sha256(index_bytes).hexdigest(), "another id.imagepath.txt"
    parts: list[tuple[BigFile, dict[str, Any]]] = []
    missing: list[str] = []
    locks = coll.features_locks("*")
    for index, manifest in enumerate(manifests):
        spec = Shard(index, count)
        directory = root / spec.name
        if manifest is None or "shard" not in manifest or not bigfile_ok(directory):
            mine = [lock for lock in locks if lock.name.endswith(f"-{spec.name}.lock")]
            missing.append(f"{spec} {_lock_state(mine)}")
            continue
        if (manifest.get("input") or {}).get("sha256") != input_sha or (
            from_videos and manifest["shard"].get("videos") != assigned[index]
        ):
            missing.append(f"{spec} was computed from {source}; rerun it")
            continue
        parts.append((BigFile(directory), manifest))
    if missing:
        raise _missing_error(name, missing, f"vcf features {coll.root} ... --shard K/{count}")
    common = [{k: v for k, v in m.items() if k not in _FILE_FIELDS} for _, m in parts]
    if any(c != common[0] for c in common):
        raise VcfError(f"cannot merge {name}: its shards were run with different settings; rerun them alike")
    failures = [tuple(f) for _, m in parts for f in m["shard"]["failures"]]
    merged_ids = [n for big, _ in parts for n in big.names]
    if from_videos:
        failures.sort()  # as a single run lists them
        failed = {f[0] for f in failures}
        order = {video: position for position, video in enumerate(videos)}
        runs = [key for key, _ in itertools.groupby(video_key(i) for i in merged_ids)]
        positions = [order.get(video, -1) for video in runs]
        if -1 in positions or positions != sorted(set(positions)) or failed & set(runs):
            raise VcfError(f"cannot merge {name}: the rows of its parts are not those of the videos; rerun them")
    else:
        ranges = [tuple(m["shard"]["rows"]) for _, m in parts]
        if ranges[0][0] != 0 or ranges[-1][1] != len(ids) or any(a[1] != b[0] for a, b in itertools.pairwise(ranges)):
            raise VcfError(f"cannot merge {name}: its shards do not cover id.imagepath.txt row by row; rerun them")
        failed = {f[0] for f in failures}
        if merged_ids != [i for i in ids if i not in failed]:
            raise VcfError(f"cannot merge {name}: the rows of its parts are not those of id.imagepath.txt; rerun them")
    filled = [big for big, _ in parts if big.nr_of_images]
    if not filled:
        raise VcfError(f"no image could be read, nothing to write to {coll.feature_dir(name)}; see the failures")
    dims = {big.ndims for big in filled}
    if len(dims) > 1:
        raise VcfError(f"cannot merge {name}: its parts have different widths {sorted(dims)}")

    def write() -> None:
        out_dir = coll.feature_dir(name)
        with BigFileWriter(out_dir, dims.pop(), overwrite=True, manifest={**common[0], "failures": len(failures)}) as w:
            for big in filled:
                for chunk_ids, array in big.iter_chunks():
                    w.append(chunk_ids, array)
                    reporter.advance("rows", len(chunk_ids), description=name)
        layout.write_failures(coll.failures_file("features"), failures)  # type: ignore[arg-type]
        remove_path(root)
        result.merged[name] = count
        result.rows[name] = len(merged_ids)
        result.dims[name] = w.dim
        result.failures[name] = len(failures)

    return len(merged_ids), write


def _tidy(root: Path) -> None:
    """Removes a shard directory once it holds only released locks and the shards' own failure lists."""
    if not root.is_dir():
        return
    entries = list(root.iterdir())
    if any(not (e.is_file() and e.name.endswith((".lock", ".failures.txt"))) for e in entries):
        return
    if any(lock_owner(e) is not None for e in entries):
        return
    for entry in entries:
        remove_path(entry)
    with contextlib.suppress(OSError):
        root.rmdir()
