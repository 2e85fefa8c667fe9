#!/usr/bin/env bash
# Usage: do_extract_frames.sh collection [rootpath]   (the original toolbox's script of this name)
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 collection [rootpath]" >&2; exit 2; fi
collection=$1
rootpath=${2:-${VCF_ROOTPATH:-$HOME/VisualSearch}}
${VCF:-vcf} frames "$collection" --rootpath "$rootpath"
