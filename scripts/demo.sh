#!/usr/bin/env bash
# The main job: set up, then train the digits zoo and links, deploy the bundle to the agent,
# run it against a local Mosquitto and print what a subscriber received.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mlink-train demo --out build/demo "$@"
