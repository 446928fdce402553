#!/usr/bin/env bash
# Installs the agent as a systemd service, as README.md "Running as a service" describes:
#   sudo scripts/install-service.sh --from build/digits            # a zoo's models + bundle
# 1. a virtual environment in PREFIX with the device side of MLink Edge (no TensorFlow);
# 2. ETC (/etc/mlink): the config (systemd/agent.example.toml unless --config; an existing
#    one is kept), the bundle, models and stream found in --from, an empty password file;
#    folders 0755 and files 0644 so that the unit's throw-away user can read them;
# 3. the unit in UNIT_DIR with ExecStart and the paths rewritten to PREFIX and ETC, checked
#    with `systemd-analyze verify`; the config checked with `mlink-agent validate-config`;
# 4. with systemd running and without --no-start: daemon-reload, enable --now.
# Every step is idempotent; the test suite runs this script as written (tests/e2e/test_install.py).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

PREFIX=/opt/mlink-edge
ETC=/etc/mlink
UNIT_DIR=/etc/systemd/system
FROM=""
CONFIG=""
START=1
PYTHON="${PYTHON:-python3}"

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --prefix DIR (default $PREFIX) --etc DIR ($ETC) --unit-dir DIR ($UNIT_DIR)"
  echo "         --from DIR (copy bundle/, models/, stream.npz from it) --config FILE --no-start"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --etc) ETC="$2"; shift 2 ;;
    --unit-dir) UNIT_DIR="$2"; shift 2 ;;
    --from) FROM="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-service: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

say() { echo "install-service: $*" >&2; }

# 1. The device side in its own environment.
if [ ! -x "$PREFIX/.venv/bin/python" ]; then
  say "creating $PREFIX/.venv"
  install -d -m 755 "$PREFIX"
  "$PYTHON" -m venv "$PREFIX/.venv"
fi
say "installing mlink-edge (device side) into $PREFIX/.venv"
"$PREFIX/.venv/bin/python" -m pip install -q --disable-pip-version-check "$repo"
chmod -R a+rX "$PREFIX"

# 2. Config and data, readable by the service's user, never overwriting an edited config.
install -d -m 755 "$ETC"
if [ ! -f "$ETC/agent.toml" ]; then
  install -m 644 "${CONFIG:-$repo/systemd/agent.example.toml}" "$ETC/agent.toml"
  say "wrote $ETC/agent.toml (edit it: broker, budget, models)"
fi
if [ -n "$FROM" ]; then
  for item in bundle models stream.npz; do
    if [ -e "$FROM/$item" ]; then
      rm -rf "${ETC:?}/$item"
      cp -r "$FROM/$item" "$ETC/$item"
    fi
  done
fi
[ -f "$ETC/mqtt-password" ] || install -m 600 /dev/null "$ETC/mqtt-password"
chmod -R a+rX "$ETC"
chmod 600 "$ETC/mqtt-password"  # read through LoadCredential=, by the service manager

# 3. The unit, pointed at PREFIX and ETC; both files checked.
install -d -m 755 "$UNIT_DIR"
sed -e "s#/opt/mlink-edge#$PREFIX#g" -e "s#/etc/mlink#$ETC#g" \
  "$repo/systemd/mlink-agent.service" > "$UNIT_DIR/mlink-agent.service"
chmod 644 "$UNIT_DIR/mlink-agent.service"
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify "$UNIT_DIR/mlink-agent.service"
fi
"$PREFIX/.venv/bin/mlink-agent" validate-config "$ETC/agent.toml"

# 4. Start it where systemd runs the machine.
if [ "$START" -eq 1 ]; then
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now mlink-agent
    say "started: systemctl status mlink-agent"
  else
    say "systemd is not running here: start the agent with $UNIT_DIR/mlink-agent.service elsewhere"
  fi
fi
