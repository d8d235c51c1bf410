"""The Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`).

`grpc_predict_v2.proto` is the protocol's own (KServe's, see its header); the
`*_pb2*` modules are generated from it by scripts/gen_grpc.sh. `server` runs the
service beside uvicorn, `service` maps each method onto the same numbered pipeline
as REST, `calls` is stage 0 for a call, `tensors` converts protobuf tensors, `status`
maps errors to gRPC status codes.
"""
