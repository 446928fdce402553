"""The agent as a service: the scheduler's Agent, given to a `Service` that adds what a
daemon needs around it.

- Control actions (remote config, remeasure, reselect, bundle swap) take the agent's one lock,
  the per-frame work's, so each applies between two frames, all or nothing: the agent's state
  (agent.state) is taken before and put back whole on any failure. The status is published
  once a change is in force with its version.
- systemd: READY=1 after the first frame is processed, WATCHDOG=1 only after frames are
  processed, STATUS= every few seconds, STOPPING=1; SIGTERM/SIGINT drain and publish
  `stopped`, SIGHUP reloads the config file.
- Publish options (`[publish]`) shape the outputs (agent.output).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, ConfigError, load_config, missing_model_files
from agent.control import Control, RequestError, StateStore
from agent.scheduler import Agent, Counters
from agent.sdnotify import Notifier
from agent.selection import SelectionError
from agent.sources import Frame
from agent.transport import Publisher
from agent.transport.outbox import Outbox
from agent.uploads import DriftWatch, UploadContext, Uploader
from agent.windowstore import WindowStore
from links_tflite.bundle import Bundle, identity

log = logging.getLogger(__name__)

STATUS_TEXT_EVERY_S = 5.0


class Service:
    """The agent as a daemon (what agent.control drives, agent.controlled.Controlled): control
    actions between two frames under the agent's one lock, each all or nothing; systemd's
    notifications after each frame."""

    def __init__(self, agent: Agent, notifier: Notifier | None = None,
                 uploader: Uploader | None = None) -> None:
        self.agent = agent
        self.notifier = notifier or Notifier({})
        self.uploader = uploader  # cmd/upload (None: `[fleet] keep_windows = false`)
        self.ready = threading.Event()
        self._last_status_text = 0.0

    # -- what control reads ------------------------------------------------------------------
    @property
    def config(self) -> AgentConfig:
        return self.agent.config

    @property
    def bundle_root(self) -> Path:
        return self.agent.bundle.root

    @property
    def config_version(self) -> int:
        return self.agent.config_version

    @config_version.setter
    def config_version(self, version: int) -> None:
        self.agent.config_version = version

    def wait_ready(self, timeout_s: float) -> bool:
        return self.ready.wait(timeout_s)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, max_frames: int | None = None) -> Counters:
        return self.agent.run(max_frames, on_frame=self._after_frame)

    def _after_frame(self, frame: Frame) -> None:
        now = time.monotonic()
        if not self.ready.is_set():
            self.ready.set()
            self.notifier.ready(self.status_text())
            self._last_status_text = now
        elif now - self._last_status_text > STATUS_TEXT_EVERY_S:
            self.notifier.status(self.status_text())
            self._last_status_text = now
        self.notifier.watchdog()

    def status_text(self) -> str:
        agent = self.agent
        active = sorted(agent.selection.active) if agent.selection else []
        depth = agent.publisher.pending if agent.publisher else 0
        health = agent.publisher.health() if agent.publisher else {"state": "ok"}
        degraded = f", DEGRADED: {'; '.join(health['problems'])}" \
            if health["state"] != "ok" else ""
        return (f"{agent.counters.frames} frames, {agent.counters.fps():.1f} fps, "
                f"active {','.join(active) or '-'}, outbox {depth}{degraded}")

    def publish_status(self, state: str) -> None:
        self.agent.publish_status(state)

    # -- control actions, each between two frames, all or nothing ----------------------------
    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[Agent]:
        """Hold the loop between two frames; on any failure, put the state back as it was."""
        with self.agent.lock:
            state = self.agent.state()
            try:
                yield self.agent
            except Exception:
                self.agent.restore(state)
                raise

    def remeasure(self) -> dict[str, Any]:
        """Measure every model and link again on the last frame, now, and select again."""
        with self._all_or_nothing() as agent:
            agent.remeasure()
            agent.apply(agent.select())
            selection = agent.selection
        assert selection is not None
        self.publish_status("running")
        return {"selection": selection.to_dict(), "costs": agent.cost_figures()}

    def reselect(self) -> dict[str, Any]:
        with self._all_or_nothing() as agent:
            agent.apply(agent.select())
            selection = agent.selection
        assert selection is not None
        self.publish_status("running")
        return {"selection": selection.to_dict()}

    def reconfigure(self, new: AgentConfig) -> None:
        """Apply a validated config: budget, policy, profiling, publish options, enabled
        models. On any failure the previous config stays in force. The status is published
        by the caller, once the new config's version is in force."""
        try:
            with self._all_or_nothing() as agent:
                agent.reconfigure(new)
            self._retask_windows()
        except ConfigError as exc:
            raise RequestError(exc.errors) from None
        except SelectionError as exc:
            raise RequestError([("budget", str(exc))]) from None
        except Exception as exc:
            raise RequestError([("", f"{type(exc).__name__}: {exc}")]) from None

    def upload(self, reason: str) -> dict[str, Any]:
        """Upload the profiling windows' rows (`cmd/upload`): prepared now (refused with
        nothing published where it cannot be), published on the uploader's thread."""
        if self.uploader is None:
            raise RequestError([("", "this box keeps no profiling window rows ([fleet] "
                                     "keep_windows = false)")])
        upload = self.uploader.prepare(reason)
        self.uploader.start(upload)
        return upload.summary()

    def fleet_status(self) -> dict[str, Any]:
        """The status's `fleet` section: the windows' rows kept, the uploads, the drift
        watch."""
        store = self.agent.window.store
        windows: dict[str, Any] | None = None
        if store is not None:
            windows = store.to_dict()
            if self.uploader is not None:
                windows.update(self.uploader.to_dict())
        drift = self.agent.drift
        return {"windows": windows, "drift": drift.to_dict() if drift is not None else None}

    def swap_bundle(self, bundle: Bundle) -> dict[str, Any]:
        """Swap in a verified bundle, re-measuring its links; the old one stays on failure.
        The status is published by the caller, with the new version."""
        with self._all_or_nothing() as agent:
            agent.swap_bundle(bundle)
            selection = agent.selection
        assert selection is not None
        self._retask_windows()
        return selection.to_dict()

    def _retask_windows(self) -> None:
        """Once a bundle or the enabled models changed: the windows' rows recorded under other
        tasks go (a relinked bundle of the same models keeps them)."""
        store = self.agent.window.store
        if store is not None:
            try:
                store.retask(upload_context(self.agent).tasks)
            except Exception:  # the change is in force; a write failure is the store's
                log.exception("profiling windows: the rows could not be re-checked")


def run(config_path: str | Path, frames: int | None = None) -> tuple[Counters, bool]:
    """Run the agent until its frames end or a signal stops it; return its counters and
    whether every output was acknowledged before exit."""
    config_path = Path(config_path)
    file_config = load_config(config_path)
    missing = missing_model_files(file_config)
    if missing:
        raise ConfigError(missing, str(config_path))
    assert file_config.state.dir is not None
    store = StateStore(file_config.state.dir)
    config = store.effective(file_config)
    outbox = Outbox(file_config.state.dir / "outbox.sqlite", config.state.outbox_max_messages,
                    config.state.synchronous)
    groups = tuple(config.fleet.groups)
    publisher = Publisher(config.mqtt, config.device_id, outbox, groups=groups)
    notifier = Notifier()
    agent, uploader = _agent_with_windows(config, publisher)
    service = Service(agent, notifier, uploader)
    control = Control(service, publisher, store, config_path)
    control.attach()
    agent.status_builder.extras["control"] = control.stats
    agent.status_builder.extras["groups"] = lambda: list(groups)
    agent.status_builder.extras["fleet"] = service.fleet_status

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after this frame", signum)
        agent.stop_event.set()
        agent.source.close()  # a live source waiting for a frame returns now

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: control.request_reload())
    notifier.status("connecting to the broker")
    try:
        publisher.connect(config.mqtt.connect_timeout_s)
    except Exception:
        publisher.close(0.0)  # what the outbox holds stays on disk for the next start
        raise
    control.start()
    control.publish_state()
    counters: Counters | None = None
    try:
        notifier.status("measuring costs")
        counters = service.run(frames)
    finally:
        notifier.stopping()
        notifier.status("stopping: draining the outbox")
        control.stop()
        if uploader is not None:
            uploader.close()
        agent.close()
        drained = publisher.drain(config.state.stop_drain_s)
        if counters is not None and drained:
            agent.publish_status("stopped")  # again: the retained one shows the drained outbox
        # one drain only: a second full wait would overrun the unit's stop timeout
        drained = publisher.close(2.0 if drained else 0.0) and drained
        notifier.close()
    return counters, drained


def upload_context(agent: Agent) -> UploadContext:
    """What an upload says of the box: its groups, the bundle in force, the tasks of the
    models it runs."""
    with agent.lock:
        bundle, config = agent.bundle, agent.config
    return UploadContext(tuple(config.fleet.groups), identity(bundle),
                         {m.id: bundle.models[m.id] for m in config.enabled_models})


def _agent_with_windows(config: AgentConfig, publisher: Publisher
                        ) -> tuple[Agent, Uploader | None]:
    """The agent; with `[fleet] keep_windows`, its profiling windows' rows kept in
    `<state dir>/windows` (agent.windowstore), their uploader and, with `drift_margin`, the
    drift watch that starts an upload."""
    agent = Agent.from_config(config, publisher)
    fleet = config.fleet
    if not fleet.keep_windows:
        return agent, None
    assert config.state.dir is not None
    try:
        store = WindowStore(config.state.dir / "windows", fleet.window_rows,
                            config.source_type, agent.source.cameras)
    except BaseException:
        agent.close()
        raise
    uploader = Uploader(store, publisher, fleet.upload_chunk_kb * 1024,
                        lambda: upload_context(agent),
                        done=lambda: agent.publish_status("running"))
    drift = DriftWatch(fleet.drift_margin, fleet.drift_min_interval_s, uploader.request) \
        if fleet.drift_margin > 0 else None
    agent.keep_windows(store, drift)
    return agent, uploader
