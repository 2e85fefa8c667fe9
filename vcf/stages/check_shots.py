"""``vcf check`` of shots: ``id.shots.txt`` against ``ShotData/<vid>.msb``, contiguity, and the videos' frames."""

from __future__ import annotations

import itertools

from vcf.errors import IndexFormatError
from vcf.io.collection import Collection
from vcf.io.shotlist import Shot, read_msb, read_shots_index
from vcf.stages.check_outputs import Findings, read_lines, relative_name, videos_left


def check_shots(coll: Collection, findings: Findings) -> dict[str, str]:
    """Checks the shots of a collection; returns the video of each shot id listed (empty without shots).

    ``id.shots.txt`` must parse, list for each video shots that are contiguous from frame 0 (no gap, no
    overlap), and agree line for line with ``ShotData/<vid>.msb``; where ``id.videometa.txt`` gives a
    frame count (a video's, or a shot's after ``frames --shots``) the shots must cover exactly those frames.
    """
    rel = relative_name(coll, coll.shots_file)
    msb_files = sorted(coll.shot_data_dir.glob("*.msb")) if coll.shot_data_dir.is_dir() else []
    if not coll.shots_file.is_file():
        if msb_files:
            findings.add(
                rel,
                f"missing although {relative_name(coll, coll.shot_data_dir)} holds {len(msb_files)} .msb file(s); "
                "run `vcf shots` (or `vcf merge`) again to write it",
                kind="missing shots index",
            )
        return {}
    try:
        shots = read_shots_index(coll.shots_file)
    except (IndexFormatError, UnicodeDecodeError) as exc:
        findings.add(rel, str(exc).removeprefix(f"{coll.shots_file}:").strip(), kind="malformed shots index")
        return {}
    for video_id, video_shots in shots.items():
        _check_video(coll, rel, video_id, video_shots, findings)
    for path in msb_files:
        if path.stem not in shots:
            findings.add(relative_name(coll, path), f"its video is not in {rel}", kind="shots not in the index")
    _check_frame_counts(coll, rel, shots, findings)
    _check_unprocessed(coll, rel, shots, findings)
    return {shot.shot_id: video_id for video_id, video_shots in shots.items() for shot in video_shots}


def _check_video(coll: Collection, rel: str, video_id: str, shots: list[Shot], findings: Findings) -> None:
    spans = [(shot.first, shot.last) for shot in shots]
    starts = [0] + [last + 1 for _, last in spans[:-1]]
    broken = next((s for s, start in zip(shots, starts, strict=True) if s.first != start or s.last < s.first), None)
    if broken is not None:
        findings.add(
            f"{rel}: {broken.shot_id}",
            f"frames {broken.first}-{broken.last} leave a gap or overlap (shots must be contiguous from frame 0)",
            kind="shots not contiguous",
        )
    msb = coll.msb_file(video_id)
    where = relative_name(coll, msb)
    if not msb.is_file():
        findings.add(where, f"missing although {rel} lists {len(shots)} shot(s) of {video_id}", kind="missing msb")
        return
    try:
        reference = read_msb(msb)
    except IndexFormatError as exc:
        findings.add(where, str(exc).removeprefix(f"{msb}:").strip(), kind="malformed msb")
        return
    if reference != spans:
        differ = next((i for i, (a, b) in enumerate(itertools.zip_longest(reference, spans)) if a != b), 0)
        findings.add(
            where,
            f"shot {differ + 1} is {_span(reference, differ)} here but {_span(spans, differ)} in {rel}",
            kind=f"msb disagrees with {rel}",
        )


def _span(spans: list[tuple[int, int]], index: int) -> str:
    return f"frames {spans[index][0]}-{spans[index][1]}" if index < len(spans) else "absent"


def _check_frame_counts(coll: Collection, rel: str, shots: dict[str, list[Shot]], findings: Findings) -> None:
    """Shots cover each video's frame count (video-level meta), or each shot has its listed count (shot level)."""
    by_id = {shot.shot_id: shot for video_shots in shots.values() for shot in video_shots}
    meta = relative_name(coll, coll.videometa_file)
    for line in read_lines(coll.videometa_file):
        parts = line.split()
        if len(parts) < 3 or not parts[2].isdigit():
            continue  # the index checks of `check` report malformed lines
        item, count = parts[0], int(parts[2])
        if item in shots and count > 0 and shots[item][-1].last + 1 != count:
            findings.add(
                f"{rel}: {item}",
                f"shots cover frames 0-{shots[item][-1].last} but {meta} gives the video {count} frames",
                kind="shots do not cover the video",
            )
        elif item in by_id and by_id[item].length != count:
            findings.add(
                f"{rel}: {item}",
                f"the shot has {by_id[item].length} frames but {meta} gives it {count}",
                kind=f"{meta} disagrees with {rel}",
            )


def _check_unprocessed(coll: Collection, rel: str, shots: dict[str, list[Shot]], findings: Findings) -> None:
    if not coll.video_dir.is_dir():
        return
    waiting = videos_left(coll, "shots", set(shots))
    if waiting:
        findings.add(
            relative_name(coll, coll.video_dir),
            f"{len(waiting)} video(s) have no shots in {rel} and are not in shots.failures.txt (e.g. {waiting[0]}); "
            "run `vcf shots` to finish",
            kind="videos without shots",
        )
