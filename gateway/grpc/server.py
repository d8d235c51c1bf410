"""The gRPC server `gateway serve --grpc-port` runs beside uvicorn, on the same event loop.

Started and stopped by the app's lifespan, so it shares the components (one audit
writer, one token cache, one detector state) with the REST surface. Bounded like the
HTTP server (gateway.server): a message is at most `limits.max_body_bytes` (gRPC refuses
a larger one with RESOURCE_EXHAUSTED), metadata at most `limits.max_header_bytes`,
at most `limits.max_connections` calls in flight (RESOURCE_EXHAUSTED past it),
`MAX_STREAMS_PER_CONNECTION` on one connection, and a connection idle for
`limits.keep_alive_s` is closed; each call is time-limited by gateway.grpc.calls.
With `tls.cert_file` it serves TLS only, like the REST port (never plaintext gRPC
beside a TLS REST port), with the same certificate and client CA.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from gateway.components import Components
from gateway.errors import ConfigurationError
from gateway.grpc.service import InferenceService
from gateway.settings import Settings
from gateway.tls import server_context

log = logging.getLogger("gateway.grpc")

MAX_STREAMS_PER_CONNECTION = 100
# In-flight calls finish (and are audited) before the components close.
STOP_GRACE_S = 5.0


@dataclass
class GrpcServer:
    server: aio.Server
    service: InferenceService
    # The bound port (the setting may be 0: any free port, as tests use).
    port: int

    async def stop(self) -> None:
        await self.server.stop(STOP_GRACE_S)
        await self.service.drain()


def _credentials(settings: Settings) -> Any:
    """The REST listener's certificate and key (and client CA), checked the same way.

    gRPC's TLS stack (BoringSSL in grpc core) offers TLS 1.2+ with ECDHE-AEAD suites only.
    With `tls.client_ca_file` and `client_auth = "required"` a client certificate the CA
    did not issue fails the handshake. In "optional" mode gRPC requests no certificate
    (its Python API has no verify-if-presented mode), so a certificate-bound token is
    refused on the gRPC port (fail closed) and must use REST.
    """
    tls = settings.tls
    server_context(tls, settings.resolve)  # ConfigurationError naming the file at fault
    cert_file, key_file, ca_file = tls.cert_file, tls.key_file, tls.client_ca_file
    if cert_file is None or key_file is None:
        raise ConfigurationError("TLS needs tls.cert_file and tls.key_file")
    roots = None
    if ca_file is not None and tls.client_auth == "required":
        roots = settings.resolve(ca_file).read_bytes()
    return grpc.ssl_server_credentials(
        [(settings.resolve(key_file).read_bytes(), settings.resolve(cert_file).read_bytes())],
        root_certificates=roots,
        require_client_auth=roots is not None,
    )


async def start_grpc(components: Components) -> GrpcServer | None:
    """Start the gRPC server if `grpc_port` is set; None when it is not."""
    settings = components.settings
    if settings.grpc_port is None:
        return None
    limits = settings.limits
    service = InferenceService(components)
    server = aio.server(
        handlers=[service.handler()],
        maximum_concurrent_rpcs=limits.max_connections,
        options=[
            ("grpc.max_receive_message_length", limits.max_body_bytes),
            ("grpc.max_metadata_size", limits.max_header_bytes),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            # As on REST: an idle connection is closed (GOAWAY; clients reconnect by themselves).
            ("grpc.max_connection_idle_ms", limits.keep_alive_s * 1000),
            # Several gateway processes on one port would split the calls unpredictably.
            ("grpc.so_reuseport", 0),
        ],
    )
    address = f"{settings.host}:{settings.grpc_port}"
    try:
        if settings.tls.enabled:
            port = server.add_secure_port(address, _credentials(settings))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigurationError(f"cannot listen for gRPC on {address}") from exc
    await server.start()
    log.info("gRPC (OIP v2) listening on %s:%d", settings.host, port)
    return GrpcServer(server, service, port)
