"""The pipeline contract: stages are findable by name, and each stage runs on a context
built without the app (tests/stage_context.py)."""

from __future__ import annotations

import asyncio
import importlib
import inspect

import pytest

from gateway.errors import InsufficientScope, InternalError
from gateway.pipeline import ACTION_SCOPES, STAGE_MODULES, STAGE_ORDER, Action
from policies.scope_stage import ScopeAuthorizeStage
from tests.stage_context import principal, stage_context


@pytest.mark.parametrize("stage", STAGE_ORDER)
def test_every_stage_names_the_modules_that_define_it(stage: str) -> None:
    modules = STAGE_MODULES[stage]
    assert modules, f"no module named for stage {stage!r}"
    for name in modules:
        module = importlib.import_module(name)
        defined = [
            obj
            for _, obj in inspect.getmembers(module, inspect.isclass)
            if obj.__module__ == name and getattr(obj, "name", None) == stage
        ]
        if stage == "transport":
            defined = [
                obj
                for _, obj in inspect.getmembers(module, inspect.isclass)
                if obj.__module__ == name and obj.__name__ == "TransportMiddleware"
            ]
        assert defined, f"{name} defines no stage named {stage!r}"


def test_stage_modules_cover_exactly_the_stage_order() -> None:
    assert set(STAGE_MODULES) == set(STAGE_ORDER)


def test_every_action_has_one_scope() -> None:
    assert set(ACTION_SCOPES) == set(Action)
    assert all(action.scope == ACTION_SCOPES[action] for action in Action)


def test_a_stage_runs_on_a_context_built_without_the_app() -> None:
    stage = ScopeAuthorizeStage()
    allowed = asyncio.run(stage(stage_context(Action.RANK)))
    assert allowed.authorization == ("scope:rank",)
    with pytest.raises(InsufficientScope):
        asyncio.run(stage(stage_context(Action.ADMIN)))
    with pytest.raises(InternalError):
        asyncio.run(stage(stage_context(Action.RANK, authenticated=False)))
    caller = principal("ops", scopes=("admin",))
    assert asyncio.run(stage(stage_context(Action.ADMIN, caller=caller))).authorization == (
        "scope:admin",
    )
