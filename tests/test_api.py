"""The Python API: one function per stage, importable without loading torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vcf.io.bigfile import BigFile


def test_import_vcf_stays_light() -> None:
    code = "import sys, vcf; vcf.frames; vcf.pool; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_stage_functions_mirror_the_cli(synthetic_collection: Path) -> None:
    import vcf.stages.features  # importing the stage modules must leave vcf.features the function
    import vcf.stages.frames

    root = synthetic_collection
    assert vcf.frames(root, workers=1).frames_total == 10
    features = vcf.features(root, model="test_tiny2d", layers=["avgpool", "fc"], precision="fp32", workers=0)
    dims = {layer: shape[1] for layer, shape in features.shapes.items()}
    for layer in ("avgpool", "fc"):
        assert BigFile(vcf.pool(root, f"test_tiny2d,{layer}").output).shape() == [2, dims[layer]]
    joined = vcf.concat(root, "mean_test_tiny2d,avgpool+mean_test_tiny2d,fc")
    assert BigFile(joined.output).shape() == [2, dims["avgpool"] + dims["fc"]]
    assert vcf.to_h5(root, "mean_test_tiny2d,avgpool+mean_test_tiny2d,fc").output.is_file()
    assert vcf.check(root).problems == []
