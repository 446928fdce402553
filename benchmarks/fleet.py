"""Control-plane load: a staged rollout to 1,000 simulated boxes behind a bridge.

    .venv/bin/python benchmarks/fleet.py            # -> benchmarks/results/fleet.md

A site Mosquitto bridged to a central one (`topic mlink/# both 1`); `--boxes` simulated boxes
(devtools/simbox.py: each its own MQTT client keeping the agent's control contract) in
`--processes` processes on the site broker; `mlink-fleet`'s `Rollout` on the central broker
applies one config change to all of them: a 1% canary, then `--waves` waves, each watched
for `--window` seconds. Measured: the time until every box has acknowledged (from the first
request), the share acknowledged, and the whole rollout's time.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.broker import LocalBroker
from fleet.link import FleetLink
from fleet.rollout import Policy, Rollout

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "benchmarks" / "results" / "fleet.md"
HEADER = ("| rollout | ok | acked | healthy | first request to last ack | whole rollout "
          "| ack latency p50 / max | windows |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
BROKER = "max_queued_messages 100000\nmax_inflight_messages 1000\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--boxes", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    devices = [f"box-{i:04d}" for i in range(args.boxes)]
    with LocalBroker(extra_config=BROKER) as central:
        bridge = (f"connection central\naddress 127.0.0.1:{central.port}\n"
                  "topic mlink/# both 1\ncleansession true\nnotifications false\n"
                  f"bridge_protocol_version mqttv311\n{BROKER}")
        with LocalBroker(extra_config=bridge) as site:
            share = -(-args.boxes // args.processes)
            sims = [subprocess.Popen([sys.executable, "-m", "devtools.simbox", "--port",
                                      str(site.port), "--first", str(first), "--count",
                                      str(min(share, args.boxes - first))], cwd=ROOT)
                    for first in range(0, args.boxes, share)]
            link = FleetLink("127.0.0.1", central.port)
            try:
                started = time.monotonic()
                while True:
                    boxes = link.boxes()
                    ready = sum(1 for d in devices if d in boxes
                                and boxes[d].availability == "online"
                                and boxes[d].version is not None and boxes[d].statuses)
                    if ready == len(devices):
                        break
                    if time.monotonic() - started > 120:
                        raise SystemExit(f"only {ready} of {len(devices)} boxes came up")
                    time.sleep(0.2)
                up_s = time.monotonic() - started
                sent: dict[str, float] = {}
                acked: dict[str, float] = {}
                original_request, original_response = link.request, link.response

                def timed_request(device: str, suffix: str, payload: dict) -> str:
                    sent[device] = time.monotonic()
                    return original_request(device, suffix, payload)

                def timed_response(device: str, transaction: str) -> dict | None:
                    response = original_response(device, transaction)
                    if response is not None and device not in acked:
                        acked[device] = time.monotonic()
                    return response

                link.request = timed_request  # type: ignore[method-assign]
                link.response = timed_response  # type: ignore[method-assign]
                runs = []
                for name, change, canary, waves in (
                        ("staged: 1% canary, then waves", {"publish": {"decoded": False}},
                         0.01, args.waves),
                        ("all at once: one wave", {"publish": {"decoded": True}}, 1.0, 1)):
                    sent.clear()
                    acked.clear()
                    policy = Policy(canary_share=canary, waves=waves, response_timeout_s=60,
                                    window_s=args.window)
                    began = time.monotonic()
                    outcome = Rollout(link, change, policy).run(devices)
                    total_s = time.monotonic() - began
                    healthy = sum(b.result == "applied" for b in outcome.boxes)
                    latency = sorted(acked[d] - sent[d] for d in acked)
                    runs.append((name, outcome.ok, healthy, len(outcome.boxes), len(acked),
                                 max(acked.values()) - min(sent.values()), total_s,
                                 latency[len(latency) // 2], latency[-1],
                                 1 + (waves if canary < 1.0 else 0)))
            finally:
                link.close()
                for sim in sims:
                    sim.send_signal(signal.SIGINT)
                for sim in sims:
                    try:
                        sim.wait(20)
                    except subprocess.TimeoutExpired:
                        sim.kill()
    rows = "\n".join(
        f"| {name} | {ok} | {acked_count} of {count} | {healthy} | {first_to_last:.1f} s | "
        f"{total:.1f} s | {median * 1e3:.0f} ms / {worst * 1e3:.0f} ms | {stages} x "
        f"{args.window:.1f} s |"
        for name, ok, healthy, count, acked_count, first_to_last, total, median, worst, stages
        in runs)
    text = f"""# Fleet: rollouts to {args.boxes} simulated boxes behind a bridge

Regenerate: `.venv/bin/python benchmarks/fleet.py` (`--boxes`, `--processes`, `--waves`,
`--window`). Machine: {platform.machine()}, {os.cpu_count()} cores, Python
{platform.python_version()}; Mosquitto 2.0 from Debian, a site broker bridged to a central
one; the boxes are devtools/simbox.py clients (each its own MQTT session) in
{args.processes} processes on the site broker, the tool (`fleet.rollout.Rollout`) on the
central one. Boxes online with their retained config/state and status {up_s:.1f} s after the
tool connected. Target (issue 19): all 1,000 acknowledged within 30 s on this 2-core box.

{HEADER}
{rows}

A staged rollout waits one health window per stage by design (each wave is watched before the
next is sent); "all at once" is the control plane's own speed: every request, its
acknowledgement through the bridge, and one window.
"""
    args.out.write_text(text)
    print(text)
    return 0 if all(run[1] and run[2] == args.boxes for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
