"""Settings: frozen, env over file, placeholder secrets refused outside dev mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.errors import ConfigurationError
from gateway.settings import Settings, load_settings


def test_settings_are_frozen() -> None:
    settings = load_settings(dev_mode=True)
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]


def test_placeholder_secret_refused_outside_dev_mode() -> None:
    with pytest.raises(ConfigurationError, match="placeholder"):
        load_settings().check_secrets()
    load_settings(dev_mode=True).check_secrets()
    with pytest.raises(ConfigurationError, match="at least 32"):
        load_settings(secret_key="short-but-not-a-placeholder").check_secrets()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"audit": {"enabled": False}}, "audit.enabled"),
        ({"policy": {"engine": "scopes"}}, "policy.engine"),
        ({"inspection": {"enabled": False}}, "inspection.enabled"),
        ({"packages": {"unsafe_allow_plaintext_model": True}}, "unsafe_allow_plaintext_model"),
    ],
)
def test_security_stages_switch_off_only_in_dev_mode(
    overrides: dict[str, dict[str, object]], message: str
) -> None:
    secret = "k" * 40
    with pytest.raises(ConfigurationError, match=message):
        load_settings(secret_key=secret, **overrides).check_secrets()
    load_settings(secret_key=secret, dev_mode=True, **overrides).check_secrets()


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        'port = 9000\nsecret_key = "' + "k" * 40 + '"\n[limits]\nmax_candidates = 7\n'
    )
    from_file = load_settings(config_file=config)
    assert (from_file.port, from_file.limits.max_candidates) == (9000, 7)
    monkeypatch.setenv("GATEWAY_PORT", "9100")
    monkeypatch.setenv("GATEWAY_LIMITS__MAX_CANDIDATES", "9")
    both = load_settings(config_file=config)
    assert (both.port, both.limits.max_candidates) == (9100, 9)


def test_yaml_config(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("host: 127.0.0.2\nauth:\n  leeway_s: 5\n")
    settings = load_settings(config_file=config)
    assert settings.host == "127.0.0.2"
    assert settings.auth.leeway_s == 5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("port = 'eighty'\n", "port"),
        ("no_such_key = 1\n", "no_such_key"),
        ("[auth]\nleeway_s = 100000\n", "auth.leeway_s"),
        (
            "[[auth.trusted_issuers]]\nissuer = 'https://idp'\naudiences = ['a']\n"
            "jwks_file = 'k.json'\nalgorithms = ['HS256']\n",
            "not allowed",
        ),
        (
            "[[auth.trusted_issuers]]\nissuer = 'https://idp'\naudiences = ['a']\n",
            "exactly one of jwks_url or jwks_file",
        ),
        ("port = [\n", "cannot read config file"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(content)
    with pytest.raises(ConfigurationError, match=message):
        load_settings(config_file=config)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        load_settings(config_file=Path("/nonexistent/gw.toml"))


def test_issuer_url_is_configuration_not_the_listen_address() -> None:
    # Replicas on other ports or hosts that share a config must agree on the issuer.
    default = Settings(dev_mode=True).issuer_url
    assert default == "http://127.0.0.1:8080"
    assert Settings(dev_mode=True, host="0.0.0.0", port=9999).issuer_url == default  # noqa: S104
    configured = Settings(dev_mode=True, port=9999, issuer={"issuer_url": "https://gw.example"})
    assert configured.issuer_url == "https://gw.example"
