"""What a worker process is started with: the `serve` command's own inputs, as JSON.

A worker rebuilds its settings from the same inputs (data directory, config file,
listen address, TLS files) the command line gave, rather than receiving a pickled
Settings object: pickles are code, and the settings' secrets stay out of argv.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.settings import Settings
    from gateway.workers.channel import WorkerLink


@dataclass(frozen=True, slots=True)
class ServeInputs:
    """`gateway serve`'s options that shape the settings (paths as given, or None)."""

    data_dir: str | None = None
    config: str | None = None
    host: str | None = None
    port: int | None = None
    grpc_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None

    def settings(self) -> Settings:
        """The one Settings object; raises `ConfigurationError` as `serve` does."""
        from gateway.cli.options import build_settings
        from gateway.tls import tls_overrides

        return build_settings(
            _path(self.data_dir),
            _path(self.config),
            host=self.host,
            port=self.port,
            grpc_port=self.grpc_port,
            tls=tls_overrides(_path(self.tls_cert), _path(self.tls_key), _path(self.tls_client_ca)),
        )


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One worker: its index (0 serves gRPC when a gRPC port is set), its end of the
    control socket pair (gateway.workers.worker), the state server's socket path
    (None: the configuration shares state through Redis, or there is one worker) and
    the descriptor of the box's shared table (security.inspection.shared_table; None
    where the supervisor made none)."""

    inputs: ServeInputs
    index: int
    control_fd: int
    state_socket: str | None = None
    table_fd: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        raw = json.loads(text)
        inputs = ServeInputs(**raw.pop("inputs"))
        return cls(inputs=inputs, **raw)

    def link(self) -> WorkerLink | None:
        """The worker's link to the supervisor's state server, when there is one."""
        if self.state_socket is None:
            return None
        from gateway.workers.channel import WorkerLink
        from security.inspection.shared_table import SharedTable

        table = None if self.table_fd is None else SharedTable(self.table_fd)
        return WorkerLink(self.state_socket, worker=self.index, table=table)


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)
