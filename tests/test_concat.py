"""Concatenating features: row order, dims, id mismatches, intersect, no partial output, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import vcf.stages.concat as concat_module
from vcf.cli.app import app
from vcf.errors import OutputExistsError, VcfError
from vcf.io.atomic import TMP_MARK
from vcf.io.bigfile import BigFile, write_bigfile
from vcf.io.collection import Collection
from vcf.stages.concat import concat, split_features

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
A = "mean_resnext,avgpool,os"
B = "mean_resnet-152,flatten0_output"


def add_feature(root: Path, name: str, ids: list[str], dim: int, seed: int, **kwargs: Any) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal((len(ids), dim)).astype(np.float32)
    write_bigfile(Collection(root).feature_dir(name), ids, values, **kwargs)
    return values


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "FeatureData").iterdir() if TMP_MARK in p.name)


def test_rows_follow_the_first_feature(tmp_path: Path) -> None:
    root = tmp_path / "coll"
    ids_a = ["v3", "v1", "v_2", "v0"]
    ids_b = ["v0", "v_2", "v3", "v1"]
    a = add_feature(root, A, ids_a, 4, 1)
    b = add_feature(root, B, ids_b, 3, 2)
    result = concat(root, f"{A}+{B}")
    assert result.output == root / "FeatureData" / f"{A}+{B}"
    assert (result.inputs, result.rows, result.dim, result.dropped, result.skipped) == ([A, B], 4, 7, 0, False)
    out = BigFile(result.output)
    assert out.names == ids_a and out.shape() == [4, 7]
    for n, vid in enumerate(ids_a):
        assert np.array_equal(out.matrix()[n], np.concatenate([a[n], b[ids_b.index(vid)]]))
    assert (result.output / "shape.txt").read_text() == "4 7"
    assert [i["feature"] for i in out.manifest["inputs"]] == [A, B]


def test_three_features_and_a_list(tmp_path: Path) -> None:
    root = tmp_path / "coll"
    ids = [f"x{i}" for i in range(5)]
    parts = [add_feature(root, name, ids, dim, seed) for seed, (name, dim) in enumerate([("p", 2), ("q", 1), ("r", 3)])]
    result = concat(root, ["p", "q", "r"])
    assert result.feature == "p+q+r" and result.dim == 6
    assert np.array_equal(BigFile(result.output).matrix(), np.hstack(parts))


def test_split_on_plus_only() -> None:
    assert split_features("a,b,os+c,d") == ["a,b,os", "c,d"]
    for bad in ("only,one", "a++b", "a+"):
        with pytest.raises(VcfError, match="two or more feature names"):
            split_features(bad)


def test_id_mismatch_names_counts_and_examples_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "coll"
    add_feature(root, A, ["s1", "s2", "s3", "a1", "a2", "a3", "a4"], 2, 1)
    add_feature(root, B, ["s2", "b1", "s1", "s3"], 2, 2)
    with pytest.raises(VcfError) as info:
        concat(root, f"{A}+{B}")
    message = str(info.value)
    assert f"4 only in {A} (e.g. a1, a2, a3, ...)" in message
    assert f"1 only in {B} (e.g. b1)" in message
    assert "--intersect" in message and "\n" not in message
    assert Collection(root).list_features() == sorted([A, B])
    assert leftovers(root) == []


def test_intersect_keeps_common_ids_in_first_order(tmp_path: Path) -> None:
    root = tmp_path / "coll"
    a = add_feature(root, A, ["s3", "a1", "s1", "s2"], 2, 1)
    b = add_feature(root, B, ["s1", "b1", "s2", "s3"], 3, 2)
    result = concat(root, f"{A}+{B}", intersect=True)
    assert (result.rows, result.dropped, result.dim) == (3, 1, 5)
    out = BigFile(result.output)
    assert out.names == ["s3", "s1", "s2"]
    assert np.array_equal(out.read_array(["s1"])[0], np.concatenate([a[2], b[0]]))
    add_feature(root, "other", ["zz"], 1, 3)
    with pytest.raises(VcfError, match="no id in common"):
        concat(root, f"{A}+other", intersect=True)


def test_chunked_copy_and_no_partial_directory_after_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "coll"
    ids = [f"v{i}" for i in range(10)]
    a = add_feature(root, A, ids, 2, 1)
    b = add_feature(root, B, ids[::-1], 2, 2)
    monkeypatch.setattr(concat_module, "chunk_rows", lambda dim: 3)
    out = BigFile(concat(root, f"{A}+{B}").output)
    assert np.array_equal(out.matrix(), np.hstack([a, b[::-1]]))

    calls = 0
    real_hstack = np.hstack

    def failing_hstack(blocks: list[np.ndarray]) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        return real_hstack(blocks)

    monkeypatch.setattr(concat_module.np, "hstack", failing_hstack)
    with pytest.raises(OSError):
        concat(root, f"{B}+{A}")
    assert not (root / "FeatureData" / f"{B}+{A}").exists()
    assert leftovers(root) == []


def test_rerun_and_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "coll"
    add_feature(root, A, ["x", "y"], 2, 1)
    add_feature(root, B, ["y", "x"], 2, 2)
    concat(root, f"{A}+{B}")
    assert concat(root, f"{A}+{B}").skipped
    # Same ids, shape and manifest: an input rewritten identically keeps the output up to date.
    add_feature(root, B, ["y", "x"], 2, 2, overwrite=True)
    assert concat(root, f"{A}+{B}").skipped
    # Other ids order, or another manifest (recomputed with other settings): out of date, so recomputed.
    for ids, manifest in ((["x", "y"], None), (["y", "x"], {"model": "other"})):
        add_feature(root, B, ids, 2, 2, overwrite=True, manifest=manifest)
        assert not concat(root, f"{A}+{B}").skipped
        assert concat(root, f"{A}+{B}").skipped
    assert not concat(root, f"{A}+{B}", overwrite=True).skipped  # --overwrite recomputes an up-to-date output
    with pytest.raises(OutputExistsError, match="other settings"):  # the same output asked with other settings
        concat(root, f"{A}+{B}", intersect=True)


def test_cli_concat(tmp_path: Path) -> None:
    root = tmp_path / "coll"
    add_feature(root, A, ["x", "y", "z"], 2, 1)
    add_feature(root, B, ["z", "y"], 3, 2)
    failed = runner.invoke(app, ["concat", str(root), f"{A}+{B}", "-q"])
    assert failed.exit_code == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "1 only in" in lines[0]
    ok = runner.invoke(app, ["concat", str(root), f"{A}+{B}", "--intersect", "-q"])
    assert ok.exit_code == 0, ok.output
    out_dir = root.resolve() / "FeatureData" / f"{A}+{B}"
    assert ok.stdout.strip() == f"wrote: {out_dir} (2 x 5, 1 ids not in every feature left out)"


def test_concat_script(tmp_path: Path) -> None:
    root = tmp_path / "coll"
    add_feature(root, A, ["x", "y"], 2, 1)
    add_feature(root, B, ["y", "x"], 1, 2)
    env = {**os.environ, "VCF": f"{sys.executable} -m vcf", "VCF_ROOTPATH": str(tmp_path)}
    done = subprocess.run(
        [str(ROOT / "scripts" / "do_concat_features.sh"), "coll", f"{A}+{B}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert BigFile(root / "FeatureData" / f"{A}+{B}").shape() == [2, 3]
