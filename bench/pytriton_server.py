"""A PyTriton peer: the demo ONNX model on onnxruntime inside Triton, dynamic batching on.

    <pytriton venv>/bin/python bench/pytriton_server.py --model FILE --http-port P \\
        [--grpc-port G] [--name demo-ranker] [--version 1] [--max-queue-delay-us 1000]

Runs in PyTriton's own virtual environment (nvidia-pytriton 0.7 wants numpy < 2, the
gateway pins numpy 2), so it imports nothing from this repository: the model file is a
plain .onnx (models/demo/assets/demo-ranker.onnx). Its Triton binary needs
LD_LIBRARY_PATH to name the Python installation's LIBDIR; bench.servers.pytriton_command
sets it. The gateway's remote ranker tests (tests/models/test_remote_pytriton.py) and
bench/servers.py start it.

Triton batches along a leading batch axis: each input row of the demo model (user id,
item id, 20 user features, 20 item features) is one batch item, so a request of N rows
is a batch of N, and concurrent requests are merged up to --max-batch-size rows. A
batching Triton model cannot declare a per-row scalar (its dims may not be empty): ids
and the score travel as [N, 1] (the gateway's `model.remote.unit_axis`).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="a plain .onnx file")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--name", default="demo-ranker")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=4096)
    parser.add_argument("--max-queue-delay-us", type=int, default=1000)
    # Tests: a batch holding this item id answers only after --slow-s seconds.
    parser.add_argument("--slow-item-id", type=int, default=None)
    parser.add_argument("--slow-s", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    with open(args.model, "rb") as handle:
        session = ort.InferenceSession(
            handle.read(), sess_options=options, providers=["CPUExecutionProvider"]
        )

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        # Batched by Triton to [N, 1] ids and [N, 20] features; the model takes [N] ids.
        feeds = {n: a.reshape(-1) if a.shape[1:] == (1,) else a for n, a in inputs.items()}
        if args.slow_item_id is not None and (feeds["item_id"] == args.slow_item_id).any():
            time.sleep(args.slow_s)
        (score,) = session.run(["score"], feeds)
        return {"score": score.reshape(-1, 1).astype(np.float32)}

    # Ports: 0 lets nothing else choose them; Triton needs explicit ones for each surface.
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port or args.http_port + 1,
        metrics_port=args.metrics_port or args.http_port + 2,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=args.name,
            model_version=args.version,
            infer_func=infer,
            inputs=[
                Tensor(name="user_id", dtype=np.int64, shape=(1,)),
                Tensor(name="item_id", dtype=np.int64, shape=(1,)),
                Tensor(name="user_features", dtype=np.float32, shape=(20,)),
                Tensor(name="item_features", dtype=np.float32, shape=(20,)),
            ],
            outputs=[Tensor(name="score", dtype=np.float32, shape=(1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
        )
        triton.serve()


if __name__ == "__main__":
    main()
