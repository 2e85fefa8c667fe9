"""The BigFile format: round trips, compatibility with the original reader and writer, damage detection."""

from __future__ import annotations

import array
import math
import os
from pathlib import Path

import numpy as np
import pytest

from vcf.errors import CollectionError, FeatureFileError, OutputExistsError
from vcf.io.atomic import TMP_MARK, read_manifest
from vcf.io.bigfile import BigFile, BigFileWriter, write_bigfile
from vcf.io.bigfile_text import txt_to_bigfile

REFERENCE_FEATURE = "resnext101_32x48d_wsl,avgpool"


# The original tools, copied here (ported to Python 3 only where needed) ------------------------------


class OriginalBigFile:
    """The reader of the original utils/bigfile.py."""

    def __init__(self, datadir, bin_file="feature.bin"):
        self.nr_of_images, self.ndims = map(int, open(os.path.join(datadir, "shape.txt")).readline().split())  # noqa: SIM115
        id_file = os.path.join(datadir, "id.txt")
        self.names = open(id_file).read().strip().split()  # noqa: SIM115
        assert len(self.names) == self.nr_of_images
        self.name2index = dict(zip(self.names, range(self.nr_of_images), strict=True))
        self.binary_file = os.path.join(datadir, bin_file)

    def read(self, requested, isname=True):
        requested = set(requested)
        if isname:
            index_name_array = [(self.name2index[x], x) for x in requested if x in self.name2index]
        else:
            assert min(requested) >= 0
            assert max(requested) < len(self.names)
            index_name_array = [(x, self.names[x]) for x in requested]
        if len(index_name_array) == 0:
            return [], []
        index_name_array.sort(key=lambda v: v[0])
        sorted_index = [x[0] for x in index_name_array]
        nr_of_images = len(index_name_array)
        offset = np.float32(1).nbytes * self.ndims
        res = array.array("f")
        with open(self.binary_file, "rb") as fr:
            fr.seek(index_name_array[0][0] * offset)
            res.fromfile(fr, self.ndims)
            previous = index_name_array[0][0]
            for nxt in sorted_index[1:]:
                move = (nxt - 1 - previous) * offset
                fr.seek(move, 1)
                res.fromfile(fr, self.ndims)
                previous = nxt
        return [x[1] for x in index_name_array], [
            res[i * self.ndims : (i + 1) * self.ndims].tolist() for i in range(nr_of_images)
        ]

    def readall(self, isname=True):
        return self.read(self.names, isname=True)


def original_write(resultdir: Path, names: list[str], vectors: np.ndarray) -> None:
    """How txt2bin, feature_pooling and concat_features wrote a BigFile."""
    os.makedirs(resultdir)
    with open(os.path.join(resultdir, "feature.bin"), "wb") as fw:
        for vec in vectors:
            np.float32(vec).tofile(fw)
    with open(os.path.join(resultdir, "id.txt"), "w") as fw:
        fw.write(" ".join(names))
    with open(os.path.join(resultdir, "shape.txt"), "w") as fw:
        fw.write("%d %d" % (len(names), vectors.shape[1]))  # noqa: UP031


def original_txt2bin(text_file: Path, resultdir: Path) -> None:
    """The original txt2bin loop with nDims=0: first id wins, NaN rows dropped, dims from the first row."""
    os.makedirs(resultdir)
    processed: set[str] = set()
    imset: list[str] = []
    feat_dim = 0
    with open(os.path.join(resultdir, "feature.bin"), "wb") as fw:
        for line in open(text_file):  # noqa: SIM115
            elems = line.strip().split()
            if not elems:
                continue
            name = elems[0]
            if name in processed:
                continue
            processed.add(name)
            del elems[0]
            vec = np.array(list(map(float, elems)), dtype=np.float32)
            if any(math.isnan(x) for x in vec):
                continue
            if feat_dim == 0:
                feat_dim = len(vec)
            else:
                assert len(vec) == feat_dim
            vec.tofile(fw)
            imset.append(name)
    with open(os.path.join(resultdir, "id.txt"), "w") as fw:
        fw.write(" ".join(imset))
    with open(os.path.join(resultdir, "shape.txt"), "w") as fw:
        fw.write("%d %d" % (len(imset), feat_dim))  # noqa: UP031


def g_text(names: list[str], vectors: np.ndarray) -> str:
    """The original extractor's text form: one ``<id> v1 ... vD`` line per row, values as %g."""
    lines = (name + " " + " ".join("%g" % v for v in vec) + "\n" for name, vec in zip(names, vectors, strict=True))  # noqa: UP031
    return "".join(lines)


# Fixtures ------------------------------------------------------------------------------------------


@pytest.fixture
def sample() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(7)
    names = ["shot00001_1_0", "v_with_underscores_12", "b", "éclair_3", "a", "z9"]
    return names, rng.standard_normal((len(names), 5)).astype(np.float32) * 10


def dir_bytes(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in ("feature.bin", "id.txt", "shape.txt")}


# Round trip and compatibility -----------------------------------------------------------------------


def test_round_trip(tmp_path: Path, sample: tuple[list[str], np.ndarray]) -> None:
    names, values = sample
    out = write_bigfile(tmp_path / "feat", names, values.astype(np.float64), manifest={"stage": "test"})
    bf = BigFile(out)
    assert bf.names == names
    assert bf.shape() == [6, 5] and bf.nr_of_images == 6 and bf.ndims == 5
    assert bf.name2index["a"] == 4
    assert bf.binary_file == str(out / "feature.bin")
    assert np.array_equal(bf.matrix(), values)
    assert not bf.matrix().flags.writeable
    assert np.array_equal(bf.read_array(["a", "b", "a"]), values[[4, 2, 4]])
    chunks = list(bf.iter_chunks(rows=4))
    assert [ids for ids, _ in chunks] == [names[:4], names[4:]]
    assert np.array_equal(np.vstack([block for _, block in chunks]), values)
    got_names, vectors = bf.readall()
    assert got_names == names and vectors == values.tolist()
    assert bf.read_one("b") == values[2].tolist()
    manifest = read_manifest(out)
    assert manifest is not None and manifest["stage"] == "test" and manifest["shape"] == [6, 5]
    assert not [p for p in tmp_path.iterdir() if TMP_MARK in p.name]


def test_files_are_byte_identical_to_the_original_writer(tmp_path: Path, sample: tuple[list[str], np.ndarray]) -> None:
    names, values = sample
    ours = write_bigfile(tmp_path / "ours", names, values)
    original_write(tmp_path / "original", names, values)
    assert dir_bytes(ours) == dir_bytes(tmp_path / "original")
    assert (ours / "id.txt").read_bytes() == " ".join(names).encode("utf-8")
    assert (ours / "shape.txt").read_text() == "6 5"
    raw = np.frombuffer((ours / "feature.bin").read_bytes(), dtype="<f4").reshape(6, 5)
    assert np.array_equal(raw, values)


def test_original_reader_reads_ours(tmp_path: Path, sample: tuple[list[str], np.ndarray]) -> None:
    names, values = sample
    out = write_bigfile(tmp_path / "ours", names, values)
    original = OriginalBigFile(out)
    ours = BigFile(out)
    assert original.names == ours.names and [original.nr_of_images, original.ndims] == ours.shape()
    request = ["a", "unknown", "shot00001_1_0", "a", "z9"]
    assert original.read(request) == ours.read(request)
    assert original.read(request)[0] == ["shot00001_1_0", "a", "z9"]
    assert original.readall() == ours.readall()
    assert original.read([5, 1], isname=False) == ours.read([5, 1], isname=False)


def test_we_read_directories_written_by_the_original(tmp_path: Path, sample: tuple[list[str], np.ndarray]) -> None:
    names, values = sample
    original_write(tmp_path / "original", names, values)
    bf = BigFile(tmp_path / "original")
    assert bf.manifest is None
    assert bf.names == names and np.array_equal(bf.matrix(), values)
    request = ["z9", "b", "missing"]
    assert bf.read(request) == OriginalBigFile(tmp_path / "original").read(request)


def test_reference_text_features_converted_as_the_original(tmp_path: Path, reference_dir: Path) -> None:
    text = reference_dir / "FeatureData" / REFERENCE_FEATURE / "id.feature.txt"
    original_txt2bin(text, tmp_path / "original")
    result = txt_to_bigfile(text, tmp_path / "ours")
    assert (result.lines, result.rows, result.duplicates, result.failed, result.dim) == (11, 11, 0, 0, 2048)
    assert dir_bytes(result.output) == dir_bytes(tmp_path / "original")

    lines = [line.split() for line in text.read_text().splitlines() if line.strip()]
    expected = np.array([[float(v) for v in parts[1:]] for parts in lines]).astype(np.float32)
    bf = BigFile(tmp_path / "original")
    assert bf.names == [parts[0] for parts in lines]
    assert bf.shape() == [11, 2048]
    assert np.array_equal(bf.matrix(), expected)
    assert bf.read_one("shot00001_1_0") == expected[bf.name2index["shot00001_1_0"]].tolist()


def test_g_formatted_text_round_trip_matches_original_conversion(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    names = [f"vid{i % 3}_{i}" for i in range(20)]
    values = rng.random((20, 16)).astype(np.float32) * 3
    text = tmp_path / "id.feature.txt"
    text.write_text(g_text(names, values))
    original_txt2bin(text, tmp_path / "original")
    result = txt_to_bigfile(text, tmp_path / "ours")
    assert dir_bytes(result.output) == dir_bytes(tmp_path / "original")
    # %g keeps 6 significant digits: close to the source, not equal.
    assert np.allclose(BigFile(result.output).matrix(), values, rtol=1e-5, atol=0)


# read() semantics ----------------------------------------------------------------------------------


def test_read_returns_file_order_without_duplicates_or_unknown_ids(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    bf = BigFile(write_bigfile(tmp_path / "f", ["d", "c", "b", "a"], values))
    names, vectors = bf.read(["a", "zz", "c", "a", "c"])
    assert names == ["c", "a"]
    assert vectors == [[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]]
    assert all(isinstance(v, float) for v in vectors[0])
    assert bf.read(["nope"]) == ([], [])
    assert bf.read([]) == ([], [])
    assert bf.read([3, 0, 3], isname=False) == (["d", "a"], [[0.0, 1.0, 2.0], [9.0, 10.0, 11.0]])
    with pytest.raises(IndexError):
        bf.read([4], isname=False)
    with pytest.raises(KeyError):
        bf.read_one("nope")
    with pytest.raises(KeyError, match="nope"):
        bf.read_array(["a", "nope"])
    assert "a" in bf and "nope" not in bf and len(bf) == 4


def test_id_txt_is_read_with_any_whitespace(tmp_path: Path) -> None:
    out = write_bigfile(tmp_path / "f", ["x", "y", "z"], np.ones((3, 2)))
    (out / "id.txt").write_text("x\ny\t z\n\n")
    assert BigFile(out).names == ["x", "y", "z"]


def test_empty_bigfile(tmp_path: Path) -> None:
    with BigFileWriter(tmp_path / "empty", 4):
        pass
    bf = BigFile(tmp_path / "empty")
    assert bf.shape() == [0, 4] and bf.matrix().shape == (0, 4)
    assert (tmp_path / "empty" / "shape.txt").read_text() == "0 4"
    assert list(bf.iter_chunks()) == []


# Damage detection ----------------------------------------------------------------------------------


def test_truncated_feature_bin_is_detected(tmp_path: Path) -> None:
    out = write_bigfile(tmp_path / "f", ["a", "b", "c"], np.ones((3, 4)))
    with open(out / "feature.bin", "r+b") as handle:
        handle.truncate(3 * 4 * 4 - 4)
    with pytest.raises(FeatureFileError, match=r"has 44 bytes but shape 3 x 4 needs 48 \(truncated\)") as info:
        BigFile(out)
    assert str(out) in str(info.value)


def test_feature_bin_too_long_is_detected(tmp_path: Path) -> None:
    out = write_bigfile(tmp_path / "f", ["a", "b"], np.ones((2, 4)))
    with open(out / "feature.bin", "ab") as handle:
        handle.write(b"\0" * 16)
    with pytest.raises(FeatureFileError, match="48 bytes but shape 2 x 4 needs 32"):
        BigFile(out)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("4 4", "shape.txt says 4 rows but id.txt has 3 ids"),
        ("3", "expected 'N D'"),
        ("3 x", "expected 'N D'"),
        ("3 0", "invalid shape"),
        ("3 5", "has 48 bytes but shape 3 x 5 needs 60"),
    ],
)
def test_wrong_shape_txt_is_detected(tmp_path: Path, shape: str, message: str) -> None:
    out = write_bigfile(tmp_path / "f", ["a", "b", "c"], np.ones((3, 4)))
    (out / "shape.txt").write_text(shape)
    with pytest.raises(FeatureFileError, match=message):
        BigFile(out)


def test_missing_file_and_duplicate_ids_are_detected(tmp_path: Path) -> None:
    out = write_bigfile(tmp_path / "f", ["a", "b", "c"], np.ones((3, 4)))
    (out / "id.txt").write_text("a b a")
    with pytest.raises(FeatureFileError, match="lists 'a' more than once"):
        BigFile(out)
    (out / "id.txt").unlink()
    with pytest.raises(FeatureFileError, match=r"id\.txt is missing"):
        BigFile(out)


# Writer --------------------------------------------------------------------------------------------


def test_writer_streams_and_casts_to_float32(tmp_path: Path) -> None:
    with BigFileWriter(tmp_path / "f", 3, manifest={"k": 1}) as writer:
        writer.append(["a", "b"], np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64))
        writer.append(["c"], np.array([0.1, 0.2, 0.3]))
        assert not (tmp_path / "f").exists()  # only published on close
        assert writer.rows == 3
    bf = BigFile(tmp_path / "f")
    assert bf.names == ["a", "b", "c"]
    assert np.array_equal(bf.matrix()[2], np.float32([0.1, 0.2, 0.3]))
    assert (tmp_path / "f" / "feature.bin").stat().st_size == 36


@pytest.mark.parametrize("bad", ["has space", "", "tab\there", "dup"])
def test_writer_rejects_bad_ids_and_leaves_nothing(tmp_path: Path, bad: str) -> None:
    with pytest.raises(FeatureFileError, match="id"), BigFileWriter(tmp_path / "f", 2) as writer:
        writer.append(["dup"], np.zeros((1, 2)))
        writer.append([bad], np.zeros((1, 2)))
    assert list(tmp_path.iterdir()) == []


def test_writer_aborts_on_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), BigFileWriter(tmp_path / "f", 2) as writer:
        writer.append(["a"], np.zeros((1, 2)))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_shape_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"), BigFileWriter(tmp_path / "f", 2) as writer:
        writer.append(["a", "b"], np.zeros((2, 3)))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    write_bigfile(tmp_path / "f", ["a"], np.zeros((1, 2)))
    with pytest.raises(OutputExistsError, match="exists"):
        write_bigfile(tmp_path / "f", ["b"], np.ones((1, 2)))
    assert BigFile(tmp_path / "f").names == ["a"]
    write_bigfile(tmp_path / "f", ["b", "c"], np.ones((2, 2)), overwrite=True)
    assert BigFile(tmp_path / "f").names == ["b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


# Text import ---------------------------------------------------------------------------------------


def test_txt_import_first_id_wins_and_nan_rows_are_dropped(tmp_path: Path) -> None:
    part1 = tmp_path / "part1.txt"
    part2 = tmp_path / "part2.txt"
    part1.write_text("a 1 2\nb nan 1\n\nc 3 4\na 9 9\n")
    part2.write_text("b 5 6\nd 7 8\n")
    result = txt_to_bigfile([part1, part2], tmp_path / "f")
    assert (result.lines, result.rows, result.duplicates, result.failed, result.dim) == (6, 3, 2, 1, 2)
    bf = BigFile(result.output)
    assert bf.names == ["a", "c", "d"]
    assert bf.readall()[1] == [[1.0, 2.0], [3.0, 4.0], [7.0, 8.0]]


def test_txt_import_checks_dims_and_numbers(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("a 1 2\nb 1 2 3\n")
    with pytest.raises(FeatureFileError, match=r"t.txt:2: 3 values, expected 2"):
        txt_to_bigfile(text, tmp_path / "f")
    text.write_text("a 1 2\nb 1 x\n")
    with pytest.raises(FeatureFileError, match=r"t.txt:2: a value of 'b' is not a number"):
        txt_to_bigfile(text, tmp_path / "f")
    with pytest.raises(FeatureFileError, match=r"expected 3"):
        txt_to_bigfile(text, tmp_path / "f", dim=3)
    with pytest.raises(CollectionError, match="not found"):
        txt_to_bigfile(tmp_path / "missing.txt", tmp_path / "f")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
