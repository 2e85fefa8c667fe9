"""Up to date means the inputs are unchanged; --overwrite recomputes. Each stage, against its own rerun."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from videos import write_index_video

from vcf.io.bigfile import BigFile
from vcf.stages.concat import concat
from vcf.stages.features import features
from vcf.stages.frames import frames
from vcf.stages.h5 import to_h5
from vcf.stages.pool import pool

TINY = "test_tiny2d"
OPTIONS = {"model": TINY, "layers": ["avgpool", "fc"], "precision": "fp32", "workers": 0}


@pytest.fixture
def featured(synthetic_collection: Path) -> Path:
    frames(synthetic_collection, every=6, workers=1)
    features(synthetic_collection, **OPTIONS)
    return synthetic_collection


def rows(root: Path, feature: str) -> dict[str, np.ndarray]:
    big = BigFile(root / "FeatureData" / feature)
    return dict(zip(big.names, big.matrix(), strict=True))


def rewrite_frame(root: Path, frame_id: str) -> None:
    """Writes other pixels under the same frame file name (its size and modification time change)."""
    path = root / "ImageData" / frame_id.rsplit("_", 1)[0] / f"{frame_id}.jpg"
    image = cv2.imread(str(path))
    cv2.imwrite(str(path), 255 - image)


def test_features_recomputed_when_a_frame_changes(featured: Path) -> None:
    before = rows(featured, f"{TINY},avgpool")
    again = features(featured, **OPTIONS)
    assert again.up_to_date and again.computed == 0
    rewrite_frame(featured, "alpha_1_6")
    redone = features(featured, **OPTIONS)  # no --overwrite: the old features are stale, not current
    assert not redone.up_to_date and redone.computed == len(before)
    after = rows(featured, f"{TINY},avgpool")
    assert not np.allclose(after["alpha_1_6"], before["alpha_1_6"])
    assert all(np.array_equal(after[k], before[k]) for k in before if k != "alpha_1_6")


def test_features_overwrite_recomputes_and_replaces(featured: Path) -> None:
    count = len(rows(featured, f"{TINY},avgpool"))
    result = features(featured, overwrite=True, **OPTIONS)
    assert not result.up_to_date and result.computed == count
    before = rows(featured, f"{TINY},fc")
    rewrite_frame(featured, "beta_6")
    features(featured, overwrite=True, **OPTIONS)
    after = rows(featured, f"{TINY},fc")
    assert not np.allclose(after["beta_6"], before["beta_6"])
    assert np.array_equal(after["alpha_1_0"], before["alpha_1_0"])


def test_features_from_video_recomputed_when_a_video_changes(synthetic_collection: Path) -> None:
    options = {**OPTIONS, "from_video": True, "every": 6}
    first = features(synthetic_collection, **options)
    before = rows(synthetic_collection, f"{TINY},avgpool")
    assert features(synthetic_collection, **options).up_to_date
    video = synthetic_collection / "VideoData" / "beta.mp4"
    write_index_video(video, 13, fps=6, size=(96, 160))  # other pixels under the same name
    redone = features(synthetic_collection, **options)
    assert not redone.up_to_date and redone.computed > 0 and first.feature_dirs == redone.feature_dirs
    after = rows(synthetic_collection, f"{TINY},avgpool")
    assert not np.allclose(after["beta_6"], before["beta_6"])
    assert np.array_equal(after["alpha_1_6"], before["alpha_1_6"])
    assert not features(synthetic_collection, overwrite=True, **options).up_to_date


def change_feature_values(root: Path, feature: str) -> None:
    """Rewrites feature.bin with other values under the same names, ids and manifest."""
    path = root / "FeatureData" / feature / "feature.bin"
    values = np.fromfile(path, dtype="<f4")
    (values * 2 + 1).astype("<f4").tofile(path)


def test_pool_follows_the_values_of_its_input(featured: Path) -> None:
    feature = f"{TINY},avgpool"
    pool(featured, feature)
    assert pool(featured, feature).skipped
    change_feature_values(featured, feature)
    redone = pool(featured, feature)
    assert not redone.skipped
    frames_rows = rows(featured, feature)
    pooled = rows(featured, f"mean_{feature}")
    expected = np.mean([v for k, v in frames_rows.items() if k.startswith("beta_")], axis=0)
    np.testing.assert_allclose(pooled["beta"], expected, rtol=1e-6)
    assert not pool(featured, feature, overwrite=True).skipped


def test_concat_follows_the_values_of_its_inputs(featured: Path) -> None:
    names = [f"{TINY},avgpool", f"{TINY},fc"]
    concat(featured, names)
    assert concat(featured, names).skipped
    change_feature_values(featured, names[1])
    assert not concat(featured, names).skipped
    joined = rows(featured, "+".join(names))
    fc = rows(featured, names[1])
    assert all(np.array_equal(joined[k][-fc[k].size :], fc[k]) for k in fc)
    assert not concat(featured, names, overwrite=True).skipped


def test_h5_follows_the_values_of_its_input(featured: Path) -> None:
    feature = f"{TINY},avgpool"
    first = to_h5(featured, feature)
    assert to_h5(featured, feature).skipped
    change_feature_values(featured, feature)
    assert not to_h5(featured, feature).skipped
    current = rows(featured, feature)
    with h5py.File(first.output, "r") as h5:
        stored = {key: np.asarray(h5[key]) for key in h5}
    assert any(np.array_equal(stored_rows[0], current["alpha_1_0"]) for stored_rows in stored.values())
    assert not to_h5(featured, feature, overwrite=True).skipped
