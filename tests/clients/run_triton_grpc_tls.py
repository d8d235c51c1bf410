"""Runs Triton's stock gRPC client against a gateway serving gRPC over (mutual) TLS.

Run by tests/clients/test_grpc_tls.py in its own interpreter: reads a spec on stdin
(target, CA and client certificate paths, tokens, feeds) and prints one JSON object,
an outcome per check, as run_triton_grpc.py does.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

NUMPY = {"INT64": np.int64, "FP32": np.float32}


def outcome(check: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": True, "value": check()}
    except InferenceServerException as exc:
        return {"ok": False, "code": str(exc.status()).rsplit(".", 1)[-1]}


def main() -> None:
    spec = json.load(sys.stdin)
    target, model, tokens, certs = spec["target"], spec["model"], spec["tokens"], spec["certs"]
    inputs = []
    for name, t in spec["feeds"].items():
        array = np.asarray(t["data"], dtype=NUMPY[t["datatype"]]).reshape(t["shape"])
        item = triton.InferInput(name, list(array.shape), t["datatype"])
        item.set_data_from_numpy(array)
        inputs.append(item)

    def client(cert: str | None, *, tls: bool = True) -> triton.InferenceServerClient:
        if not tls:
            return triton.InferenceServerClient(url=target)
        chosen = certs[cert] if cert is not None else {}
        return triton.InferenceServerClient(
            url=target,
            ssl=True,
            root_certificates=certs["ca"],
            private_key=chosen.get("key"),
            certificate_chain=chosen.get("cert"),
        )

    def infer(cert: str | None, token: str, *, tls: bool = True) -> list[float]:
        found = client(cert, tls=tls).infer(
            model, inputs, headers={"authorization": f"Bearer {token}"}, client_timeout=30
        )
        return found.as_numpy("score").tolist()

    out = {
        "live": outcome(lambda: client("a").is_server_live(client_timeout=30)),
        "infer_a_plain_token": outcome(lambda: infer("a", tokens["plain"])),
        "infer_a_bound_to_a": outcome(lambda: infer("a", tokens["bound_a"])),
        "infer_a_bound_to_b": outcome(lambda: infer("a", tokens["bound_b"])),
        "infer_b_bound_to_a": outcome(lambda: infer("b", tokens["bound_a"])),
        "infer_no_certificate": outcome(lambda: infer(None, tokens["plain"])),
        "infer_wrong_ca": outcome(lambda: infer("wrong_ca", tokens["plain"])),
        "infer_expired_certificate": outcome(lambda: infer("expired", tokens["plain"])),
        "infer_plaintext": outcome(lambda: infer(None, tokens["plain"], tls=False)),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
