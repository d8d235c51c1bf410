#!/usr/bin/env bash
# Regenerates gateway/grpc/grpc_predict_v2_pb2{.py,.pyi,_grpc.py} from the .proto beside them.
#
# The descriptor goes into a private pool, not protobuf's default one: tritonclient.grpc
# and kserve register the same `inference.*` symbols there, and a process may import
# either next to the gateway. The service module imports its messages by package path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=gateway/grpc
.venv/bin/python -m grpc_tools.protoc -I "$out" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    "$out/grpc_predict_v2.proto"
sed -i \
    -e 's/^DESCRIPTOR = _descriptor_pool\.Default()\.AddSerializedFile(/_POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = _POOL.AddSerializedFile(/' \
    "$out/grpc_predict_v2_pb2.py"
sed -i -e 's/^import grpc_predict_v2_pb2 as /from gateway.grpc import grpc_predict_v2_pb2 as /' \
    "$out/grpc_predict_v2_pb2_grpc.py"
grep -q '^_POOL = _descriptor_pool.DescriptorPool()' "$out/grpc_predict_v2_pb2.py"
grep -q '^from gateway.grpc import grpc_predict_v2_pb2' "$out/grpc_predict_v2_pb2_grpc.py"
echo "regenerated $out/grpc_predict_v2_pb2.py, .pyi and _pb2_grpc.py"
