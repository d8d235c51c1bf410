"""Cedar decisions for the gateway: policies and schema parsed once, decisions cached.

The policy set and the schema are parsed and validated at construction, so a bundle
that does not type-check never serves a request. ``decide`` builds the two entities a
request needs (the calling client and the resource) and asks Cedar; forbid overrides
permit and no permit means deny, which is Cedar's own semantics. Decisions are pure
functions of the request, and requests repeat per client/action/resource, so they are
memoised in a bounded LRU (``functools.lru_cache``: C-implemented and thread-safe).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cedarpy

from policies.errors import PolicyError
from policies.vocabulary import NAMESPACE

AttrValue = str | int | bool | frozenset[str]
_ID_ANNOTATION = re.compile(r'@id\s*\(\s*"((?:[^"\\]|\\.)*)"\s*\)')


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthzRequest:
    """One question for Cedar: may ``client_id`` do ``action`` to this resource."""

    client_id: str
    scopes: frozenset[str]
    action: str
    resource_type: str  # "Model" | "AuditLog" | "Subject"
    resource_id: str
    tenant: str | None = None
    subject: str | None = None  # the data subject the token acts for, if any
    resource_attrs: Mapping[str, AttrValue] = field(default_factory=dict, hash=False)

    def cache_key(self) -> tuple[Any, ...]:
        """Everything the decision depends on, hashable (attributes in key order)."""
        return (
            self.client_id,
            self.scopes,
            self.tenant,
            self.subject,
            self.action,
            self.resource_type,
            self.resource_id,
            tuple(sorted(self.resource_attrs.items())),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """Cedar's answer; ``policy_ids`` are the determining policies' ``@id`` values."""

    allowed: bool
    policy_ids: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Where one policy of ``policies.cedar`` starts, and its ``@id``."""

    index: int  # Cedar's positional id is f"policy{index}"
    line: int
    policy_id: str | None
    text: str


def split_policies(text: str) -> tuple[PolicySource, ...]:
    """Each policy statement's start line and ``@id``, found without Cedar's parser.

    Cedar's parse errors carry no position, and its validation errors name positional
    ids (``policy3``); splitting on ``;`` outside strings and comments recovers the
    line of each statement so errors can point at it.
    """
    sources: list[PolicySource] = []
    start_line: int | None = None
    line = 1
    chunk_start = 0
    i = 0
    in_string = False
    while i < len(text):
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
            elif ch == "\n":
                line += 1
        elif ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end == -1 else end
            continue
        elif ch == "\n":
            line += 1
        elif ch == ";":
            if start_line is not None:
                sources.append(_source(len(sources), start_line, text[chunk_start : i + 1]))
            start_line = None
            chunk_start = i + 1
        elif not ch.isspace():
            if start_line is None:
                start_line = line
            if ch == '"':
                in_string = True
        i += 1
    if start_line is not None:  # trailing text without ';' — Cedar will refuse it
        sources.append(_source(len(sources), start_line, text[chunk_start:]))
    return tuple(sources)


def _source(index: int, line: int, statement: str) -> PolicySource:
    match = _ID_ANNOTATION.search(statement)
    return PolicySource(index, line, match.group(1) if match else None, statement)


def _uid(entity_type: str, entity_id: str) -> dict[str, str]:
    return {"type": f"{NAMESPACE}::{entity_type}", "id": entity_id}


def _json_value(value: AttrValue) -> Any:
    if isinstance(value, frozenset):
        return sorted(value)
    return value


class CedarEngine:
    """A validated Cedar policy set plus schema, answering ``AuthzRequest``s."""

    def __init__(
        self,
        policies_text: str,
        schema_json: str,
        *,
        policies_file: str = "policies.cedar",
        schema_file: str = "schema.cedarschema.json",
        cache_size: int = 4096,
    ) -> None:
        self.policies_text = policies_text
        self.sources = split_policies(policies_text)
        self._schema_doc = self._parse_schema_json(schema_json, schema_file)
        try:
            self._schema = cedarpy.Schema.from_json_str(schema_json)
        except ValueError as exc:
            raise PolicyError(f"invalid Cedar schema: {exc}", file=schema_file) from exc
        try:
            self._policies = cedarpy.PolicySet.from_str(policies_text)
        except ValueError as exc:
            raise self._parse_error(str(exc), policies_file) from exc
        self._check_ids(policies_file)
        result = cedarpy.validate_policies(policies_text, self._schema)
        if not result.validation_passed:
            raise self._validation_error(result, policies_file)
        self.action_resource_types = self._applies_to(self._schema_doc)
        self._cached = functools.lru_cache(maxsize=cache_size)(self._evaluate)

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return tuple(s.policy_id for s in self.sources if s.policy_id is not None)

    def decide(self, request: AuthzRequest) -> Decision:
        """The decision for ``request``; default deny, forbid overrides permit."""
        decision: Decision = self._cached(request.cache_key())
        return decision

    def decide_uncached(self, request: AuthzRequest) -> Decision:
        return self._evaluate(request.cache_key())

    def cache_clear(self) -> None:
        self._cached.cache_clear()

    def _evaluate(self, key: tuple[Any, ...]) -> Decision:
        client_id, scopes, tenant, subject, action, rtype, rid, attrs = key
        principal_attrs: dict[str, Any] = {"scopes": sorted(scopes)}
        if tenant is not None:
            principal_attrs["tenant"] = tenant
        if subject is not None:
            principal_attrs["subject"] = subject
        resource_attrs = {name: _json_value(value) for name, value in attrs}
        if rtype == "Model":
            resource_attrs.setdefault("name", rid)
        principal = _uid("Client", client_id)
        resource = _uid(rtype, rid)
        entities = [
            {"uid": principal, "attrs": principal_attrs, "parents": []},
            {"uid": resource, "attrs": resource_attrs, "parents": []},
        ]
        cedar_request = {
            "principal": principal,
            "action": _uid("Action", action),
            "resource": resource,
            "context": {},
        }
        result = cedarpy.is_authorized(cedar_request, self._policies, entities, self._schema)
        diagnostics = result.diagnostics
        names = diagnostics.id_annotations_by_reason
        ids = tuple(sorted(str(names.get(reason, reason)) for reason in diagnostics.reasons))
        return Decision(
            allowed=result.allowed,
            policy_ids=ids,
            errors=tuple(str(e) for e in diagnostics.errors),
        )

    @staticmethod
    def _parse_schema_json(schema_json: str, schema_file: str) -> dict[str, Any]:
        try:
            doc = json.loads(schema_json)
        except json.JSONDecodeError as exc:
            raise PolicyError(
                f"invalid JSON: {exc.msg}", file=schema_file, line=exc.lineno
            ) from exc
        if not isinstance(doc, dict) or NAMESPACE not in doc:
            raise PolicyError(f"schema must declare namespace {NAMESPACE}", file=schema_file)
        return doc

    @staticmethod
    def _applies_to(doc: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        actions = doc[NAMESPACE].get("actions", {})
        return {
            name: tuple(spec.get("appliesTo", {}).get("resourceTypes", []))
            for name, spec in actions.items()
        }

    def _parse_error(self, message: str, file: str) -> PolicyError:
        # Cedar names no position: parse statement by statement to find the culprit.
        for source in self.sources:
            try:
                cedarpy.PolicySet.from_str(source.text)
            except ValueError as exc:
                return PolicyError(
                    f"Cedar syntax error: {exc}",
                    file=file,
                    line=source.line,
                    key=source.policy_id,
                )
        return PolicyError(f"Cedar syntax error: {message}", file=file)

    def _check_ids(self, file: str) -> None:
        seen: dict[str, int] = {}
        for source in self.sources:
            if source.policy_id is None or not source.policy_id:
                raise PolicyError(
                    'every policy needs an @id("...") annotation', file=file, line=source.line
                )
            if source.policy_id in seen:
                raise PolicyError(
                    f"duplicate @id (first at line {seen[source.policy_id]})",
                    file=file,
                    line=source.line,
                    key=source.policy_id,
                )
            seen[source.policy_id] = source.line

    def _validation_error(self, result: cedarpy.ValidationResult, file: str) -> PolicyError:
        first = result.errors[0]
        by_position = {f"policy{s.index}": s for s in self.sources}
        source = by_position.get(first.policy_id)
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        message = first.error
        if source is not None and source.policy_id is not None:
            # Cedar names the positional id; the author knows the policy by its @id.
            message = message.replace(f"`{first.policy_id}`", f"`{source.policy_id}`")
        return PolicyError(
            f"schema mismatch: {message}{more}",
            file=file,
            line=source.line if source else None,
            key=source.policy_id if source else None,
        )
