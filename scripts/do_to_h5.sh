#!/usr/bin/env bash
# Writes a feature to HDF5, by default <collection>/H5Data/<feature>.h5.
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 4 ]; then
    echo "Usage: $0 collection feature [output.h5] [rootpath]" >&2
    exit 1
fi

collection=$1
feature=$2
args=()
if [ $# -ge 3 ] && [ -n "$3" ]; then
    args+=(--output "$3")
fi
if [ $# -ge 4 ]; then
    args+=(--rootpath "$4")
fi

# VCF may hold a whole command (e.g. "python -m vcf"), so it is left unquoted on purpose.
# shellcheck disable=SC2086
${VCF:-vcf} to-h5 "$collection" "$feature" ${args[@]+"${args[@]}"}
