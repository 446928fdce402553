"""Closed-loop relinking end to end (issue 19 item 3; docs/design.md "Relinking"): the city
bundle (the `city_build` fixture's, which the agent's default stream, the morning rush, runs
on), two real agents in the group `site` whose streams run the evening rush, their window
recordings uploaded through the upload contract, and two `mlink-train serve --once` workers
on one shared subscription. One job goes to each worker; the group's relink (on the older
evening rows) beats the bundle in force on the newest evening rows, held out, and the staged
rollout brings it to every box.

The drift test's uploads are published the way a box publishes them (tests/support/uploads.py,
checked against agent/schemas/upload.json): the models' exact outputs on frames sampled over
an hour of each box's evening stream, what a box's windows keep after an hour of running;
the agents themselves would take minutes to keep rows that span an hour. The box's own
`cmd/upload` reaching a worker is the second test (no TensorFlow)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from devtools.broker import LocalBroker
from fleet.link import FleetLink
from links_tflite.bundle import load_bundle
from offline_trainer.cli import main as train_main
from offline_trainer.relink.link import TrainerLink
from tests.support.agent_process import AgentProcess, wait_until
from tests.support.contract import validate
from tests.support.uploads import (
    listen_to_results,
    manifest,
    publish_upload,
    retained,
    upload_bytes,
    window_rows,
)

pytestmark = pytest.mark.broker

BOXES = ("box-1", "box-2")
MODELS = ("persons", "traffic", "vehicles")
EVENING = 17.0
ROWS, STRIDE = 800, 18  # per box: a frame of each camera every 4.5 s, 17:00 to 18:00
CHUNK = 128 * 1024
WORKERS = ("trainer-a", "trainer-b")
# The rollout's health window sees one periodic status after the change's own: the boxes
# publish theirs every STATUS_S (`[mqtt] status_every_s`; 5 s by default), the window is 2x.
STATUS_S = 1


def agent_config(build, folder: Path, device: str, seed: int, port: int) -> Path:
    models = "".join(f'[[models]]\nid = "{m}"\nadapter = "tflite"\n'
                     f'path = "{build.model_file(m)}"\ninput = "image"\n' for m in MODELS)
    path = folder / f"{device}.toml"
    path.write_text(
        f'device_id = "{device}"\n[mqtt]\nport = {port}\nstatus_every_s = {STATUS_S}\n'
        f'[bundle]\npath = "{build.bundle}"\n'
        f'[source]\ntype = "city"\nseed = {seed}\ncameras = 4\nstart_day = 0\n'
        f"start_hour = {EVENING}\nfps = 8\nloop = true\n"
        '[selection]\npolicy = "exact"\n[budget]\nmemory_mb = 1000\n'
        "[profiling]\nwarmup_runs = 1\ndelay_runs = 3\nperiod_frames = 0\n"
        f'[state]\ndir = "{folder / device}"\n[fleet]\ngroups = ["site"]\n' + models)
    return path


def test_drift_relinked_from_uploads_and_rolled_out(city_build, tmp_path: Path) -> None:
    with LocalBroker() as broker:
        agents = [AgentProcess(agent_config(city_build, tmp_path, d, i + 1, broker.port),
                               log_file=tmp_path / f"{d}.log") for i, d in enumerate(BOXES)]
        results: list[dict] = []
        listener = listen_to_results(broker.port, results)
        link = FleetLink("127.0.0.1", broker.port)
        try:
            # The workers' sessions exist before the jobs: the share keeps each one's jobs
            # while it is away (a worker restarting loses none).
            for name in WORKERS:
                TrainerLink("127.0.0.1", broker.port, "mlink", "trainers", name).close(
                    end_session=False)
            for i, device in enumerate(BOXES):
                rows = window_rows(city_build.root, i + 1, EVENING, ROWS, STRIDE)
                data = upload_bytes(rows, tmp_path)
                body = manifest(data, device, ["site"], ROWS, CHUNK, reason="drift",
                                bundle=city_build.bundle)
                validate("upload", body)  # the box's contract
                publish_upload(broker.port, data, body, CHUNK)
            wait_until(lambda: all(link.box(d).availability == "online"
                                   and link.box(d).statuses > 0
                                   and link.box(d).version is not None for d in BOXES),
                       60, "every agent online with its status")
            before = {d: link.box(d).status["bundle"] for d in BOXES}

            workdir = tmp_path / "work"  # shared by the two workers
            codes: dict[str, int] = {}

            def serve(name: str) -> None:
                codes[name] = train_main([
                    "serve", "--broker", f"127.0.0.1:{broker.port}", "--group", "site",
                    "--bundle", str(city_build.bundle), "--workdir", str(workdir),
                    "--share", "trainers", "--client-id", name, "--min-rows", "1200",
                    "--epochs", "40", "--once", "--max-wait", "60", "--canary", "0.5",
                    "--waves", "1", "--window", str(2 * STATUS_S), "--settle", "0.5"])

            threads = [threading.Thread(target=serve, args=(n,)) for n in WORKERS]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(240)
            assert codes == dict.fromkeys(WORKERS, 0), codes
            wait_until(lambda: len(results) == 2, 10, "both results")

            # one job to each worker, exactly one relink
            assert sorted(r["worker"] for r in results) == list(WORKERS)
            assert sorted(r["device"] for r in results) == list(BOXES)
            relinks = [r for r in results if r["decision"] == "roll_out"]
            assert len(relinks) == 1, results
            other = next(r for r in results if r is not relinks[0])
            assert other["decision"] in ("wait", "skipped"), other
            relink = relinks[0]
            assert relink["rows"] == 2 * ROWS and relink["held_out_rows"] == round(0.3 * 2 * ROWS)
            old, new = relink["old"], relink["new"]
            assert new["mean"] >= old["mean"] + 0.01, relink
            # the drift is the evening's jams: the traffic model is served far better
            assert new["per_model"]["traffic"] > old["per_model"]["traffic"] + 0.05, relink
            rollout = relink["rollout"]
            assert rollout["ok"] and sorted(b["device"] for b in rollout["boxes"]) == \
                list(BOXES) and {b["result"] for b in rollout["boxes"]} == {"applied"}
            assert [b["wave"] for b in rollout["boxes"]] == [0, 1]  # a canary, then a wave

            # every box runs the new bundle: the one the worker made, file for file
            made = workdir / "bundles" / relink["bundle"]
            assert json.loads((workdir / "in-force.json").read_text())["path"] == \
                str(made.resolve())
            for device in BOXES:
                now = wait_until(lambda d=device: link.box(d).status.get("bundle")
                                 if link.box(d).status.get("bundle") != before[d] else None,
                                 20, f"{device}'s status naming the new bundle")
                assert load_bundle(now).manifest["files"] == load_bundle(made).manifest["files"]
            # the uploads were collected: nothing left retained on the broker
            assert retained(broker.port, "mlink/+/uploads/#") == {}
        finally:
            link.close()
            listener.disconnect()
            listener.loop_stop()
            for agent in agents:
                agent.stop(timeout_s=20)
        for agent in agents:
            assert agent.process.returncode == 0


def test_a_box_upload_reaches_one_worker_and_is_collected(digits_fixture,
                                                          tmp_path: Path) -> None:
    """The box's own side of the contract (agent/uploads.py) to the worker's, without
    TensorFlow: a real agent keeps its windows' rows and answers `cmd/upload` sent once to its
    group; the job reaches a worker on the share, which collects the upload (the rows the box
    said, the bundle's tasks), keeps it and clears it on the broker; too few rows to relink,
    it waits."""
    from fleet.rollout import Policy
    from links_tflite.recording import Recording
    from offline_trainer.links import LinkTraining
    from offline_trainer.relink.collector import UploadCollector
    from offline_trainer.relink.relinker import Relinker
    from offline_trainer.relink.rollout import GroupRollout
    from offline_trainer.relink.store import WorkDir
    from offline_trainer.relink.worker import Worker
    from tests.e2e.test_uploads import agent_config as upload_agent_config

    with LocalBroker() as broker:
        agent = AgentProcess(upload_agent_config(digits_fixture.root, tmp_path, broker.port),
                             log_file=tmp_path / "agent.log")
        link = FleetLink("127.0.0.1", broker.port)
        trainer = TrainerLink("127.0.0.1", broker.port, "mlink", "trainers", "trainer-a")
        workdir = WorkDir(tmp_path / "work", digits_fixture.bundle)
        worker = Worker("trainer-a", "site", trainer, UploadCollector(trainer, workdir, 10.0),
                        Relinker(LinkTraining(), min_rows=10_000),
                        GroupRollout(lambda: FleetLink("127.0.0.1", broker.port), Policy()),
                        workdir)
        try:
            def rows_kept() -> bool:
                windows = (link.box("box-1").status.get("fleet") or {}).get("windows") or {}
                return windows.get("rows", 0) >= 100
            wait_until(rows_kept, 60, "the box's windows' rows kept")
            transaction = link.request_group("site", "cmd/upload", {"reason": "test"})
            answer = wait_until(lambda: link.response("box-1", transaction), 30, "the answer")
            assert answer["status"] == "ok", answer
            delivery = wait_until(lambda: trainer.next_job(0.2), 30, "the job")
            result = worker.handle(delivery)
            assert result["decision"] == "wait" and result["job"] == answer["result"]["upload"]
            (stored,) = workdir.recordings("site")
            recording = Recording.load(stored.path)
            assert len(recording) == answer["result"]["rows"] == stored.job.rows
            assert sorted(recording.tasks) == sorted(load_bundle(digits_fixture.bundle).models)
            assert retained(broker.port, "mlink/+/uploads/#") == {}  # collected: cleared
        finally:
            trainer.close(end_session=True)
            link.close()
            agent.stop(timeout_s=20)
