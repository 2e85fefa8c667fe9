#!/usr/bin/env bash
# Usage: do_features.sh collection model [rootpath]   (frame-level CNN features of id.imagepath.txt)
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 collection model [rootpath]" >&2; exit 2; fi
collection=$1
model=$2
rootpath=${3:-${VCF_ROOTPATH:-$HOME/VisualSearch}}
${VCF:-vcf} features "$collection" --model "$model" --rootpath "$rootpath" ${VCF_FEATURE_ARGS:-}
