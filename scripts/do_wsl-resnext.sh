#!/usr/bin/env bash
# Usage: do_wsl-resnext.sh collection [rootpath]
# resnext101_32x48d_wsl avgpool features with 10-crop oversampling, as the original PyTorch toolbox
# computed them: FeatureData/resnext101_32x48d_wsl,avgpool,os
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 collection [rootpath]" >&2; exit 2; fi
collection=$1
rootpath=${2:-${VCF_ROOTPATH:-$HOME/VisualSearch}}
${VCF:-vcf} features "$collection" --model resnext101_32x48d_wsl --layer avgpool --oversample \
    --rootpath "$rootpath" ${VCF_FEATURE_ARGS:-}
