"""The outbox sender's throughput, alone, against a real Mosquitto: outputs the size of the
city zoo's are published at a given rate for a few seconds into a Publisher with an outbox;
prints how many waited when publishing ended and how fast everything was acknowledged.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/outbox_sender.py [RATE] [SECONDS]

Wake-ups were counted by profiling `Publisher._send_loop` (cProfile) around this run (the
figures in docs/mqtt.md: 60,000 outputs at 20,000/s, 7,249 wake-ups before batching, 665
after; 6,400/s drained before, 9,600/s after, 2 cores shared with a TensorFlow job).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from agent.config import MqttConfig
from agent.transport import Publisher
from agent.transport.outbox import Outbox
from devtools.broker import LocalBroker


def main() -> int:
    rate = float(sys.argv[1]) if len(sys.argv) > 1 else 20000.0
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    broker = LocalBroker().start()
    work = Path(tempfile.mkdtemp(prefix="mlink-sender-"))
    publisher = Publisher(MqttConfig(port=broker.port), "bench", Outbox(work / "o.sqlite"))
    publisher.connect()
    payload: dict[str, object] = {
        "frame_id": 0, "model": "vehicles", "value": [0.1234567] * 8,
        "provenance": "executed", "latency_ms": 1.234, "sources": [], "bundle": "x" * 16}
    count = int(rate * seconds)
    start = time.perf_counter()
    peak = 0
    for i in range(count):
        payload["frame_id"] = i
        publisher.publish(f"mlink/bench/models/m{i % 5}/output", payload)
        if i % 500 == 0:
            peak = max(peak, publisher.pending)
            ahead = start + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
    offered_s = time.perf_counter() - start
    waiting = publisher.pending
    drained = publisher.drain(120)
    total_s = time.perf_counter() - start
    print(f"offered {count} at {count / offered_s:.0f}/s; waiting when publishing ended: "
          f"{waiting} (peak {peak}); all acknowledged after {total_s:.1f} s: "
          f"{count / total_s:.0f}/s (drained: {drained})")
    publisher.close(0)
    broker.stop()
    return 0 if drained else 1


if __name__ == "__main__":
    sys.exit(main())
