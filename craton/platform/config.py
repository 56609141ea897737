"""platform-app's configuration: every ``PLATFORM_*`` variable, parsed and validated.

``load_config(environ)`` returns one frozen ``PlatformConfig`` or raises ``ConfigErrors``
holding one line per mistake (all of them, not only the first), each naming the variable
and what is wrong; the entry point prints those lines and exits 2. Nothing else in the
service reads the environment.

Variables (the deployment guide's, then the ones the control plane adds):

    PLATFORM_HTTP_ADDR                   0.0.0.0:8080   the JSON API, /health, /ready, /metrics
    PLATFORM_NATS_URL                    required       nats://host:port (comma-separated list ok)
    PLATFORM_SQLITE_PATH                 required       the read-model database file
    PLATFORM_SESSION_TTL_SECS            3600           sign-in session lifetime
    PLATFORM_OAUTH_GITHUB_CLIENT_ID      (none)         GitHub OAuth app; both or neither
    PLATFORM_OAUTH_GITHUB_CLIENT_SECRET  (none)         never printed or logged
    PLATFORM_WEBAUTHN_RP_ID              (none)         passkeys' relying party; both or neither
    PLATFORM_WEBAUTHN_RP_ORIGIN          (none)         e.g. https://console.example.com
    PLATFORM_OAUTH_GITHUB_AUTHORIZE_URL  https://github.com/login/oauth/authorize
    PLATFORM_OAUTH_GITHUB_TOKEN_URL      https://github.com/login/oauth/access_token
    PLATFORM_OAUTH_GITHUB_API_URL        https://api.github.com
    PLATFORM_PUBLIC_URL                  (none)         where browsers reach the app; the OAuth
                                                        redirect is built from it (else from
                                                        the request's own host)
    PLATFORM_COOKIE_SECURE               true           false only for local plain http
    PLATFORM_SECRET_KEY                  (none)         32 bytes, urlsafe base64: encrypts
                                                        clusters' JWT secrets at rest; without
                                                        it, registering a cluster is refused
    PLATFORM_TOKEN_TTL_SECS              3600           lifetime of minted cluster tokens
    PLATFORM_HEALTH_POLL_SECS            10             how often nodes' /health, /ready are polled
    PLATFORM_SIGNIN_RATE_PER_MIN         30             sign-in attempts per client address

Rules: an empty value counts as unset; values quoted in errors are cut to
``QUOTED_VALUE_CHARS_MAX`` characters and secrets are never quoted.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import attrs

HTTP_ADDR_DEFAULT = "0.0.0.0:8080"
SESSION_TTL_SECS_DEFAULT = 3600
SESSION_TTL_SECS_MAX = 30 * 24 * 3600
GITHUB_AUTHORIZE_URL_DEFAULT = "https://github.com/login/oauth/authorize"
GITHUB_TOKEN_URL_DEFAULT = "https://github.com/login/oauth/access_token"
GITHUB_API_URL_DEFAULT = "https://api.github.com"
TOKEN_TTL_SECS_DEFAULT = 3600
TOKEN_TTL_SECS_MAX = 366 * 24 * 3600
HEALTH_POLL_SECS_DEFAULT = 10
HEALTH_POLL_SECS_MAX = 3600
SIGNIN_RATE_PER_MIN_DEFAULT = 30
SIGNIN_RATE_PER_MIN_MAX = 100_000
SECRET_KEY_BYTES = 32
QUOTED_VALUE_CHARS_MAX = 64
PORT_MAX = 65_535
NATS_SCHEMES = ("nats", "tls", "ws", "wss")

_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\]")


class ConfigErrors(Exception):
    """Every mistake in the environment; ``lines`` is what the operator sees."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@attrs.frozen
class GithubOAuth:
    client_id: str
    client_secret: str = attrs.field(repr=False)
    authorize_url: str
    token_url: str
    api_url: str


@attrs.frozen
class WebAuthnSettings:
    rp_id: str
    rp_origin: str


@attrs.frozen
class PlatformConfig:
    http_host: str
    http_port: int
    nats_urls: tuple[str, ...]
    sqlite_path: Path
    session_ttl_secs: int
    github: GithubOAuth | None
    webauthn: WebAuthnSettings | None
    public_url: str | None
    cookie_secure: bool
    secret_key: bytes | None = attrs.field(repr=False)
    token_ttl_secs: int
    health_poll_secs: int
    signin_rate_per_min: int

    def summary(self) -> dict[str, object]:
        """The configuration as the start-up log shows it: no secrets."""
        return {
            "http_addr": f"{self.http_host}:{self.http_port}",
            "nats_urls": ",".join(_without_credentials(url) for url in self.nats_urls),
            "sqlite_path": str(self.sqlite_path),
            "session_ttl_secs": self.session_ttl_secs,
            "github_oauth": self.github is not None,
            "webauthn": self.webauthn is not None,
            "cookie_secure": self.cookie_secure,
            "secret_key_set": self.secret_key is not None,
        }


class _Env:
    """Reads variables and collects one line per mistake."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.errors: list[str] = []

    def get(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def fail(self, name: str, problem: str) -> None:
        self.errors.append(f"{name}: {problem}")

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        if not re.fullmatch(r"[0-9]+", value) or not minimum <= int(value) <= maximum:
            self.fail(name, f"expected a whole number in {minimum}..{maximum}, got {_quote(value)}")
            return default
        return int(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        self.fail(name, f"expected true or false, got {_quote(value)}")
        return default

    def url(self, name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
        value = self.get(name)
        if value is None:
            return default
        if not _url_ok(value, schemes):
            self.fail(name, f"expected a {' or '.join(schemes)} URL, got {_quote(value)}")
            return default
        return value.rstrip("/")


def load_config(environ: Mapping[str, str]) -> PlatformConfig:
    """The configuration the environment describes; ``ConfigErrors`` lists every fault."""
    env = _Env(environ)
    host, port = _http_addr(env)
    nats_urls = _nats_urls(env)
    sqlite_path = _sqlite_path(env)
    session_ttl = env.integer(
        "PLATFORM_SESSION_TTL_SECS", SESSION_TTL_SECS_DEFAULT, 1, SESSION_TTL_SECS_MAX
    )
    github = _github(env)
    webauthn = _webauthn(env)
    public_url = env.url("PLATFORM_PUBLIC_URL", None, ("http", "https"))
    cookie_secure = env.boolean("PLATFORM_COOKIE_SECURE", True)
    secret_key = _secret_key(env)
    token_ttl = env.integer(
        "PLATFORM_TOKEN_TTL_SECS", TOKEN_TTL_SECS_DEFAULT, 1, TOKEN_TTL_SECS_MAX
    )
    poll = env.integer(
        "PLATFORM_HEALTH_POLL_SECS", HEALTH_POLL_SECS_DEFAULT, 1, HEALTH_POLL_SECS_MAX
    )
    rate = env.integer(
        "PLATFORM_SIGNIN_RATE_PER_MIN", SIGNIN_RATE_PER_MIN_DEFAULT, 1, SIGNIN_RATE_PER_MIN_MAX
    )
    if env.errors:
        raise ConfigErrors(env.errors)
    assert sqlite_path is not None
    return PlatformConfig(
        http_host=host,
        http_port=port,
        nats_urls=nats_urls,
        sqlite_path=sqlite_path,
        session_ttl_secs=session_ttl,
        github=github,
        webauthn=webauthn,
        public_url=public_url,
        cookie_secure=cookie_secure,
        secret_key=secret_key,
        token_ttl_secs=token_ttl,
        health_poll_secs=poll,
        signin_rate_per_min=rate,
    )


def parse_address(text: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port``) → (host, port), or None when it is not one."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not port.isdigit() or int(port) > PORT_MAX:
        return None
    return host.strip("[]"), int(port)


def _http_addr(env: _Env) -> tuple[str, int]:
    value = env.get("PLATFORM_HTTP_ADDR") or HTTP_ADDR_DEFAULT
    parsed = parse_address(value)
    if parsed is None:
        env.fail("PLATFORM_HTTP_ADDR", f"expected host:port, got {_quote(value)}")
        return "0.0.0.0", 8080
    return parsed


def _nats_urls(env: _Env) -> tuple[str, ...]:
    value = env.get("PLATFORM_NATS_URL")
    if value is None:
        env.fail("PLATFORM_NATS_URL", "is required (e.g. nats://127.0.0.1:4222)")
        return ()
    urls = tuple(part.strip() for part in value.split(","))
    for url in urls:
        if not _url_ok(url, NATS_SCHEMES):
            env.fail("PLATFORM_NATS_URL", f"expected nats://host:port, got {_quote(url)}")
            return ()
    return urls


def _sqlite_path(env: _Env) -> Path | None:
    value = env.get("PLATFORM_SQLITE_PATH")
    if value is None:
        env.fail("PLATFORM_SQLITE_PATH", "is required (the path of the SQLite database file)")
        return None
    path = Path(value)
    if path.is_dir():
        env.fail("PLATFORM_SQLITE_PATH", f"{_quote(value)} is a directory, expected a file path")
    elif not path.parent.is_dir():
        env.fail("PLATFORM_SQLITE_PATH", f"the directory of {_quote(value)} does not exist")
    return path


def _github(env: _Env) -> GithubOAuth | None:
    client_id = env.get("PLATFORM_OAUTH_GITHUB_CLIENT_ID")
    secret = env.get("PLATFORM_OAUTH_GITHUB_CLIENT_SECRET")
    urls = [
        env.url(name, default, ("http", "https"))
        for name, default in (
            ("PLATFORM_OAUTH_GITHUB_AUTHORIZE_URL", GITHUB_AUTHORIZE_URL_DEFAULT),
            ("PLATFORM_OAUTH_GITHUB_TOKEN_URL", GITHUB_TOKEN_URL_DEFAULT),
            ("PLATFORM_OAUTH_GITHUB_API_URL", GITHUB_API_URL_DEFAULT),
        )
    ]
    if client_id is None and secret is None:
        return None
    if client_id is None:
        env.fail("PLATFORM_OAUTH_GITHUB_CLIENT_ID", "is required when the client secret is set")
        return None
    if secret is None:
        env.fail("PLATFORM_OAUTH_GITHUB_CLIENT_SECRET", "is required when the client id is set")
        return None
    authorize, token, api = (url or "" for url in urls)
    return GithubOAuth(client_id, secret, authorize, token, api)


def _webauthn(env: _Env) -> WebAuthnSettings | None:
    rp_id = env.get("PLATFORM_WEBAUTHN_RP_ID")
    origin = env.get("PLATFORM_WEBAUTHN_RP_ORIGIN")
    if rp_id is None and origin is None:
        return None
    if rp_id is None:
        env.fail("PLATFORM_WEBAUTHN_RP_ID", "is required when PLATFORM_WEBAUTHN_RP_ORIGIN is set")
        return None
    if origin is None:
        env.fail("PLATFORM_WEBAUTHN_RP_ORIGIN", "is required when PLATFORM_WEBAUTHN_RP_ID is set")
        return None
    if not _url_ok(origin, ("http", "https")):
        env.fail("PLATFORM_WEBAUTHN_RP_ORIGIN", f"expected an https URL, got {_quote(origin)}")
        return None
    host = urlsplit(origin).hostname or ""
    if host != rp_id and not host.endswith("." + rp_id):
        env.fail(
            "PLATFORM_WEBAUTHN_RP_ID",
            f"{_quote(rp_id)} must be the host of PLATFORM_WEBAUTHN_RP_ORIGIN or a parent of it",
        )
        return None
    return WebAuthnSettings(rp_id, origin.rstrip("/"))


def _secret_key(env: _Env) -> bytes | None:
    value = env.get("PLATFORM_SECRET_KEY")
    if value is None:
        return None
    try:
        key = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != SECRET_KEY_BYTES:
        env.fail(
            "PLATFORM_SECRET_KEY",
            f"expected {SECRET_KEY_BYTES} random bytes in urlsafe base64 "
            "(e.g. from: openssl rand -base64 32 | tr '+/' '-_')",
        )
        return None
    return key


def _url_ok(value: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return False
    del port
    return parts.scheme in schemes and bool(parts.hostname)


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None:
        return url
    return url.replace(parts.netloc, parts.netloc.rpartition("@")[2])


def _quote(value: str) -> str:
    if len(value) > QUOTED_VALUE_CHARS_MAX:
        value = value[:QUOTED_VALUE_CHARS_MAX] + "..."
    return repr(value)
