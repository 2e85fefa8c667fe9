"""``vcf check``: verifies a collection and its features on disk and lists what is wrong."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vcf.errors import CollectionError, FeatureFileError
from vcf.io import collection as layout
from vcf.io.atomic import MANIFEST_NAME, read_manifest
from vcf.io.bigfile import BigFile
from vcf.io.collection import FRAME_META, Collection
from vcf.progress import ProgressCallback, Reporter
from vcf.stages.check_outputs import (
    JPEG_END,
    JPEG_START,
    CheckResult,
    Findings,
    check_h5,
    check_input_unchanged,
    check_leftovers,
    check_shards,
    read_lines,
    relative_name,
    videos_left,
)
from vcf.stages.check_shots import check_shots


def check(
    collection: str | os.PathLike[str],
    feature: str | None = None,
    *,
    rootpath: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
) -> CheckResult:
    """Verifies a collection: shots, frames against their records and the index files, features, leftovers.

    Checks that ``id.shots.txt`` and ``ShotData/`` agree and cover each video (when there are shots),
    that every complete frame directory holds the frames its record lists (each a whole
    JPEG), that the index files agree with each other and with the files on disk, that each feature
    directory is a consistent BigFile (shape.txt vs id.txt vs feature.bin size) without NaN or inf
    rows and that its manifest matches it and its current input, and reports temporary outputs,
    unfinished ``features`` work directories and stale locks that killed runs left behind.

    Args:
        collection: Collection directory, or its name under ``rootpath``.
        feature: Check only this feature directory (all of them by default).
        rootpath: Where named collections live.
        progress: Receives ``videos`` and ``rows`` events.

    Returns:
        The problems found (``ok`` when there are none) and notes.

    Raises:
        CollectionError: The collection does not exist.

    Example:
        >>> vcf.check("toydata").ok  # doctest: +SKIP
        True
    """
    coll = layout.resolve_collection(collection, rootpath)
    result = CheckResult(collection=coll.root)
    findings = Findings(result)
    reporter = Reporter(progress)
    check_leftovers(coll, findings)
    check_shards(coll, feature, findings)
    shot_videos = check_shots(coll, findings)
    imagepath_ids = _check_frames(coll, shot_videos, findings, reporter)
    for name in [feature] if feature is not None else coll.list_features():
        _check_feature(coll, name, imagepath_ids, findings, reporter)
        result.features += 1
    if feature is None:
        check_h5(coll, findings)
    for path in sorted(coll.root.glob("*.failures.txt")):
        lines = sum(1 for line in read_lines(path) if line.strip())
        if lines:
            findings.note(path.name, f"{lines} item(s) failed in the last run of this stage (not an inconsistency)")
    findings.finish()
    return result


# Frames and index files --------------------------------------------------------------------------


def _jpeg_complete(path: Path) -> str | None:
    """None when ``path`` looks like a whole JPEG file, else what is wrong with it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return "empty file (0 bytes)"
            handle.seek(max(0, size - 2))
            tail = handle.read(2)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if head != JPEG_START:
        return "not a JPEG file"
    if tail != JPEG_END:
        return "truncated JPEG (no end marker)"
    return None


def _read_frame_record(frame_dir: Path) -> dict[str, Any] | str | None:
    """The frame directory's record; None when it has none; a message when it cannot be read."""
    path = frame_dir / FRAME_META
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["frames"] = [int(n) for n in data["frames"]]
        return data
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable completion record {FRAME_META} ({type(exc).__name__})"


def _parse_index(coll: Collection, path: Path, findings: Findings) -> list[tuple[str, str]] | None:
    """``(id, value)`` lines of an index file; malformed lines and duplicate ids are reported."""
    if not path.is_file():
        return None
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    rel = relative_name(coll, path)
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split(" ", 1)
        if len(parts) != 2 or not parts[0] or not parts[1].strip():
            findings.add(f"{rel}:{number}", f"malformed line {line[:60]!r}", kind=f"malformed line in {rel}")
            continue
        if parts[0] in seen:
            findings.add(f"{rel}:{number}", f"duplicate id {parts[0]!r}", kind=f"duplicate id in {rel}")
            continue
        seen.add(parts[0])
        pairs.append((parts[0], parts[1]))
    return pairs


def _check_frames(
    coll: Collection, shot_videos: dict[str, str], findings: Findings, reporter: Reporter
) -> list[str] | None:
    """Checks ImageData and the index files; returns the ids of id.imagepath.txt (None without it).

    Frame directories and index lines may be named by shot (``frames --shots``): ``shot_videos`` gives
    the video of each shot id.
    """
    result = findings.result
    records: dict[str, dict[str, Any]] = {}
    unrecorded = 0
    frame_dirs = (
        sorted(p for p in coll.image_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if coll.image_dir.is_dir()
        else []
    )
    reporter.total("videos", len(frame_dirs))
    for frame_dir in frame_dirs:
        video_id = frame_dir.name
        where = relative_name(coll, frame_dir)
        record = _read_frame_record(frame_dir)
        jpgs = {p.name for p in frame_dir.glob("*.jpg")}
        if record is None:
            unrecorded += 1
            result.frames += len(jpgs)
        elif isinstance(record, str):
            findings.add(where, record, kind="unreadable completion record")
        else:
            records[video_id] = record
            if record.get("video_id") != video_id:
                findings.add(where, f"completion record is for video {record.get('video_id')!r}", kind="record")
            expected = {f"{Collection.frame_id(video_id, n)}.jpg" for n in record["frames"]}
            bad = []
            for name in sorted(expected):
                reason = _jpeg_complete(frame_dir / name)
                if reason is not None:
                    bad.append(f"{name} {reason}")
            result.frames += len(expected)
            if bad:
                findings.add(
                    where,
                    f"{len(bad)} of the {len(expected)} frames its record lists are damaged: {', '.join(bad[:3])}",
                    kind="damaged frames",
                )
            extra = jpgs - expected
            if extra:
                findings.add(where, f"{len(extra)} frame file(s) not in its record, e.g. {min(extra)}", kind="extra")
        result.videos += 1
        reporter.advance("videos", 1, description=video_id)
    if unrecorded:
        findings.note(
            relative_name(coll, coll.image_dir),
            f"{unrecorded} frame directories have no {FRAME_META} (made by another tool?); "
            "their frames are checked against id.imagepath.txt only",
        )

    image_pairs = _parse_index(coll, coll.imagepath_file, findings)
    image_ids = None
    if image_pairs is not None:
        image_ids = [frame_id for frame_id, _ in image_pairs]
        _check_imagepath(coll, image_pairs, records, findings)
    elif records:
        findings.add(
            relative_name(coll, coll.imagepath_file),
            f"missing although {len(records)} videos have complete frames; run `vcf frames` again to write it",
            kind="missing index",
        )
    _check_video_indexes(coll, records, image_ids, shot_videos, findings)
    return image_ids


def _check_imagepath(
    coll: Collection, pairs: list[tuple[str, str]], records: dict[str, dict[str, Any]], findings: Findings
) -> None:
    rel = relative_name(coll, coll.imagepath_file)
    listed: dict[str, list[int]] = {}
    for frame_id, value in pairs:
        path = layout.resolve_index_path(coll, value)
        video, _, number = frame_id.rpartition("_")
        if video in records and number.isdigit():
            listed.setdefault(video, []).append(int(number))
            # Frames of recorded directories were verified above; only their presence in the record matters.
            if int(number) in records[video]["frames"] and path == coll.frame_path(video, int(number)):
                continue
        if not path.is_file():
            findings.add(f"{rel}: {frame_id}", f"image {path} does not exist", kind=f"image listed in {rel} missing")
    for video, record in records.items():
        if video not in listed:
            findings.add(
                relative_name(coll, coll.frame_dir(video)),
                f"complete but not in {rel}; run `vcf frames` again to update the index",
                kind=f"complete frames not in {rel}",
            )
        elif listed[video] != record["frames"]:
            findings.add(
                f"{rel}: {video}",
                f"lists frames {_short(listed[video])} but the directory's record has {_short(record['frames'])}",
                kind=f"{rel} disagrees with a frame record",
            )


def _short(numbers: list[int]) -> str:
    return "[" + ", ".join(map(str, numbers[:6])) + (", ...]" if len(numbers) > 6 else "]")


def _check_video_indexes(
    coll: Collection,
    records: dict[str, dict[str, Any]],
    image_ids: list[str] | None,
    shot_videos: dict[str, str],
    findings: Findings,
) -> None:
    video_pairs = _parse_index(coll, coll.videopath_file, findings)
    if video_pairs is None:
        return
    video_ids = [video for video, _ in video_pairs]
    rel = relative_name(coll, coll.videopath_file)
    for video, value in video_pairs:
        path = layout.resolve_index_path(coll, value)
        if not path.is_file():
            findings.add(f"{rel}: {video}", f"video {path} does not exist", kind=f"video listed in {rel} missing")
        if coll.image_dir.is_dir() and video not in records and not coll.frame_dir(video).is_dir():
            findings.add(f"{rel}: {video}", "listed but has no frame directory", kind="listed video without frames")
    meta_pairs = _parse_index(coll, coll.videometa_file, findings)
    if meta_pairs is not None and [v for v, _ in meta_pairs] != video_ids:
        findings.add(relative_name(coll, coll.videometa_file), f"its ids differ from {rel}", kind="videometa ids")
    for list_file, expected, what in (
        (coll.videoset_file, video_ids, rel),
        (coll.imageset_file, image_ids, relative_name(coll, coll.imagepath_file)),
    ):
        # Compared as sets of ids: the original tools wrote these lists sorted, vcf writes ImageSets sorted too.
        if expected is not None and list_file.is_file() and sorted(layout.read_id_list(list_file)) != sorted(expected):
            findings.add(relative_name(coll, list_file), f"its ids differ from {what}", kind=f"{list_file.name} ids")
    if coll.video_dir.is_dir() and coll.image_dir.is_dir():
        listed = {shot_videos.get(item, item) for item in video_ids}  # a shot's frames are its video's
        waiting = videos_left(coll, "frames", listed)
        if waiting:
            findings.add(
                relative_name(coll, coll.video_dir),
                f"{len(waiting)} video(s) have no frames in the index and are not in frames.failures.txt "
                f"(e.g. {waiting[0]}); run `vcf frames` to finish",
                kind="videos not processed",
            )


# Features ------------------------------------------------------------------------------------------


def _check_feature(
    coll: Collection, name: str, image_ids: list[str] | None, findings: Findings, reporter: Reporter
) -> None:
    try:
        directory = coll.feature_dir(name)
    except CollectionError as exc:  # an invalid name given on the command line
        findings.add(name, str(exc))
        return
    where = relative_name(coll, directory)
    if not directory.is_dir():
        present = coll.list_features()
        hint = f"; present: {', '.join(present[:10])}" if present else ""
        findings.add(where, f"feature directory not found{hint}")
        return
    try:
        bigfile = BigFile(directory)
    except FeatureFileError as exc:
        findings.add(where, str(exc).replace(f"{directory}: ", "").replace(str(directory), "directory"))
        return
    except OSError as exc:
        findings.add(where, f"cannot be read: {exc.strerror or exc}")
        return
    _check_values(bigfile, where, findings, reporter)
    manifest = read_manifest(directory)
    if manifest is None:
        if (directory / MANIFEST_NAME).exists():
            findings.add(where, f"{MANIFEST_NAME} cannot be read", kind="manifest unreadable")
        else:
            findings.note(where, f"no {MANIFEST_NAME} (made by another tool?); checked for consistency only")
        return
    _check_manifest(coll, bigfile, manifest, where, image_ids, findings)


def _check_values(bigfile: BigFile, where: str, findings: Findings, reporter: Reporter) -> None:
    bad_rows = 0
    examples: list[str] = []
    findings.rows_total += bigfile.nr_of_images
    reporter.total("rows", findings.rows_total, description=bigfile.datadir.name)
    try:
        for ids, block in bigfile.iter_chunks():
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                rows = np.flatnonzero(~finite)
                bad_rows += len(rows)
                examples.extend(ids[i] for i in rows[: 3 - len(examples)])
            reporter.advance("rows", len(ids))
    except OSError as exc:
        findings.add(where, f"feature.bin cannot be read: {exc.strerror or exc}", kind="unreadable feature.bin")
        return
    if bad_rows:
        findings.add(where, f"{bad_rows} row(s) contain NaN or inf, e.g. {', '.join(examples)}", kind="nan rows")


def _check_manifest(
    coll: Collection,
    bigfile: BigFile,
    manifest: dict[str, Any],
    where: str,
    image_ids: list[str] | None,
    findings: Findings,
) -> None:
    shape = manifest.get("shape")
    if shape is not None and list(shape) != bigfile.shape():
        findings.add(where, f"manifest.json says shape {shape} but the files hold {bigfile.shape()}", kind="shape")
    stage = manifest.get("stage")
    source = manifest.get("input")
    if stage is None and isinstance(source, dict) and source.get("index") and source.get("sha256"):
        index = coll.root / str(source["index"])
        if index.is_file():
            digest = hashlib.sha256(index.read_bytes()).hexdigest()
            if digest != source["sha256"]:
                findings.add(
                    where,
                    f"made from another version of {source['index']} (changed since); rerun `vcf features` to "
                    "recompute it",
                    kind="stale feature",
                )
            elif index == coll.imagepath_file and image_ids is not None:
                _check_rows_follow_index(bigfile, image_ids, manifest, where, findings)
    inputs: list[tuple[str, dict[str, Any]]] = []
    if stage == "pool" and isinstance(source, dict) and manifest.get("input_feature"):
        inputs.append((str(manifest["input_feature"]), source))
    elif stage == "concat":
        for item in manifest.get("inputs") or []:
            if isinstance(item, dict) and item.get("feature"):
                inputs.append((str(item["feature"]), item))
    for input_name, recorded in inputs:
        check_input_unchanged(coll, input_name, recorded, where, findings)


def _check_rows_follow_index(
    bigfile: BigFile, image_ids: list[str], manifest: dict[str, Any], where: str, findings: Findings
) -> None:
    """A frame-level feature holds the index's ids, in its order, less the failed ones."""
    position = {frame_id: n for n, frame_id in enumerate(image_ids)}
    unknown = [name for name in bigfile.names if name not in position]
    if unknown:
        findings.add(where, f"{len(unknown)} id(s) not in id.imagepath.txt, e.g. {unknown[0]}", kind="unknown ids")
        return
    order = [position[name] for name in bigfile.names]
    if any(b <= a for a, b in itertools.pairwise(order)):
        findings.add(where, "rows are not in id.imagepath.txt order", kind="row order")
    failures = manifest.get("failures")
    if isinstance(failures, int) and bigfile.nr_of_images + failures != len(image_ids):
        findings.add(
            where,
            f"{bigfile.nr_of_images} rows + {failures} failures != {len(image_ids)} images in id.imagepath.txt",
            kind="row count",
        )
