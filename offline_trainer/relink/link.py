"""The worker's two MQTT v5 connections.

- Jobs: a persistent session (clean_start false, a session expiry, a fixed client id per
  worker) subscribed to `$share/<share>/<prefix>/fleet/relink`, so that the broker hands each
  job to one worker of the share and keeps a worker's jobs while it restarts. Jobs are
  acknowledged by hand (`ack`) once handled, and the broker is told to send one at a time
  (Receive Maximum 1) and nothing larger than a job may be (Maximum Packet Size).
- Uploads: a plain session that reads an upload's retained manifest and chunks, clears them,
  and publishes the results; it takes packets up to a chunk's bound.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.transport.topics import parse
from offline_trainer.relink.jobs import MAX_CHUNK_BYTES, MAX_JOB_BYTES, Job

log = logging.getLogger(__name__)

PACKET_SLACK = 4096  # topic, properties and headers around a payload


@dataclass(frozen=True)
class Delivery:
    """A job message as the broker delivered it; `ack` it once handled."""

    payload: bytes
    mid: int
    qos: int


def _properties(kind: int, **values: Any) -> Properties:
    properties = Properties(kind)
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


class TrainerLink:
    def __init__(self, host: str, port: int, prefix: str, share: str, client_id: str,
                 username: str | None = None, password: str | None = None,
                 session_expiry_s: int = 3600, timeout_s: float = 10.0) -> None:
        self.prefix, self.share = prefix, share
        self.job_topic = f"{prefix}/fleet/relink"
        self.results_topic = f"{prefix}/fleet/relink/results"
        self.ignored = 0  # messages that were neither jobs nor the upload being collected
        self._jobs: queue.Queue[Delivery] = queue.Queue()
        self._subscribed = threading.Event()
        self._unsubscribed = threading.Event()
        self._gathering: tuple[Job, Callable[[int | None, bytes], None]] | None = None
        self._taking = True  # False once the worker left the share (not rejoined on reconnect)
        self._lock = threading.Lock()
        self._jobs_client = self._client(client_id, username, password, manual_ack=True)
        self._jobs_client.on_connect = self._on_jobs_connect
        self._jobs_client.on_subscribe = lambda *_: self._subscribed.set()
        self._jobs_client.on_unsubscribe = lambda *_: self._unsubscribed.set()
        self._jobs_client.on_message = self._on_job
        self._data_client = self._client(f"{client_id}-data", username, password)
        self._data_client.on_message = self._on_data
        self._data_ready = threading.Event()
        self._data_client.on_connect = lambda *_: self._data_ready.set()
        self._jobs_client.connect(host, port, clean_start=False, properties=_properties(
            PacketTypes.CONNECT, SessionExpiryInterval=session_expiry_s, ReceiveMaximum=1,
            MaximumPacketSize=MAX_JOB_BYTES + PACKET_SLACK))
        self._data_client.connect(host, port, clean_start=True, properties=_properties(
            PacketTypes.CONNECT, MaximumPacketSize=MAX_CHUNK_BYTES + PACKET_SLACK))
        self._jobs_client.loop_start()
        self._data_client.loop_start()
        if not (self._subscribed.wait(timeout_s) and self._data_ready.wait(timeout_s)):
            self.close(end_session=False)
            raise ConnectionError(f"no answer from the broker at {host}:{port} within "
                                  f"{timeout_s:.0f} s")

    @staticmethod
    def _client(client_id: str, username: str | None, password: str | None,
                manual_ack: bool = False) -> mqtt.Client:
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                             client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
        if username is not None:
            client.username_pw_set(username, password)
        return client

    # -- jobs -------------------------------------------------------------------------------
    def _on_jobs_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any,
                         reason_code: Any, _properties: Any) -> None:
        if not reason_code.is_failure and self._taking:
            client.subscribe(f"$share/{self.share}/{self.job_topic}", qos=1)

    def _on_job(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic != self.job_topic:
            self.ignored += 1
            client.ack(message.mid, message.qos)
            return
        self._jobs.put(Delivery(bytes(message.payload), message.mid, message.qos))

    def next_job(self, timeout_s: float | None) -> Delivery | None:
        try:
            return self._jobs.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def ack(self, delivery: Delivery) -> None:
        self._jobs_client.ack(delivery.mid, delivery.qos)

    def stop_taking(self, timeout_s: float = 10.0) -> None:
        """Leave the share: no further job is sent to this worker."""
        self._taking = False
        self._unsubscribed.clear()
        self._jobs_client.unsubscribe(f"$share/{self.share}/{self.job_topic}")
        self._unsubscribed.wait(timeout_s)

    # -- uploads ----------------------------------------------------------------------------
    def _on_data(self, _client: mqtt.Client, _userdata: Any,
                 message: mqtt.MQTTMessage) -> None:
        with self._lock:
            gathering = self._gathering
        if gathering is None:
            return
        job, feed = gathering
        ref = parse(message.topic, self.prefix)  # the contract's one topic parser
        if ref is None or ref.device != job.device or ref.name != job.upload:
            self.ignored += 1
        elif ref.kind == "upload":
            feed(None, bytes(message.payload))
        elif ref.kind == "upload_chunk":
            feed(ref.part, bytes(message.payload))
        else:
            self.ignored += 1

    def gather(self, job: Job, feed: Callable[[int | None, bytes], None],
               done: Callable[[], bool], timeout_s: float) -> None:
        """Feed the upload's retained manifest (part None) and chunks (their index) to `feed`
        until `done()` or the timeout; topics are read by `agent.transport.topics.parse`."""
        base = job.manifest_topic(self.prefix)
        with self._lock:
            self._gathering = (job, feed)
        self._data_client.subscribe(f"{base}/#", qos=1)  # `#` matches the manifest too
        deadline = time.monotonic() + timeout_s
        try:
            while not done() and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            self._data_client.unsubscribe(f"{base}/#")
            with self._lock:
                self._gathering = None

    def clear(self, job: Job) -> None:
        """Zero-length retained messages on the upload's chunk topics and its manifest."""
        infos = [self._data_client.publish(job.chunk_topic(self.prefix, i), b"", qos=1,
                                           retain=True) for i in range(job.chunks)]
        infos.append(self._data_client.publish(job.manifest_topic(self.prefix), b"", qos=1,
                                               retain=True))
        for info in infos:
            info.wait_for_publish(10.0)

    def publish_result(self, result: dict[str, Any]) -> None:
        self._data_client.publish(self.results_topic, json.dumps(result), qos=1).wait_for_publish(
            10.0)

    def close(self, end_session: bool) -> None:
        """Disconnect; `end_session` drops the job session (no job waits for this worker)."""
        properties = _properties(PacketTypes.DISCONNECT, SessionExpiryInterval=0) \
            if end_session else None
        for client, props in ((self._jobs_client, properties), (self._data_client, None)):
            client.disconnect(properties=props)
            client.loop_stop()
