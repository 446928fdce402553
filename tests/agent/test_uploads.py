"""Uploads of the profiling windows' rows (agent/uploads.py), in process: the order and bounds
of what goes to MQTT, the previous upload cleared (also after a restart), refusals that
publish and change nothing; the drift watch; and the agent keeping its windows' rows and
starting an upload when its live agreement falls (the digits models behind Python entry
points, the committed fixture's bundle)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tests.support.python_models as pm
from agent.config import load_config
from agent.errors import RequestError
from agent.scheduler import Agent
from agent.transport.topics import Topics, parse
from agent.uploads import DriftWatch, UploadContext, Uploader, parse_request
from agent.windowstore import WindowStore
from links_tflite.recording import Recording
from tests.agent.test_scheduler_failures import python_config
from tests.agent.test_windowstore import TASKS, frames
from tests.support.contract import validate

BUNDLE = {"name": "bundle", "version": "0123456789abcdef"}


class Delivered:
    def __init__(self, acked: bool) -> None:
        self.acked = acked

    def wait_for_publish(self, timeout: float | None = None) -> None:
        pass

    def is_published(self) -> bool:
        return self.acked


class Link:
    """The uploader's connection, in memory: every message handed over, in order."""

    def __init__(self) -> None:
        self.topics = Topics("mlink", "box")
        self.connected = True
        self.acked = True
        self.sent: list[tuple[str, bytes, bool]] = []

    def send(self, topic: str, data: bytes, retain: bool) -> Delivered:
        self.sent.append((topic, bytes(data), retain))
        return Delivered(self.acked)


def uploader(folder: Path, link: Link, rows: int = 0, chunk: int = 2048) -> Uploader:
    store = WindowStore(folder, 500, "replay", ("gate", "yard"))
    if rows:
        store.add(TASKS, frames(rows))
    return Uploader(store, link, chunk,
                    lambda: UploadContext(("site",), dict(BUNDLE), dict(TASKS)),
                    clock=lambda: 1764460800.25)


def received(link: Link, upload: str) -> bytes:
    """The chunks of `upload` joined in order, as a trainer would."""
    parts = {}
    for topic, data, _ in link.sent:
        ref = parse(topic, "mlink")
        if ref is not None and ref.kind == "upload_chunk" and ref.name == upload:
            parts[ref.part] = data
    return b"".join(parts[n] for n in range(len(parts)))


def test_an_upload_goes_out_as_chunks_then_its_manifest_then_the_job(tmp_path: Path) -> None:
    link = Link()
    up = uploader(tmp_path, link, rows=300)
    upload = up.prepare("request")
    up.publish(upload)
    result = upload.summary()
    upload_id, chunks = result["upload"], result["chunks"]
    assert result["rows"] == 300 and chunks >= 2 and upload_id.startswith("1764460800-")
    topics = [t for t, _, _ in link.sent]
    assert topics == [link.topics.upload_chunk(upload_id, n) for n in range(chunks)] + [
        link.topics.upload(upload_id), "mlink/fleet/relink"]
    assert [r for _, _, r in link.sent] == [True] * (chunks + 1) + [False]
    assert all(len(d) <= 2048 for _, d, _ in link.sent[:chunks])
    data = received(link, upload_id)
    assert len(data) == result["size"] and hashlib.sha256(data).hexdigest() == result["sha256"]
    path = tmp_path / "got.npz"
    path.write_bytes(data)
    recording = Recording.load(path)
    assert recording.tasks == TASKS and len(recording) == 300
    manifest = json.loads(link.sent[-2][1])
    validate("upload", manifest)
    assert json.loads(link.sent[-1][1]) == manifest
    assert manifest == {**result, "device": "box", "groups": ["site"], "bundle": BUNDLE,
                        "reason": "request", "ts": 1764460800.25}
    assert up.to_dict()["uploads"] == 1 and up.to_dict()["last_upload"]["id"] == upload_id


def test_a_new_upload_clears_the_previous_one_first_also_after_a_restart(tmp_path: Path
                                                                         ) -> None:
    link = Link()
    up = uploader(tmp_path, link, rows=300)
    first = up.prepare("request")
    up.publish(first)
    up.store.close()
    link.sent.clear()
    again = uploader(tmp_path, link)  # a restart: the rows and the last upload are kept
    second = again.prepare("drift")
    again.publish(second)
    clearing = [link.topics.upload(first.id)] + [
        link.topics.upload_chunk(first.id, n) for n in range(first.chunks)]
    assert link.sent[:len(clearing)] == [(t, b"", True) for t in clearing]
    assert received(link, second.id) == second.data  # the same rows, a new id
    assert again.to_dict()["uploads"] == 2


def test_refusals_publish_nothing_and_change_nothing(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    link = Link()
    empty = uploader(tmp_path / "empty", link)
    with pytest.raises(RequestError, match="no profiling window rows"):
        empty.prepare("request")
    up = uploader(tmp_path / "kept", link, rows=300)
    link.connected = False
    with pytest.raises(RequestError, match="not connected"):
        up.prepare("request")
    link.connected = True
    monkeypatch.setattr("agent.uploads.MAX_UPLOAD_CHUNKS", 1)
    with pytest.raises(RequestError, match=r"beyond .* or 1 chunks"):
        up.prepare("request")
    monkeypatch.undo()
    pending = up.prepare("request")
    with pytest.raises(RequestError, match="still being published"):
        up.prepare("request")  # one upload at a time
    assert link.sent == [] and not (tmp_path / "kept" / "uploads.json").exists()
    assert up.to_dict()["uploads_refused"] == 3 and empty.to_dict()["uploads_refused"] == 1
    up.start(pending)
    up.close()
    assert up.to_dict()["uploads"] == 1 and not up.to_dict()["uploading"]


def test_rows_of_other_tasks_are_refused_and_kept_until_the_next_window(tmp_path: Path
                                                                        ) -> None:
    link = Link()
    up = uploader(tmp_path, link, rows=100)
    up.context = lambda: UploadContext((), dict(BUNDLE), {"digit": TASKS["digit"]})
    with pytest.raises(RequestError, match="other tasks"):
        up.prepare("request")
    assert up.store.rows == 100 and link.sent == []  # a refusal changes nothing
    up.store.retask({"digit": TASKS["digit"]})  # what a bundle swap does once in force
    assert up.store.rows == 0


def test_a_drift_prepares_and_publishes_off_the_caller_s_thread(tmp_path: Path) -> None:
    link = Link()
    up = uploader(tmp_path, link, rows=100)
    link.connected = False
    assert not up.request("drift")  # the broker away: not started
    link.connected = True
    assert up.request("drift")
    up.close()
    assert up.to_dict()["uploads"] == 1 and json.loads(link.sent[-1][1])["reason"] == "drift"
    empty = uploader(tmp_path / "empty", link)
    assert empty.request("drift")  # started; refused while preparing, counted
    empty.close()
    assert empty.to_dict()["uploads_refused"] == 1 and not empty.to_dict()["uploading"]


def test_an_upload_the_broker_does_not_acknowledge_fails_counted(tmp_path: Path) -> None:
    link = Link()
    up = uploader(tmp_path, link, rows=300)
    link.acked = False
    up.start(up.prepare("request"))
    up.close()
    report = up.to_dict()
    assert report["uploads_failed"] == 1 and report["uploads"] == 0 and not report["uploading"]
    assert "no PUBACK" in report["last_upload_error"]
    sent = len(link.sent)  # chunks only (at most IN_FLIGHT unacknowledged): no manifest, no job
    assert all(parse(t, "mlink").kind == "upload_chunk" for t, _, _ in link.sent)
    link.acked = True  # the next upload clears what went out
    up.publish(up.prepare("request"))
    assert link.sent[sent][0] == link.topics.upload(report["last_upload"]["id"])


@pytest.mark.parametrize(("body", "reason"), [({}, "request"), ({"reason": "drift"}, "drift"),
                                              ({"reason": "x" * 64}, "x" * 64)])
def test_the_reason_is_a_short_printable_string(body: dict[str, Any], reason: str) -> None:
    assert parse_request(body) == reason


@pytest.mark.parametrize("reason", ["", "x" * 65, 3, None, "a\nb"])
def test_a_bad_reason_is_refused_by_its_path(reason: Any) -> None:
    with pytest.raises(RequestError) as refused:
        parse_request({"reason": reason})
    assert refused.value.errors[0][0] == "reason"


def test_the_upload_topics_are_parsed_back() -> None:
    topics = Topics("mlink", "box")
    for topic, expected in ((topics.upload("17-ab12"), ("upload", "box", "17-ab12", None)),
                            (topics.upload_chunk("17-ab12", 41),
                             ("upload_chunk", "box", "17-ab12", 41)),
                            (topics.relink, ("relink", "", "", None)),
                            ("mlink/fleet/relink/results", ("relink_results", "", "", None))):
        ref = parse(topic, "mlink")
        assert ref is not None and (ref.kind, ref.device, ref.name, ref.part) == expected, topic
    for bad in ("mlink/box/uploads/UP", "mlink/box/uploads/a/-1", "mlink/box/uploads/a/01",
                "mlink/box/uploads/a/4096", "mlink/box/uploads/a/1/2", "mlink/box/uploads"):
        assert parse(bad, "mlink") is None, bad


def test_the_drift_watch_uploads_past_the_margin_at_most_once_per_interval() -> None:
    now = [0.0]
    asked: list[str] = []
    accept = [False]

    def upload(reason: str) -> bool:
        asked.append(reason)
        return accept[0]

    watch = DriftWatch(0.1, 60.0, upload, clock=lambda: now[0])
    assert not watch.observe(None) and not watch.observe((0.9, 0.85))  # within the margin
    assert not watch.observe((0.9, 0.7))  # past it, but the upload could not start
    accept[0] = True
    assert watch.observe((0.9, 0.7)) and asked == ["drift", "drift"]
    now[0] = 30.0
    assert not watch.observe((0.9, 0.5)) and len(asked) == 2  # within the interval
    now[0] = 61.0
    assert watch.observe((0.9, 0.5))
    assert watch.to_dict() == {"margin": 0.1, "min_interval_s": 60.0, "checks": 5,
                               "drifts": 4, "uploads": 2, "last": {"bundle": 0.9, "live": 0.5}}


# -- the agent keeps its windows' rows, and uploads on a drift --------------------------------

@pytest.fixture()
def heavy_models(digits_fixture) -> Iterator[None]:
    """Models of 16 MB each: two fit 40 MB, three do not, so one is always predicted."""
    pm.reset()
    pm.MODEL_DIR = digits_fixture.root / "models"
    pm.BALLAST_MB = 16.0
    yield
    pm.BALLAST_MB = 0.0
    pm.reset()


def test_the_agent_keeps_its_windows_rows_and_uploads_on_a_drift(
        digits_fixture, heavy_models, tmp_path: Path) -> None:
    config = load_config(python_config(
        tmp_path, digits_fixture.root, policy="exact", budget="memory_mb = 40.0",
        profiling="period_frames = 0\nsample_frames = 12\nmin_samples = 8\nagreement_window = 12"))
    agent = Agent.from_config(config)
    store = WindowStore(tmp_path / "windows", 100, config.source_type, agent.source.cameras)
    asked: list[str] = []

    def upload(reason: str) -> bool:
        asked.append(reason)
        return True

    watch = DriftWatch(0.2, 3600.0, upload)
    agent.keep_windows(store, watch)
    frames = agent.start()
    for _ in range(3):
        agent.process(next(frames))  # no window: nothing kept
    assert store.rows == 0
    for window in range(2):
        if window == 1:
            (target,) = agent.selection.predicted
            pm.DRIFT[target] = True  # its outputs change: no link predicts them any more
        agent.request_reprofile()
        seen = [next(frames) for _ in range(12)]
        for frame in seen:
            agent.process(frame)
        assert asked == ([] if window == 0 else ["drift"]), watch.to_dict()
    recording = Recording.load(store.flush())  # type: ignore[arg-type]
    assert recording.tasks == {m: agent.bundle.models[m] for m in ("digit", "parity", "inkbox")}
    assert len(recording) == 24 and recording.cameras == ["0"]
    assert recording.ts[-12:].tolist() == [f.ts for f in seen]
    exact = pm.Digit()(seen[-1].modalities["image"])  # what the agent ran, drift included
    np.testing.assert_allclose(recording.outputs["digit"][-1], np.ravel(exact), rtol=1e-6)
    last = watch.to_dict()["last"]
    assert last["bundle"] - last["live"] > 0.2
    agent.close()
    assert (tmp_path / "windows" / "rows.npz").exists()


def test_the_status_says_what_is_kept_and_uploaded(tmp_path: Path) -> None:
    from agent.service import Service

    link = Link()
    up = uploader(tmp_path, link, rows=150)
    up.publish(up.prepare("request"))

    class Held:  # what fleet_status reads of the agent
        window = type("W", (), {"store": up.store})()
        drift = DriftWatch(0.1, 10.0, lambda reason: False)

    section = Service(Held(), uploader=up).fleet_status()  # type: ignore[arg-type]
    validate("status", {"state": "running", "selection": None, "budget": {}, "frames": 0,
                        "fps": 0.0, "rss_mb": None, "counters": {"executed": 0, "predicted": 0,
                                                                  "model_errors": 0,
                                                                  "published": 0},
                        "outbox_depth": 0, "fleet": section})
    windows = section["windows"]
    assert windows["rows"] == 150 and windows["uploads"] == 1 and windows["dropped"] == 0
    assert windows["last_upload"]["reason"] == "request"
    assert section["drift"]["margin"] == 0.1


@pytest.mark.parametrize("record", ['{"last": {"id": "../x/#", "chunks": 2}}', "[1]", "{",
                                    '{"last": {"id": "1-ab", "chunks": 5000}}'])
def test_a_record_that_is_not_an_upload_clears_nothing(tmp_path: Path, record: str) -> None:
    """The last upload's record names topics to clear: one that is not sound is not used."""
    (tmp_path / "uploads.json").write_text(record)
    link = Link()
    up = uploader(tmp_path, link, rows=100)
    upload = up.prepare("request")
    up.publish(upload)
    assert parse(link.sent[0][0], "mlink").name == upload.id  # type: ignore[union-attr]
