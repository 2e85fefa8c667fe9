#!/usr/bin/env bash
# One .npy (T x D) per video of a video_path,feature_path CSV, like the older CSV extractor.
# The older tool wrote L2-normalised float16; vcf writes float32 unless told:
#   do_features_csv.sh input.csv 2d --l2-normalize --dtype float16
#   do_features_csv.sh input.csv 3d --model resnext101_3d_kinetics_kmean --weights resnext101.pth --clip-fps 24
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "Usage: $0 input.csv [2d|3d] [vcf features options...]" >&2
    exit 1
fi

csv=$1
type=${2:-2d}
shift $(( $# >= 2 ? 2 : 1 ))

# VCF may hold a whole command (e.g. "python -m vcf"), so it is left unquoted on purpose.
# shellcheck disable=SC2086
${VCF:-vcf} features --csv "$csv" --type "$type" "$@"
