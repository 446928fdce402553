#!/usr/bin/env bash
# Set up, lint, check the import rules (import-linter contracts in pyproject.toml) and the
# types (mypy on agent/, links_tflite/ and fleet/), then the fallback runtime's tests in their own
# numpy<2 environment, then the whole test suite (it starts its own Mosquitto brokers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/mypy
bash scripts/test-legacy.sh
exec .venv/bin/python -m pytest --durations=15 "$@"
