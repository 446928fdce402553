"""The config's building blocks, shared by agent/config.py and the plugins that carry their
own config class (agent.registry): the strict base model, identifiers, the config error."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Identifier = Annotated[str, Field(pattern=ID_PATTERN)]


class ConfigError(ValueError):
    """A config that cannot be used; `errors` holds (path, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "config") -> None:
        self.errors = errors
        lines = "\n".join(f"  {path or '<root>'}: {message}" for path, message in errors)
        super().__init__(f"{source}: invalid configuration\n{lines}")


class Strict(BaseModel):
    # NaN and Infinity are refused everywhere ("Input should be a finite number"): a number
    # in the config must compare, add and serialise to JSON like a number.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Paced(Strict):
    """The base of a source's config: its name and its pace. Each source's config adds `type`
    (the source plugin's name, a Literal) and its own fields."""

    id: Identifier | None = Field(
        None, description="the camera's (feed's) name in outputs and status; required in "
                          "[[sources]]")
    fps: float = Field(0.0, ge=0.0, le=10_000.0, description="0 = as fast as possible")
    loop: bool = False
