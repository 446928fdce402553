"""One registry pattern for every plugin seam; the config's choices come from it."""

from __future__ import annotations

import typing

import pytest

from agent.config import AgentConfig, ModelConfig, ProfilingConfig, SelectionConfig
from agent.costs import PROBES
from agent.models import ADAPTERS
from agent.registry import Registry
from agent.selection import POLICIES
from agent.sources import SOURCES
from offline_trainer.workloads import WORKLOADS


class Plugin:
    name = "one"


class Other:
    name = "one"


def test_a_plugin_is_registered_once_under_its_name() -> None:
    registry: Registry[type] = Registry("thing", key="name")
    assert registry.register(Plugin) is Plugin
    registry.register(Plugin)  # again: the same class, nothing changes
    assert list(registry) == ["one"] and registry["one"] is Plugin
    with pytest.raises(ValueError, match="thing 'one' is registered twice"):
        registry.register(Other)
    with pytest.raises(KeyError, match="unknown thing 'two' \\(known: one\\)"):
        registry["two"]


def test_plugin_packages_are_found_by_importing_them() -> None:
    assert set(SOURCES) == {"replay", "city", "digits", "images", "video", "camera", "lines",
                            "jsonl", "mqtt"}  # agent/sources/many.py, decode.py... register nothing
    assert set(ADAPTERS) == {"tflite", "python", "onnx"}
    assert set(POLICIES) == {"activation", "exact", "standalone", "all", "plan"}
    assert set(PROBES) == {"rss", "pss", "nvml", "jetson"}
    assert set(WORKLOADS) == {"digits", "city"}


def test_the_configs_choices_are_the_registries() -> None:
    def choices(model: type, field: str) -> set[str]:
        return set(typing.get_args(model.model_fields[field].annotation))

    assert choices(ModelConfig, "adapter") == set(ADAPTERS)
    assert choices(SelectionConfig, "policy") == set(POLICIES)
    assert choices(ProfilingConfig, "memory_probe") == {"auto", *PROBES}
    # `[source]` (or None when `[[sources]]` are given) and each of `[[sources]]`
    one, none = typing.get_args(AgentConfig.model_fields["source"].annotation)
    (each,) = typing.get_args(AgentConfig.model_fields["sources"].annotation)
    assert none is type(None) and one == each
    source_configs = set(typing.get_args(typing.get_args(one)[0]))
    assert source_configs == {plugin.config_class for plugin in SOURCES.values()}
    for name, plugin in SOURCES.items():  # each source's config names it
        assert typing.get_args(plugin.config_class.model_fields["type"].annotation) == (name,)
