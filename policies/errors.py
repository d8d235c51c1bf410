"""The one error type of the policy concern: a bundle, a data policy or a decision refused.

Every refusal names where it came from (file, line, key) so that an operator can fix
the bundle without reading a traceback; ``str(error)`` renders ``file:line: key: message``.
"""

from __future__ import annotations


class PolicyError(Exception):
    """A policy bundle (or one of its parts) cannot be loaded, verified or evaluated."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [p for p in (where, self.key) if p]
        return ": ".join([*parts, self.message])
