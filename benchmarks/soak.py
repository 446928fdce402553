"""Soak: the agent at full speed on the city stream for a fixed number of frames through
phases of trouble: the state dir's disk full for a while (a tmpfs filled with a ballast file;
needs root, else skipped), an ACL that denies the frames topic for a while (PUBACK 135), the
broker restarted several times, and the agent killed (SIGKILL) and started again several
times. Every frame message on `frames/<camera>` is counted by its `seq` at a subscriber with a
persistent session (frame ids start again at each start of the agent; `seq` goes on from the
outbox's last), and the agent's statuses are read for what it counted: frames skipped by
back-pressure, messages unstored or dropped.

    .venv/bin/mlink-train zoo --workload city --out build/soak
    .venv/bin/mlink-train links build/soak/recording.npz --out build/soak/bundle \
        --train-fraction 0.7
    .venv/bin/python benchmarks/soak.py --build build/soak [--frames 40000] [--restarts 4] \
        [--kills 3]

Writes benchmarks/results/soak.md (and prints it): frame messages received, duplicates and
how each was marked, the losses the agent counted, lost without a count (a `seq` never
received and not counted: must be 0), the agent's peak RSS and the outbox's peak depth. A
SIGKILL loses what the loop had made but the sender not yet written (at most one wake-up of
the sender, 5 ms and a transaction): those messages never left the box and their `seq`s are
given again by the next start, so they show as frames not processed, not as gaps. After each
broker start the agent is paused (SIGSTOP) until the counter is subscribed again: Mosquitto
2.0.11 loses what it accepts for a persistent session restored from disk while that client
is still away (Phases._start_broker).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil

from agent.config import load_config
from agent.transport.outbox import Outbox
from devtools.broker import LocalBroker

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "soak.md"
KEPT_SECTION = "\n## Hostile requests"  # written by tests/e2e/test_fuzz_broker.py's long run
ALLOW = "topic readwrite #\n"


def deny_frames(device: str) -> str:
    """An ACL that lets the agent publish everything but its frames."""
    return "".join(f"topic readwrite mlink/{device}/{t}\n" for t in (
        "status/#", "availability", "config/#", "cmd/#", "reply/#")) + "topic read #\n"


class Counter:
    """A QoS 1 subscriber with a persistent session: the broker (persistence on) keeps what
    arrives for it while it is away, across its own restarts. Counts frame messages by
    `seq`."""

    def __init__(self, port: int, device: str) -> None:
        self.seen: dict[int, int] = {}  # seq -> copies received
        self.outputs = 0  # model outputs in the unique frame messages
        self.models: set[str] = set()
        # extra copies: marked `possible_duplicate` by the agent (resent from its outbox),
        # redelivered by the broker to this session (MQTT DUP flag), or neither
        self.extra = {"marked": 0, "redelivered": 0, "unmarked": 0}
        self.lock = threading.Lock()
        self.last = time.monotonic()
        self.back = threading.Event()  # subscribed on the current connection
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="soak-counter", protocol=mqtt.MQTTv311,
                                  clean_session=False)
        self.status: dict | None = None  # the agent's latest (retained) status
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(f"mlink/{device}/frames/+", 1), (f"mlink/{device}/status", 1)])
        self.client.on_subscribe = lambda *_: self.back.set()
        self.client.on_disconnect = lambda *_: self.back.clear()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.back.wait(10):
            raise RuntimeError("the counter could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage
                    ) -> None:
        output = json.loads(message.payload)
        if message.topic.endswith("/status"):
            self.status = output
            return
        key = int(output["seq"])
        with self.lock:
            if key in self.seen:  # an extra copy: who sent it again?
                kind = ("marked" if output.get("possible_duplicate") else
                        "redelivered" if message.dup else "unmarked")
                self.extra[kind] += 1
            else:
                self.outputs += len(output["outputs"])
                self.models.update(output["outputs"])
            self.seen[key] = self.seen.get(key, 0) + 1
            self.last = time.monotonic()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _config(build: Path, port: int, state: Path) -> Path:
    text = (build / "agent.toml").read_text()
    text = text.replace("port = 1883", f"port = {port}")
    text = re.sub(r"(?m)^fps = .*$", "fps = 0", text)  # as fast as it goes
    text = re.sub(r"(?m)^loop = .*\n", "", text)
    text = text.replace("[source]\n", "[source]\nloop = true\n")  # a replay goes on
    text += f'\n[state]\ndir = "{state}"\n'
    path = build / "soak-agent.toml"
    path.write_text(text)
    return path


def _depth(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        box = Outbox(path)
    except Exception:  # the disk is full: opening writes too
        return 0
    try:
        return box.depth
    finally:
        box.close()


def _seqs_left(path: Path) -> str:
    """What a killed process left in its outbox: the rows and their first and last `seq`, and
    the highest `seq` ever stored (the next process numbers on from it)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows, first, last = db.execute(
                "SELECT COUNT(*), MIN(key), MAX(key) FROM outbox").fetchone()
            stored = db.execute("SELECT value FROM counters WHERE name = 'key'").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return f"unreadable ({exc})"
    return f"{rows} left (seq {first}..{last}), stored up to {stored[0] if stored else '-'}"


def _fill(path: Path) -> None:
    """Fill the file system under `path` to the last byte."""
    with path.open("wb", buffering=0) as ballast:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                ballast.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                ballast.write(b"\0")


class AgentRun:
    """The agent as a process, started again after each SIGKILL for the frames left; its
    log and, per process, the last status seen (what it counted dies with it)."""

    def __init__(self, config: Path, frames: int, counter: Counter, outbox: Path) -> None:
        self.config, self.frames, self.counter, self.outbox = config, frames, counter, outbox
        self.log_lines: list[str] = []
        self.killed: list[dict] = []  # the last status of each killed process
        self.left: list[str] = []  # per SIGKILL: the seqs left on disk, the last received
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.start(frames)

    def start(self, frames: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config),
             "--frames", str(frames)], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        process = self.process
        self._reader = threading.Thread(
            target=lambda: self.log_lines.extend(process.stdout or []), daemon=True)
        self._reader.start()

    def kill_and_restart(self) -> None:
        assert self.process is not None
        self.killed.append(dict(self.counter.status or {}))
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        if self._reader is not None:
            self._reader.join(5)
        with self.counter.lock:
            received = max(self.counter.seen, default=0)
        self.left.append(f"{_seqs_left(self.outbox)}, last received {received}")
        self.log_lines.append("soak: SIGKILL\n")
        with self.counter.lock:
            self.counter.status = None  # the next is the new process's
        left = self.frames - sum(int(s.get("frames", 0)) for s in self.killed)
        self.start(max(left, 1000))

    def poll(self) -> int | None:
        assert self.process is not None
        return self.process.poll()


class Phases:
    """The trouble, one phase after another, timed from the agent's start: the state dir's
    disk full, the frames denied by the ACL, broker restarts, agent SIGKILLs. `step()` is
    called every 0.25 s."""

    def __init__(self, broker: LocalBroker, acl: Path, state: Path, restarts: int,
                 outage_s: float, every_s: float, deny_s: float, full_s: float,
                 tmpfs: bool, flowing: Callable[[], bool], agent: AgentRun,
                 kills: int, device: str, denies: int = 1) -> None:
        self.broker, self.acl, self.state, self.agent = broker, acl, state, agent
        self.counter = agent.counter
        self.device = device
        # the full disk first: later, the outbox's file has free pages from its peak to reuse
        plan: list[tuple[str, float]] = [("full", full_s)] if full_s > 0 and tmpfs else []
        plan += [("deny", deny_s)] * denies if deny_s > 0 else []
        # restarts and kills in turn: a kill while outputs flow, a broker restart after
        others = [("restart", outage_s)] * restarts
        kills_left = [("kill", 0.0)] * kills
        while others or kills_left:
            if kills_left:
                plan.append(kills_left.pop())
            if others:
                plan.append(others.pop())
        self.plan = plan
        self.done: dict[str, int] = {"restart": 0, "deny": 0, "full": 0, "kill": 0}
        self.every_s = every_s
        self.next_at = time.monotonic() + 2 * every_s
        self.current: tuple[str, float] | None = None  # phase, ends at
        # a phase begins once outputs arrive again (the agent may still be waiting to
        # reconnect: paho's delay doubles up to 30 s)
        self.flowing = flowing

    def step(self) -> None:
        now = time.monotonic()
        if self.current is not None:
            kind, end = self.current
            if now < end:
                return
            self._end(kind)
            self.current = None
            self.next_at = now + self.every_s
            return
        if not self.plan or now < self.next_at or not self.flowing():
            return
        kind, length = self.plan.pop(0)
        print(f"soak: {kind} for {length:g} s", file=sys.stderr, flush=True)
        self._begin(kind)
        self.current = (kind, now + length)

    def _begin(self, kind: str) -> None:
        if kind == "restart":
            self.broker.stop()
        elif kind == "deny":
            self.acl.write_text(deny_frames(self.device))
            self.broker._process.send_signal(signal.SIGHUP)  # mosquitto reloads its ACL
        elif kind == "kill":
            self.agent.kill_and_restart()
        else:  # during an outage, so that the outbox must grow (its WAL is reused)
            self.broker.stop()
            _fill(self.state / "ballast")

    def _end(self, kind: str) -> None:
        if kind == "restart":
            self._start_broker()
        elif kind == "deny":
            self.acl.write_text(ALLOW)
            self.broker._process.send_signal(signal.SIGHUP)
        elif kind == "full":
            (self.state / "ballast").unlink()
            self._start_broker()
        self.done[kind] += 1

    def _start_broker(self) -> None:
        """Start Mosquitto again with the agent paused (SIGSTOP) until the counter is
        subscribed again: Mosquitto 2.0.11 acknowledges (PUBACK 0) what arrives for a
        persistent session restored from disk while that client is still away, and never
        sends it to the client when it is back (seen with `log_type all`: 1,414 messages
        PUBACKed to the agent in that window, none sent to the counter after its CONNACK with
        the session present). The agent reconnecting first would lose messages in the
        broker, not in the agent."""
        process = self.agent.process
        paused = process is not None and process.poll() is None
        if paused:
            assert process is not None
            process.send_signal(signal.SIGSTOP)
        try:
            self.broker.start()
            self.counter.back.wait(10)
        finally:
            if paused:
                assert process is not None
                process.send_signal(signal.SIGCONT)

    def finish(self) -> None:
        if self.current is not None:
            self._end(self.current[0])
            self.current = None


def soak(build: Path, frames: int, restarts: int, outage_s: float, every_s: float,
         deny_s: float, full_s: float, disk_mb: int, kills: int, denies: int = 1
         ) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="mlink-soak-"))
    store = work / "mosquitto-db"
    store.mkdir()
    state = work / "state"
    state.mkdir()
    tmpfs = full_s > 0 and os.geteuid() == 0
    if tmpfs:  # the state dir on a small file system of its own, to fill
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={disk_mb}m", "tmpfs", str(state)],
                       check=True)
    acl = work / "acl"
    acl.write_text(ALLOW)
    broker = LocalBroker(extra_config=f"persistence true\npersistence_location {store}/\n"
                                      f"max_queued_messages 0\nacl_file {acl}\n").start()
    config = _config(build, broker.port, state)
    device = load_config(config).device_id
    counter = Counter(broker.port, device)
    started = time.monotonic()
    outbox = state / "outbox.sqlite"
    agent = AgentRun(config, frames, counter, outbox)
    peak_rss, peak_depth = 0, 0
    phases = Phases(broker, acl, state, restarts, outage_s, every_s, deny_s, full_s, tmpfs,
                    lambda: time.monotonic() - counter.last < 0.5, agent, kills, device,
                    denies)
    while agent.poll() is None:
        try:
            assert agent.process is not None
            peak_rss = max(peak_rss, psutil.Process(agent.process.pid).memory_info().rss)
        except psutil.NoSuchProcess:
            pass
        peak_depth = max(peak_depth, _depth(outbox))
        phases.step()
        time.sleep(0.25)
    phases.finish()
    elapsed = time.monotonic() - started
    print(f"soak: the agent ended after {elapsed:.0f} s", file=sys.stderr, flush=True)
    if agent._reader is not None:
        agent._reader.join(10)
    log = "".join(agent.log_lines)
    (work / "agent.log").write_text(log)
    print(f"soak: the agent's log is {work / 'agent.log'}", file=sys.stderr, flush=True)
    match = re.search(r"done: (\d+) frames at ([\d.]+) fps", log)
    fps = float(match.group(2)) if match else 0.0
    while time.monotonic() - counter.last < 5.0:  # let the broker hand over its queue
        time.sleep(0.5)
    counter.stop()
    broker.stop()
    with counter.lock:
        seen, extra = dict(counter.seen), dict(counter.extra)
        final, outputs, models = counter.status or {}, counter.outputs, sorted(counter.models)
    statuses = [*agent.killed, final]
    done_frames = sum(int(s.get("frames", 0)) for s in statuses)
    skipped = sum(int(s.get("counters", {}).get("frames_skipped", 0)) for s in statuses)
    # what the agent says it did not deliver: skipped frames (no message made), messages it
    # could not store (full disk; each process its own count) or dropped at the outbox's
    # cap (persistent: the last process's count covers the earlier ones)
    counted = {"frames_skipped": skipped,
               "unstored": sum(int((s.get("delivery") or {}).get("unstored", 0))
                               for s in statuses),
               "outbox_dropped": int(final.get("counters", {}).get("outbox_dropped", 0))}
    last_seq = max(seen, default=0)
    missing = last_seq - len(seen)  # seqs given to a message and never received
    gaps = _ranges(sorted(set(range(1, last_seq + 1)) - set(seen)))
    left = _depth(outbox)
    if tmpfs:
        subprocess.run(["umount", str(state)], check=False)
    skipped_by: dict[str, int] = {}
    refused: dict[str, int] = {}
    for s in statuses:
        delivery = s.get("delivery") or {}
        for k, v in (delivery.get("frames_skipped") or {}).items():
            skipped_by[k] = skipped_by.get(k, 0) + int(v)
        for k, v in (delivery.get("refused") or {}).items():
            refused[k] = refused.get(k, 0) + int(v)
    return {
        "exit_code": agent.poll(), "frames": done_frames, "fps": fps,
        "workload": device.removesuffix("-demo"), "build": build.name,
        "elapsed_s": elapsed, "phases": phases.done, "outage_s": outage_s,
        "deny_s": deny_s, "full_s": full_s if tmpfs else 0.0, "disk_mb": disk_mb,
        "models": models, "last_seq": last_seq, "received": sum(seen.values()),
        "unique": len(seen), "outputs": outputs,
        "duplicates": sum(n - 1 for n in seen.values()),
        "marked": extra["marked"], "redelivered": extra["redelivered"],
        "unmarked": extra["unmarked"], **counted,
        "skipped_by": skipped_by, "refused": refused,
        "lost": missing - counted["unstored"] - counted["outbox_dropped"],
        "gaps": gaps[:10], "left_at_kills": agent.left,
        "peak_rss_mb": peak_rss / 2**20, "outbox_peak": peak_depth,
        "outbox_left": left, "log_tail": log[-2000:],
    }


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive numbers, as (first, last)."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def report(result: dict[str, object], frames: int, restarts: int, every_s: float) -> str:
    done: dict[str, int] = result["phases"]  # type: ignore[assignment]
    rows = [("frames from the source", result["frames"]),
            ("agent fps (mean, skipped frames included)", f"{result['fps']:.1f}"),
            ("wall time", f"{result['elapsed_s']:.0f} s"),
            ("broker restarts", f"{done['restart']} (each {result['outage_s']:g} s down)"),
            ("agent killed (SIGKILL) and started again", done["kill"]),
            ("frame messages denied by the ACL (PUBACK 135)",
             f"{done['deny']} x {result['deny_s']:g} s; refused: {result['refused'] or '-'}"),
            ("state dir's disk full", f"{done['full']} x {result['full_s']:g} s "
             f"(tmpfs of {result['disk_mb']} MB)" if done["full"]
             else "not run (--full 0, or not root)"),
            ("models", ", ".join(result["models"])),  # type: ignore[arg-type]
            ("frames skipped by back-pressure (status)",
             f"{result['frames_skipped']} {result['skipped_by'] or ''}"),
            ("frame messages made (the last `seq`)", result["last_seq"]),
            ("messages unstored, full disk (status, counted)", result["unstored"]),
            ("messages dropped at the outbox cap (status, counted)", result["outbox_dropped"]),
            ("frame messages received", result["received"]),
            ("unique received (by `seq`)", result["unique"]),
            ("model outputs in them", result["outputs"]),
            ("duplicates", result["duplicates"]),
            ("- marked `possible_duplicate` by the agent", result["marked"]),
            ("- redelivered by the broker (MQTT DUP flag)", result["redelivered"]),
            ("- neither", result["unmarked"]),
            ("lost without a count (seqs never received - counted)", result["lost"]),
            ("seqs never received (first runs)", result["gaps"] or "-"),
            ("at each SIGKILL: the outbox's rows, the last `seq` received",
             "; ".join(result["left_at_kills"]) or "-"),  # type: ignore[arg-type]
            ("peak agent RSS", f"{result['peak_rss_mb']:.0f} MB"),
            ("outbox peak depth", result["outbox_peak"]),
            ("left in the outbox at exit", result["outbox_left"]),
            ("agent exit status", result["exit_code"])]
    lines = [
        f"# Soak: the {result['workload']} stream at full speed through a full disk, a "
        "denying ACL, broker restarts and agent SIGKILLs",
        "",
        f"Regenerate: `.venv/bin/python benchmarks/soak.py --frames {frames} --restarts "
        f"{restarts} --kills {done['kill']} --every {every_s:g} --outage "
        f"{result['outage_s']:g} --build {result['build']} --deny "
        f"{result['deny_s']:g} --full {result['full_s']:g}` as root (build steps in the "
        "script's docstring). Measured "
        f"{datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()}, {os.cpu_count()} "
        "cores shared with other jobs (the fps moves with them). The agent runs the build's "
        "source (looping) with `fps = 0` (as fast as it goes) and the config "
        "`mlink-train zoo` wrote (its budget); while it runs, the tmpfs under the state "
        "dir is filled by a ballast file during a broker outage (so that the outbox must "
        "grow: its WAL is reused), "
        "then Mosquitto's ACL denies the frames topic (reloaded with SIGHUP), then, in turn, "
        "the agent is killed (SIGKILL) and started again for the frames left and Mosquitto "
        "is stopped and started again (the agent paused until the subscriber is back: "
        "Mosquitto 2.0.11 loses what it accepts for a persistent session restored from disk "
        "while that client is away), with service in between; a subscriber with a "
        "persistent QoS 1 session counts every frame message by its `seq` (frame ids start "
        "again at each start of the agent, `seq` goes on from the outbox's last). A "
        "SIGKILL loses what the loop made and the sender had not yet written (at most one "
        "wake-up, 5 ms and a transaction): those never left the box and their `seq`s are "
        "given again, so they count as frames not processed. Duplicates "
        "are allowed (delivery is at least once) and should carry a mark: the agent's "
        "`possible_duplicate` on what it resends from its outbox, or MQTT's DUP flag on what "
        "the broker redelivers. Losses the agent counts in its status (frames skipped by "
        "back-pressure, messages it could not store) are listed; lost without a count must "
        "be 0.",
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
    parser.add_argument("--frames", type=int, default=40000)
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--outage", type=float, default=3.0, help="seconds the broker is down")
    parser.add_argument("--every", type=float, default=5.0,
                        help="seconds of service between two outages")
    parser.add_argument("--deny", type=float, default=5.0,
                        help="seconds the broker's ACL denies the outputs (0: no such phase)")
    parser.add_argument("--denies", type=int, default=1,
                        help="times the ACL denies the frames topic (each --deny seconds)")
    parser.add_argument("--full", type=float, default=5.0,
                        help="seconds the state dir's disk is full (0: no such phase; root)")
    parser.add_argument("--disk-mb", type=int, default=96, help="the state dir's tmpfs size")
    parser.add_argument("--kills", type=int, default=3,
                        help="times the agent is killed (SIGKILL) and started again")
    args = parser.parse_args()
    result = soak(args.build.resolve(), args.frames, args.restarts, args.outage, args.every,
                  args.deny, args.full, args.disk_mb, args.kills, args.denies)
    result["build"] = str(args.build)  # as given (build/soak), not where a link points
    text = report(result, args.frames, args.restarts, args.every)
    old = RESULTS.read_text() if RESULTS.exists() else ""
    kept = old[old.index(KEPT_SECTION):] if KEPT_SECTION in old else ""  # another run's
    RESULTS.write_text(text.rstrip("\n") + "\n" + kept)
    print(text)
    if result["lost"] or result["unmarked"] or result["exit_code"] != 0:
        print(result["log_tail"], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
