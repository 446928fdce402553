"""The one error that says what is refused and where: a list of (path, message) pairs, the
path in the request (`budget.memory_mb`, `""` for the whole request). Remote control answers
every refusal with them (agent.control); the bounds (agent.limits) and the signature check
(agent.security) raise their own kinds of it."""

from __future__ import annotations

Errors = list[tuple[str, str]]


class RequestError(ValueError):
    """A request, or a value in one, that is refused; `errors` holds (path, message) pairs."""

    def __init__(self, errors: Errors) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{p or '<root>'}: {m}" for p, m in self.errors))
