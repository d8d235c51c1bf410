"""Request bodies of the public API (pydantic, strict, unknown keys refused)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RankContextIn(_Strict):
    query: str | None = None
    locale: (
        Annotated[
            str, StringConstraints(max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
        ]
        | None
    ) = None
    device: Annotated[str, StringConstraints(max_length=32)] | None = None


class RankRequest(_Strict):
    user_id: Identifier
    item_ids: list[Identifier] = Field(min_length=1)
    context: RankContextIn | None = None
    top_k: int | None = Field(default=None, ge=1)


class InferInput(_Strict):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class InferOutputRequest(_Strict):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Strict):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[InferOutputRequest] | None = None
