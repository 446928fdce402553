"""One pattern for every plugin seam (sources, model adapters, selection policies, memory
probes; the trainer's workloads): a `Registry` of plugin classes by name.

A plugin is one class, registered where it is defined (`@REGISTRY.register`), naming itself
by a class attribute (`type`, `adapter`, `name`) and, where it is configured, carrying its
config class (`config_class`). A registry with a `package` imports every module of that
package the first time it is read (as Frigate finds its detectors in
`frigate/detectors/plugins/`), so adding a plugin is one new file there; the config's choices
(agent/config.py) are derived from the registries, never listed by hand.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

P = TypeVar("P", bound=type)
CONFIG_CLASS = "config_class"  # the class attribute holding a plugin's config class


class Registry(Mapping[str, P], Generic[P]):
    def __init__(self, seam: str, key: str, package: str | None = None) -> None:
        self.seam = seam  # what a plugin is, in messages: "source", "adapter", ...
        self.key = key  # the class attribute holding a plugin's name
        self.package = package  # where plugin files are found
        self._plugins: dict[str, P] = {}
        self._discovered = package is None

    def register(self, plugin: P) -> P:
        """Class decorator: the plugin under its name."""
        name = getattr(plugin, self.key)
        known = self._plugins.get(name)
        if known is not None and known is not plugin:
            raise ValueError(f"{self.seam} {name!r} is registered twice: "
                             f"{known.__qualname__} and {plugin.__qualname__}")
        self._plugins[name] = plugin
        return plugin

    def _discover(self) -> None:
        if self._discovered or self.package is None:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)

    def __getitem__(self, name: str) -> P:
        self._discover()
        try:
            return self._plugins[name]
        except KeyError:
            raise KeyError(f"unknown {self.seam} {name!r} (known: "
                           f"{', '.join(self._plugins)})") from None

    def __iter__(self) -> Iterator[str]:
        self._discover()
        return iter(list(self._plugins))

    def __len__(self) -> int:
        self._discover()
        return len(self._plugins)

    def names(self) -> tuple[str, ...]:
        """The plugins' names, in registration order (built-in ones first)."""
        return tuple(self)

    def config_classes(self) -> tuple[Any, ...]:
        """Each plugin's config class (`config_class`), in registration order."""
        return tuple(getattr(plugin, CONFIG_CLASS) for plugin in self.values())
