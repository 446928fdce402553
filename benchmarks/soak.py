"""Soak: the agent at full speed on the city stream for a fixed number of frames while the
broker is restarted several times; every output is counted by (frame, model) at a subscriber
with a persistent session.

    .venv/bin/mlink-train zoo --workload city --out build/soak
    .venv/bin/mlink-train links build/soak/recording.npz --out build/soak/bundle \
        --train-fraction 0.7
    .venv/bin/python benchmarks/soak.py --build build/soak [--frames 30000] [--restarts 4]

Writes benchmarks/results/soak.md (and prints it): frames, outputs published, received,
duplicates, lost (must be 0), the agent's peak RSS and the outbox's peak depth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil

from agent.config import load_config
from agent.outbox import Outbox
from agent.sources.city import start_index
from devtools.broker import LocalBroker

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "soak.md"
KEPT_SECTION = "\n## Hostile requests"  # written by tests/test_fuzz_broker.py's long run
DEVICE = "city-demo"


class Counter:
    """A QoS 1 subscriber with a persistent session: the broker (persistence on) keeps what
    arrives for it while it is away, across its own restarts."""

    def __init__(self, port: int) -> None:
        self.seen: dict[tuple[int, str], int] = {}
        # extra copies: marked `possible_duplicate` by the agent (resent from its outbox),
        # redelivered by the broker to this session (MQTT DUP flag), or neither
        self.extra = {"marked": 0, "redelivered": 0, "unmarked": 0}
        self.lock = threading.Lock()
        self.last = time.monotonic()
        ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="soak-counter", protocol=mqtt.MQTTv311,
                                  clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(f"mlink/{DEVICE}/models/+/output", 1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the counter could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage
                    ) -> None:
        output = json.loads(message.payload)
        key = (int(output["frame_id"]), str(output["model"]))
        with self.lock:
            if key in self.seen:  # an extra copy: who sent it again?
                kind = ("marked" if output.get("possible_duplicate") else
                        "redelivered" if message.dup else "unmarked")
                self.extra[kind] += 1
            self.seen[key] = self.seen.get(key, 0) + 1
            self.last = time.monotonic()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _config(build: Path, port: int, state: Path) -> Path:
    text = (build / "agent.toml").read_text()
    text = text.replace("port = 1883", f"port = {port}")
    text += f'\n[state]\ndir = "{state}"\n'
    path = build / "soak-agent.toml"
    path.write_text(text)
    return path


def _depth(path: Path) -> int:
    if not path.exists():
        return 0
    box = Outbox(path)
    try:
        return box.depth
    finally:
        box.close()


def soak(build: Path, frames: int, restarts: int, outage_s: float, every_s: float
         ) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="mlink-soak-"))
    store = work / "mosquitto-db"
    store.mkdir()
    state = work / "state"
    broker = LocalBroker(extra_config=f"persistence true\npersistence_location {store}/\n"
                                      "max_queued_messages 0\n").start()
    counter = Counter(broker.port)
    config = _config(build, broker.port, state)
    started = time.monotonic()
    agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config),
                              "--frames", str(frames)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    log_lines: list[str] = []
    reader = threading.Thread(target=lambda: log_lines.extend(agent.stdout or []), daemon=True)
    reader.start()
    process = psutil.Process(agent.pid)
    peak_rss, peak_depth, done_restarts = 0, 0, 0
    outbox = state / "outbox.sqlite"
    next_restart = time.monotonic() + 2 * every_s
    while agent.poll() is None:
        try:
            peak_rss = max(peak_rss, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        peak_depth = max(peak_depth, _depth(outbox))
        if done_restarts < restarts and time.monotonic() > next_restart:
            broker.stop()
            outage_end = time.monotonic() + outage_s
            while time.monotonic() < outage_end and agent.poll() is None:
                peak_depth = max(peak_depth, _depth(outbox))
                time.sleep(0.25)
            broker.start()
            done_restarts += 1
            next_restart = time.monotonic() + every_s
        time.sleep(0.25)
    elapsed = time.monotonic() - started
    reader.join(10)
    log = "".join(log_lines)
    match = re.search(r"done: (\d+) frames at ([\d.]+) fps", log)
    done_frames = int(match.group(1)) if match else 0
    fps = float(match.group(2)) if match else 0.0
    while time.monotonic() - counter.last < 5.0:  # let the broker hand over its queue
        time.sleep(0.5)
    counter.stop()
    broker.stop()
    with counter.lock:
        seen, extra = dict(counter.seen), dict(counter.extra)
    models = sorted({m for _, m in seen})
    source = load_config(config).source
    first = start_index(source.start_day, source.start_hour, source.cameras)
    expected = {(f, m) for f in range(first, first + done_frames) for m in models}
    return {
        "exit_code": agent.returncode, "frames": done_frames, "fps": fps,
        "elapsed_s": elapsed, "restarts": done_restarts, "outage_s": outage_s,
        "models": models, "expected": len(expected), "received": sum(seen.values()),
        "unique": len(set(seen) & expected), "duplicates": sum(n - 1 for n in seen.values()),
        "marked": extra["marked"], "redelivered": extra["redelivered"],
        "unmarked": extra["unmarked"],
        "lost": len(expected - set(seen)), "unexpected": len(set(seen) - expected),
        "peak_rss_mb": peak_rss / 2**20, "outbox_peak": peak_depth,
        "outbox_left": _depth(outbox), "log_tail": log[-2000:],
    }


def report(result: dict[str, object], frames: int, restarts: int, every_s: float) -> str:
    rows = [("frames processed", result["frames"]), ("agent fps (mean)", f"{result['fps']:.1f}"),
            ("wall time", f"{result['elapsed_s']:.0f} s"),
            ("broker restarts", f"{result['restarts']} (each {result['outage_s']:.0f} s down)"),
            ("models", ", ".join(result["models"])),  # type: ignore[arg-type]
            ("outputs expected (frames x models)", result["expected"]),
            ("outputs received", result["received"]), ("unique received", result["unique"]),
            ("duplicates", result["duplicates"]),
            ("- marked `possible_duplicate` by the agent", result["marked"]),
            ("- redelivered by the broker (MQTT DUP flag)", result["redelivered"]),
            ("- neither", result["unmarked"]), ("lost", result["lost"]),
            ("peak agent RSS", f"{result['peak_rss_mb']:.0f} MB"),
            ("outbox peak depth", result["outbox_peak"]),
            ("left in the outbox at exit", result["outbox_left"]),
            ("agent exit status", result["exit_code"])]
    lines = [
        "# Soak: the city stream at full speed, broker restarted",
        "",
        f"Regenerate: `.venv/bin/python benchmarks/soak.py --frames {frames} --restarts "
        f"{restarts} --every {every_s:g} --outage {result['outage_s']:g}` (build steps in the "
        "script's docstring). Measured "
        f"{datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()}, {os.cpu_count()} "
        "cores. The agent runs the city source with `fps = 0` (as fast as it goes) and the "
        "config `mlink-train zoo` wrote (no budget); Mosquitto is stopped and started again "
        "while it runs; a subscriber with a persistent QoS 1 session counts every output by "
        "(frame, model). Duplicates are allowed (delivery is at least once) and should carry "
        "a mark: the agent's `possible_duplicate` on what it resends from its outbox, or "
        "MQTT's DUP flag on what the broker redelivers; lost must be 0.",
        "",
        "| measure | value |",
        "| --- | --- |",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build", type=Path, default=Path("build/soak"))
    parser.add_argument("--frames", type=int, default=30000)
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--outage", type=float, default=3.0, help="seconds the broker is down")
    parser.add_argument("--every", type=float, default=5.0,
                        help="seconds of service between two outages")
    args = parser.parse_args()
    result = soak(args.build.resolve(), args.frames, args.restarts, args.outage, args.every)
    text = report(result, args.frames, args.restarts, args.every)
    old = RESULTS.read_text() if RESULTS.exists() else ""
    kept = old[old.index(KEPT_SECTION):] if KEPT_SECTION in old else ""  # another run's
    RESULTS.write_text(text.rstrip("\n") + "\n" + kept)
    print(text)
    if result["lost"] or result["exit_code"] != 0:
        print(result["log_tail"], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
