#!/usr/bin/env bash
# Sets up everything MLink Edge needs on a Debian/Ubuntu machine, idempotently:
# the Python virtual environment (.venv, with the trainer, dev and video extras), the Mosquitto
# broker and clients from Debian's packages `mosquitto` and `mosquitto-clients`, and for the
# video tests ffmpeg (makes the clips) and GStreamer's RTSP server (serves one live). System
# packages are installed when running as root (or with passwordless sudo); otherwise it says
# exactly what to run.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-trainer,dev,video}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@";
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo "$@";
  else return 1; fi
}

apt_install() {
  echo "setup: installing Debian packages: $*" >&2
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
     || ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; then
    echo "setup: could not install '$*'. Run: sudo apt-get install -y $*" >&2
    exit 1
  fi
}

if ! command -v "$PYTHON" >/dev/null 2>&1; then apt_install python3 python3-venv; fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "setup: Python >= 3.10 is required ($("$PYTHON" --version 2>&1) found)" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"; apt_install python3-venv; "$PYTHON" -m venv "$VENV"
  fi
fi

stamp="$VENV/.installed-$EXTRAS"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  touch "$stamp"
fi

# The broker, and its command-line clients (the tests drive the agent with them too).
missing=()
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  missing+=(mosquitto)
fi
if ! command -v mosquitto_sub >/dev/null 2>&1 || ! command -v mosquitto_pub >/dev/null 2>&1; then
  missing+=(mosquitto-clients)
fi
# The video tests: ffmpeg makes their H.264 clips; GStreamer's RTSP server, driven by Debian's
# Python through python3-gi, serves one as a live stream (tests/support/rtsp_server.py).
if ! command -v ffmpeg >/dev/null 2>&1; then
  missing+=(ffmpeg)
fi
if ! /usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer; Gst.init(None)
assert all(Gst.ElementFactory.find(e) for e in ("qtdemux", "h264parse", "rtph264pay"))' \
     >/dev/null 2>&1; then
  missing+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good
            gstreamer1.0-plugins-bad)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi
