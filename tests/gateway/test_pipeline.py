"""The pipeline contract: ordered stages, immutable contexts, refusals reach final stages."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.errors import GatewayError, InternalError, InvalidRequest
from gateway.pipeline import Pipeline, RequestContext
from gateway.settings import Settings


class Named:
    def __init__(self, name: str, fail: BaseException | None = None) -> None:
        self.name = name
        self.fail = fail
        self.seen: list[str] = []

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        if self.fail is not None:
            raise self.fail
        return ctx.evolve(result=(ctx.result or ()) + (self.name,))


class Recorder:
    name = "audit"

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...] | None, GatewayError | None]] = []

    async def __call__(self, ctx: RequestContext, error: GatewayError | None) -> None:
        self.calls.append((ctx.result, error))


def ctx() -> RequestContext:
    return RequestContext(request_id="r", action="rank", route="/", headers={})


def test_stage_order_is_enforced() -> None:
    Pipeline([Named("authenticate"), Named("authorize"), Named("rank")])
    with pytest.raises(ValueError, match="out of order"):
        Pipeline([Named("rank"), Named("authenticate")])
    with pytest.raises(ValueError, match="unknown pipeline stage"):
        Pipeline([Named("sneaky")])


@pytest.mark.asyncio
async def test_final_stage_sees_success_and_refusal() -> None:
    audit = Recorder()
    ok = await Pipeline([Named("authenticate"), Named("rank")], final=[audit]).run(ctx())
    assert ok.result == ("authenticate", "rank")
    assert audit.calls[-1] == (("authenticate", "rank"), None)
    refusal = InvalidRequest("no")
    with pytest.raises(InvalidRequest):
        await Pipeline([Named("authenticate"), Named("rank", refusal)], final=[audit]).run(ctx())
    assert audit.calls[-1] == (("authenticate",), refusal)


@pytest.mark.asyncio
async def test_a_bug_in_a_stage_is_refused_as_internal_error_and_reaches_final() -> None:
    audit = Recorder()
    # The message of a bug may quote what a client sent: the log gets where, not what.
    pipeline = Pipeline([Named("rank", ZeroDivisionError("zelda@example.net"))], final=[audit])
    with pytest.raises(InternalError) as raised:
        await pipeline.run(ctx())
    assert isinstance(audit.calls[-1][1], InternalError)
    cause = raised.value.log_cause or ""
    assert cause.startswith("ZeroDivisionError at test_pipeline.py:")
    assert "zelda" not in cause


def test_context_is_immutable_and_evolve_checks_fields() -> None:
    base = ctx()
    with pytest.raises(AttributeError):
        base.result = 1  # type: ignore[misc]
    changed = base.evolve(result=1)
    assert (base.result, changed.result, changed.request_id) == (None, 1, "r")
    with pytest.raises(TypeError, match="no field"):
        base.evolve(nonsense=1)


def test_request_timeout_is_a_problem(
    make_settings: Callable[..., Settings], auth: Callable[..., dict[str, str]]
) -> None:
    with TestClient(create_app(make_settings(limits={"request_timeout_s": 1e-9}))) as slow:
        response = slow.post(
            "/v1/rank",
            json={"user_id": "u1", "item_ids": ["i1"]},
            headers={**auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 503
        assert response.json()["type"] == "urn:gateway:problem:timeout"
