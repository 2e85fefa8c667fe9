#!/usr/bin/env bash
# Creates (or updates) the virtualenv .venv with vcf, and the extras named in VCF_EXTRAS (default: test,ray;
# empty for the main job alone, as the demo does). Needs the package registry (PyPI and the PyTorch index
# pip is configured with) unless the wheels are already in pip's cache.
# torch is pinned to a release that installs on the reference machines; any torch >= 2.1 works.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VCF_VENV:-.venv}
EXTRAS=${VCF_EXTRAS-test,ray}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# PYTHONWARNINGS: setuptools warns about editable installs in general; the set-up prints only what it does.
pip_install() { PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
pip_install --upgrade pip >/dev/null 2>&1 || true
torch_version=${VCF_TORCH:-2.14.1}
torchvision_version=${VCF_TORCHVISION:-0.29.1}
echo "Installing torch $torch_version and torchvision $torchvision_version into $VENV"
pip_install "torch==$torch_version" "torchvision==$torchvision_version"
if [ -n "$EXTRAS" ]; then target=".[$EXTRAS]"; else target="."; fi
echo "Installing vcf${EXTRAS:+ with $EXTRAS} and its dependencies"
pip_install -e "$target"
# Headless Chromium opens the HTML report in the tests: installed from the distribution when missing and possible.
if [[ ",$EXTRAS," == *",test,"* ]] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
    echo "Installing chromium (Debian package) for the report's browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
        >/dev/null 2>&1 || echo "note: could not install chromium; the browser tests of vcf report will be skipped" >&2
fi
echo "vcf installed in $VENV ($("$VENV/bin/vcf" --version))"
