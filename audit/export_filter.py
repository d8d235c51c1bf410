"""The export request: the filter that picks a bundle's range and the records it opens.

`ExportFilter` is the time range [from, to) and the optional client, subject
pseudonym and tenant; `parse_time_ms` reads a bound as given on the command
line or in a query; `ExportError` is a request that cannot be served as asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["ExportError", "ExportFilter", "parse_time_ms"]


class ExportError(Exception):
    """The export request cannot be served as asked (bad range, foreign checkpoint, file exists)."""


@dataclass(frozen=True)
class ExportFilter:
    """Records with from_ms <= ts_ms < to_ms (the range), opened when they are of the
    client, subject pseudonym and tenant given (each optional).

    `tenant` scopes to one tenant's records; `tenant_scoped=True` with `tenant=None`
    scopes to the records of no tenant (a caller without one). Neither: every tenant.
    """

    from_ms: int
    to_ms: int
    client_id: str | None = None
    subject_pseudonym: str | None = None
    tenant: str | None = None
    tenant_scoped: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.from_ms <= self.to_ms:
            raise ExportError(f"time range [{self.from_ms}, {self.to_ms}) is empty or negative")
        if "" in (self.client_id, self.subject_pseudonym, self.tenant):
            raise ExportError("an empty client, subject or tenant filter selects nothing; omit it")
        if self.tenant is not None:
            object.__setattr__(self, "tenant_scoped", True)

    @property
    def narrows(self) -> bool:
        """Some leaves of the range stay unopened (hash only)."""
        return self.tenant_scoped or (self.client_id, self.subject_pseudonym) != (None, None)

    def opens(self, record: dict[str, Any]) -> bool:
        """Whether a record inside the range is opened (`audit.bundle.opens`)."""
        if self.client_id is not None and record.get("client_id") != self.client_id:
            return False
        if self.subject_pseudonym is not None and record.get("subject") != self.subject_pseudonym:
            return False
        return not self.tenant_scoped or record.get("tenant") == self.tenant

    def matches(self, record: dict[str, Any]) -> bool:
        """Inside the time range and opened."""
        ts = record.get("ts_ms")
        return isinstance(ts, int) and self.from_ms <= ts < self.to_ms and self.opens(record)

    def as_json(self) -> dict[str, Any]:
        return {
            "from_ms": self.from_ms,
            "to_ms": self.to_ms,
            "client_id": self.client_id,
            "subject": self.subject_pseudonym,
            "tenant": self.tenant,
            "tenant_scoped": self.tenant_scoped,
        }


def parse_time_ms(value: str, name: str) -> int:
    """An export bound: epoch milliseconds, or ISO 8601 (a date is midnight; no zone is UTC)."""
    if value.isdigit() and len(value) <= 15:
        return int(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(f"{name}: epoch milliseconds or ISO 8601, not {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
