#!/usr/bin/env bash
# Concatenates features joined by '+' into FeatureData/<featA+featB> (same arguments as the original script).
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "Usage: $0 collection featA+featB [rootpath]" >&2
    exit 1
fi

collection=$1
features=$2
args=()
if [ $# -ge 3 ]; then
    args+=(--rootpath "$3")
fi

# VCF may hold a whole command (e.g. "python -m vcf"), so it is left unquoted on purpose.
# shellcheck disable=SC2086
${VCF:-vcf} concat "$collection" "$features" ${args[@]+"${args[@]}"}
