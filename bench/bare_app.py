"""The baseline: a bare FastAPI + orjson endpoint over the same ONNX session and features.

No auth, no pipeline, no validation beyond what orjson does, no metrics: what
is left is the floor that the gateway's overhead is measured against. It runs
inference in the same kind of small thread pool as the gateway, so the only
difference is the gateway's own work.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from models.demo import model_bytes
from models.features import FeatureStore
from models.ort import session_from_bytes


def create_bare_app(data_dir: Path) -> FastAPI:
    # The bare baseline skips the package checks: it loads the committed model as is.
    session = session_from_bytes(model_bytes())
    store = FeatureStore.load(data_dir / "demo/features.npz")
    executor = ThreadPoolExecutor(max_workers=2)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b"ok")

    @app.post("/rank")
    async def rank(request: Request) -> Response:
        body = orjson.loads(await request.body())
        items = body["item_ids"]
        feeds = store.inputs_for(body["user_id"], items)
        loop = asyncio.get_running_loop()
        (scores,) = await loop.run_in_executor(executor, session.run, ["score"], feeds)
        order = np.argsort(-scores, kind="stable")
        ranked = [
            {"item_id": items[i], "rank": r, "score": round(float(scores[i]), 6)}
            for r, i in enumerate(order.tolist(), start=1)
        ]
        return Response(orjson.dumps({"items": ranked}), media_type="application/json")

    return app


def app() -> FastAPI:
    return create_bare_app(Path(os.environ["BENCH_DATA_DIR"]))
