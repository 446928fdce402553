"""Every topic of the MQTT contract, built and parsed here (root `<prefix>/<device_id>/`).

`Topics` builds one agent's topics; `parse` reads any topic of the contract back into a
`TopicRef` (which device, what kind, which camera, model or command), for subscribers
(`mlink-agent watch`, the demo's collector) and for the request topics control reads
(`Topics.request`). Nothing else in the project splits a topic on `/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

TopicKind = Literal["availability", "status", "status_costs", "frames", "output", "last",
                    "config_set", "config_response", "config_state", "command",
                    "command_response", "reply", "upload", "upload_chunk", "relink",
                    "relink_results"]

UPLOAD_ID = re.compile(r"^[a-z0-9-]{1,40}$")  # an upload's id (`<unix-seconds>-<4 hex>`)
MAX_UPLOAD_PART = 4095  # the last chunk index an upload may have (4096 chunks)

# the kinds whose topic is fixed below the root
_FIXED: dict[tuple[str, ...], TopicKind] = {
    ("availability",): "availability",
    ("status",): "status",
    ("status", "costs"): "status_costs",
    ("config", "set"): "config_set",
    ("config", "response"): "config_response",
    ("config", "state"): "config_state",
}


@dataclass(frozen=True)
class TopicRef:
    """A topic of the contract, read: `name` is the camera (`frames`), the model (`output`,
    `last`), the command (`command`, `command_response`) or the upload's id (`upload`,
    `upload_chunk`, whose index is `part`); empty for the others. The relinking job topics
    (`relink`, `relink_results`, under `<prefix>/fleet/`) belong to no device (`device`
    empty)."""

    prefix: str
    device: str
    kind: TopicKind
    name: str = ""
    part: int | None = None



# the names under `<prefix>/` that are not devices: no device_id may take one
RESERVED_ROOTS = ("fleet", "groups")


def parse(topic: str, prefix: str | None = None) -> TopicRef | None:
    """The contract's topic `topic` read back, or None when it is not one (with `prefix`, one
    under that prefix only). Group requests (`<prefix>/groups/...`) are not device topics."""
    parts = topic.split("/")
    if len(parts) < 3 or (prefix is not None and parts[0] != prefix) or not parts[1]:
        return None
    head, device, rest = parts[0], parts[1], tuple(parts[2:])
    if device == "fleet" and rest in (("relink",), ("relink", "results")):
        return TopicRef(head, "", "relink" if len(rest) == 1 else "relink_results")
    kind = _FIXED.get(rest)
    if kind is not None:
        return TopicRef(head, device, kind)
    name = rest[1] if len(rest) > 1 else ""
    if not name and rest[0] != "reply":
        return None
    if rest[0] == "frames" and len(rest) == 2:
        return TopicRef(head, device, "frames", name)
    if rest[0] == "models" and len(rest) == 3 and rest[2] in ("output", "last"):
        return TopicRef(head, device, "output" if rest[2] == "output" else "last", name)
    if rest[0] == "cmd" and len(rest) == 2:
        return TopicRef(head, device, "command", name)
    if rest[0] == "cmd" and len(rest) == 3 and rest[2] == "response":
        return TopicRef(head, device, "command_response", name)
    if rest[0] == "reply":
        return TopicRef(head, device, "reply", "/".join(rest[1:]))
    if rest[0] == "uploads" and len(rest) in (2, 3) and UPLOAD_ID.match(name):
        if len(rest) == 2:
            return TopicRef(head, device, "upload", name)
        part = rest[2]
        if part.isascii() and part.isdigit() and len(part) <= 4 and \
                int(part) <= MAX_UPLOAD_PART and str(int(part)) == part:
            return TopicRef(head, device, "upload_chunk", name, int(part))
    return None


def relink_topic(prefix: str) -> str:
    """The relinking jobs (`<prefix>/fleet/relink`): each box's upload manifest, not retained,
    for the trainer workers that share it (docs/mqtt.md)."""
    return f"{prefix}/fleet/relink"


def relink_results_topic(prefix: str) -> str:
    """What the trainer workers made of the jobs (`<prefix>/fleet/relink/results`)."""
    return f"{prefix}/fleet/relink/results"


class Topics:
    """One agent's topics, under `<prefix>/<device_id>`."""

    def __init__(self, prefix: str, device_id: str, groups: tuple[str, ...] = ()) -> None:
        self.prefix = prefix
        self.device_id = device_id
        self.root = f"{prefix}/{device_id}"
        # the roots of the groups' request topics (`[fleet] groups`): the same requests,
        # addressed to every box of a group; each box answers on its own response topics
        self.group_roots = tuple(f"{prefix}/groups/{group}" for group in groups)
        self.all_groups = f"{prefix}/groups/#"  # never a reply topic

    @property
    def availability(self) -> str:
        return f"{self.root}/availability"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def status_costs(self) -> str:
        return f"{self.root}/status/costs"

    def frames(self, camera: str) -> str:
        """One message per frame of this camera (every model's output)."""
        return f"{self.root}/frames/{camera}"

    def output(self, model_id: str) -> str:
        """One model's output per frame, where `[publish.per_model.<id>] topic` asks for it."""
        return f"{self.root}/models/{model_id}/output"

    def last(self, model_id: str) -> str:
        """One model's latest output, retained (`[publish.per_model.<id>] last`)."""
        return f"{self.root}/models/{model_id}/last"

    @property
    def config_set(self) -> str:
        return f"{self.root}/config/set"

    @property
    def config_response(self) -> str:
        return f"{self.root}/config/response"

    @property
    def config_state(self) -> str:
        return f"{self.root}/config/state"

    def command(self, name: str) -> str:
        return f"{self.root}/cmd/{name}"

    def command_response(self, name: str) -> str:
        return f"{self.root}/cmd/{name}/response"

    def upload(self, upload_id: str) -> str:
        """An upload's manifest (retained; agent.uploads)."""
        return f"{self.root}/uploads/{upload_id}"

    def upload_chunk(self, upload_id: str, part: int) -> str:
        """Chunk `part` (0, 1, ...) of an upload's .npz (retained)."""
        return f"{self.root}/uploads/{upload_id}/{part}"

    @property
    def relink(self) -> str:
        return relink_topic(self.prefix)

    @property
    def reply_root(self) -> str:
        """Where MQTT v5 ResponseTopics are honoured without an allow-list."""
        return f"{self.root}/reply/"

    # -- reading this agent's topics back -------------------------------------------------
    def parse(self, topic: str) -> TopicRef | None:
        """`topic` read back when it is one of this agent's, else None."""
        ref = parse(topic, self.prefix)
        return ref if ref is not None and ref.device == self.device_id else None

    def request(self, topic: str) -> TopicRef | None:
        """A request topic of this agent (`config/set` or `cmd/<name>`), else None."""
        ref = self.parse(topic)
        return ref if ref is not None and ref.kind in ("config_set", "command") else None

    def command_name(self, topic: str) -> str | None:
        """The command a `cmd/<name>` topic of this agent names, else None."""
        ref = self.parse(topic)
        return ref.name if ref is not None and ref.kind == "command" else None

    def request_suffix(self, topic: str) -> str:
        """What a request topic asks for: its suffix below this agent's root or one of its
        groups' roots (`config/set`, `cmd/reselect`); the whole topic when it is neither."""
        for root in (self.root, *self.group_roots):
            if topic.startswith(f"{root}/"):
                return topic[len(root) + 1:]
        return topic

    def is_config_set(self, topic: str) -> bool:
        return topic == self.config_set
