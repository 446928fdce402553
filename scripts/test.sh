#!/usr/bin/env bash
# Set up, lint, then run the whole test suite (it starts its own Mosquitto brokers), then the
# fallback runtime's tests in their own numpy<2 environment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
bash scripts/test-legacy.sh
exec .venv/bin/python -m pytest "$@"
