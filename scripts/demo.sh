#!/usr/bin/env bash
# Sets up .venv and runs the main job on toydata, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${VCF_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
vcf frames toydata
echo "frames: $(wc -l < toydata/id.imagepath.txt) listed in toydata/id.imagepath.txt"
