"""Faults between the agent and its broker, against a real agent process and a real Mosquitto:

1. PUBACKs lost: a relay in front of the broker (tests/support/faults.py) lets the agent's PUBLISHes
   through and swallows the broker's answers, then cuts the connection. The agent reconnects
   and sends what was in flight again, marked `possible_duplicate`.
2. Broker away: Mosquitto is stopped while the agent runs at full speed; thousands of frame
   messages (three outputs each) pile up in the outbox on disk, and the agent's RSS stays
   flat: nothing is queued in memory (paho is handed nothing while the connection is down).
3. Broker back, SIGTERM: the agent drains its outbox and exits 0.

A subscriber with a persistent session counts every frame message by its `seq` (the stream
loops, so a frame id comes back every pass): each arrives at least once, none is lost, and
every extra copy carries the mark.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psutil
import pytest
from jsonschema import ValidationError

from tests.support.agent_process import (
    DEVICE,
    AgentProcess,
    Subscriber,
    outbox_depth,
    retained,
    wait_until,
    write_config,
)
from tests.support.contract import validate
from tests.support.faults import LossyLink

MODELS = 3  # tests/conftest.py LINKED_MODELS: every frame message holds one output per model
WARM_UP_OUTPUTS = 5_000 // MODELS  # frame messages: SQLite's page cache (2 MB) and the
# allocator settle meanwhile
OUTAGE_OUTPUTS = 20_000 // MODELS  # frame messages of 20000 outputs, piled up on disk after the
# warm-up, at full speed (a few seconds)
# RSS may grow by at most this while the outputs above pile up. Measured on a 2-core box:
# +0.0 to +2.3 MB over 20000 outputs (allocator and SQLite page-cache noise), with RSS about
# 81-83 MB throughout. With the publisher broken to hand every output to paho while the
# connection is down, the same 20000 outputs added 51 MB (about 2.5 KB each, held in paho's
# queue), so 8 MB tells the two apart with room for noise on both sides.
RSS_GROWTH_BOUND_MB = 8.0


def _rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 1e6


def _copies(subscriber: Subscriber) -> dict[int, list[tuple[dict, bool]]]:
    """Per seq, every copy received and whether the broker itself redelivered it."""
    copies: dict[int, list[tuple[dict, bool]]] = {}
    for payload, redelivered in zip(subscriber.payloads, subscriber.redelivered, strict=True):
        copies.setdefault(payload["seq"], []).append((payload, redelivered))
    return copies


def test_outage_loses_nothing_marks_duplicates_and_keeps_memory_flat(
        digits_build, persistent_broker, tmp_path: Path) -> None:
    broker = persistent_broker
    state = tmp_path / "state"
    outbox = state / "outbox.sqlite"
    link = LossyLink(broker.port)
    subscriber = Subscriber(broker.port, f"mlink/{DEVICE}/frames/+", key="seq",
                            client_id="outage-counter")
    agent = AgentProcess(write_config(digits_build.root, link.port, state, fps=0))
    process = psutil.Process(agent.process.pid)
    try:
        # 1. PUBACKs lost, then the connection cut: what was in flight is sent again, marked
        subscriber.wait_for(50)
        link.mute()
        wait_until(lambda: link.swallowed > 0, 10, "the broker answered nothing")
        time.sleep(0.3)
        link.cut()
        wait_until(lambda: any(p.get("possible_duplicate") for p in list(subscriber.payloads)),
              30, "no output was sent again after the reconnect")

        # 2. the broker away: outputs pile up on disk, memory stays flat
        broker.stop()
        start = outbox_depth(outbox)
        wait_until(lambda: outbox_depth(outbox) >= start + WARM_UP_OUTPUTS, 60, "warm-up")
        before = _rss_mb(process)
        peak, target = before, start + WARM_UP_OUTPUTS + OUTAGE_OUTPUTS
        while outbox_depth(outbox) < target:
            assert agent.process.poll() is None, "the agent died during the outage"
            peak = max(peak, _rss_mb(process))
            time.sleep(0.2)
        peak = max(peak, _rss_mb(process))
        print(f"outage: RSS {before:.1f} MB -> peak {peak:.1f} MB "
              f"over {OUTAGE_OUTPUTS} outputs on disk")
        assert peak - before < RSS_GROWTH_BOUND_MB, (before, peak)

        # 3. the broker back, SIGTERM: everything drains, then a clean exit
        broker.start()
        agent.signal(signal.SIGTERM)
        code, log = agent.stop(timeout_s=90)
    finally:
        agent.stop()
        link.close()
    assert code == 0, log[-3000:]  # 0 only when the outbox was drained
    status = json.loads(retained(broker.port, "status"))
    assert status["state"] == "stopped" and outbox_depth(outbox) == 0
    assert status["outbox"]["dropped"] == 0 and status["counters"]["frame_errors"] == 0
    expected = status["frames"]  # one message per frame
    assert expected > WARM_UP_OUTPUTS + OUTAGE_OUTPUTS

    seen = subscriber.wait_for(expected, timeout_s=60)
    subscriber.stop()
    assert seen == set(range(1, expected + 1)), f"lost: {len(set(range(1, expected + 1)) - seen)}"
    copies = _copies(subscriber)
    sent_again = broker_redelivered = 0
    for seq, received in copies.items():
        assert len({p["frame_id"] for p, _ in received}) == 1, (seq, received)
        assert len(received[0][0]["outputs"]) == MODELS
        for payload, redelivered in received[1:]:
            if redelivered:  # the broker's own resend to this subscriber, after its restart
                broker_redelivered += 1
            else:  # the agent sent it again: it must say so
                assert payload.get("possible_duplicate") is True, (seq, received)
                sent_again += 1
    print(f"outputs {expected}: sent again {sent_again} (all marked), "
          f"redelivered by the broker {broker_redelivered}")
    assert sent_again > 0, "the lost PUBACKs should have made the agent send outputs again"
    marked = next(p for received in copies.values() for p, _ in received
                  if p.get("possible_duplicate"))
    validate("frame", marked)
    with pytest.raises(ValidationError):
        validate("frame", {**marked, "possible_duplicate": False})  # only ever true
