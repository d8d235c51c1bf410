"""Rate limits, query budgets and detector state shared by the workers of one box.

`gateway serve --workers N` without Redis: the supervisor hosts the objects the
in-process factory builds (`SHARED` names them) and each worker reaches them through
these clients, which implement the same protocols (`RateLimiter`, `Budgets`,
`DetectorState`) over a `Caller` (gateway.workers.channel). A call the state server
does not answer in time raises `StateUnavailableError`: the request is refused with
503, as when Redis is away (fail closed). Where the supervisor could make the box's
shared table (Linux), limits, budgets and cool-downs are read and written there instead
(table_state): a request then makes no call to the state server unless the detector
inspects its own feature values.

A method the clients do not name yet reaches the hosted object all the same through
`call` (`await state.call("forget", key)`), so a new method of an in-process object
needs no change on the wire.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from security.inspection.admission import Admitted, SubjectRate
from security.inspection.budget import Charge, Spend
from security.inspection.ratelimit import Take
from security.inspection.shared_table import SharedTable
from security.inspection.state import StateUnavailableError
from security.inspection.table_state import (
    TableAdmission,
    TableBudgets,
    TableDetectorState,
    TableRateLimiter,
)

# The Inspection attributes the supervisor hosts and the workers share, by name.
SHARED = ("limiter", "budgets", "state", "admission")


class Caller(Protocol):
    async def call(self, target: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """`target.method(*args, **kwargs)` in the state server; raises
        `StateUnavailableError` when it cannot tell."""
        ...


def _expect(value: Any, kind: type[Any], what: str) -> Any:
    if not isinstance(value, kind):
        raise StateUnavailableError(f"state server answered {what} with {type(value).__name__}")
    return value


class _Remote:
    def __init__(self, caller: Caller, target: str) -> None:
        self._caller = caller
        self._target = target

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self._caller.call(self._target, method, *args, **kwargs)


class SharedRateLimiter(_Remote):
    def __init__(self, caller: Caller, target: str = "limiter") -> None:
        super().__init__(caller, target)

    async def take(
        self, key: str, *, rate: float, burst: int, now: float, cost: float = 1.0
    ) -> Take:
        found = await self.call("take", key, rate=rate, burst=burst, now=now, cost=cost)
        result: Take = _expect(found, Take, "take")
        return result

    async def take_all(self, keys: list[str], *, rate: float, burst: int, now: float) -> Take:
        found = await self.call("take_all", keys, rate=rate, burst=burst, now=now)
        result: Take = _expect(found, Take, "take_all")
        return result


class SharedBudgets(_Remote):
    def __init__(self, caller: Caller, target: str = "budgets") -> None:
        super().__init__(caller, target)

    async def spend(self, key: str, rows: int, *, limit: int, window_s: int, now: float) -> Spend:
        found = await self.call("spend", key, rows, limit=limit, window_s=window_s, now=now)
        result: Spend = _expect(found, Spend, "spend")
        return result

    async def spend_all(self, charges: list[Charge], *, now: float) -> Spend:
        found = await self.call("spend_all", charges, now=now)
        result: Spend = _expect(found, Spend, "spend_all")
        return result


class SharedAdmission(_Remote):
    def __init__(self, caller: Caller, target: str = "admission") -> None:
        super().__init__(caller, target)

    async def admit(
        self,
        *,
        subject_rate: SubjectRate | None,
        charges: list[Charge],
        cooldown_key: str | None,
        now: float,
    ) -> Admitted:
        found = await self.call(
            "admit", subject_rate=subject_rate, charges=charges, cooldown_key=cooldown_key, now=now
        )
        result: Admitted = _expect(found, Admitted, "admit")
        return result


class SharedDetectorState(_Remote):
    def __init__(self, caller: Caller, target: str = "state") -> None:
        super().__init__(caller, target)

    async def add(
        self,
        cells: NDArray[np.int64],
        *,
        now: float,
        tau: float,
        events: NDArray[Any] | None = None,
    ) -> NDArray[np.float64]:
        found = await self.call("add", cells, now=now, tau=tau, events=events)
        counts: NDArray[np.float64] = _expect(found, np.ndarray, "add")
        return counts

    async def cooldown(self, key: str, *, now: float) -> float:
        found = await self.call("cooldown", key, now=now)
        if isinstance(found, bool) or not isinstance(found, float | int):
            raise StateUnavailableError("state server answered cooldown with a non-number")
        return float(found)

    async def strike(
        self, key: str, *, now: float, window_s: int, after: int, cooldown_s: int, member: str
    ) -> tuple[int, float]:
        found = await self.call(
            "strike",
            key,
            now=now,
            window_s=window_s,
            after=after,
            cooldown_s=cooldown_s,
            member=member,
        )
        count, until = _expect(found, tuple, "strike")
        return int(count), float(until)

    async def aclose(self) -> None:
        return None  # the state outlives a worker: the supervisor owns it


def share(inspection: Any, caller: Caller, table: SharedTable | None = None) -> None:
    """Point a worker's inspection (security.inspection.wiring.Inspection) at the shared
    objects: the in-process ones it was built with are swapped for clients, wherever
    the detector holds them too. With the box's shared table (Linux: the supervisor
    made one), limits, budgets and cool-downs live there (table_state) and only the
    detector's sketch and strikes are calls to the state server."""
    clients: dict[str, Any]
    if table is None:
        clients = {
            "limiter": SharedRateLimiter(caller),
            "budgets": SharedBudgets(caller),
            "state": SharedDetectorState(caller),
            "admission": SharedAdmission(caller),
        }
    else:
        limiter, budgets = TableRateLimiter(table), TableBudgets(table)
        state = TableDetectorState(SharedDetectorState(caller), table)
        clients = {
            "limiter": limiter,
            "budgets": budgets,
            "state": state,
            "admission": TableAdmission(limiter, budgets, state),
        }
    for name in SHARED:
        local = getattr(inspection, name)
        client = clients.get(name) or _Remote(caller, name)
        setattr(inspection, name, client)
        detector = getattr(inspection, "detector", None)
        if detector is not None:
            for attribute, value in list(vars(detector).items()):
                if value is local:
                    setattr(detector, attribute, client)
