"""TLS on the gateway's own listener (gateway.tls, gateway.server), against a real uvicorn on
127.0.0.1 with certificates made here. Protocol and cipher refusals are measured against a
permissive control server with the same certificate: the client that the gateway refuses
is shown to succeed there, so a refusal is the gateway's doing, not the client's."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session
from starlette.types import Receive, Scope, Send

from gateway.cli.root import main
from gateway.datadir import InitReport
from gateway.server import TlsH11Protocol, TlsHttpToolsProtocol
from gateway.settings import Settings
from gateway.tls import server_context
from tests.security._certs import Issued, client_context, issue, make_ca
from tests.security._servers import serve, serve_gateway


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "test-ca")
    return {"ca": ca, "server": issue(ca, directory, "server", server=True)}


@pytest.fixture(scope="module")
def tls_settings(make_settings: Callable[..., Settings], pki: dict[str, Issued]) -> Settings:
    server = pki["server"]
    return make_settings(tls={"cert_file": str(server.cert_path), "key_file": str(server.key_path)})


@pytest.fixture(scope="module")
def served_url(tls_settings: Settings) -> Iterator[str]:
    with serve_gateway(tls_settings) as served:
        assert served.url.startswith("https://")
        yield served.url


def _handshake(port: int, context: ssl.SSLContext) -> tuple[str | None, str]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return tls.version(), cipher[0]


@contextmanager
def permissive_server(server: Issued) -> Iterator[int]:
    """The control: TLS 1.0+ and every cipher OpenSSL has, same certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.load_cert_chain(server.cert_path, server.key_path)
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def _old_client(pki: dict[str, Issued], version: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    context = client_context(pki["ca"])
    with warnings.catch_warnings():  # TLS 1.0/1.1 on purpose: the attacker's client
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = min(version, ssl.TLSVersion.TLSv1_2)
        context.maximum_version = version
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return context


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_https_works_and_every_response_carries_hsts(
    served_url: str, pki: dict[str, Issued]
) -> None:
    with httpx.Client(base_url=served_url, verify=client_context(pki["ca"]), timeout=10) as c:
        ok = c.get("/healthz")
        missing = c.get("/no-such-path")
    assert ok.status_code == 200
    assert missing.status_code == 404
    for response in (ok, missing):
        assert response.headers["strict-transport-security"] == "max-age=31536000"


def test_tls13_is_negotiated_by_default(served_url: str, pki: dict[str, Issued]) -> None:
    version, _cipher = _handshake(_port(served_url), client_context(pki["ca"]))
    assert version == "TLSv1.3"


def test_the_server_certificate_is_checked_by_a_careful_client(served_url: str) -> None:
    """The default trust store does not know the test CA: the client refuses, as it should
    (and a plain-HTTP request to the TLS port gets no HTTP answer)."""
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served_url}/healthz", timeout=10)
    plain = served_url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/healthz", timeout=10)


@pytest.mark.parametrize(
    ("version", "ciphers"),
    [
        pytest.param(ssl.TLSVersion.TLSv1_1, "ECDHE-RSA-AES128-SHA", id="tls1.1"),
        pytest.param(ssl.TLSVersion.TLSv1, "ECDHE-RSA-AES128-SHA", id="tls1.0"),
        pytest.param(ssl.TLSVersion.TLSv1_2, "AES128-GCM-SHA256", id="rsa-key-exchange"),
        pytest.param(ssl.TLSVersion.TLSv1_2, "AES256-SHA256", id="rsa-kx-cbc"),
        pytest.param(ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA", id="cbc-sha1"),
        pytest.param(ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES256-SHA384", id="cbc-sha384"),
    ],
)
def test_old_protocols_and_weak_ciphers_are_refused(
    served_url: str, pki: dict[str, Issued], version: ssl.TLSVersion, ciphers: str
) -> None:
    client = _old_client(pki, version, ciphers)
    with permissive_server(pki["server"]) as control:
        negotiated = _handshake(control, client)
    assert negotiated == (version.name.replace("_", "."), ciphers)
    with pytest.raises(ssl.SSLError):
        _handshake(_port(served_url), client)


@pytest.mark.parametrize(
    "cipher",
    ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"],
)
def test_tls12_with_forward_secret_aead_is_accepted(
    served_url: str, pki: dict[str, Issued], cipher: str
) -> None:
    client = _old_client(pki, ssl.TLSVersion.TLSv1_2, cipher)
    assert _handshake(_port(served_url), client) == ("TLSv1.2", cipher)


def test_discovery_document_says_https(
    served_url: str, pki: dict[str, Issued], tls_settings: Settings
) -> None:
    with httpx.Client(base_url=served_url, verify=client_context(pki["ca"]), timeout=10) as c:
        metadata = c.get("/.well-known/oauth-authorization-server").json()
    issuer = metadata["issuer"]
    assert issuer == tls_settings.issuer_url
    assert issuer.startswith("https://")
    assert metadata["token_endpoint"] == f"{issuer}/oauth/token"
    assert metadata["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    # No client CA configured: the issuer does not claim to bind tokens to certificates.
    assert "tls_client_certificate_bound_access_tokens" not in metadata


def test_issuer_url_follows_the_scheme(
    make_settings: Callable[..., Settings], pki: dict[str, Issued]
) -> None:
    server = pki["server"]
    tls = {"cert_file": str(server.cert_path), "key_file": str(server.key_path)}
    # The scheme follows TLS (shared configuration); the port is the default listen
    # address's, never this process's own (replicas sharing a config agree).
    assert make_settings(port=8443, tls=tls).issuer_url == "https://127.0.0.1:8080"
    assert make_settings(port=8443).issuer_url == "http://127.0.0.1:8080"


def test_requests_oauthlib_fetches_a_token_over_tls(
    served_url: str, pki: dict[str, Issued], initialised: InitReport
) -> None:
    """The stock OAuth2 client (requests-oauthlib, on requests/urllib3 TLS), then an API call
    with its token over the same verified TLS."""
    secret = initialised.client_secrets["demo"].read_text().strip()
    session = OAuth2Session(client=BackendApplicationClient(client_id="demo"))
    token = session.fetch_token(
        token_url=f"{served_url}/oauth/token",
        client_id="demo",
        client_secret=secret,
        verify=str(pki["ca"].cert_path),
    )
    assert token["token_type"].lower() == "bearer"
    answer = session.get(f"{served_url}/v2/models/demo-ranker", verify=str(pki["ca"].cert_path))
    assert answer.status_code == 200, answer.text
    assert answer.headers["strict-transport-security"] == "max-age=31536000"


# --- the ASGI TLS extension, on both of uvicorn's HTTP protocols -------------------------


async def _echo_tls(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    import orjson

    tls = (scope.get("extensions") or {}).get("tls")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": orjson.dumps(tls)})


@pytest.mark.parametrize("protocol", [TlsH11Protocol, TlsHttpToolsProtocol])
def test_the_tls_extension_reaches_the_app(
    pki: dict[str, Issued], tmp_path: Path, tls_settings: Settings, protocol: Any
) -> None:
    ca = pki["ca"]
    client = issue(ca, tmp_path, "client-x")
    settings = tls_settings.tls.model_copy(
        update={"client_ca_file": str(ca.cert_path), "client_auth": "optional"}
    )
    context = server_context(settings, Path)
    with serve(
        _echo_tls,
        scheme="https",
        http=protocol,
        ssl_context_factory=lambda _config, _default: context,
    ) as served:
        with_cert = httpx.get(served.url, verify=client_context(ca, client), timeout=10).json()
        without = httpx.get(served.url, verify=client_context(ca), timeout=10).json()
    assert ssl.PEM_cert_to_DER_cert(with_cert["client_cert_chain"][0]) == client.der
    assert with_cert["client_cert_name"] == "CN=client-x"
    assert with_cert["client_cert_error"] is None
    assert with_cert["tls_version"] == 0x0304
    assert with_cert["cipher_suite"] in {0x1301, 0x1302, 0x1303}
    assert without["client_cert_chain"] == []
    assert without["client_cert_name"] is None


# --- operator errors: one line, exit 2, no traceback --------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Issued]) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("bad")
    other = issue(pki["ca"], directory, "other", server=True)
    now = datetime.datetime.now(datetime.UTC)
    expired = issue(
        pki["ca"],
        directory,
        "expired",
        server=True,
        not_before=now - datetime.timedelta(days=10),
        not_after=now - datetime.timedelta(days=1),
    )
    garbage = directory / "garbage.pem"
    garbage.write_text("not a certificate\n")
    return {
        "other_key": other.key_path,
        "expired_cert": expired.cert_path,
        "expired_key": expired.key_path,
        "garbage": garbage,
        "missing": directory / "missing.pem",
    }


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("missing", "server_key", "TLS certificate not found: "),
        ("server_cert", "missing", "TLS key not found: "),
        ("garbage", "server_key", "holds no PEM certificate"),
        ("server_cert", "garbage", "holds no PEM private key"),
        ("server_cert", "other_key", "does not match the certificate"),
        ("expired_cert", "expired_key", "expired on "),
        ("server_cert", None, "give both tls.cert_file and tls.key_file"),
    ],
)
def test_serve_refuses_unusable_tls_files_in_one_line(
    capsys: pytest.CaptureFixture[str],
    initialised: InitReport,
    pki: dict[str, Issued],
    bad_files: dict[str, Path],
    cert: str,
    key: str | None,
    message: str,
) -> None:
    files = {
        **bad_files,
        "server_cert": pki["server"].cert_path,
        "server_key": pki["server"].key_path,
    }
    argv = ["serve", "--data-dir", str(initialised.data_dir), "--tls-cert", str(files[cert])]
    if key is not None:
        argv += ["--tls-key", str(files[key])]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ")
    assert message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("ca", "message"), [("missing", "TLS client CA not found: "), ("garbage", "TLS client CA")]
)
def test_serve_refuses_an_unusable_client_ca_in_one_line(
    capsys: pytest.CaptureFixture[str],
    initialised: InitReport,
    pki: dict[str, Issued],
    bad_files: dict[str, Path],
    ca: str,
    message: str,
) -> None:
    server = pki["server"]
    argv = ["serve", "--data-dir", str(initialised.data_dir), "--tls-cert", str(server.cert_path)]
    argv += ["--tls-key", str(server.key_path), "--tls-client-ca", str(bad_files[ca])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"X-Big: " + b"a" * 40_000 + b"\r\n", id="oversized"),
        pytest.param(b"".join(b"X-H%d: v\r\n" % n for n in range(150)), id="too-many-fields"),
    ],
)
def test_even_the_servers_own_refusals_carry_hsts(
    served_url: str, pki: dict[str, Issued], request_bytes: bytes
) -> None:
    context = client_context(pki["ca"])
    with (
        socket.create_connection(("127.0.0.1", _port(served_url)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + request_bytes + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := tls.recv(65536)):
            answer += chunk
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 431 ")
    assert b"\r\nstrict-transport-security: max-age=31536000" in head
