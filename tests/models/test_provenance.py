"""Feature provenance, stage by stage: the declaration (bundle load), the plan (model
signature), the decode step (what a client may send) and the server's fill after stage 3.

Real objects throughout: a feature store, the default Cedar bundle through the policy
manager, the decode stage and the consent wrapper; stage 3's verdict is set on the
context as the consent stage would leave it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from gateway.decode import InferDecodeStage
from gateway.errors import (
    Forbidden,
    GatewayError,
    InternalError,
    InvalidRequest,
    UnknownItems,
)
from gateway.oip_wire import WireInferRequest, WireTensor
from gateway.pipeline import Action, InferQuery, ModelRef, RequestContext
from models.features import FeatureStore
from models.provenance import (
    DeclarationMismatchError,
    Provenance,
    ServerFeatures,
    ServerProvidedInput,
    advertised_inputs,
    plan_for,
)
from models.ranker import TensorSpec
from policies import DataPolicy, InForce, JurisdictionPolicy, Jurisdictions, ModelPolicy
from policies.bundle import load_bundle, rehash
from policies.errors import PolicyError
from policies.manager import PolicyManager
from policies.scope_stage import ScopeAuthorizeStage
from tests.stage_context import principal, stage_context

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "policies" / "bundles" / "default"
NU, NI = 3, 2
# A model with one real-time client feature besides the store's inputs.
SPECS = (
    TensorSpec("user_id", "INT64", (-1,)),
    TensorSpec("item_id", "INT64", (-1,)),
    TensorSpec("user_features", "FP32", (-1, NU)),
    TensorSpec("item_features", "FP32", (-1, NI)),
    TensorSpec("hour", "FP32", (-1, 1)),
)
OUTPUTS = (TensorSpec("score", "FP32", (-1,)),)
DECLARED = {
    "user_id": "id",
    "item_id": "id",
    "user_features": "server",
    "item_features": "server",
    "hour": "client",
}
MODEL = ModelRef(name="m", version="1", digest="0" * 64)


@dataclass(frozen=True)
class Consent:
    """Stage 3's verdict as the consent stage leaves it (gateway.pipeline.ConsentView)."""

    may_personalize: bool
    jurisdiction: str = "default"

    def as_audit(self) -> dict[str, Any]:
        return {"personalized": self.may_personalize}


def store() -> FeatureStore:
    rng = np.random.default_rng(7)
    return FeatureStore(
        user_ids=["", "u1", "u2"],
        item_ids=["", "i1", "i2", "i3"],
        user_features=rng.normal(size=(3, NU)).astype(np.float32),
        item_features=rng.normal(size=(4, NI)).astype(np.float32),
        user_feature_names=[f"u{i}" for i in range(NU)],
        item_feature_names=[f"i{i}" for i in range(NI)],
        digest="test",
    )


def in_force(inputs: dict[str, str] | None, content_hash: str = "h1") -> InForce:
    data = DataPolicy(
        models={"m": ModelPolicy(inputs=inputs)},
        jurisdictions=Jurisdictions(default=JurisdictionPolicy()),
    )
    return InForce(data, content_hash)


def provenance(
    inputs: dict[str, str] | None = DECLARED, *, features_tenant: str | None = None
) -> Provenance:
    return Provenance(
        SPECS, store(), in_force(inputs), model_name="m", features_tenant=features_tenant
    )


def decoder(prov: Provenance | None, raw_check: Any = None) -> InferDecodeStage:
    return InferDecodeStage(
        SPECS, OUTPUTS, max_rows=8, model=MODEL, provenance=prov, raw_check=raw_check
    )


def ids(user: list[str], items: list[str], **more: WireTensor) -> WireInferRequest:
    tensors = [
        WireTensor("user_id", "BYTES", (len(user),), [u for u in user]),
        WireTensor("item_id", "BYTES", (len(items),), np.array([i.encode() for i in items])),
        *more.values(),
    ]
    return WireInferRequest(id="p-1", inputs=tuple(tensors))


def hour(rows: int, value: float = 0.5) -> WireTensor:
    return WireTensor("hour", "FP32", (rows, 1), np.full(rows, value, dtype=np.float32))


def raw_request(rows: int = 2) -> WireInferRequest:
    feeds = store().inputs_for("u1", ["i1", "i2"][:rows])
    tensors = [
        WireTensor(n, "INT64" if a.dtype == np.int64 else "FP32", a.shape, a)
        for n, a in feeds.items()
    ]
    return WireInferRequest(id="r-1", inputs=(*tensors, hour(rows)))


def context(wire: WireInferRequest, scopes: tuple[str, ...] = ("infer",), **fields: Any) -> Any:
    return stage_context(
        Action.INFER, wire=wire, caller=principal(scopes=scopes), **fields
    ).evolve(authorization=("scope-infer",))


class SetConsent:
    """Stands where the privacy package's consent stage runs: sets stage 3's verdict."""

    name = "consent"

    def __init__(self, personal: bool) -> None:
        self.personal = personal

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        return ctx.evolve(consent=Consent(self.personal))


# -- the declaration, at bundle load ------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "needle"),
    [
        ({"user_id": "id", "item_id": "id", "hour": "clientside"}, "hour"),
        ({"item_id": "id", "user_features": "id"}, "`id` is only for the store's ids"),
        ({"item_id": "id", "hour": "server"}, "the feature store provides only"),
        ({"item_id": "id", "user_features": "server"}, "looked up by 'user_id'"),
        ({"user_id": "client", "item_id": "id"}, "is a feature-store id"),
        ({"user_id": "id"}, "needs 'item_id'"),
        ({}, "declare every model input"),
    ],
)
def test_a_declaration_that_cannot_work_fails_validation(
    inputs: dict[str, str], needle: str
) -> None:
    with pytest.raises(ValidationError, match=needle.replace("(", r"\(").replace("`", ".")):
        ModelPolicy(inputs=inputs)


def test_a_bad_declaration_fails_the_bundle_load_naming_the_line(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    data = bundle / "data.yaml"
    text = data.read_text(encoding="utf-8")
    declared = "inputs: {user_id: id, item_id: id,"
    assert declared in text
    line = text[: text.index(declared)].count("\n") + 1
    # The candidates may not come from the client as feature values.
    data.write_text(text.replace(declared, "inputs: {user_id: id, item_id: client,"))
    rehash(bundle)
    with pytest.raises(PolicyError) as caught:
        load_bundle(bundle)
    assert caught.value.file == "data.yaml"
    assert caught.value.line == line
    assert "'item_id' is a feature-store id" in str(caught.value)


def test_the_default_bundle_declares_ids_and_server_features() -> None:
    model = load_bundle(DEFAULT_BUNDLE).data.model("demo-ranker")
    assert model is not None
    assert model.inputs == {
        "user_id": "id",
        "item_id": "id",
        "user_features": "server",
        "item_features": "server",
    }


# -- the plan, against the model -----------------------------------------------------


@pytest.mark.parametrize(
    ("specs", "needle"),
    [
        (SPECS[:4], "declared inputs ['hour'] are not the model's"),
        ((*SPECS, TensorSpec("extra", "FP32", (-1, 1))), "model inputs ['extra'] are not"),
        ((TensorSpec("user_id", "FP32", (-1,)), *SPECS[1:]), "must be INT64"),
        ((*SPECS[:2], TensorSpec("user_features", "FP32", (-1, 9)), *SPECS[3:]), "FP32 [-1, 3]"),
    ],
)
def test_a_declaration_must_fit_the_models_signature_and_store(
    specs: tuple[TensorSpec, ...], needle: str
) -> None:
    with pytest.raises(DeclarationMismatchError, match=needle.replace("[", r"\[")):
        plan_for(specs, DECLARED, store())


def test_metadata_advertises_what_a_client_sends() -> None:
    shown = advertised_inputs(SPECS, ModelPolicy(inputs=DECLARED))
    assert [s.as_oip() for s in shown] == [
        {"name": "user_id", "datatype": "BYTES", "shape": [1]},
        {"name": "item_id", "datatype": "BYTES", "shape": [-1]},
        {"name": "hour", "datatype": "FP32", "shape": [-1, 1]},
    ]
    # Undeclared: the model's own signature (raw tensors are the only way in).
    assert advertised_inputs(SPECS, ModelPolicy()) == list(SPECS)
    assert advertised_inputs(SPECS, None) == list(SPECS)


# -- decode and fill -----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("personal", [True, False])
async def test_ids_and_a_client_feature_become_the_models_full_inputs(personal: bool) -> None:
    prov = provenance()
    ctx = await decoder(prov)(context(ids(["u1"], ["i3", "i1"], hour=hour(2, 0.25))))
    query = ctx.payload
    assert isinstance(query, InferQuery)
    assert (query.user_id, query.item_ids) == ("u1", ("i3", "i1"))
    assert query.client_inputs == frozenset({"user_id", "item_id", "hour"})
    assert set(query.feeds) == {"hour"}  # nothing the server provides yet
    filled = (await ServerFeatures(SetConsent(personal), prov)(ctx)).payload
    assert isinstance(filled, InferQuery)
    expected = store().inputs_for("u1" if personal else "", ["i3", "i1"])
    assert set(filled.feeds) == {s.name for s in SPECS}
    for name, array in expected.items():
        np.testing.assert_array_equal(filled.feeds[name], array)
    np.testing.assert_array_equal(filled.feeds["hour"], [[0.25], [0.25]])
    assert filled.client_inputs == query.client_inputs  # stage 5 inspects only these


@pytest.mark.asyncio
async def test_no_consent_verdict_and_another_tenant_get_the_cold_start_row() -> None:
    cold = store().inputs_for("", ["i1"])["user_features"]
    cases: list[tuple[Provenance, dict[str, Any]]] = [
        (provenance(), {}),  # no stage 3 verdict at all: no basis (fail closed)
        (provenance(features_tenant="acme"), {"consent": Consent(True)}),
    ]
    for prov, fields in cases:
        ctx = await decoder(prov)(context(ids(["u1"], ["i1"], hour=hour(1)), **fields))
        filled = (await ServerFeatures(passthrough_stage(), prov)(ctx)).payload
        np.testing.assert_array_equal(filled.feeds["user_features"], cold)
        assert filled.feeds["user_id"].tolist() == [0]


def passthrough_stage() -> Any:
    class Keep:
        name = "consent"

        async def __call__(self, ctx: RequestContext) -> RequestContext:
            return ctx

    return Keep()


@pytest.mark.asyncio
async def test_unknown_items_are_the_typed_error_of_v1_rank() -> None:
    prov = provenance()
    ctx = await decoder(prov)(context(ids(["u1"], ["i1", "nope", "i2"], hour=hour(3))))
    with pytest.raises(UnknownItems) as caught:
        await ServerFeatures(SetConsent(True), prov)(ctx)
    assert caught.value.extensions == {"unknown_item_positions": [1]}


@pytest.mark.parametrize(
    ("wire", "error", "needle"),
    [
        (ids(["u1"], ["i1", "i2"]), InvalidRequest, "missing ['hour']"),
        (ids(["u1"], ["i1", "i2"], hour=hour(3)), InvalidRequest, "same batch size"),
        (ids(["u1"], ["i1"], hour=hour(1, float("nan"))), InvalidRequest, "must be finite"),
        (ids(["u1", "u2"], ["i1"], hour=hour(1)), InvalidRequest, "user_id: shape"),
        (ids(["u1"], ["i1", "i1"], hour=hour(2)), InvalidRequest, "unique"),
        (ids(["u1"], [f"i{n}" for n in range(9)], hour=hour(9)), InvalidRequest, "n <= 8"),
        (
            WireInferRequest(
                id=None,
                inputs=(
                    WireTensor("user_id", "BYTES", (1,), np.array([b"\xff\xfe"], dtype=object)),
                    WireTensor("item_id", "BYTES", (1,), ["i1"]),
                    hour(1),
                ),
            ),
            InvalidRequest,
            "UTF-8",
        ),
    ],
)
@pytest.mark.asyncio
async def test_what_the_client_sends_is_validated(
    wire: WireInferRequest, error: type[GatewayError], needle: str
) -> None:
    with pytest.raises(error) as caught:
        await decoder(provenance())(context(wire))
    assert needle in str(caught.value)


@pytest.mark.asyncio
async def test_server_inputs_need_the_raw_permission() -> None:
    """Attacker's side: every way of slipping feature values past the declaration."""
    stage = decoder(provenance(), raw_check=ScopeAuthorizeStage())
    forged = WireTensor("user_features", "FP32", (1, NU), np.full(NU, 9.0, dtype=np.float32))
    for wire in (raw_request(), ids(["u1"], ["i1"], hour=hour(1), forged=forged)):
        with pytest.raises(ServerProvidedInput) as caught:
            await stage(context(wire))
        assert caught.value.status == 400
        assert "user_features" in str(caught.value)
        assert "infer:raw" in str(caught.value)
    # No raw check wired at all: refused the same way (fail closed).
    with pytest.raises(ServerProvidedInput):
        await decoder(provenance())(context(raw_request(), scopes=("infer", "infer:raw")))


@pytest.mark.asyncio
async def test_a_raw_caller_sends_every_input_and_the_policy_is_recorded() -> None:
    stage = decoder(provenance(), raw_check=ScopeAuthorizeStage())
    ctx = await stage(context(raw_request(), scopes=("infer", "infer:raw")))
    query = ctx.payload
    assert query.client_inputs is None  # every feed is the client's: all are inspected
    assert query.item_ids is None
    assert set(query.feeds) == {s.name for s in SPECS}
    assert ctx.authorization == ("scope-infer", "scope:infer:raw")
    assert ctx.action == Action.INFER


@pytest.mark.asyncio
async def test_an_undeclared_model_takes_raw_tensors_only_from_raw_callers() -> None:
    stage = decoder(provenance(None), raw_check=ScopeAuthorizeStage())
    for wire in (raw_request(), ids(["u1"], ["i1"], hour=hour(1))):
        with pytest.raises(ServerProvidedInput) as caught:
            await stage(context(wire))
        assert "not declared" in str(caught.value)
    ctx = await stage(context(raw_request(), scopes=("infer", "infer:raw")))
    assert ctx.payload.client_inputs is None


@pytest.mark.asyncio
async def test_the_cedar_bundle_decides_raw_access() -> None:
    """The default bundle's `scope-infer-raw`; its forbids still win (suspended tenant)."""
    manager = PolicyManager(DEFAULT_BUNDLE, trusted_keys=(), allow_unsigned=True)
    stage = decoder(provenance(), raw_check=manager.authorize_stage("m", "1"))
    allowed = await stage(context(raw_request(), scopes=("infer", "infer:raw")))
    assert allowed.authorization == ("scope-infer", "scope-infer-raw")
    with pytest.raises(ServerProvidedInput):
        await stage(context(raw_request(), scopes=("infer", "admin", "audit:read", "rank")))
    suspended = stage_context(
        Action.INFER,
        wire=raw_request(),
        caller=principal(scopes=("infer", "infer:raw"), tenant="suspended"),
    )
    with pytest.raises(Forbidden):
        await stage(suspended)


@pytest.mark.asyncio
async def test_a_declaration_that_does_not_fit_the_model_refuses_requests() -> None:
    bad = dict(DECLARED)
    del bad["hour"]
    stage = decoder(provenance(bad), raw_check=ScopeAuthorizeStage())
    with pytest.raises(InternalError):
        await stage(context(ids(["u1"], ["i1"], hour=hour(1))))
