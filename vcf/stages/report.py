"""The ``report`` stage: static HTML pages that show a collection, its frames, shots, failures and features."""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from markupsafe import Markup, escape

from vcf.errors import VcfError
from vcf.io.atomic import atomic_write_text, manifest_text, remove_path
from vcf.io.bigfile import BigFile, open_feature
from vcf.io.collection import resolve_collection
from vcf.io.shotlist import Shot
from vcf.progress import ProgressCallback, Reporter
from vcf.stages.report_data import (
    FeatureHealth,
    Overview,
    feature_health,
    nearest_neighbours,
    pca_2d,
    pool_by_unit,
    read_overview,
)
from vcf.stages.report_thumbs import StripJob, StripResult, Thumb, ThumbSettings, make_strips

TEMPLATES = Path(__file__).parent / "templates" / "report"
INDEX_PAGE = "index.html"
REPORT_MANIFEST = "manifest.json"
MAP_SIZE = (880, 520)
HISTOGRAM_SIZE = (640, 160)
# Ids shown per problem list on a feature page (the counts are always complete).
IDS_SHOWN = 500


def videos_page(page: int) -> str:
    return f"videos-{page:03d}.html"


def feature_page(feature: int) -> str:
    return f"feature-{feature}.html"


def neighbours_page(feature: int, page: int) -> str:
    return f"feature-{feature}-nn-{page:03d}.html"


@dataclass
class ReportResult:
    """What a ``report`` run wrote.

    Attributes:
        index: The report's first page (open it in a browser).
        pages: Every page written.
        strips: Film strips (videos or shots).
        thumbnails: Thumbnails in the report.
        thumbnails_made: Thumbnails made in this run (the others were reused).
        features: Feature name to its health figures.
        strip_errors: Strip id to why it has no (or fewer) thumbnails.
    """

    index: Path
    pages: list[Path] = field(default_factory=list)
    strips: int = 0
    thumbnails: int = 0
    thumbnails_made: int = 0
    features: dict[str, FeatureHealth] = field(default_factory=dict)
    strip_errors: dict[str, str] = field(default_factory=dict)


def url(path: str) -> str:
    """A relative path as it goes in ``src``/``href`` (ids may hold ``#``, ``%``, ``?``)."""
    return quote(path, safe="/")


NO_THUMB = Markup('<span class="nothumb">no frame</span>')


def img_tag(thumb: Thumb | None, alt: bool = True) -> Markup:
    """The ``<img>`` of a thumbnail (built here, not in a template macro: pages hold tens of thousands).

    Every byte counts ten thousand times: no class (the stylesheet styles ``main img``), no width or height
    (the stylesheet fixes the height, which is all lazy loading needs to place rows), and an empty ``alt``
    where a caption beside it already names the video.
    """
    if thumb is None:
        return NO_THUMB
    text = escape(thumb.frame_id) if alt else ""
    return Markup(f'<img loading="lazy" src="{escape(url(thumb.file))}" alt="{text}">')


def link_to(target: Path, out_dir: Path) -> str:
    """A relative URL from the report directory to a file of the collection."""
    return url(os.path.relpath(target, out_dir))


class _Pages:
    """Renders templates into the report directory and remembers what it wrote."""

    def __init__(self, out_dir: Path, title: str, nav: list[tuple[str, str]]) -> None:
        import jinja2

        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True
        )
        self.env.filters["url"] = url
        self.out_dir = out_dir
        self.common = {"title": title, "nav": nav}
        self.written: list[Path] = []

    def write(self, name: str, template: str, **context: Any) -> None:
        html = self.env.get_template(template).render(**self.common, page=name, **context)
        atomic_write_text(self.out_dir / name, html)
        self.written.append(self.out_dir / name)


def _shot_of(shots: list[Shot], firsts: list[int], index: int) -> int | None:
    position = bisect.bisect_right(firsts, index) - 1
    return position if position >= 0 and index <= shots[position].last else None


def _strip_view(unit: str, strip: StripResult, overview: Overview, shots: list[Shot], out_dir: Path) -> dict[str, Any]:
    """What the template needs for one film strip: thumbnails with links and shot marks."""
    meta = overview.meta.get(unit)
    firsts = [s.first for s in shots]
    thumbs, previous = [], None
    for thumb in strip.thumbs:
        shot = _shot_of(shots, firsts, thumb.index) if shots else None
        href = link_to(thumb.source, out_dir)
        if thumb.decoded and meta and meta.fps > 0:
            href += f"#t={thumb.index / meta.fps:.3f}"
        label = thumb.frame_id if shot is None else f"{thumb.frame_id} in {shots[shot].shot_id}"
        thumbs.append(
            {
                "img": img_tag(thumb),
                "href": href,
                "label": label,
                "shot": shot,
                "cut": previous is not None and shot != previous,
            }
        )
        previous = shot
    return {
        "unit": unit,
        "frames": len(overview.frames.get(unit, [])),
        "meta": meta,
        "shots": shots,
        "thumbs": thumbs,
        "error": strip.error,
    }


def _map_svg_points(coords: np.ndarray) -> list[tuple[float, float]]:
    width, height = MAP_SIZE
    margin = 20  # room for the labels of small maps
    low, high = coords.min(axis=0), coords.max(axis=0)
    span = np.where(high - low > 0, high - low, 1)
    scaled = (coords - low) / span
    xs = margin + scaled[:, 0] * (width - 2 * margin)
    ys = height - margin - scaled[:, 1] * (height - 2 * margin)
    return [(round(float(x), 1), round(float(y), 1)) for x, y in zip(xs, ys, strict=True)]


def _histogram_bars(health: FeatureHealth) -> list[dict[str, float]]:
    width, height = HISTOGRAM_SIZE
    if not health.norm_counts:
        return []
    top = max(health.norm_counts) or 1
    bar = width / len(health.norm_counts)
    return [
        {
            "x": round(i * bar, 2),
            "w": round(bar - 1, 2),
            "h": round(count / top * (height - 4), 2),
            "y": round(height - count / top * (height - 4), 2),
            "count": count,
            "low": health.norm_edges[i],
            "high": health.norm_edges[i + 1],
        }
        for i, count in enumerate(health.norm_counts)
    ]


def _manifest_summary(manifest: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The manifest fields people look for first: model, weights, preprocessing, precision."""
    if not manifest:
        return []
    keys = ("model", "layer", "weights", "weights_sha256", "preprocessing", "precision", "sampling", "method")
    found = []
    for key in keys:
        value = manifest.get(key)
        if value is not None:
            found.append((key, value if isinstance(value, str) else json.dumps(value, sort_keys=True)))
    return found


def report(
    collection: str | os.PathLike[str],
    features: Sequence[str] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    rootpath: str | os.PathLike[str] | None = None,
    page_size: int = 100,
    neighbours: int = 5,
    strip_frames: int = 12,
    thumb_height: int = 64,
    thumb_format: str = "webp",
    workers: int = 0,
    progress: ProgressCallback | None = None,
) -> ReportResult:
    """Writes a static HTML report of a collection and its features.

    The pages open from disk in any browser, offline: every style and script is embedded and nothing is
    fetched. The first page gives counts, durations, resolutions, frame rates and every failures file; the
    video pages show a film strip per video (or shot) with the shots of ``id.shots.txt`` marked, linking to
    the frames; each feature page shows its manifest, its health (NaN/inf rows, all-zero rows, duplicate
    rows, row norms, dims without variance), a PCA map of the videos and pages of nearest neighbours.
    Thumbnails are made once and reused on later runs while they are newer than their frames.

    Args:
        collection: Collection directory, or its name under ``rootpath``.
        features: Feature names in FeatureData; None means all of them.
        output: Report directory (default ``<collection>/Report``).
        rootpath: Where named collections live.
        page_size: Film strips (and neighbour rows) per page.
        neighbours: Nearest neighbours shown per video.
        strip_frames: At most this many thumbnails per film strip, spread over the video.
        thumb_height: Thumbnail height in pixels.
        thumb_format: ``webp`` or ``jpeg``.
        workers: Processes making thumbnails (0: one per core).
        progress: Receives progress events (``thumbnails``, ``features``).

    Returns:
        A ReportResult; ``index`` is the page to open.

    Raises:
        CollectionError: The collection or a feature is missing.
        VcfError: An option is out of range.
        FeatureFileError: A feature directory is not a consistent BigFile.
    """
    coll = resolve_collection(collection, rootpath)
    if page_size < 1 or neighbours < 0 or strip_frames < 1:
        raise VcfError("--page-size and --strip-frames must be at least 1, --neighbours at least 0")
    settings = ThumbSettings(height=thumb_height, format=thumb_format)
    out_dir = Path(output).expanduser().resolve() if output is not None else coll.report_dir
    names = list(features) if features is not None else coll.list_features()
    bigfiles = [open_feature(coll, name) for name in names]  # fail early, before any thumbnail work
    reporter = Reporter(progress)
    overview = read_overview(coll)
    result = ReportResult(index=out_dir / INDEX_PAGE)

    jobs = [
        StripJob(unit, tuple(overview.frames.get(unit, ())), overview.video_paths.get(unit), strip_frames)
        for unit in overview.units
    ]
    reporter.total("thumbnails", len(jobs), description="film strips")
    strips = make_strips(jobs, out_dir, settings, workers, done=lambda strip: reporter.advance("thumbnails"))
    result.strips = len(strips)
    result.thumbnails = sum(len(s.thumbs) for s in strips.values())
    result.thumbnails_made = sum(s.made for s in strips.values())
    result.strip_errors = {unit: s.error for unit, s in strips.items() if s.error}
    cover: dict[str, Thumb] = {unit: s.thumbs[len(s.thumbs) // 2] for unit, s in strips.items() if s.thumbs}

    page_of = {unit: i // page_size + 1 for i, unit in enumerate(overview.units)}
    video_pages = max(1, -(-len(overview.units) // page_size))
    nav = [("Overview", INDEX_PAGE), ("Videos", videos_page(1))]
    nav += [(name, feature_page(k)) for k, name in enumerate(names, start=1)]
    pages = _Pages(out_dir, f"{coll.name}", nav)
    shots_by_video = overview.shots_by_video()
    shot_by_id = {shot.shot_id: shot for shot in overview.shots}  # strips of shots (frames written per shot)

    for page in range(1, video_pages + 1):
        units = overview.units[(page - 1) * page_size : page * page_size]
        views = [_strip_view(u, strips[u], overview, shots_by_video.get(u, []), out_dir) for u in units]
        for view in views:
            view["shot"] = shot_by_id.get(view["unit"])
        pages.write(videos_page(page), "videos.html.j2", strips=views, pager=_pager(video_pages, page, videos_page))

    feature_summaries = []
    reporter.total("features", len(bigfiles))
    for k, bigfile in enumerate(bigfiles, start=1):
        summary = _feature_pages(pages, k, bigfile, overview.units, cover, page_of, page_size, neighbours)
        result.features[bigfile.datadir.name] = summary["health"]
        feature_summaries.append(summary)
        reporter.advance("features", description=bigfile.datadir.name)

    pages.write(
        INDEX_PAGE,
        "index.html.j2",
        collection=coll,
        stats=overview.stats(),
        failures=[(f, link_to(f.path, out_dir)) for f in overview.failures],
        video_pages=[(p, videos_page(p)) for p in range(1, video_pages + 1)],
        page_size=page_size,
        features=feature_summaries,
        strip_errors=sorted(result.strip_errors.items())[:IDS_SHOWN],
        strip_error_count=len(result.strip_errors),
    )
    _remove_stale_pages(out_dir, pages.written)
    record = {
        "collection": str(coll.root),
        "features": {b.datadir.name: b.describe() for b in bigfiles},
        "settings": {
            "page_size": page_size,
            "neighbours": neighbours,
            "strip_frames": strip_frames,
            **asdict(settings),
        },
    }
    atomic_write_text(out_dir / REPORT_MANIFEST, manifest_text({"report": record}))
    result.pages = pages.written
    return result


def _feature_pages(
    pages: _Pages,
    number: int,
    bigfile: BigFile,
    units: list[str],
    cover: dict[str, Thumb],
    page_of: dict[str, int],
    page_size: int,
    neighbours: int,
) -> dict[str, Any]:
    """Writes the page of one feature and its pages of neighbours; returns what the overview shows of it."""
    health = feature_health(bigfile)
    unit_ids, vectors = pool_by_unit(bigfile, units)
    coords = pca_2d(vectors) if unit_ids else np.zeros((0, 2))
    found, scores = nearest_neighbours(vectors, neighbours) if unit_ids else (np.zeros((0, 0), np.int64), None)
    nn_pages = max(1, -(-len(unit_ids) // page_size))
    points = [
        {"x": x, "y": y, "unit": u, "thumb": cover.get(u)}
        for (x, y), u in zip(_map_svg_points(coords) if unit_ids else [], unit_ids, strict=True)
    ]
    summary = {
        "number": number,
        "name": bigfile.datadir.name,
        "shape": bigfile.shape(),
        "units": len(unit_ids),
        "health": health,
        "manifest": bigfile.manifest,
        "manifest_summary": _manifest_summary(bigfile.manifest),
        "nn_pages": [(p, neighbours_page(number, p)) for p in range(1, nn_pages + 1)],
    }
    pages.write(
        feature_page(number),
        "feature.html.j2",
        feature=summary,
        ids_shown=IDS_SHOWN,
        points=points,
        map_size=MAP_SIZE,
        bars=_histogram_bars(health),
        histogram_size=HISTOGRAM_SIZE,
    )
    # Each video's cover <img> appears in its own row and in up to `neighbours` others: build it once.
    cover_img = {unit: img_tag(cover[unit], alt=False) for unit in unit_ids if unit in cover}

    def item(j: int, score: float | None = None) -> dict[str, Any]:
        unit = unit_ids[j]
        return {"unit": unit, "score": score, "img": cover_img.get(unit, NO_THUMB), "strip": _strip_link(unit, page_of)}

    for page in range(1, nn_pages + 1):
        rows = [
            {**item(row), "neighbours": [item(j, float(v)) for j, v in zip(found[row], scores[row], strict=True)]}
            for row in range((page - 1) * page_size, min(page * page_size, len(unit_ids)))
        ]
        pager = _pager(nn_pages, page, lambda p: neighbours_page(number, p))
        pages.write(neighbours_page(number, page), "neighbours.html.j2", feature=summary, rows=rows, pager=pager)
    return summary


def _strip_link(unit: str, page_of: dict[str, int]) -> str | None:
    page = page_of.get(unit)
    return f"{videos_page(page)}#{url('s-' + unit)}" if page else None


def _pager(count: int, current: int, name: Any) -> list[tuple[int, str, bool]]:
    return [(p, name(p), p == current) for p in range(1, count + 1)] if count > 1 else []


def _remove_stale_pages(out_dir: Path, written: list[Path]) -> None:
    """Removes pages of an earlier, longer report that this run did not write again."""
    keep = set(written)
    for pattern in ("videos-*.html", "feature-*.html"):
        for path in out_dir.glob(pattern):
            if path not in keep:
                remove_path(path)
