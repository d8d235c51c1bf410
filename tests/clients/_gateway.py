"""A real gateway on 127.0.0.1 for stock OIP clients, and the way to run those clients.

`tritonclient` and `kserve` each register the protocol's `inference.*` protobuf symbols
in the default descriptor pool and cannot share a process (nor with the gateway's own
stubs), so every stock client runs in a subprocess: a runner script next to this module
reads a JSON spec on stdin (URL, tokens, tensors; tokens never on the command line) and
prints one JSON report that the test asserts on.

Other stock-client tests import the fixtures from here (`from tests.clients._gateway
import gateway  # noqa: F401`): `gateway` yields a `RunningGateway`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.datadir import init_data_dir
from gateway.settings import Settings, load_settings
from security.issuer import EmbeddedIssuer, load_signing_key
from tests.security._servers import Served, serve_gateway

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


@dataclass(frozen=True)
class RunningGateway:
    """The served gateway: its base URL, `host:port`, settings, and real tokens."""

    http_url: str
    host_port: str
    settings: Settings
    served: Served
    _mint: Callable[..., str]

    def token(self, scopes: Sequence[str] = ("infer",), client_id: str | None = None) -> str:
        """A token from the embedded issuer; scopes beyond `demo`'s are minted for `operator`."""
        if client_id is None:
            client_id = "demo" if set(scopes) <= {"rank", "infer"} else "operator"
        return self._mint(client_id, tuple(scopes))


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    # Its own data directory: it runs for the whole session, beside the apps other test
    # modules open on the shared one, and an audit log has one writer.
    report = init_data_dir(tmp_path_factory.mktemp("clients-data"))
    settings = load_settings(data_dir=report.data_dir, config_file=report.config)
    issuer = EmbeddedIssuer(
        settings.issuer,
        issuer_url=settings.issuer_url,
        signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
    )

    def mint(client_id: str, scopes: tuple[str, ...]) -> str:
        client = issuer.client(client_id)
        assert client is not None
        token: str = issuer.mint(client, scopes)["access_token"]
        return token

    with serve_gateway(settings) as served:
        yield RunningGateway(
            http_url=served.url,
            host_port=f"127.0.0.1:{served.port}",
            settings=settings,
            served=served,
            _mint=mint,
        )


def run_client(runner: str, spec: Mapping[str, Any], *, timeout_s: float = 120.0) -> dict[str, Any]:
    """Run `tests/clients/<runner>` in a fresh interpreter with `spec` on stdin; its report."""
    done = subprocess.run(
        [sys.executable, str(HERE / runner)],
        input=json.dumps(spec).encode(),
        capture_output=True,
        timeout=timeout_s,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report
