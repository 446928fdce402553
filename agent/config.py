"""The agent's configuration: one TOML file, one strictly typed model.

Unknown keys are rejected and every error names its path (e.g. `models.1.path`), as
Frigate and zigbee2mqtt do it. Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import functools
import operator
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from agent.configbase import ID_PATTERN, ConfigError, Identifier, Paced, Strict
from agent.costs import PROBES
from agent.models import ADAPTERS
from agent.selection import POLICIES
from agent.sources import SOURCES
from links_tflite.tasks import TaskSpec, TaskSpecError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ID_PATTERN", "AgentConfig", "ConfigError", "Identifier", "Strict", "load_config"]

# The plugins' names: each seam's choices, derived from its registry (agent.registry).
if TYPE_CHECKING:
    AdapterName = str
    PolicyName = str
    ProbeName = str
else:
    AdapterName = Literal[ADAPTERS.names()]
    PolicyName = Literal[POLICIES.names()]
    PROBE_CHOICES = ("auto", *PROBES.names())
    ProbeName = Literal[PROBE_CHOICES]


def read_secret(path: Path | None, credential: str | None, where: str, what: str
                ) -> str | None:
    """A secret from a file or a systemd credential ($CREDENTIALS_DIRECTORY/<name>), read when
    needed so that it never sits in the config, on the command line or in config/state."""
    if credential is not None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError([(f"{where}_credential",
                                "$CREDENTIALS_DIRECTORY is not set (not started by systemd "
                                "with LoadCredential=?)")])
        path = Path(directory) / credential
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError([(where.rsplit(".", 1)[0], f"cannot read {what} from {path}: "
                                                     f"{exc.strerror or exc}")]) from None


class TlsConfig(Strict):
    """`[mqtt.tls]`: TLS to the broker. Without `ca_file` the system's CAs are trusted."""

    ca_file: Path | None = Field(None, description="the CA certificate(s) that signed the broker's")
    cert_file: Path | None = Field(None, description="client certificate (PEM), with key_file")
    key_file: Path | None = Field(None, description="the client certificate's private key (PEM)")
    verify_hostname: bool = Field(True, description="check the broker's name in its certificate")

    @model_validator(mode="after")
    def _cert_with_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give cert_file and key_file together")
        return self


class MqttConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    prefix: Identifier = "mlink"
    client_id: str | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(30, ge=5, le=3600)
    qos: Literal[0, 1] = 1
    connect_timeout_s: float = Field(
        10.0, gt=0.0, le=3600.0,
        description="at start, how long an unreachable broker is retried before the agent "
                    "exits (status 2); later outages are reconnected with back-off")
    status_every_s: float = Field(
        5.0, ge=0.5, le=3600.0,
        description="how often the retained status is published while running (also on each "
                    "change, and at the end)")
    username: str | None = Field(None, min_length=1, max_length=256)
    password_file: Path | None = Field(None, description="a file holding only the password")
    password_credential: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,128}$",
        description="a systemd credential (LoadCredential=) holding the password",
    )
    tls: TlsConfig | None = None

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttConfig:
        if self.password_file is not None and self.password_credential is not None:
            raise ValueError("give password_file or password_credential, not both")
        return self

    def password(self) -> str | None:
        """Read when connecting, never stored in the config or shown in config/state."""
        return read_secret(self.password_file, self.password_credential, "mqtt.password",
                           "the broker password")


class StateConfig(Strict):
    """Where the agent keeps what must survive a restart: the outbox, the remotely set
    config, pushed bundles. Unset: `$STATE_DIRECTORY` (systemd's StateDirectory=), else
    `state/` next to the config file."""

    dir: Path | None = None
    outbox_max_messages: int = Field(100_000, ge=10, le=100_000_000)
    synchronous: Literal["normal", "full"] = Field(
        "normal", description="SQLite fsync policy: normal survives a crash, full a power cut"
    )
    max_bundle_mb: float = Field(64.0, gt=0.0, le=4096.0)
    stop_drain_s: float = Field(
        30.0, gt=0.0, le=50.0,
        description="on stop, how long the agent waits for the outbox's outputs to be "
                    "acknowledged before it exits and keeps the rest for the next start; keep "
                    "it 10 s under the unit's TimeoutStopSec (60)")


class FleetConfig(Strict):
    """`[fleet]`: the groups this box belongs to. It also takes `config/set` and `cmd/*` on
    `<prefix>/groups/<group>/...` for each, answered on its own response topics. Local only
    (a remote change cannot move a box into another group)."""

    groups: list[Identifier] = Field(default_factory=list, max_length=32)
    # relinking (agent.windowstore, agent.uploads; docs/mqtt.md, "Uploads")
    keep_windows: bool = Field(True, description="keep the profiling windows' rows (every "
                                                 "model's exact outputs) in <state dir>/windows")
    window_rows: int = Field(2000, ge=100, le=50_000,
                             description="the newest rows kept; beyond, the oldest go, counted")
    upload_chunk_kb: int = Field(128, ge=16, le=1024, description="KiB per upload chunk")
    drift_margin: float = Field(0.0, ge=0.0, le=1.0,
                                description="0: off; else upload (reason drift) when a window's "
                                            "live agreement of the predicted models falls below "
                                            "the bundle profile's by more than this")
    drift_min_interval_s: float = Field(3600.0, ge=0.0, le=10**7,
                                        description="at most one drift upload per interval")

    @field_validator("groups")
    @classmethod
    def _unique(cls, groups: list[str]) -> list[str]:
        if len(set(groups)) != len(groups):
            raise ValueError("a group is listed twice")
        return groups


class ControlConfig(Strict):
    """`[control]`: what a remote request must carry to be obeyed. With `require_signature`,
    `config/set` and every `cmd/<name>` must be signed with HMAC-SHA256 under the key held on
    the box (agent/security.py; the scheme: docs/mqtt.md). Not settable remotely."""

    require_signature: bool = False
    key_file: Path | None = Field(None, description="a file holding only the signing key")
    key_credential: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,128}$",
        description="a systemd credential (LoadCredential=) holding the signing key",
    )

    response_topics: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=64,
        description="topic filters (besides <prefix>/<device_id>/reply/#) a request's MQTT v5 "
                    "ResponseTopic may name")
    rate_per_s: float = Field(20.0, ge=0.0, le=100_000.0,
                              description="requests obeyed per second per request topic "
                                          "(0: no limit); beyond it they are dropped, counted")
    burst: int = Field(40, ge=1, le=100_000, description="requests at once per topic")

    @field_validator("response_topics")
    @classmethod
    def _topic_filters(cls, filters: list[str]) -> list[str]:
        for topic_filter in filters:
            levels = topic_filter.split("/")
            if "\x00" in topic_filter or topic_filter.startswith("$") or any(
                    ("#" in level and (level != "#" or i != len(levels) - 1))
                    or ("+" in level and level != "+") for i, level in enumerate(levels)):
                raise ValueError(f"{topic_filter!r} is not an MQTT topic filter")
        return filters

    @model_validator(mode="after")
    def _one_key_source(self) -> ControlConfig:
        if self.key_file is not None and self.key_credential is not None:
            raise ValueError("give key_file or key_credential, not both")
        if self.require_signature and self.key_file is None and self.key_credential is None:
            raise ValueError("require_signature needs key_file or key_credential")
        return self

    def key(self) -> bytes | None:
        """The signing key (the file's text without its final newline), at least 16 bytes."""
        text = read_secret(self.key_file, self.key_credential, "control.key", "the signing key")
        if text is None:
            return None
        key = text.encode("utf-8")
        if len(key) < 16:
            raise ConfigError([("control", "the signing key must be at least 16 bytes")])
        return key


class ModelPublishConfig(Strict):
    """How one model's outputs go out (`[publish.per_model.<id>]`); settable remotely.
    Every frame's message on `frames/<camera>` holds the model's output unless a rule below
    leaves it out; `topic` adds a per-model topic `models/<id>/output` for consumers that want
    one topic per model."""

    topic: Literal["off", "qos0", "qos1"] = Field(
        "off", description="also publish on models/<id>/output: off, qos0, or qos1 (through "
                           "the outbox)")
    last: bool = Field(False, description="keep the latest output retained on "
                                          "models/<id>/last")
    decimals: int | None = Field(None, ge=0, le=12,
                                 description="round numbers to this many decimals; unset = "
                                             "the task's default")
    min_agreement: float = Field(0.0, ge=0.0, le=1.0,
                                 description="a predicted output whose expected agreement is "
                                             "below this is withheld")
    below_min_agreement: Literal["withhold", "drop"] = Field(
        "withhold", description="withhold: published with value null and withheld = "
                                "'low agreement'; drop: left out of the message")
    min_interval_s: float = Field(0.0, ge=0.0, le=86_400.0,
                                  description="publish at most once per this many seconds")
    on_change: bool = Field(False, description="publish only when the value changed by more "
                                               "than change_tolerance")
    change_tolerance: float = Field(0.0, ge=0.0, le=1e9)


_DEFAULT_MODEL_PUBLISH = ModelPublishConfig()


class PublishConfig(Strict):
    """What goes out on the outputs topic; settable remotely."""

    decoded: bool = Field(True, description="include the human-readable `decoded` field")
    models: list[Identifier] | None = Field(
        None, description="publish the outputs of these models only; unset = every model"
    )
    per_model: dict[Identifier, ModelPublishConfig] = Field(
        default_factory=dict, max_length=1024,
        description="per-model publishing rules, keyed by model id; unset = the defaults")
    home_assistant: bool = Field(False, description="Home Assistant MQTT discovery")
    discovery_prefix: Identifier = "homeassistant"

    def for_model(self, model_id: str) -> ModelPublishConfig:
        """The publishing rules of one model: its `per_model` table, or the defaults."""
        return self.per_model.get(model_id, _DEFAULT_MODEL_PUBLISH)


class BundleConfig(Strict):
    path: Path


if TYPE_CHECKING:
    class SourceConfig(Paced):
        type: str
else:  # the source plugins' config classes, told apart by `type` (agent.sources)
    SourceConfig = Annotated[functools.reduce(operator.or_, SOURCES.config_classes()),
                             Field(discriminator="type")]


class TaskConfig(Strict):
    """A model's task spec (links_tflite.tasks.TaskSpec), declared with the model."""

    kind: Literal["single_label", "multi_label", "localization", "regression", "sequence"]
    dim: int = Field(0, ge=0, le=100_000)
    activation: str = ""
    measure: str = ""
    tolerance: float = Field(0.5, ge=0.0)
    vocab_size: int = Field(0, ge=0, le=1_000_000)
    max_len: int = Field(0, ge=0, le=10_000)
    labels: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _is_a_task_spec(self) -> TaskConfig:
        self.spec()
        return self

    def spec(self) -> TaskSpec:
        try:
            return TaskSpec(**{**self.model_dump(), "labels": tuple(self.labels)})
        except TaskSpecError as exc:
            raise ValueError(str(exc)) from None


ENTRY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

# Fields that name code or files. They come from the local TOML only: a remote config change
# may enable or disable configured models, never set these (DESIGN: remote messages cannot
# name files nor run code).
LOCAL_ONLY_MODEL_FIELDS = ("adapter", "path", "entry")


class ModelConfig(Strict):
    """One black-box model. `adapter = "tflite"` needs `path` (a .tflite file, run by LiteRT
    with `threads` threads), as does `adapter = "onnx"` (an .onnx file, run by ONNX Runtime
    where the extra `onnx` is installed); `adapter = "python"` needs `entry` =
    `module:callable` (a function taking one input example and returning the output, or a
    class whose instances do; an instance is made on load and dropped on unload). Each
    inference runs on the agent's runner thread and is abandoned after `timeout_ms` (0: run
    inline, no watchdog)."""

    id: Identifier
    adapter: AdapterName = "tflite"
    path: Path | None = None
    entry: Annotated[str, Field(pattern=ENTRY_PATTERN)] | None = None
    input: Identifier
    threads: int = Field(1, ge=1, le=64)
    enabled: bool = True
    task: TaskConfig | None = None
    timeout_ms: float = Field(5000.0, ge=0.0, le=3_600_000.0)
    load_timeout_s: float = Field(120.0, gt=0.0, le=3600.0)
    required: bool = Field(True, description="the model's file must exist when the agent "
                                             "starts; false: start without it (excluded, "
                                             "retried like a failed model)")

    @model_validator(mode="after")
    def _adapter_fields(self) -> ModelConfig:
        needs = ADAPTERS[self.adapter].needs
        if needs == "path" and (self.path is None or self.entry is not None):
            raise ValueError(f"adapter {self.adapter!r} needs `path` (and no `entry`)")
        if needs == "entry" and (self.entry is None or self.path is not None):
            raise ValueError(f"adapter {self.adapter!r} needs `entry` = 'module:callable' "
                             "(and no `path`)")
        return self


class BudgetConfig(Strict):
    memory_mb: float | None = Field(None, gt=0.0, le=1_000_000.0)
    delay_ms: float | None = Field(None, gt=0.0, le=3_600_000.0)


class SelectionConfig(Strict):
    """`policy`: see agent/selection.py. A failed model is excluded for `retry_after_s`,
    doubling after each further failure up to `retry_max_s`, then measured again."""

    policy: PolicyName = "activation"
    gate: bool = Field(False, description="policy plan under a delay budget: run a predicted "
                       "model on its least confident frames with the delay the plan leaves")
    retry_after_s: float = Field(5.0, ge=0.0, le=86_400.0)
    retry_max_s: float = Field(300.0, ge=0.0, le=86_400.0)


class ProfilingConfig(Strict):
    """Start-up measurement (`warmup_runs`, `delay_runs`) and periodic re-profiling: every
    `period_frames` frames or `period_s` seconds (whichever comes first; 0 = never), the next
    `sample_frames` frames run every available model, which updates the costs and the online
    agreement of the links; then the selection is re-made."""

    warmup_runs: int = Field(3, ge=0, le=1000)
    delay_runs: int = Field(20, ge=1, le=10_000)
    period_frames: int = Field(1000, ge=0, le=10**12)
    period_s: float = Field(0.0, ge=0.0, le=10**9)
    sample_frames: int = Field(20, ge=1, le=100_000)
    min_samples: int = Field(20, ge=1, le=10**9, description="the frames the bundle's figure "
                                                   "counts as beside the online ones (and "
                                                   "those an online figure the bundle lacks "
                                                   "needs)")
    agreement_window: int = Field(60, ge=1, le=100_000, description="frames per online figure")
    online_subsets_max_sources: int = Field(8, ge=1, le=16)
    ema_alpha: float = Field(0.2, gt=0.0, le=1.0, description="the memory figure's weight of a "
                                                                 "new load (an EMA over loads)")
    delay_window: int = Field(200, ge=1, le=100_000, description="runs a delay's median is taken "
                                                                  "over (what selection reads)")
    memory_probe: ProbeName = "auto"


class AgentConfig(Strict):
    device_id: Identifier
    mqtt: MqttConfig = MqttConfig()
    bundle: BundleConfig
    source: SourceConfig | None = None
    sources: list[SourceConfig] = Field(default_factory=list, max_length=64,
                                        description="several cameras, each with an `id`")
    models: list[ModelConfig] = Field(min_length=1)
    budget: BudgetConfig = BudgetConfig()
    selection: SelectionConfig = SelectionConfig()
    profiling: ProfilingConfig = ProfilingConfig()
    state: StateConfig = StateConfig()
    publish: PublishConfig = PublishConfig()
    control: ControlConfig = ControlConfig()
    fleet: FleetConfig = FleetConfig()
    max_frames: int | None = Field(None, ge=1, le=2**53)
    warm_up: list[Annotated[str, Field(pattern=ENTRY_PATTERN)]] = Field(
        default_factory=list, max_length=8,
        description="Python callables `module:callable` the agent calls once at start, before "
                    "it measures any model: what they allocate for good (a CUDA context, "
                    "cuDNN and cuBLAS) is then the process's, not the first model's. Local only.")

    @field_validator("device_id")
    @classmethod
    def _not_reserved(cls, device_id: str) -> str:
        from agent.transport.topics import RESERVED_ROOTS

        if device_id in RESERVED_ROOTS:
            raise ValueError(f"{device_id!r} names the fleet's topics under the prefix "
                             f"(reserved: {', '.join(RESERVED_ROOTS)})")
        return device_id

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for model in models:
            if model.id in seen:
                raise ValueError(f"duplicate model id {model.id!r}")
            seen.add(model.id)
        return models

    @model_validator(mode="after")
    def _one_source_table(self) -> AgentConfig:
        if (self.source is None) == (not self.sources):
            raise ValueError("give one [source] table or [[sources]] tables, not both")
        seen: set[str] = set()
        for i, source in enumerate(self.sources):
            if source.id is None:
                raise ValueError(f"sources.{i}: every one of [[sources]] needs an `id`")
            if source.id in seen:
                raise ValueError(f"sources.{i}: duplicate source id {source.id!r}")
            seen.add(source.id)
        return self

    @property
    def source_configs(self) -> list[Any]:
        """`[source]`, or the `[[sources]]`, as one list."""
        return [self.source] if self.source is not None else list(self.sources)

    @property
    def source_type(self) -> str:
        """The source's type, or the sources' joined by `+`."""
        return "+".join(dict.fromkeys(s.type for s in self.source_configs))

    @model_validator(mode="after")
    def _some_enabled(self) -> AgentConfig:
        if not any(m.enabled for m in self.models):
            raise ValueError("at least one model must be enabled")
        return self

    @model_validator(mode="after")
    def _published_models_exist(self) -> AgentConfig:
        known = {m.id for m in self.models}
        unknown = sorted(set(self.publish.models or ()) - known)
        if unknown:
            raise ValueError(f"publish.models: unknown model ids {unknown}")
        unknown = sorted(set(self.publish.per_model) - known)
        if unknown:
            raise ValueError(f"publish.per_model: unknown model ids {unknown}")
        return self

    @property
    def enabled_models(self) -> list[ModelConfig]:
        return [m for m in self.models if m.enabled]


def missing_model_files(config: AgentConfig) -> list[tuple[str, str]]:
    """(path, message) for each enabled, required model whose file is not there."""
    return [(f"models.{i}.path", f"{m.path}: no such file (model {m.id!r}; set "
                                 f"`required = false` to start without it)")
            for i, m in enumerate(config.models)
            if m.enabled and m.required and m.path is not None and not m.path.is_file()]


def _error_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def validate(data: dict[str, Any], base_dir: Path, source: str = "config") -> AgentConfig:
    """Validate a parsed config; relative paths become relative to `base_dir`."""
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        errors = [(_error_path(e["loc"]), e["msg"]) for e in exc.errors()]
        raise ConfigError(errors, source) from None
    return _resolve_paths(config, base_dir)


def _resolve_paths(config: AgentConfig, base_dir: Path) -> AgentConfig:
    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else (base_dir / path).resolve()

    return config.model_copy(
        update={
            "bundle": config.bundle.model_copy(update={"path": resolve(config.bundle.path)}),
            "source": None if config.source is None else _resolve_source(config.source, resolve),
            "sources": [_resolve_source(s, resolve) for s in config.sources],
            "models": [m.model_copy(update={"path": None if m.path is None else resolve(m.path)})
                       for m in config.models],
            "state": config.state.model_copy(update={"dir": resolve(state_dir(config, base_dir))}),
            "mqtt": _resolve_mqtt(config.mqtt, resolve),
            "control": config.control.model_copy(update={"key_file": resolve(
                config.control.key_file)}) if config.control.key_file else config.control,
        }
    )


def _resolve_mqtt(mqtt: MqttConfig, resolve: Any) -> MqttConfig:
    if mqtt.password_file is not None:
        mqtt = mqtt.model_copy(update={"password_file": resolve(mqtt.password_file)})
    if mqtt.tls is not None:
        files = {k: resolve(v) for k, v in mqtt.tls.model_dump().items()
                 if k.endswith("_file") and v is not None}
        mqtt = mqtt.model_copy(update={"tls": mqtt.tls.model_copy(update=files)})
    return mqtt


def _resolve_source(source: Any, resolve: Any) -> Any:
    if getattr(source, "path", None) is not None:
        return source.model_copy(update={"path": resolve(source.path)})
    return source


def state_dir(config: AgentConfig, base_dir: Path) -> Path:
    """`[state] dir`, else systemd's `$STATE_DIRECTORY` (first entry), else `<base_dir>/state`."""
    if config.state.dir is not None:
        return config.state.dir
    from_systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(from_systemd) if from_systemd else base_dir / "state"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The config file parsed but not yet validated (for tools that adjust it first)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror or exc}")], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"not a TOML text file: not UTF-8 at byte {exc.start}")],
                          str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        where = f"line {match.group(1)}" if match else ""
        raise ConfigError([(where, f"not valid TOML: {exc}")], str(path)) from None


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    data = read_config_file(path)
    return validate(data, path.parent.resolve(), str(path))
