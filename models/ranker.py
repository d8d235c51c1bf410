"""The ranker runtime: one onnxruntime session, created from bytes.

A run goes to the inference thread pool ("executor"), or runs on the event loop
("inline": a small model's run costs less than the hand-off), or on the loop only while
its request is the only one there ("auto", given `alone`), optionally through the
micro-batcher (models.batching), or to a remote OIP server (models.remote) while the
local session still gives the verified model's signature.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import ConfigurationError, InvalidRequest
from gateway.pipeline import ModelRef
from gateway.telemetry import span
from models.batching import MicroBatcher, rows_of
from models.ort import CPU_PROVIDER, ort, session_from_bytes
from models.remote import RemoteBackend

# ONNX tensor element types (as onnxruntime names them) → Open Inference Protocol datatypes.
_OIP_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "INT64": np.dtype(np.int64),
    "INT32": np.dtype(np.int32),
    "BOOL": np.dtype(np.bool_),
}

InferenceObserver = Callable[[float, int], None]


# Told each run's inputs and first output (models.drift), in the inference thread.
DriftWatch = Callable[[Mapping[str, np.ndarray], np.ndarray], None]
# Given each run's inputs and first output, returns the output to serve (models.watermark).
Marks = Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray]


def _no_observer(_seconds: float, _rows: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    # -1 for a dynamic dimension, as the Open Inference Protocol writes it.
    shape: tuple[int, ...]

    def as_oip(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(arg: object) -> TensorSpec:
    name = getattr(arg, "name", "")
    onnx_type = getattr(arg, "type", "")
    dims = getattr(arg, "shape", [])
    shape = tuple(d if isinstance(d, int) else -1 for d in dims)
    return TensorSpec(name=name, datatype=_OIP_DATATYPES.get(onnx_type, onnx_type), shape=shape)


# "auto" runs a lone request's model on the event loop up to this many rows (a few
# hundred microseconds on the demo model); a larger run would hold the loop for longer
# than a probe or a new request should wait, and goes to the pool.
ALONE_MAX_ROWS = 4096

# onnxruntime raises these for inputs the graph rejects (bad index, shape mismatch).
_ORT_INPUT_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("InvalidArgument", "RuntimeException", "Fail", "InvalidGraph")
    if hasattr(ort.capi.onnxruntime_pybind11_state, name)
)


class Ranker:
    def __init__(
        self,
        *,
        name: str,
        version: str,
        model_bytes: bytes,
        intra_op_threads: int = 1,
        inference_threads: int = 2,
        graph_optimization_level: str = "all",
        observe: InferenceObserver = _no_observer,
        watch: DriftWatch | None = None,
        marks: Marks | None = None,
        providers: tuple[str, ...] = (CPU_PROVIDER,),
        inline: bool = False,
        batching: tuple[float, int] | None = None,
        remote: RemoteBackend | None = None,
        alone: Callable[[], bool] | None = None,
    ) -> None:
        """`providers`: resolved by models.ort.resolve_providers. `batching`: (max wait
        in seconds, max rows) to micro-batch concurrent runs; None runs each alone.
        `alone`: whether the event loop has no other request in flight; a CPU session then
        runs on the loop (nothing else waits for it, and the hand-off to a thread and back
        cost more than the run at concurrency 1: about a tenth of the request's CPU)."""
        self.ref = ModelRef(
            name=name, version=version, digest=hashlib.sha256(model_bytes).hexdigest()
        )
        self._session = session_from_bytes(
            model_bytes,
            intra_op_threads=intra_op_threads,
            graph_optimization_level=graph_optimization_level,
            providers=providers,
        )
        # What runs the model: onnxruntime's providers in use, or the remote server.
        self.providers: tuple[str, ...] = (
            ("remote-oip",) if remote is not None else tuple(self._session.get_providers())
        )
        self.inputs = tuple(_spec(i) for i in self._session.get_inputs())
        self.outputs = tuple(_spec(o) for o in self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        self._executor = ThreadPoolExecutor(
            max_workers=inference_threads, thread_name_prefix=f"ort-{name}"
        )
        self._observe = observe
        self._watch = watch
        self._marks = marks
        self._inline = inline
        # Only a CPU session: a GPU's first runs (warm-up, graph capture) take seconds.
        self._alone = alone if self.providers == (CPU_PROVIDER,) else None
        self._remote = remote
        self._batcher = (
            MicroBatcher(
                self._run_once,
                max_wait_s=batching[0],
                max_rows=batching[1],
                # One batch per inference thread (a remote server: per connection).
                max_in_flight=inference_threads,
            )
            if batching is not None
            else None
        )

    @classmethod
    def from_file(cls, path: Path, *, name: str, version: str, **options: object) -> Ranker:
        try:
            model_bytes = path.read_bytes()
        except FileNotFoundError:
            raise ConfigurationError(f"model file not found: {path}; run `gateway init`") from None
        return cls(name=name, version=version, model_bytes=model_bytes, **options)  # type: ignore[arg-type]

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            values = self._session.run(self._output_names, dict(feeds))
        except _ORT_INPUT_ERRORS as exc:
            raise InvalidRequest(
                "the model rejected the input tensors", log_cause=f"onnxruntime: {exc}"
            ) from None
        rows = len(next(iter(feeds.values()))) if feeds else 0
        self._observe(time.perf_counter() - started, rows)
        if self._watch is not None and values:
            self._watch(feeds, values[0])  # the first output: the score
        if self._marks is not None and values:
            values[0] = self._marks(feeds, values[0])  # drift watched the model's own score
        return dict(zip(self._output_names, values, strict=True))

    async def _run_remote(
        self, remote: RemoteBackend, feeds: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = await remote.infer(self.ref.name, self.ref.version, feeds, self._output_names)
        self._observe(time.perf_counter() - started, len(next(iter(feeds.values()), ())))
        if self._watch is not None and outputs:
            self._watch(feeds, outputs[self._output_names[0]])
        if self._marks is not None and outputs:
            first = self._output_names[0]
            outputs[first] = self._marks(feeds, outputs[first])
        return outputs

    @staticmethod
    def _small(feeds: Mapping[str, np.ndarray]) -> bool:
        """Rows the event loop may run ("auto"); inputs of no common row count go to the
        pool, where onnxruntime refuses them as it would anywhere."""
        rows = rows_of(feeds)
        return rows is not None and rows <= ALONE_MAX_ROWS

    async def _run_once(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._remote is not None:
            return await self._run_remote(self._remote, feeds)
        if self._inline or (self._alone is not None and self._small(feeds) and self._alone()):
            return self._run(feeds)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, feeds)

    async def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        attributes = {"model.name": self.ref.name, "model.version": self.ref.version}
        with span("onnxruntime.run", **attributes):
            if self._batcher is not None:
                return await self._batcher.run(feeds)
            return await self._run_once(feeds)

    def run_sync(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """For the CLI, tests and benchmarks; never call it on the event loop."""
        return self._run(feeds)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
