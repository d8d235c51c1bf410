"""Builds stage 1's token validator from the settings: the embedded issuer (or its null
object) and every issuer the gateway trusts, each with its own keys and audiences."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import NoReturn

import httpx

from gateway.errors import ConfigurationError, NotFound
from gateway.settings import Settings
from security.authn import IssuerTrust, TokenCache, TokenValidator
from security.issuer import EmbeddedIssuer, load_signing_key
from security.jwks import FileKeySource, JwksError, KeySource, RemoteKeySource, StaticKeySource

Clock = Callable[[], float]


class DisabledIssuer:
    """The embedded issuer when `issuer.enabled` is false: its endpoints answer 404."""

    enabled = False

    def check_enabled(self) -> NoReturn:
        raise NotFound("the embedded token issuer is disabled")

    def jwks(self) -> NoReturn:
        self.check_enabled()

    def metadata(self) -> NoReturn:
        self.check_enabled()

    async def token_endpoint(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        client_cert_thumbprint: str | None = None,
    ) -> NoReturn:
        self.check_enabled()


TokenIssuer = EmbeddedIssuer | DisabledIssuer


def open_issuer(settings: Settings, clock: Clock) -> TokenIssuer:
    if not settings.issuer.enabled:
        return DisabledIssuer()
    mutual_tls = settings.tls.client_ca_file is not None
    bound = [c.client_id for c in settings.issuer.clients if c.certificate_bound]
    if bound and not mutual_tls:
        raise ConfigurationError(
            f"client(s) {', '.join(bound)} get only certificate-bound tokens, which need "
            "mutual TLS: set tls.client_ca_file (with tls.cert_file and tls.key_file)"
        )
    return EmbeddedIssuer(
        settings.issuer,
        issuer_url=settings.issuer_url,
        signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
        clock=clock,
        mutual_tls=mutual_tls,
    )


def open_validator(
    settings: Settings,
    issuer: TokenIssuer,
    http: httpx.AsyncClient,
    *,
    cache_key: bytes,
    clock: Clock,
) -> TokenValidator:
    return TokenValidator(
        trusted_issuers(settings, issuer, http),
        leeway_s=settings.auth.leeway_s,
        cache=TokenCache(cache_key, settings.auth.token_cache_size, clock),
        clock=clock,
    )


def trusted_issuers(
    settings: Settings, issuer: TokenIssuer, http: httpx.AsyncClient
) -> list[IssuerTrust]:
    trusts: list[IssuerTrust] = []
    if isinstance(issuer, EmbeddedIssuer):
        trusts.append(
            IssuerTrust(
                issuer=issuer.issuer_url,
                audiences=frozenset({settings.issuer.audience}),
                algorithms=frozenset({"RS256"}),
                keys=StaticKeySource(issuer.jwks()),
                required_typ="at+jwt",
                tenant_claim="tenant",
                bound_clients=issuer.bound_clients(),
            )
        )
    auth = settings.auth
    for trusted in auth.trusted_issuers:
        keys: KeySource
        if trusted.jwks_url is not None:
            keys = RemoteKeySource(
                trusted.jwks_url,
                client=http,
                ttl_s=auth.jwks_cache_ttl_s,
                min_refresh_interval_s=auth.jwks_min_refresh_interval_s,
                # Refresh pacing is wall-clock independent: monotonic, not the token clock.
                clock=time.monotonic,
            )
        else:
            assert trusted.jwks_file is not None  # noqa: S101 - enforced by the settings model
            try:
                keys = FileKeySource(
                    settings.resolve(trusted.jwks_file),
                    min_refresh_interval_s=auth.jwks_min_refresh_interval_s,
                    clock=time.monotonic,
                )
            except JwksError as exc:
                raise ConfigurationError(str(exc)) from exc
        trusts.append(
            IssuerTrust(
                issuer=trusted.issuer,
                audiences=frozenset(trusted.audiences),
                algorithms=frozenset(trusted.algorithms),
                keys=keys,
                required_typ=trusted.required_typ,
                tenant_claim=trusted.tenant_claim,
            )
        )
    if not trusts:
        raise ConfigurationError(
            "no token issuer is trusted: enable the embedded issuer "
            "or configure auth.trusted_issuers"
        )
    return trusts
