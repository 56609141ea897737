"""The node's configuration: every ``VDB_*`` environment variable, parsed and validated.

``load_config(environ)`` turns the environment into one frozen ``ServerConfig`` or raises
``ConfigError`` naming the first variable that is wrong and what is wrong with it; the
entry point prints that as one line and exits non-zero. Nothing else in the node reads the
environment.

Variables: the deployment guide's, plus ``VDB_CLUSTER_PEERS`` and ``VDB_METRICS_ADDR``.
``VARIABLES`` lists every one with its default and what it does; ``craton-server --help``
prints that table, and a test checks that it names exactly the variables ``load_config``
reads.

Rules: an empty value counts as unset (container tooling often sets ``VAR=``); enumerated
values are matched without regard to case or surrounding spaces; an address is
``host:port`` (IPv6 hosts in brackets) with a port in 0..65535, 0 meaning "any free
port"; values quoted in errors are cut to ``QUOTED_VALUE_CHARS_MAX`` characters, and
neither secret is ever quoted. ``VDB_JWT_SECRET`` is required with ``jwt`` and ``both`` and
must be at least ``JWT_SECRET_SIZE_MIN`` bytes (docs/SECURITY.md). In ``cluster`` mode
``VDB_CLUSTER_PEERS`` is required, lists 1..16 distinct addresses with real ports, and
``VDB_REPLICA_ID`` is an index into it; the address at that index is where the other
replicas and redirected clients reach this node (``VDB_BIND_ADDR`` is where it listens,
e.g. ``0.0.0.0:5432``), and ``VDB_CLUSTER_SECRET`` (at least ``CLUSTER_SECRET_SIZE_MIN``
bytes, the same on every replica) is required.

``VDB_REPLICA_ID=ordinal`` is for a Kubernetes StatefulSet, whose pods share one template
and differ only by name: the replica id is the ordinal after the last ``-`` of the host name
(``HOSTNAME``, else the system's host name, up to its first dot), so pod ``craton-server-2``
is replica 2. A host name without such a suffix is a ``ConfigError``.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import attrs

from craton.core.auth import JWT_SECRET_SIZE_MIN, AuthMode, JwtPolicy

BIND_ADDR_DEFAULT = "0.0.0.0:5432"
METRICS_ADDR_DEFAULT = "0.0.0.0:9090"
MAX_CONNECTIONS_DEFAULT = 1024
MAX_CONNECTIONS_LIMIT = 65_536  # connections; beyond this the process runs out of descriptors
IDLE_TIMEOUT_SECS_DEFAULT = 300
IDLE_TIMEOUT_SECS_MAX = 7 * 24 * 3600
RATE_LIMIT_RPS_MAX = 1_000_000.0
JWT_ISSUER_DEFAULT = "craton"
JWT_AUDIENCE_DEFAULT = "craton"
JWT_EXPIRATION_SECS_DEFAULT = 3600
JWT_EXPIRATION_SECS_MAX = 366 * 24 * 3600
REPLICA_ID_MAX = 15  # the wire protocol carries replica ids 0..15
REPLICA_ID_ORDINAL = "ordinal"  # VDB_REPLICA_ID: take it from the host name's -N suffix
CLUSTER_SIZE_MAX = REPLICA_ID_MAX + 1
QUOTED_VALUE_CHARS_MAX = 64
PORT_MAX = 65_535
CLUSTER_SECRET_SIZE_MIN = 32  # bytes

_E = TypeVar("_E", bound=enum.Enum)

_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


class ConfigError(Exception):
    """A variable is missing or wrong; ``str()`` is the one line an operator sees."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class ReplicationMode(enum.Enum):
    NONE = "none"
    SINGLE_NODE = "single-node"
    CLUSTER = "cluster"


class LogLevel(enum.Enum):
    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


AUTH_MODE_DEFAULT = AuthMode.NONE
REPLICATION_MODE_DEFAULT = ReplicationMode.NONE
LOG_LEVEL_DEFAULT = LogLevel.INFO
REPLICA_ID_DEFAULT = 0
CLUSTER_FORMED_DEFAULT = False
REQUIRED = "(required)"
UNSET = "(none)"


@attrs.frozen
class Variable:
    """One variable the node reads: its default as the operator would write it (``REQUIRED``
    or ``UNSET`` when there is none) and what it does, in one line."""

    name: str
    default: str
    description: str


# Every variable ``load_config`` reads, in the order the deployment guide gives them; the
# defaults are the constants the reader uses.
VARIABLES: tuple[Variable, ...] = (
    Variable("VDB_DATA_DIR", REQUIRED, "the data directory (created if missing)"),
    Variable("VDB_BIND_ADDR", BIND_ADDR_DEFAULT, "binary protocol, and HTTP probes, on one port"),
    Variable("VDB_METRICS_ADDR", METRICS_ADDR_DEFAULT, "HTTP: /health, /ready and /metrics"),
    Variable(
        "VDB_MAX_CONNECTIONS",
        str(MAX_CONNECTIONS_DEFAULT),
        f"client connections at once (1..{MAX_CONNECTIONS_LIMIT})",
    ),
    Variable(
        "VDB_IDLE_TIMEOUT_SECS",
        str(IDLE_TIMEOUT_SECS_DEFAULT),
        "idle seconds before a quiet connection is closed",
    ),
    Variable("VDB_RATE_LIMIT_RPS", UNSET, "requests per second per connection (token bucket)"),
    Variable("VDB_TLS_CERT", UNSET, "PEM certificate chain: TLS on the main port"),
    Variable("VDB_TLS_KEY", UNSET, "PEM private key of VDB_TLS_CERT; both or neither"),
    Variable("VDB_AUTH_MODE", AUTH_MODE_DEFAULT.value, "none | jwt | apikey | both"),
    Variable(
        "VDB_JWT_SECRET",
        UNSET,
        f"required with jwt or both (>= {JWT_SECRET_SIZE_MIN} bytes); never logged",
    ),
    Variable("VDB_JWT_ISSUER", JWT_ISSUER_DEFAULT, "the iss claim a token must carry"),
    Variable("VDB_JWT_AUDIENCE", JWT_AUDIENCE_DEFAULT, "the aud claim a token must carry"),
    Variable(
        "VDB_JWT_EXPIRATION_SECS",
        str(JWT_EXPIRATION_SECS_DEFAULT),
        "the longest lifetime (exp - iat) a token may have",
    ),
    Variable("VDB_JWT_SECRET_PREVIOUS", UNSET, "a retired JWT secret still accepted (rotation)"),
    Variable(
        "VDB_CLUSTER_SECRET",
        UNSET,
        f"required in cluster mode (>= {CLUSTER_SECRET_SIZE_MIN} bytes); never logged",
    ),
    Variable(
        "VDB_CLUSTER_SECRET_SECONDARY", UNSET, "also accepted from peers, never sent (rotation)"
    ),
    Variable(
        "VDB_REPLICATION_MODE", REPLICATION_MODE_DEFAULT.value, "none | single-node | cluster"
    ),
    Variable(
        "VDB_REPLICA_ID",
        str(REPLICA_ID_DEFAULT),
        f"0..{REPLICA_ID_MAX}, index into VDB_CLUSTER_PEERS; or {REPLICA_ID_ORDINAL}",
    ),
    Variable("VDB_CLUSTER_PEERS", UNSET, "host:port of every replica, in replica-id order"),
    Variable(
        "VDB_CLUSTER_FORMED",
        str(CLUSTER_FORMED_DEFAULT).lower(),
        "true once formed: a blank disk rejoins via a quorum",
    ),
    Variable("VDB_LOG_LEVEL", LOG_LEVEL_DEFAULT.value, "trace | debug | info | warn | error"),
)


@attrs.frozen
class Address:
    """A ``host:port`` to bind or to reach."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class JwtSettings:
    secret: str | None = attrs.field(repr=False)  # never in logs, reprs or errors
    issuer: str
    audience: str
    expiration_secs: int

    previous: str | None = attrs.field(default=None, repr=False)

    def policy(self) -> JwtPolicy | None:
        """The core's JWT policy; None without a secret."""
        if self.secret is None:
            return None
        previous = None if self.previous is None else self.previous.encode("utf-8")
        return JwtPolicy(
            self.secret.encode("utf-8"),
            self.issuer,
            self.audience,
            self.expiration_secs,
            previous,
        )


@attrs.frozen
class ServerConfig:
    data_dir: Path
    bind_addr: Address
    metrics_addr: Address
    max_connections: int
    idle_timeout_secs: int
    rate_limit_rps: float | None
    tls_cert: Path | None
    tls_key: Path | None
    auth_mode: AuthMode
    jwt: JwtSettings
    replication_mode: ReplicationMode
    replica_id: int
    cluster_peers: tuple[Address, ...]
    log_level: LogLevel
    cluster_secret: bytes | None = attrs.field(default=None, repr=False)  # never logged
    cluster_formed: bool = False  # VDB_CLUSTER_FORMED
    cluster_secret_secondary: bytes | None = attrs.field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def summary(self) -> dict[str, str | int | float | bool | None]:
        """The configuration as the start-up log shows it: no secrets."""
        return {
            "data_dir": str(self.data_dir),
            "bind_addr": str(self.bind_addr),
            "metrics_addr": str(self.metrics_addr),
            "max_connections": self.max_connections,
            "idle_timeout_secs": self.idle_timeout_secs,
            "rate_limit_rps": self.rate_limit_rps,
            "tls": self.tls,
            "auth_mode": self.auth_mode.value,
            "jwt_secret_set": self.jwt.secret is not None,
            "jwt_previous_secret_set": self.jwt.previous is not None,
            "cluster_secret_set": self.cluster_secret is not None,
            "cluster_secret_secondary_set": self.cluster_secret_secondary is not None,
            "replication_mode": self.replication_mode.value,
            "replica_id": self.replica_id,
            "cluster_peers": ",".join(str(peer) for peer in self.cluster_peers) or None,
            "cluster_formed": self.cluster_formed,
            "log_level": self.log_level.value,
        }


# --- Entry point -----------------------------------------------------------------------------


def load_config(environ: Mapping[str, str], *, hostname: str | None = None) -> ServerConfig:
    """The configuration the environment describes; ``ConfigError`` for the first fault.
    ``hostname`` overrides the host name that ``VDB_REPLICA_ID=ordinal`` reads."""
    env = _Env(environ)
    data_dir = _data_dir(env)
    bind_addr = parse_address(env.get("VDB_BIND_ADDR") or BIND_ADDR_DEFAULT, "VDB_BIND_ADDR")
    metrics_addr = parse_address(
        env.get("VDB_METRICS_ADDR") or METRICS_ADDR_DEFAULT, "VDB_METRICS_ADDR"
    )
    max_connections = env.integer(
        "VDB_MAX_CONNECTIONS", MAX_CONNECTIONS_DEFAULT, 1, MAX_CONNECTIONS_LIMIT
    )
    idle_timeout_secs = env.integer(
        "VDB_IDLE_TIMEOUT_SECS", IDLE_TIMEOUT_SECS_DEFAULT, 1, IDLE_TIMEOUT_SECS_MAX
    )
    rate_limit_rps = _rate_limit(env)
    tls_cert, tls_key = _tls_files(env)
    auth_mode = env.choice("VDB_AUTH_MODE", AuthMode, AUTH_MODE_DEFAULT)
    jwt = JwtSettings(
        secret=env.get("VDB_JWT_SECRET"),
        issuer=env.get("VDB_JWT_ISSUER") or JWT_ISSUER_DEFAULT,
        audience=env.get("VDB_JWT_AUDIENCE") or JWT_AUDIENCE_DEFAULT,
        expiration_secs=env.integer(
            "VDB_JWT_EXPIRATION_SECS", JWT_EXPIRATION_SECS_DEFAULT, 1, JWT_EXPIRATION_SECS_MAX
        ),
        previous=env.get("VDB_JWT_SECRET_PREVIOUS"),
    )
    replication_mode = env.choice("VDB_REPLICATION_MODE", ReplicationMode, REPLICATION_MODE_DEFAULT)
    replica_id = _replica_id(env, hostname)
    cluster_peers = _peers(env)
    log_level = env.choice("VDB_LOG_LEVEL", LogLevel, LOG_LEVEL_DEFAULT)
    cluster_secret = env.get("VDB_CLUSTER_SECRET")
    secondary = env.get("VDB_CLUSTER_SECRET_SECONDARY")
    cluster_formed = env.boolean("VDB_CLUSTER_FORMED", CLUSTER_FORMED_DEFAULT)
    _check_replication(replication_mode, replica_id, cluster_peers)
    _check_cluster_secret(replication_mode, cluster_secret)
    _check_secret_size("VDB_CLUSTER_SECRET_SECONDARY", secondary, CLUSTER_SECRET_SIZE_MIN)
    _check_auth(auth_mode, jwt)
    return ServerConfig(
        data_dir=data_dir,
        bind_addr=bind_addr,
        metrics_addr=metrics_addr,
        max_connections=max_connections,
        idle_timeout_secs=idle_timeout_secs,
        rate_limit_rps=rate_limit_rps,
        tls_cert=tls_cert,
        tls_key=tls_key,
        auth_mode=auth_mode,
        jwt=jwt,
        replication_mode=replication_mode,
        replica_id=replica_id,
        cluster_peers=cluster_peers,
        log_level=log_level,
        cluster_secret=None if cluster_secret is None else cluster_secret.encode("utf-8"),
        cluster_secret_secondary=None if secondary is None else secondary.encode("utf-8"),
        cluster_formed=cluster_formed,
    )


def parse_address(text: str, variable: str) -> Address:
    """``host:port`` (``[v6]:port`` for IPv6) → ``Address``; ``ConfigError`` otherwise."""
    value = text.strip()
    expected = f"expected host:port (IPv6 as [addr]:port), got {_quote(value)}"
    if value.startswith("["):
        close = value.find("]")
        if close < 0 or value[close + 1 : close + 2] != ":":
            raise ConfigError(variable, expected)
        host, port_text = value[1:close], value[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(variable, f"{_quote(host)} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host or ":" in host:
            raise ConfigError(variable, expected)
        if not _HOSTNAME.fullmatch(host):
            raise ConfigError(variable, f"{_quote(host)} is not a host name or IPv4 address")
    if not port_text.isdigit() or int(port_text) > PORT_MAX:
        raise ConfigError(variable, f"port must be a number in 0..{PORT_MAX}, got {_quote(value)}")
    return Address(host, int(port_text))


# --- Helpers ---------------------------------------------------------------------------------


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        if not re.fullmatch(r"[0-9]+", value) or not minimum <= int(value) <= maximum:
            raise ConfigError(
                name, f"expected a whole number in {minimum}..{maximum}, got {_quote(value)}"
            )
        return int(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(name, f"expected true or false, got {_quote(value)}")

    def choice(self, name: str, kind: type[_E], default: _E) -> _E:
        value = self.get(name)
        if value is None:
            return default
        for member in kind:
            if member.value == value.lower():
                return member
        allowed = ", ".join(str(member.value) for member in kind)
        raise ConfigError(name, f"unknown value {_quote(value)} (expected one of: {allowed})")


def _data_dir(env: _Env) -> Path:
    value = env.get("VDB_DATA_DIR")
    if value is None:
        raise ConfigError("VDB_DATA_DIR", "is required (the path of the data directory)")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ConfigError("VDB_DATA_DIR", f"{_quote(value)} exists and is not a directory")
    return path


def _rate_limit(env: _Env) -> float | None:
    value = env.get("VDB_RATE_LIMIT_RPS")
    if value is None:
        return None
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not (math.isfinite(rate) and 0 < rate <= RATE_LIMIT_RPS_MAX):
        raise ConfigError(
            "VDB_RATE_LIMIT_RPS",
            f"expected requests per second above 0 and at most {RATE_LIMIT_RPS_MAX:g}, "
            f"got {_quote(value)}",
        )
    return rate


def _tls_files(env: _Env) -> tuple[Path | None, Path | None]:
    cert, key = env.get("VDB_TLS_CERT"), env.get("VDB_TLS_KEY")
    if (cert is None) != (key is None):
        given, missing = (
            ("VDB_TLS_CERT", "VDB_TLS_KEY")
            if key is None
            else (
                "VDB_TLS_KEY",
                "VDB_TLS_CERT",
            )
        )
        raise ConfigError(missing, f"is required when {given} is set (TLS needs both files)")
    if cert is None or key is None:
        return None, None
    for name, value in (("VDB_TLS_CERT", cert), ("VDB_TLS_KEY", key)):
        if not Path(value).is_file():
            raise ConfigError(name, f"{_quote(value)} is not a readable file")
    return Path(cert), Path(key)


def _replica_id(env: _Env, hostname: str | None) -> int:
    value = env.get("VDB_REPLICA_ID")
    if value is None or value.lower() != REPLICA_ID_ORDINAL:
        return env.integer("VDB_REPLICA_ID", REPLICA_ID_DEFAULT, 0, REPLICA_ID_MAX)
    if hostname is None:
        hostname = env.get("HOSTNAME") or socket.gethostname()
    return replica_id_from_hostname(hostname)


def replica_id_from_hostname(hostname: str) -> int:
    """The ordinal that ends a StatefulSet pod's host name: ``craton-server-2`` → 2."""
    name = hostname.strip().split(".", 1)[0]
    match = re.fullmatch(r".+-([0-9]+)", name)
    if match is None:
        raise ConfigError(
            "VDB_REPLICA_ID",
            f"{REPLICA_ID_ORDINAL}: the host name {_quote(name)} does not end in -N "
            "(a StatefulSet pod's ordinal)",
        )
    ordinal = int(match.group(1))
    if ordinal > REPLICA_ID_MAX:
        raise ConfigError(
            "VDB_REPLICA_ID",
            f"{REPLICA_ID_ORDINAL}: the host name {_quote(name)} gives {ordinal}; "
            f"replica ids are 0..{REPLICA_ID_MAX}",
        )
    return ordinal


def _peers(env: _Env) -> tuple[Address, ...]:
    value = env.get("VDB_CLUSTER_PEERS")
    if value is None:
        return ()
    parts = [part.strip() for part in value.split(",")]
    if any(not part for part in parts):
        raise ConfigError("VDB_CLUSTER_PEERS", "has an empty entry (expected host:port,...)")
    if len(parts) > CLUSTER_SIZE_MAX:
        raise ConfigError(
            "VDB_CLUSTER_PEERS",
            f"lists {len(parts)} replicas; a cluster has at most {CLUSTER_SIZE_MAX}",
        )
    peers = tuple(parse_address(part, "VDB_CLUSTER_PEERS") for part in parts)
    if len(set(peers)) != len(peers):
        raise ConfigError("VDB_CLUSTER_PEERS", "lists the same address twice")
    return peers


def _check_replication(mode: ReplicationMode, replica_id: int, peers: tuple[Address, ...]) -> None:
    match mode:
        case ReplicationMode.NONE | ReplicationMode.SINGLE_NODE:
            if replica_id != 0:
                raise ConfigError(
                    "VDB_REPLICA_ID",
                    f"must be 0 with VDB_REPLICATION_MODE={mode.value} (one replica), "
                    f"got {replica_id}",
                )
        case ReplicationMode.CLUSTER:
            if not peers:
                raise ConfigError(
                    "VDB_CLUSTER_PEERS",
                    "is required with VDB_REPLICATION_MODE=cluster (host:port of every replica)",
                )
            if replica_id >= len(peers):
                raise ConfigError(
                    "VDB_REPLICA_ID",
                    f"{replica_id} is out of range: VDB_CLUSTER_PEERS lists {len(peers)} "
                    f"replicas (ids 0..{len(peers) - 1})",
                )
            if any(peer.port == 0 for peer in peers):
                raise ConfigError(
                    "VDB_CLUSTER_PEERS", "port 0 cannot be reached: give every replica's port"
                )


def _check_auth(mode: AuthMode, jwt: JwtSettings) -> None:
    if mode not in (AuthMode.JWT, AuthMode.BOTH):
        return
    if jwt.secret is None:
        raise ConfigError("VDB_JWT_SECRET", f"is required with VDB_AUTH_MODE={mode.value}")
    _check_secret_size("VDB_JWT_SECRET", jwt.secret, JWT_SECRET_SIZE_MIN)
    _check_secret_size("VDB_JWT_SECRET_PREVIOUS", jwt.previous, JWT_SECRET_SIZE_MIN)


def _check_cluster_secret(mode: ReplicationMode, secret: str | None) -> None:
    if mode is not ReplicationMode.CLUSTER:
        return
    if secret is None:
        raise ConfigError(
            "VDB_CLUSTER_SECRET",
            "is required with VDB_REPLICATION_MODE=cluster (replicas authenticate with it)",
        )
    _check_secret_size("VDB_CLUSTER_SECRET", secret, CLUSTER_SECRET_SIZE_MIN)


def _check_secret_size(variable: str, secret: str | None, size_min: int) -> None:
    """A secret, when given, has at least ``size_min`` bytes; it is never quoted."""
    if secret is None:
        return
    size = len(secret.encode("utf-8"))
    if size < size_min:
        raise ConfigError(
            variable,
            f"is {size} bytes; at least {size_min} are required (e.g. openssl rand -hex 32)",
        )


def _quote(value: str) -> str:
    if len(value) > QUOTED_VALUE_CHARS_MAX:
        value = value[:QUOTED_VALUE_CHARS_MAX] + "..."
    return repr(value)
