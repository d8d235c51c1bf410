"""One worker process of `gateway serve --workers N`: the whole app, on the supervisor's socket.

`python -m gateway.workers.worker SPEC_JSON` (gateway.workers.spec.WorkerSpec). It talks to
the supervisor over one SOCK_SEQPACKET pair (`control_fd`), one message each way at start:

    worker -> "p"            the app is built (keys, policy, model loaded)
    supervisor -> fd         the listening socket (SCM_RIGHTS), bound only now, so that a
                             configuration error is reported before the port is touched
    worker -> "r"            uvicorn serves (lifespan done): the worker takes requests
    worker -> "e" CODE TEXT  it could not start: the supervisor reports TEXT as the
                             command's one error line and exits with CODE

The worker dies with the supervisor (PR_SET_PDEATHSIG): a killed supervisor leaves no
worker serving on an unsupervised socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys

import uvicorn

from gateway.errors import ConfigurationError
from gateway.workers.spec import WorkerSpec

_PR_SET_PDEATHSIG = 1

READY = b"r"
PREPARED = b"p"
FAILED = b"e"


class _NotifyingServer(uvicorn.Server):
    """uvicorn that tells the supervisor once it serves."""

    def __init__(self, config: uvicorn.Config, control: socket.socket) -> None:
        super().__init__(config)
        self._control = control

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            with contextlib.suppress(OSError):
                self._control.send(READY)


def _die_with_parent() -> None:
    """SIGKILL when the supervisor dies (Linux); elsewhere the ppid check below only."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os._exit(1)


def _fail(control: socket.socket, code: int, message: str) -> int:
    with contextlib.suppress(OSError):
        control.send(FAILED + bytes([code]) + message.encode()[:2000])
    return code


def run(spec: WorkerSpec) -> int:
    from gateway.app import create_app
    from gateway.logs import configure_logging
    from gateway.server import server_config

    control = socket.socket(fileno=spec.control_fd)
    try:
        settings = spec.inputs.settings()
        if spec.index != 0 and settings.grpc_port is not None:
            # One gRPC listener (worker 0's): grpc sets no SO_REUSEPORT (gateway.grpc.server).
            settings = settings.model_copy(update={"grpc_port": None})
        configure_logging(settings.log_level, settings.telemetry.log_format)
        app = create_app(settings, workers=spec.link())
        config = server_config(settings, app)
    except ConfigurationError as exc:
        return _fail(control, 2, str(exc))
    except Exception as exc:
        # The process boundary, as in gateway.cli.root.main: one line, never a traceback.
        first_line = (str(exc).splitlines() or [""])[0][:200]
        return _fail(control, 1, f"unexpected {type(exc).__name__}: {first_line}")
    control.send(PREPARED)
    _, fds, _, _ = socket.recv_fds(control, 1, 1)
    if not fds:
        return 1  # the supervisor could not listen, or is stopping
    listener = socket.socket(fileno=fds[0])
    server = _NotifyingServer(config, control)
    server.run(sockets=[listener])
    return 0 if server.started else 3


def main(argv: list[str]) -> int:
    _die_with_parent()
    return run(WorkerSpec.from_json(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
