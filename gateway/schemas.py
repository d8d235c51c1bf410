"""Request bodies of the public API (pydantic, strict, unknown keys refused) and their parse.

Error messages name the field and the rule, never the submitted value (it may be
personal data).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from gateway.errors import InvalidRequest, MalformedRequest, UnsupportedMediaType

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
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=32)
    datatype: str
    parameters: dict[str, Any] | None = None
    # Absent when the tensor's bytes follow the JSON header (binary tensor data extension:
    # `parameters.binary_data_size`).
    data: list[Any] | None = None


class InferOutputRequest(_Strict):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Strict):
    id: str | None = None
    # Sent by KServe's and Triton's clients; the decode step checks them against the path.
    model_name: str | None = None
    model_version: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[InferOutputRequest] | None = None


class RepositoryIndexRequest(_Strict):
    # Triton: list only the models that are ready.
    ready: bool = False


M = TypeVar("M", bound=BaseModel)


def require_json(headers: Mapping[str, str]) -> None:
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")


def parse_json(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise MalformedRequest("the body is not valid JSON") from None
        shown = [
            {"loc": ".".join(str(p) for p in e["loc"]) or "body", "msg": e["msg"]}
            for e in errors[:20]
        ]
        first = shown[0]
        raise InvalidRequest(
            f"{first['loc']}: {first['msg']}", extensions={"errors": shown}
        ) from None
