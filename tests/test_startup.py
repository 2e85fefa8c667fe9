"""Start-up: the commands that never run a model import no torch, and a features run imports only what it uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vcf.io.bigfile import write_bigfile
from vcf.io.collection import Collection

HEAVY = ("torch", "torchvision", "torch._dynamo", "timm", "open_clip", "ray", "h5py", "faiss")
# Runs the CLI in this process and prints which heavy modules it left imported.
PROBE = """
import json, sys
from vcf.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def imported_by(argv: list[str], test_models: bool = False) -> list[str]:
    """The heavy modules a fresh process has imported after running ``vcf ARGV``.

    Without ``test_models`` it runs as a user runs it: without the tests' own model module (tiny networks
    built with torch, named in ``$VCF_MODEL_MODULES``).
    """
    code = PROBE.format(heavy=HEAVY)
    env = {key: value for key, value in os.environ.items() if test_models or key != "VCF_MODEL_MODULES"}
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture
def pooled_collection(tmp_path: Path) -> Path:
    """A collection with frame features of two videos, as ``vcf features`` would leave it."""
    root = tmp_path / "coll"
    ids = [f"v{video}_{frame}" for video in (1, 2) for frame in range(3)]
    values = np.random.default_rng(0).standard_normal((len(ids), 4)).astype(np.float32)
    write_bigfile(Collection(root).feature_dir("net,avgpool"), ids, values)
    write_bigfile(Collection(root).feature_dir("net,fc"), ids, values[:, :2])
    return root


def test_help_and_models_import_no_torch() -> None:
    commands = (["--help"], ["models"], ["models", "resnet*"], ["check", "--help"])
    helps = [[name, "--help"] for name in ("features", "frames", "shots", "search", "index", "report", "merge")]
    for argv in (*commands, *helps):
        assert imported_by(argv) == [], argv


def test_post_processing_commands_import_no_torch(pooled_collection: Path) -> None:
    root = str(pooled_collection)
    assert imported_by(["pool", root, "net,avgpool", "-q"]) == []
    assert imported_by(["concat", root, "net,avgpool+net,fc", "-q"]) == []
    assert (pooled_collection / "FeatureData" / "net,avgpool+net,fc").is_dir()
    assert imported_by(["check", root]) == []
    # Writing HDF5 needs h5py, and nothing heavier.
    assert imported_by(["to-h5", root, "net,avgpool+net,fc", "-q"]) == ["h5py"]


def one_frame_collection(tmp_path: Path) -> Path:
    """A collection of one random 64x48 JPEG frame listed in id.imagepath.txt."""
    import cv2

    root = tmp_path / "frames"
    (root / "ImageData" / "v1").mkdir(parents=True)
    image = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(root / "ImageData" / "v1" / "v1_1.jpg"), image)
    (root / "id.imagepath.txt").write_text(f"v1_1 {root / 'ImageData' / 'v1' / 'v1_1.jpg'}\n")
    return root


def test_image_features_run_imports_no_optional_framework(tmp_path: Path) -> None:
    root = one_frame_collection(tmp_path)
    loaded = imported_by(["features", str(root), "--model", "test_tiny2d", "--device", "cpu", "-q"], test_models=True)
    assert (root / "FeatureData" / "test_tiny2d,avgpool" / "feature.bin").is_file()
    # torch and torchvision (its resize kernels) are the run's; torch._dynamo (nothing is compiled), timm,
    # open_clip, ray, h5py and faiss are not.
    assert set(loaded) == {"torch", "torchvision"}


def test_torchvision_model_run_imports_no_compiler(tmp_path: Path) -> None:
    """Building a torchvision model's skeleton on the meta device skips its random fills (they import torch._dynamo)."""
    import torch

    from vcf.models import get_model

    root = one_frame_collection(tmp_path)
    weights = tmp_path / "resnet18.pth"
    torch.save(get_model("resnet18").build().state_dict(), weights)
    argv = ["features", str(root), "--model", "resnet18", "--weights", str(weights), "--device", "cpu", "-q"]
    assert set(imported_by(argv)) == {"torch", "torchvision"}
    assert (root / "FeatureData" / "resnet18,avgpool" / "feature.bin").stat().st_size == 512 * 4


# torchvision imported as vcf imports it, then what torchvision and torch._dynamo must still do.
DYNAMO_PROBE = """
import sys, torch
from vcf.io.torchvision_import import import_torchvision
models = import_torchvision("torchvision.models")
models.resnet18().eval()(torch.zeros(1, 3, 32, 32))
print("torch._dynamo" in sys.modules)
from torchvision.ops import roi_align
grid = torch.arange(16.0).reshape(1, 1, 4, 4)  # value 4 y + x
print(roi_align(grid, torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]]), output_size=1).item())
print(torch.compile(lambda a: a * 2 + 1, backend="eager")(torch.ones(2)).tolist())
print(type(sys.modules["torch._dynamo"].utils.is_compile_supported).__name__)
"""


def test_torchvision_is_imported_without_dynamo_which_still_works_when_needed() -> None:
    run = subprocess.run([sys.executable, "-c", DYNAMO_PROBE], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    dynamo_imported, pooled, compiled, real_function = run.stdout.split("\n")[:4]
    assert dynamo_imported == "False"
    # One bin over the box (0,0)-(3,3) averages 3x3 bilinear samples of a linear function: its centre's value.
    assert float(pooled) == pytest.approx(4 * 1.5 + 1.5)
    assert compiled == "[3.0, 3.0]"
    assert real_function == "function"
