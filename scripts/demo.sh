#!/usr/bin/env bash
# Sets up .venv, then runs the whole pipeline on toydata, offline:
# frames -> features (two models) -> pool -> concat -> HDF5, then the HTML report.
# efficientnet_lite0 uses real ImageNet weights shipped in a pip package; the second model defaults
# to test_tiny2d, a small built-in network, because no other weights can be fetched offline. With
# network access (or weights in $TORCH_HOME), set VCF_DEMO_SECOND_MODEL, e.g. resnet50.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${VCF_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
second=${VCF_DEMO_SECOND_MODEL:-test_tiny2d}
first=efficientnet_lite0
cpu_args=(--workers 2)

vcf frames toydata
vcf features toydata --model "$first" --layer avgpool "${cpu_args[@]}"
vcf features toydata --model "$second" --layer avgpool "${cpu_args[@]}"
vcf pool toydata "$first,avgpool"
vcf pool toydata "$second,avgpool"
vcf concat toydata "mean_$first,avgpool+mean_$second,avgpool"
vcf to-h5 toydata "mean_$first,avgpool+mean_$second,avgpool" --overwrite
vcf to-h5 toydata "$first,avgpool" --overwrite

python - "$first" "$second" <<'PY'
import sys
from pathlib import Path

import h5py

from vcf.io.bigfile import BigFile

first, second = sys.argv[1:3]
root = Path("toydata").resolve()
print("\nResults in", root)
for feature in (f"{first},avgpool", f"{second},avgpool", f"mean_{first},avgpool", f"mean_{first},avgpool+mean_{second},avgpool"):
    n, d = BigFile(root / "FeatureData" / feature).shape()
    print(f"  FeatureData/{feature}: {n} x {d}")
for h5 in sorted((root / "H5Data").glob("*.h5")):
    with h5py.File(h5) as f:
        shapes = {k: f[k].shape for k in list(f)[:3]}
    print(f"  H5Data/{h5.name}: {shapes}")
PY

vcf report toydata --quiet     # prints the page to open in a browser
