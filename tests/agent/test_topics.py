"""Every topic of the contract is built and parsed in one place (agent/transport/topics.py)."""

from __future__ import annotations

from agent.transport import Topics, parse


def test_every_topic_is_parsed_back_as_it_was_built() -> None:
    topics = Topics("mlink", "box")
    built = {topics.availability: ("availability", ""), topics.status: ("status", ""),
             topics.status_costs: ("status_costs", ""), topics.frames("gate"): ("frames", "gate"),
             topics.output("digit"): ("output", "digit"), topics.last("digit"): ("last", "digit"),
             topics.config_set: ("config_set", ""), topics.config_state: ("config_state", ""),
             topics.config_response: ("config_response", ""),
             topics.command("bundle"): ("command", "bundle"),
             topics.command_response("bundle"): ("command_response", "bundle"),
             topics.reply_root + "a/b": ("reply", "a/b")}
    for topic, (kind, name) in built.items():
        ref = topics.parse(topic)
        assert ref is not None and (ref.kind, ref.name, ref.device) == (kind, name, "box"), topic
    assert topics.parse("mlink/other/status") is None  # another device's
    assert topics.parse("mlink/box/models/digit") is None
    assert topics.parse("mlink/box/frames/a/b") is None
    assert topics.command_name(topics.command("reselect")) == "reselect"
    assert topics.command_name(topics.config_set) is None
    assert topics.request(topics.config_set) is not None
    assert topics.request(topics.status) is None


def test_a_subscriber_reads_any_device_s_topics() -> None:
    ref = parse("mlink/box-2/frames/yard", "mlink")
    assert ref is not None and (ref.device, ref.kind, ref.name) == ("box-2", "frames", "yard")
    assert parse("mlink/box-2/frames/yard", "other") is None
    assert parse("mlink/groups/g1/config/set", "mlink") is None  # a group's, no device's
    assert parse("mlink/box", "mlink") is None
