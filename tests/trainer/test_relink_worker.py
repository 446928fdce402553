"""The relinking worker's intake (offline_trainer.relink), without TensorFlow: jobs and
uploads bounded and checked before anything is kept, a refused job changes nothing, and two
workers on one share each get distinct jobs from a real Mosquitto. The relink itself (TF
training, the rollout to real agents) is tests/e2e/test_relink.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from devtools.broker import LocalBroker
from fleet.link import FleetLink
from fleet.rollout import Policy
from links_tflite.bundle import load_bundle
from links_tflite.recording import Recording
from offline_trainer.links import LinkTraining
from offline_trainer.relink.collector import UploadAssembly, UploadCollector
from offline_trainer.relink.jobs import MAX_CHUNK_BYTES, JobRefused, parse_job
from offline_trainer.relink.link import TrainerLink
from offline_trainer.relink.relinker import Relinker
from offline_trainer.relink.rollout import GroupRollout
from offline_trainer.relink.store import WorkDir, merge, time_split
from offline_trainer.relink.worker import Worker
from tests.support.contract import validate
from tests.support.uploads import (
    listen_to_results,
    manifest,
    publish_upload,
    retained,
    upload_bytes,
)

CHUNK = 4096


def recording(bundle: Path, rows: int, seed: int) -> Recording:
    tasks = load_bundle(bundle).models
    rng = np.random.default_rng(seed)
    return Recording(workload="digits", frame_ids=np.arange(rows, dtype=np.int64),
                     ts=np.arange(rows, dtype=np.float64) + 10.0 * seed, tasks=dict(tasks),
                     outputs={m: rng.random((rows, s.output_width)).astype(np.float32)
                              for m, s in tasks.items()},
                     camera_ids=np.zeros(rows, np.int64), cameras=["cam"])


def test_a_job_is_bounded_before_it_is_read() -> None:
    good = {"upload": "1700000000-ab12", "device": "box-1", "groups": ["site"], "rows": 10,
            "chunks": 1, "size": 100, "sha256": "0" * 64, "reason": "drift", "ts": 1.7e9,
            "bundle": {"name": "b", "version": "3"}, "later": "ignored"}
    job = parse_job(json.dumps(good).encode())
    assert (job.upload, job.groups, job.size) == ("1700000000-ab12", ("site",), 100)
    for change, why in (({"upload": "../x"}, "upload"), ({"device": "a/b"}, "device"),
                        ({"device": "+"}, "device"), ({"groups": "site"}, "groups"),
                        ({"size": 65 * 2**20}, "size"), ({"chunks": 5000}, "chunks"),
                        ({"size": 3 * 2**20, "chunks": 2}, "cannot come in 2 chunks"),
                        ({"sha256": "x" * 64}, "sha256"), ({"rows": True}, "rows"),
                        ({"reason": "r" * 65}, "reason"), ({"ts": None}, "ts")):
        with pytest.raises(JobRefused, match=why):
            parse_job(json.dumps({**good, **change}).encode())
    for payload, why in ((b'{"ts": NaN}', "finite"), (b"[" * 10_000, "JSON|deep"),
                         (b"\xff", "not JSON"), (b"[1]", "object"),
                         (b'{"a": "' + b"x" * 20_000 + b'"}', "larger than")):
        with pytest.raises(JobRefused, match=why):
            parse_job(payload)


def test_an_upload_is_checked_as_it_comes_and_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    body = manifest(data, "box-1", ["site"], 5, CHUNK, upload="u-1")
    validate("upload", body)  # what a box publishes (agent/schemas/upload.json)
    job = parse_job(json.dumps(body).encode())
    parts = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]

    def fed(*messages: tuple[int | None, bytes]) -> UploadAssembly:
        assembly = UploadAssembly(job)
        for suffix, payload in messages:
            assembly.feed(suffix, payload)
        return assembly

    whole = fed((None, json.dumps(body).encode()), *enumerate(parts), (0, parts[0]))
    assert whole.done and whole.data() == data and whole.ignored == 1
    for messages, why in (
            ([(None, json.dumps({**body, "size": 1}).encode())], "differs from the job"),
            ([(None, b"")], "cleared"),
            ([(7, b"x")], "the job has 3 chunks"),
            ([(0, b"x" * (MAX_CHUNK_BYTES + 1))], "larger than"),
            ([(0, parts[0]), (1, parts[0] * 3)], "more than the job's"),
            ([(None, json.dumps(body).encode()), (0, parts[0]), (1, parts[1])],
             "chunks missing: \\[2\\]"),
            ([(None, json.dumps(body).encode()), (0, parts[0]), (1, parts[1]),
              (2, parts[2][::-1])], "sha256 mismatch")):
        with pytest.raises(JobRefused, match=why):
            fed(*messages).data()


def test_the_workdir_admits_only_recordings_of_the_bundle(digits_fixture, tmp_path: Path
                                                          ) -> None:
    bundle = digits_fixture.bundle
    workdir = WorkDir(tmp_path / "work", bundle)
    data = upload_bytes(recording(bundle, 30, 1), tmp_path)
    job = parse_job(json.dumps(manifest(data, "box-1", ["site"], 30, CHUNK)).encode())
    other = recording(bundle, 30, 2).select_models(["digit", "parity"])
    for payload, body, why in ((b"not an npz", job, "not a readable"),
                               (data, parse_job(json.dumps({**job.to_dict(), "rows": 31})
                                                .encode()), "holds 30 rows"),
                               (upload_bytes(other, tmp_path), job, "lacks the bundle's")):
        with pytest.raises(JobRefused, match=why):
            workdir.admit(body, payload, bundle)
    assert not any((tmp_path / "work" / "recordings").rglob("*.*"))  # nothing kept
    path = workdir.admit(job, data, bundle)
    assert Recording.load(path).ts.tolist() == recording(bundle, 30, 1).ts.tolist()
    assert [s.job.upload for s in workdir.recordings("site")] == [job.upload]
    assert workdir.recordings("north") == []


def test_rows_are_merged_in_time_and_the_newest_held_out(digits_fixture) -> None:
    bundle = digits_fixture.bundle
    a, b = recording(bundle, 20, 0), recording(bundle, 20, 1)  # ts 0..19 and 10..29
    merged = merge([("box-a", a), ("box-b", b)], list(a.tasks))
    assert len(merged) == 40 and np.all(np.diff(merged.ts) >= 0)
    assert merged.cameras == ["box-a/cam", "box-b/cam"]
    assert sorted(merged.camera_ids.tolist()) == [0] * 20 + [1] * 20
    train, held = time_split(40, 0.25)
    assert held.tolist() == list(range(30, 40)) and merged.ts[train].max() <= merged.ts[held].min()


@pytest.mark.broker
def test_two_workers_on_one_share_take_distinct_jobs(digits_fixture, tmp_path: Path) -> None:
    """Two workers, one share, one shared workdir: every job goes to one worker; a good
    upload is kept and cleared on the broker, a tampered one refused and left as it was, a
    job of another group ignored; every job ends in a published result."""
    bundle = digits_fixture.bundle
    with LocalBroker() as broker:
        results: list[dict] = []
        listener = listen_to_results(broker.port, results)
        workdir = WorkDir(tmp_path / "work", bundle)
        workers, links = [], []
        for name in ("trainer-a", "trainer-b"):
            link = TrainerLink("127.0.0.1", broker.port, "mlink", "trainers", name)
            rollout = GroupRollout(lambda: FleetLink("127.0.0.1", broker.port), Policy())
            links.append(link)
            workers.append(Worker(name, "site", link, UploadCollector(link, workdir, 5.0),
                                  Relinker(LinkTraining(), min_rows=10_000), rollout, workdir))
        try:
            good = []
            for i in range(4):
                data = upload_bytes(recording(bundle, 40, i), tmp_path)
                body = manifest(data, f"box-{i}", ["site"], 40, CHUNK, upload=f"u-{i}")
                publish_upload(broker.port, data, body, CHUNK)
                good.append(body)
            data = upload_bytes(recording(bundle, 40, 9), tmp_path)
            tampered = manifest(data, "box-9", ["site"], 40, CHUNK, upload="u-9")
            parts = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
            parts[-1] = parts[-1][::-1]
            publish_upload(broker.port, data, tampered, CHUNK, chunks=parts)
            north = manifest(data, "box-8", ["north"], 40, CHUNK, upload="u-8")
            publish_upload(broker.port, data, north, CHUNK)
            threads = [threading.Thread(target=w.run, kwargs={"max_wait_s": 4.0})
                       for w in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        finally:
            for link in links:
                link.close(end_session=True)
        listener.disconnect()
        listener.loop_stop()

        by_job = {r["job"]: r for r in results}
        assert len(results) == 6 == len(by_job), results  # each job handled once
        assert {r["worker"] for r in results} == {"trainer-a", "trainer-b"}
        assert all(w.counts["jobs"] >= 1 for w in workers), [w.counts for w in workers]
        for body in good:
            assert by_job[body["upload"]]["decision"] == "wait"
            assert "needed to relink" in by_job[body["upload"]]["why"]
        assert by_job["u-9"]["decision"] == "refused" and "sha256" in by_job["u-9"]["why"]
        assert by_job["u-8"]["decision"] == "ignored"
        stored = {s.job.upload: s for s in workdir.recordings("site")}
        assert sorted(stored) == ["u-0", "u-1", "u-2", "u-3"]
        assert hashlib.sha256(stored["u-2"].path.read_bytes()).hexdigest() == \
            good[2]["sha256"]
        left = retained(broker.port, "mlink/+/uploads/#")
        assert {t.split("/")[1] for t in left} == {"box-8", "box-9"}  # refused, ignored: kept
        assert len([t for t in left if t.startswith("mlink/box-9/")]) == 1 + tampered["chunks"]


def test_serve_refuses_bad_options_before_it_connects(digits_fixture, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    from devtools.broker import free_port
    from offline_trainer.cli import _parser
    from offline_trainer.relink.serve import serve

    def run(*extra: str) -> int:
        args = _parser().parse_args([
            "serve", "--broker", f"127.0.0.1:{free_port()}", "--group", "site",
            "--bundle", str(digits_fixture.bundle), "--workdir", str(tmp_path / "w"), *extra])
        return serve(args)

    for extra, why in ((("--holdout", "1.5"), "--holdout must be in"),
                       (("--min-rows", "5"), "--min-rows must be in"),
                       (("--margin", "-0.1"), "--margin must be in"),
                       ((), "no answer from the broker|refused")):  # nothing listens there
        with pytest.raises(ValueError, match=why) if extra else contextlib.nullcontext():
            assert run(*extra) == 2
        if not extra:
            assert re.search(why, capsys.readouterr().err)
    args = _parser().parse_args(["serve", "--broker", "127.0.0.1:1", "--group", "site",
                                 "--bundle", str(tmp_path), "--workdir", str(tmp_path / "w")])
    assert serve(args) == 2 and "--bundle" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before anything was made
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--broker", "nohost", "--group", "g", "--bundle", "b",
                              "--workdir", "w"])


@pytest.mark.broker
def test_a_job_not_acknowledged_comes_back_to_its_worker() -> None:
    """A worker that stops before acknowledging a job (it died while collecting) gets it
    again from its session when it comes back; one acknowledged is gone for good."""
    with LocalBroker() as broker:
        def connect() -> TrainerLink:
            return TrainerLink("127.0.0.1", broker.port, "mlink", "trainers", "trainer-a")

        link = connect()
        publisher = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                protocol=mqtt.MQTTv5)
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        publisher.publish("mlink/fleet/relink", b'{"job": 1}', qos=1).wait_for_publish(5)
        publisher.disconnect()
        publisher.loop_stop()
        first = link.next_job(5.0)
        assert first is not None and first.payload == b'{"job": 1}'
        link.close(end_session=False)  # not acknowledged
        link = connect()
        again = link.next_job(5.0)
        assert again is not None and again.payload == first.payload
        link.ack(again)
        link.close(end_session=False)
        link = connect()
        try:
            assert link.next_job(1.0) is None
        finally:
            link.close(end_session=True)
