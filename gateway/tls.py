"""The server's TLS context: TLS 1.2+ only, forward-secret AEAD ciphers, optional mutual TLS.

Every file is checked before OpenSSL sees it, so an operator's mistake (a missing or
unreadable file, a key that does not belong to the certificate, an expired certificate)
is one clear line at start-up, never an `[SSL] PEM lib` error.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from gateway.errors import ConfigurationError
from gateway.settings import TlsSettings

# TLS 1.2 suites: ECDHE key exchange (forward secret, no RSA key transport) and AEAD
# only (no CBC, so no Lucky13 / padding oracles). TLS 1.3's suites are all AEAD.
CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!PSK:!SRP"

Resolve = Callable[[str], Path]


def server_context(settings: TlsSettings, resolve: Resolve) -> ssl.SSLContext:
    """The listener's context. Raises `ConfigurationError` naming the file at fault."""
    if settings.cert_file is None or settings.key_file is None:
        raise ConfigurationError("TLS needs tls.cert_file and tls.key_file")
    cert_path, key_path = resolve(settings.cert_file), resolve(settings.key_file)
    chain = _certificates(cert_path, "TLS certificate")
    _check_valid_now(chain[0], cert_path)
    _check_key_matches(chain[0], _read(key_path, "TLS key"), key_path)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS_TLS12)
    context.options |= (
        ssl.OP_NO_COMPRESSION  # CRIME
        | ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation is a DoS lever
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_SINGLE_ECDH_USE
    )
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"TLS certificate {cert_path} and key {key_path} are not usable: {exc.reason}"
        ) from None
    if settings.client_ca_file is not None:
        ca_path = resolve(settings.client_ca_file)
        cas = _certificates(ca_path, "TLS client CA")
        context.load_verify_locations(
            cadata="".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in cas)
        )
        # A presented certificate that fails verification (wrong CA, expired, not for
        # client authentication) fails the handshake in both modes.
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.client_auth == "required" else ssl.CERT_OPTIONAL
        )
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def tls_overrides(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> dict[str, str] | None:
    """`gateway serve --tls-*` as settings: absolute, since settings paths are otherwise
    relative to the data directory; None when no flag was given (the config decides)."""
    given = {"cert_file": cert, "key_file": key, "client_ca_file": client_ca}
    chosen = {name: str(path.absolute()) for name, path in given.items() if path is not None}
    return chosen or None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ConfigurationError(f"{what} {path} is unreadable: {exc.strerror}") from None


def _certificates(path: Path, what: str) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(_read(path, what))
    except ValueError:
        raise ConfigurationError(f"{what} {path} holds no PEM certificate") from None
    return found


def _check_valid_now(cert: x509.Certificate, path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if now < cert.not_valid_before_utc:
        raise ConfigurationError(
            f"TLS certificate {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
        )
    if now >= cert.not_valid_after_utc:
        raise ConfigurationError(
            f"TLS certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}"
        )


def _check_key_matches(cert: x509.Certificate, pem: bytes, path: Path) -> None:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ConfigurationError(
            f"TLS key {path} is encrypted; give an unencrypted key (protect the file instead)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(f"TLS key {path} holds no PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ConfigurationError(f"TLS key {path} does not match the certificate")
