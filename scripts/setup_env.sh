#!/usr/bin/env bash
# Creates (or updates) the virtualenv .venv with vcf and its test dependencies.
# torch is pinned to a release that installs offline on the reference machines; any torch >= 2.1 works.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VCF_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q "torch==${VCF_TORCH:-2.14.1}" "torchvision==${VCF_TORCHVISION:-0.29.1}"
"$VENV/bin/python" -m pip install -q -e ".[test,ray]"
# Headless Chromium opens the HTML report in the tests; installed from the distribution when missing and possible.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
        >/dev/null 2>&1 || echo "note: could not install chromium; the browser tests of vcf report will be skipped" >&2
fi
echo "vcf installed in $VENV ($("$VENV/bin/vcf" --version))"
