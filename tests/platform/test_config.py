"""PLATFORM_* variables: defaults, and one clear line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from craton.platform.config import ConfigErrors, PlatformConfig, load_config


def _base(tmp_path: Path) -> dict[str, str]:
    return {
        "PLATFORM_NATS_URL": "nats://127.0.0.1:4222",
        "PLATFORM_SQLITE_PATH": str(tmp_path / "platform.db"),
    }


def _errors(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_config(env)
    return caught.value.lines


def test_defaults_are_the_deployment_guides(tmp_path: Path) -> None:
    config = load_config(_base(tmp_path))
    assert (config.http_host, config.http_port) == ("0.0.0.0", 8080)
    assert config.session_ttl_secs == 3600
    assert config.nats_urls == ("nats://127.0.0.1:4222",)
    assert config.sqlite_path == tmp_path / "platform.db"
    assert config.github is None and config.webauthn is None
    assert config.cookie_secure is True
    assert config.secret_key is None


def test_nats_url_and_sqlite_path_are_required_and_every_mistake_is_one_line() -> None:
    lines = _errors({"PLATFORM_SESSION_TTL_SECS": "soon", "PLATFORM_HTTP_ADDR": "8080"})
    assert lines == [
        "PLATFORM_HTTP_ADDR: expected host:port, got '8080'",
        "PLATFORM_NATS_URL: is required (e.g. nats://127.0.0.1:4222)",
        "PLATFORM_SQLITE_PATH: is required (the path of the SQLite database file)",
        "PLATFORM_SESSION_TTL_SECS: expected a whole number in 1..2592000, got 'soon'",
    ], "expected every mistake, one line each, in the guide's order"


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"PLATFORM_OAUTH_GITHUB_CLIENT_ID": "id"}, "PLATFORM_OAUTH_GITHUB_CLIENT_SECRET"),
        ({"PLATFORM_OAUTH_GITHUB_CLIENT_SECRET": "s"}, "PLATFORM_OAUTH_GITHUB_CLIENT_ID"),
        ({"PLATFORM_WEBAUTHN_RP_ID": "example.com"}, "PLATFORM_WEBAUTHN_RP_ORIGIN"),
        ({"PLATFORM_WEBAUTHN_RP_ORIGIN": "https://example.com"}, "PLATFORM_WEBAUTHN_RP_ID"),
    ],
)
def test_oauth_and_webauthn_variables_are_required_together(
    tmp_path: Path, given: dict[str, str], missing: str
) -> None:
    lines = _errors({**_base(tmp_path), **given})
    assert len(lines) == 1 and lines[0].startswith(f"{missing}: is required"), lines


def test_the_client_secret_is_never_quoted_or_shown(tmp_path: Path) -> None:
    config = load_config(
        {
            **_base(tmp_path),
            "PLATFORM_OAUTH_GITHUB_CLIENT_ID": "id",
            "PLATFORM_OAUTH_GITHUB_CLIENT_SECRET": "hunter2-secret",
            "PLATFORM_SECRET_KEY": "A" * 43,
        }
    )
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.summary())
    assert config.secret_key == bytes(32) and "AAAA" not in repr(config)
    lines = _errors({**_base(tmp_path), "PLATFORM_SECRET_KEY": "short-secret-value"})
    assert lines[0].startswith("PLATFORM_SECRET_KEY: expected 32 random bytes")
    assert "short-secret-value" not in lines[0], "a secret must never be echoed"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PLATFORM_NATS_URL", "http://x:4222", "PLATFORM_NATS_URL: expected nats://host:port"),
        ("PLATFORM_SQLITE_PATH", "/no/such/dir/p.db", "PLATFORM_SQLITE_PATH: the directory"),
        ("PLATFORM_COOKIE_SECURE", "maybe", "PLATFORM_COOKIE_SECURE: expected true or false"),
        ("PLATFORM_PUBLIC_URL", "console", "PLATFORM_PUBLIC_URL: expected a http or https URL"),
        ("PLATFORM_TOKEN_TTL_SECS", "0", "PLATFORM_TOKEN_TTL_SECS: expected a whole number"),
        ("PLATFORM_HTTP_ADDR", "host:99999", "PLATFORM_HTTP_ADDR: expected host:port"),
    ],
)
def test_a_bad_value_names_its_variable(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    lines = _errors({**_base(tmp_path), variable: value})
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_webauthn_origin_must_belong_to_the_relying_party(tmp_path: Path) -> None:
    env = {**_base(tmp_path), "PLATFORM_WEBAUTHN_RP_ID": "example.com"}
    lines = _errors({**env, "PLATFORM_WEBAUTHN_RP_ORIGIN": "https://evil.test"})
    assert lines[0].startswith("PLATFORM_WEBAUTHN_RP_ID: 'example.com' must be the host")
    config = load_config({**env, "PLATFORM_WEBAUTHN_RP_ORIGIN": "https://console.example.com/"})
    assert isinstance(config, PlatformConfig) and config.webauthn is not None
    assert config.webauthn.rp_origin == "https://console.example.com"


def test_empty_values_count_as_unset(tmp_path: Path) -> None:
    config = load_config(
        {**_base(tmp_path), "PLATFORM_HTTP_ADDR": "", "PLATFORM_SESSION_TTL_SECS": " "}
    )
    assert config.http_port == 8080 and config.session_ttl_secs == 3600


def test_nats_tls_files_must_exist_and_cert_and_key_come_together(tmp_path: Path) -> None:
    assert load_config(_base(tmp_path)).nats_tls is None, "plain NATS unless TLS is asked for"
    ca, cert = tmp_path / "ca.crt", tmp_path / "client.crt"
    ca.write_text("ca"), cert.write_text("cert")
    config = load_config({**_base(tmp_path), "PLATFORM_NATS_TLS_CA": str(ca)})
    assert config.nats_tls is not None and config.nats_tls.ca_file == ca
    assert config.nats_tls.cert_file is None and config.summary()["nats_tls"] is True
    lines = _errors(
        {
            **_base(tmp_path),
            "PLATFORM_NATS_TLS_CA": str(tmp_path / "missing.crt"),
            "PLATFORM_NATS_TLS_CERT": str(cert),
        }
    )
    assert len(lines) == 2, f"expected the missing CA file and the missing key: {lines}"
    assert lines[0].startswith("PLATFORM_NATS_TLS_CA: '") and lines[0].endswith(" is not a file")
    assert lines[1] == (
        "PLATFORM_NATS_TLS_KEY: is required when the other of the client certificate and key is set"
    ), lines
