"""The agent as a service: the scheduler's Agent plus what a daemon needs around it.

- Control actions (remote config, reprofile, reselect, bundle swap) take the same lock as the
  per-frame work, so each applies between two frames, all or nothing.
- systemd: READY=1 after the first frame is processed, WATCHDOG=1 only after frames are
  processed, STATUS= every few seconds, STOPPING=1; SIGTERM/SIGINT drain and publish
  `stopped`, SIGHUP reloads the config file.
- Publish options (`[publish]`) shape the outputs; the status adds the outbox, the config
  version and the bundle in force.
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

from agent.config import AgentConfig, ConfigError, load_config
from agent.control import Control, RequestError, StateStore
from agent.models import make_model
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.scheduler import Agent, Counters, check_models_in_bundle
from agent.sdnotify import Notifier
from agent.selection import SelectionError
from agent.sources import Frame
from links_tflite.bundle import Bundle
from links_tflite.ensemble import EnsemblePredictor

log = logging.getLogger(__name__)

STATUS_TEXT_EVERY_S = 5.0


class ServiceAgent(Agent):
    def __init__(self, config: AgentConfig, publisher: Publisher | None = None,
                 notifier: Notifier | None = None) -> None:
        super().__init__(config, publisher)
        self.notifier = notifier or Notifier({})
        self.lock = threading.RLock()
        self.ready = threading.Event()
        self.last_frame: Frame | None = None
        self.measured_at: float | None = None
        self.control: Control | None = None
        self._last_status_text = 0.0

    # -- per frame ------------------------------------------------------------------------
    def measure(self, frame: Frame) -> None:
        super().measure(frame)
        self.measured_at = time.monotonic()

    def process(self, frame: Frame) -> list[dict[str, object]]:
        with self.lock:
            self.last_frame = frame
            payloads = super().process(frame)
        publish = self.config.publish
        if publish.models is not None:
            payloads = [p for p in payloads if p["model"] in publish.models]
        if not publish.decoded:
            for payload in payloads:
                payload.pop("decoded", None)
        self._after_frame()
        return payloads

    def _after_frame(self) -> None:
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
        active = sorted(self.selection.active) if self.selection else []
        depth = self.publisher.pending if self.publisher else 0
        return (f"{self.counters.frames} frames, {self.counters.fps():.1f} fps, "
                f"active {','.join(active) or '-'}, outbox {depth}")

    def status(self, state: str) -> dict[str, object]:
        with self.lock:  # the control thread may be swapping models, costs or the bundle
            return self._status(state)

    def _status(self, state: str) -> dict[str, object]:
        status = super().status(state)
        outbox = self.publisher.outbox if self.publisher else None
        status["outbox"] = outbox.stats() if outbox else None
        counters = status.get("counters")
        if isinstance(counters, dict) and outbox is not None:
            counters["outbox_dropped"] = outbox.dropped
        status.setdefault("profile_age_s", None if self.measured_at is None
                          else round(time.monotonic() - self.measured_at, 3))
        status["config_version"] = self.control.version if self.control else 0
        status["bundle"] = str(self.bundle.root)
        return status

    # -- control actions, each between two frames, all or nothing ----------------------------
    def _snapshot(self) -> dict[str, Any]:
        snapshot = {k: getattr(self, k) for k in ("config", "bundle", "ensembles", "models",
                                                  "model_costs", "link_costs", "selection")}
        for key in ("models", "model_costs", "link_costs"):
            snapshot[key] = dict(snapshot[key])
        return snapshot

    def _restore(self, snapshot: dict[str, Any]) -> None:
        for key in ("models", "model_costs", "link_costs"):
            snapshot[key] = dict(snapshot[key])
        for key, value in snapshot.items():
            setattr(self, key, value)
        if self.selection is not None:
            self.apply(self.selection)

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """Hold the loop between two frames; on any failure, put everything back as it was."""
        with self.lock:
            snapshot = self._snapshot()
            try:
                yield
            except Exception:
                self._restore(snapshot)
                raise

    def _remeasure(self) -> None:
        """Measure from scratch on the last frame: unload first, so that loading is measured."""
        assert self.last_frame is not None
        for model in self.models.values():
            model.unload()
        self.model_costs, self.link_costs = {}, {}
        self.measure(self.last_frame)

    def reprofile(self) -> dict[str, Any]:
        with self._all_or_nothing():
            self._remeasure()
            self.apply(self.select())
        assert self.selection is not None
        self.publish_status("running")
        return {"selection": self.selection.to_dict(), "costs": self.status("running")["costs"]}

    def reselect(self) -> dict[str, Any]:
        with self._all_or_nothing():
            self.apply(self.select())
        assert self.selection is not None
        self.publish_status("running")
        return {"selection": self.selection.to_dict()}

    def reconfigure(self, new: AgentConfig) -> None:
        """Apply a validated config: budget, policy, profiling, publish options, enabled
        models. On any failure the previous config stays in force."""
        try:
            with self._all_or_nothing():
                self._reconfigure(new)
        except ConfigError as exc:
            raise RequestError(exc.errors) from None
        except SelectionError as exc:
            raise RequestError([("budget", str(exc))]) from None
        except Exception as exc:
            raise RequestError([("", f"{type(exc).__name__}: {exc}")]) from None
        self.publish_status("running")

    def _reconfigure(self, new: AgentConfig) -> None:
        enabled = {m.id: m for m in new.enabled_models}
        old_ids = set(self.models)
        models = {i: m for i, m in self.models.items() if i in enabled}
        for model_id in old_ids - set(enabled):
            self.models[model_id].unload()
        added = [i for i in enabled if i not in old_ids]
        for model_id in added:
            model = make_model(enabled[model_id])
            if model.input_modality not in self.source.modalities:
                raise ConfigError([(f"models.{model_id}.input",
                                    f"{model.input_modality!r} is not offered by the source")])
            models[model_id] = model
        self.config = new
        self.models = models
        self.model_costs = {i: c for i, c in self.model_costs.items() if i in models}
        self.link_costs = {k: c for k, c in self.link_costs.items()
                           if k[0] in models and k[1] in models}
        if added:
            self._remeasure()
        self.apply(self.select())

    def swap_bundle(self, bundle: Bundle) -> dict[str, Any]:
        """Swap in a verified bundle, re-measuring its links; the old one stays on failure."""
        with self._all_or_nothing():
            check_models_in_bundle(self.config, bundle)
            self.bundle = bundle
            self.ensembles = EnsemblePredictor(bundle)
            self.config = self.config.model_copy(update={
                "bundle": self.config.bundle.model_copy(update={"path": bundle.root})})
            self._remeasure()
            self.apply(self.select())
        assert self.selection is not None
        self.publish_status("running")
        return self.selection.to_dict()


def run(config_path: str | Path, frames: int | None = None,
        connect_timeout_s: float = 10.0) -> tuple[Counters, bool]:
    """Run the agent until its frames end or a signal stops it; return its counters and
    whether every output was acknowledged before exit."""
    config_path = Path(config_path)
    file_config = load_config(config_path)
    assert file_config.state.dir is not None
    store = StateStore(file_config.state.dir)
    config = store.effective(file_config)
    outbox = Outbox(file_config.state.dir / "outbox.sqlite", config.state.outbox_max_messages,
                    config.state.synchronous)
    publisher = Publisher(config.mqtt, config.device_id, outbox)
    notifier = Notifier()
    agent = ServiceAgent(config, publisher, notifier)
    control = Control(agent, publisher, store, config_path)
    agent.control = control
    control.attach()

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after this frame", signum)
        agent.stop_event.set()
        agent.source.close()  # a live source waiting for a frame returns now

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: control.request_reload())
    notifier.status("connecting to the broker")
    try:
        publisher.connect(connect_timeout_s)
    except Exception:
        publisher.close(0.0)  # what the outbox holds stays on disk for the next start
        raise
    control.start()
    control.publish_state()
    counters: Counters | None = None
    try:
        notifier.status("measuring costs")
        counters = agent.run(frames)
    finally:
        notifier.stopping()
        notifier.status("stopping: draining the outbox")
        control.stop()
        agent.close()
        drained = publisher.drain()
        if counters is not None and drained:
            agent.publish_status("stopped")  # again: the retained one shows the drained outbox
        drained = publisher.close() and drained
        notifier.close()
    return counters, drained
