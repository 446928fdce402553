"""The fleet tool against real agents behind a bridge: a site Mosquitto bridged to a central one,
agents (the committed fixture's TFLite models, TensorFlow refused) on the site broker, the
tool on the central one. A good change reaches every box in waves, acknowledged; a bad one
(accepted by the boxes, but their expected agreement falls) fails on the canary, is rolled
back there, and no box outside the canary ever applies it."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from devtools.broker import LocalBroker
from fleet.cli import main as fleet_main
from fleet.link import FleetLink
from fleet.rollout import Policy, Rollout, inverse, plan_waves
from tests.support.agent_process import AgentProcess, wait_until

pytestmark = pytest.mark.broker

# Four agents in the suite; `MLINK_FLEET_AGENTS=20` runs the twenty (fleet.md).
BOXES = [f"box-{i:02d}" for i in range(1, int(os.environ.get("MLINK_FLEET_AGENTS", "4")) + 1)]
MODELS = ("digit", "parity", "inkbox")
# A rollout's health window must see one periodic status after the change's own: the boxes
# publish theirs every STATUS_S (`[mqtt] status_every_s`; 5 s by default), the window is 2x.
STATUS_S = 1
WINDOW = str(2 * STATUS_S)


NORTH = BOXES[1::2]  # every other box is also in the group `north`; every box is in `site`


def agent_config(fixture: Path, folder: Path, device: str, port: int) -> Path:
    models = "".join(f'[[models]]\nid = "{m}"\npath = "{fixture / "models" / (m + ".tflite")}"\n'
                     'input = "image"\n' for m in MODELS)
    path = folder / f"{device}.toml"
    path.write_text(
        f'device_id = "{device}"\n[mqtt]\nport = {port}\nstatus_every_s = {STATUS_S}\n'
        f'[bundle]\npath = "{fixture / "bundle"}"\n'
        f'[source]\ntype = "replay"\npath = "{fixture / "stream.npz"}"\nfps = 10\nloop = true\n'
        '[selection]\npolicy = "exact"\n[budget]\nmemory_mb = 1000\n'
        f'[profiling]\nwarmup_runs = 1\ndelay_runs = 3\nperiod_frames = 0\n'
        f'[state]\ndir = "{folder / device}"\n'
        f'[fleet]\ngroups = {json.dumps(["site", "north"] if device in NORTH else ["site"])}\n'
        + models)
    return path


@pytest.fixture()
def site(digits_fixture, tmp_path: Path):
    """(central broker, agents): the agents' broker is bridged to the central one."""
    with LocalBroker() as central:
        bridge = (f"connection central\naddress 127.0.0.1:{central.port}\n"
                  "topic mlink/# both 1\ncleansession true\nnotifications false\n"
                  "bridge_protocol_version mqttv311\n")
        with LocalBroker(extra_config=bridge) as local:
            agents = [AgentProcess(agent_config(digits_fixture.root, tmp_path, d, local.port),
                                   log_file=tmp_path / f"{d}.log") for d in BOXES]
            try:
                yield central, agents
            finally:
                for agent in agents:
                    agent.stop(timeout_s=20)


def test_waves_start_with_a_canary_and_share_the_rest() -> None:
    devices = [f"d{i}" for i in range(10)]
    waves = plan_waves(devices, 0.1, 3)
    assert waves[0] == ["d0"] and [d for w in waves for d in w] == sorted(devices)
    assert [len(w) for w in waves] == [1, 3, 3, 3]
    assert plan_waves(["a"], 0.5, 2) == [["a"]]
    assert plan_waves(["a", "b", "c"], 0.0, 5)[0] == ["a"]  # never an empty canary


def test_the_inverse_puts_back_exactly_the_paths_a_change_sets() -> None:
    before = {"budget": {"memory_mb": 5.0, "delay_ms": None},
              "selection": {"policy": "exact", "retry_after_s": 5.0},
              "models": {"digit": {"enabled": True}}}
    change = {"budget": {"memory_mb": 1.0}, "selection": {"policy": "standalone"},
              "models": {"digit": {"enabled": False}}, "publish": {"decoded": False}}
    assert inverse(change, before) == {"budget": {"memory_mb": 5.0},
                                       "selection": {"policy": "exact"},
                                       "models": {"digit": {"enabled": True}},
                                       "publish": {"decoded": None}}
    with pytest.raises(ValueError, match="mqtt"):
        Rollout(None, {"mqtt": {"port": 1}}, Policy())  # type: ignore[arg-type]


def test_what_the_tool_reads_is_bounded(tmp_path: Path) -> None:
    """A change file that is not a finite JSON object, too large or too deep is refused with
    its path; a message on a box's topic that is not JSON, too deep or too large is counted
    and ignored, never raised in the connection's thread."""
    from types import SimpleNamespace

    from fleet.cli import read_change

    for name, body, why in (("nan.json", '{"budget": {"memory_mb": NaN}}', "NaN"),
                            ("deep.json", "[" * 30_000 + "]" * 30_000, "nested too deeply"),
                            ("list.json", "[1]", "a JSON object"),
                            ("big.json", '{"a": "' + "x" * 70_000 + '"}', "larger than")):
        path = tmp_path / name
        path.write_text(body)
        with pytest.raises(ValueError, match=why):
            read_change(path)
    link = FleetLink.__new__(FleetLink)  # its message handler alone, without a broker
    link.prefix, link.ignored, link._boxes, link._responses = "mlink", 0, {}, {}
    link._lock = threading.Lock()
    for topic, payload in (("mlink/b/status", b"[" * 100_000),
                           ("mlink/b/status", b"\xff"),
                           ("mlink/b/status", b"{" + b" " * (2 << 20) + b"}"),
                           ("elsewhere/b/status", b"{}")):
        link._on_message(None, None, SimpleNamespace(topic=topic, payload=payload))
    assert link.ignored == 4 and link.boxes() == {}
    link._on_message(None, None, SimpleNamespace(topic="mlink/b/status", payload=b'{"fps": 1}'))
    assert link.box("b").status == {"fps": 1}


def test_a_staged_rollout_through_a_bridge(site, digits_fixture, tmp_path: Path,
                                           capsys) -> None:
    central, agents = site
    link = FleetLink("127.0.0.1", central.port)
    try:
        def all_running() -> bool:
            boxes = link.boxes()
            return all(d in boxes and boxes[d].availability == "online"
                       and boxes[d].version is not None and boxes[d].statuses > 0
                       for d in BOXES)
        wait_until(all_running, 90, "every agent online with its status and config/state")
        versions = {d: link.box(d).version for d in BOXES}

        # A bad change: accepted by each box, but its expected agreement falls (the big
        # model no longer fits, and standalone predicts nothing).
        bad = {"selection": {"policy": "standalone"}, "budget": {"memory_mb": 1.0}}
        lines: list[str] = []
        policy = Policy(canary_share=0.2, waves=2, response_timeout_s=30, window_s=float(WINDOW))
        outcome = Rollout(link, bad, policy, progress=lines.append).run(BOXES)
        assert not outcome.ok and outcome.stopped_at == 0
        canary = {b.device for b in outcome.boxes if b.wave == 0}
        assert canary == set(BOXES[:max(1, -(-len(BOXES) // 5))])
        for box in outcome.boxes:
            if box.wave == 0:
                assert box.result == "rolled_back", box
                assert "expected agreement" in box.detail
            else:
                assert box.result == "not_sent"
        assert any("rolling back" in line for line in lines)

        def settable(device: str) -> dict:
            return link.box(device).state.get("settable") or {}

        wait_until(lambda: all(settable(d).get("selection", {}).get("policy") == "exact"
                               for d in canary), 20, "the canary rolled back")
        for device in canary:
            assert settable(device)["budget"]["memory_mb"] == 1000
            assert link.box(device).version == versions[device] + 2  # the change, its undo
        for device in set(BOXES) - canary:  # never sent: never applied
            assert link.box(device).version == versions[device]
            assert settable(device)["selection"]["policy"] == "exact"
    finally:
        link.close()

    # A good change, through the command line: every box, canary then one wave.
    change = tmp_path / "change.json"
    change.write_text(json.dumps({"publish": {"decoded": False}}))
    code = fleet_main(["apply", "--port", str(central.port), "--all", str(change),
                       "--canary", "0.2", "--waves", "1", "--window", WINDOW])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "rollout complete" in out
    assert sum(line.startswith("box-") and " applied " in line
               for line in out.splitlines()) == len(BOXES)
    assert fleet_main(["inventory", "--port", str(central.port), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["device"] for r in rows] == BOXES
    assert all(r["availability"] == "online" and r["expected_agreement"] == 1.0
               for r in rows)
    assert [r["groups"] for r in rows] == [["site", "north"] if r["device"] in NORTH
                                           else ["site"] for r in rows]

    # A request to a group: published once, acted on by each box of the group, answered by
    # each on its own response topic; the other boxes never see it.
    link = FleetLink("127.0.0.1", central.port)
    try:
        wait_until(lambda: len(link.boxes()) == len(BOXES)
                   and all(link.box(d).version is not None for d in BOXES), 20,
                   "the inventory with every box's version")
        before = {d: link.box(d).version for d in BOXES}
        transaction = link.request_group("north", "config/set", {"publish": {"decoded": True}})
        answers = wait_until(lambda: (r := link.responses(transaction)) and len(r) == len(NORTH)
                             and r, 30, "every north box's answer")
        assert {d: a["status"] for d, a in answers.items()} == dict.fromkeys(NORTH, "ok")
        assert all(answers[d]["version"] == before[d] + 1 for d in NORTH)
        refused = link.request_group("site", "cmd/reselect", {"force": True})
        errors = wait_until(lambda: (r := link.responses(refused)) and len(r) == len(BOXES)
                            and r, 30, "every box's refusal")
        assert all(e["status"] == "error" and e["errors"][0]["path"] == "force"
                   for e in errors.values())
        wait_until(lambda: all(link.box(d).version == before[d] for d in BOXES
                               if d not in NORTH), 5, "the others unchanged")
    finally:
        link.close()
    # Bundles: a broken archive is refused by the canary and goes no further; the bundle
    # folder itself (tarred by the tool) is swapped in on every box at once.
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not a tar archive")
    assert fleet_main(["push", "--port", str(central.port), "--all", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "refused" in out and "not a tar archive" in out and out.count("not_sent") == \
        len(BOXES) - 1
    bundle = digits_fixture.root / "bundle"
    assert fleet_main(["push", "--port", str(central.port), "--group", "site", str(bundle),
                       "--canary", "1", "--window", WINDOW]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert sum(line.startswith("box-") and " applied " in line
               for line in out.splitlines()) == len(BOXES)
    for agent in agents:
        assert agent.process.poll() is None  # still running
