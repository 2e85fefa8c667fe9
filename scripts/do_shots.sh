#!/usr/bin/env bash
# Usage: do_shots.sh collection [rootpath] [msb_dir]   (shot boundaries: TransNetV2, or a master shot reference)
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 collection [rootpath] [msb_dir]" >&2; exit 2; fi
collection=$1
rootpath=${2:-${VCF_ROOTPATH:-$HOME/VisualSearch}}
if [ $# -ge 3 ]; then
    ${VCF:-vcf} shots "$collection" --rootpath "$rootpath" --msb "$3"
else
    ${VCF:-vcf} shots "$collection" --rootpath "$rootpath"
fi
