#!/usr/bin/env bash
# Sets up .venv and runs the test suite (slow tests excluded unless VCF_SLOW=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${VCF_VENV:-.venv}
"$VENV/bin/ruff" check vcf tests bench scripts
"$VENV/bin/ruff" format --check vcf tests bench scripts
if [ "${VCF_SLOW:-0}" = 1 ]; then marker=(); else marker=(-m "not slow"); fi
exec "$VENV/bin/python" -m pytest "${marker[@]}" "$@"
