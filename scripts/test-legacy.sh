#!/usr/bin/env bash
# The fallback runtime: links_tflite through tflite-runtime 2.14 with numpy<2, in its own
# environment (.venv-legacy), as on an older box. tflite-runtime has wheels for Python <= 3.11;
# elsewhere this says so and skips.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 9) <= sys.version_info[:2] <= (3, 11)))'; then
  echo "test-legacy: skipped, tflite-runtime 2.14 has no wheel for $("$PYTHON" --version)"
  exit 0
fi
VENV=.venv-legacy
if [ ! -x "$VENV/bin/python" ]; then "$PYTHON" -m venv "$VENV"; fi
stamp="$VENV/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "numpy<2" "tflite-runtime==2.14.*" "pytest>=8"
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  touch "$stamp"
fi
MLINK_EXPECT_RUNTIME=tflite_runtime exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/core/test_runtime_outputs.py tests/core/test_agreement.py tests/core/test_tasks.py "$@"
