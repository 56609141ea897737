"""Craton's auth machine: who a connection is, and what each request may do. Pure.

Authentication turns the credential of a connection's handshake into a ``Principal``
(tenant, subject, role, and the API key it came from, if any) or an ``AuthRefusal`` with a
typed reason. It is a function of its inputs only: the mode (``VDB_AUTH_MODE``), the JWT
policy, the credential, the current time *given by the driver* (``now_ms``; never read
here) and the replicated API-key table (``KeyTable``, kept by the event store, so every
replica decides alike). Authorization (``allowed``) is a table lookup: the role a request
kind needs.

Modes:
- ``none``: no credential is looked at; every client is ``ANONYMOUS``, the owner of the
  one tenant ``TENANT_WITHOUT_AUTH``.
- ``jwt``: an HS256 JSON Web Token. The header's ``alg`` must be exactly ``HS256`` (``none``
  and every other algorithm are refused before any key is used); the signature is checked
  with the configured secret (pyjwt's JWS layer, which reads no clock); then the claims, here:
  ``iss`` and ``aud`` equal the configured ones, ``sub`` is printable text, ``tenant_id`` a
  whole number in ``0..TENANT_ID_MAX``, ``role`` a ``Role`` name, ``exp`` and ``iat``
  present, ``exp - iat`` at most the configured lifetime, and with ``JWT_LEEWAY_S`` of
  slack: ``iat`` and ``nbf`` (if present) not after now, ``exp`` not before now.
- ``apikey``: a key ``crtn_<16 hex key id>_<secret>`` as ``create_api_key`` made it. Its id
  selects the table entry; the SHA-256 of the whole key is compared with the stored hash
  in constant time (``hmac.compare_digest``); a revoked or expired key is refused.
- ``both``: a credential that looks like an API key is one; anything else is a JWT.

Rules: a refusal never quotes the credential; the claimed tenant of a refused credential
is given only when the credential was genuine (signature or key hash matched), so an
audit record never trusts what an attacker wrote. Tenant 0 is the *system* tenant: every
client's in mode ``none``; with authentication, only credentials naming it reach it (give
them to operators only), and refused handshakes nobody can be held to are audited there.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import math
import re
from typing import Any, Protocol

import attrs
import jwt
from jwt import api_jws

TENANT_WITHOUT_AUTH = 0  # the one tenant of mode none; with auth, the operators' tenant
TENANT_ID_MAX = 2**64 - 1
KEY_ID_MAX = 2**64 - 1
JWT_LEEWAY_S = 30  # clock slack allowed for exp, nbf and iat between nodes and issuers
JWT_SECRET_SIZE_MIN = 32  # bytes; HS256 with less is guessable
JWT_ALGORITHM = "HS256"
SUBJECT_SIZE_MAX = 128  # bytes
API_KEY_PREFIX = "crtn_"
API_KEY_SECRET_SIZE = 32  # random bytes in a key
API_KEY_HASH_SIZE = 32  # SHA-256
ANONYMOUS_SUBJECT = "anonymous"

_SUBJECT = re.compile(rf"[!-~]{{1,{SUBJECT_SIZE_MAX}}}")
_API_KEY = re.compile(r"crtn_([0-9a-f]{16})_[A-Za-z0-9_-]{20,128}")


class AuthMode(enum.Enum):
    NONE = "none"
    JWT = "jwt"
    APIKEY = "apikey"
    BOTH = "both"


class Role(enum.IntEnum):
    """What a principal may do; each role may do everything the ones below it may."""

    VIEWER = 1  # read streams
    MEMBER = 2  # also create streams and append
    ADMIN = 3  # also create, list and revoke the tenant's API keys; read its audit stream
    OWNER = 4  # also grant the owner role


class Action(enum.Enum):
    """What a request does, for authorization and the audit trail."""

    READ = "read"
    CREATE_STREAM = "create_stream"
    APPEND = "append"
    READ_AUDIT = "read_audit"
    LIST_KEYS = "list_api_keys"
    CREATE_KEY = "create_api_key"
    REVOKE_KEY = "revoke_api_key"


ROLE_NEEDED: dict[Action, Role] = {
    Action.READ: Role.VIEWER,
    Action.CREATE_STREAM: Role.MEMBER,
    Action.APPEND: Role.MEMBER,
    Action.READ_AUDIT: Role.ADMIN,
    Action.LIST_KEYS: Role.ADMIN,
    Action.CREATE_KEY: Role.ADMIN,
    Action.REVOKE_KEY: Role.ADMIN,
}
assert len(ROLE_NEEDED) == len(Action)


class Refusal(enum.Enum):
    """Why a credential was not accepted."""

    MISSING = "no credential was given"
    MALFORMED = "the credential is not a well-formed token or API key"
    ALGORITHM = "the token's algorithm is not HS256"
    SIGNATURE = "the token's signature does not verify"
    ISSUER = "the token's issuer is not this cluster's"
    AUDIENCE = "the token's audience is not this cluster"
    CLAIMS = "the token lacks a valid sub, tenant_id, role, exp or iat claim"
    EXPIRED = "the token has expired"
    NOT_YET_VALID = "the token is not valid yet"
    LIFETIME = "the token's lifetime exceeds VDB_JWT_EXPIRATION_SECS"
    KIND = "this kind of credential is not accepted in this auth mode"
    UNKNOWN_KEY = "the API key is not known"
    REVOKED = "the API key was revoked"
    KEY_EXPIRED = "the API key has expired"


@attrs.frozen
class Principal:
    """Who a connection is. ``key_id`` is 0 unless the credential was an API key.
    ``expires_ms``: when a token's proof runs out (its ``exp`` plus the leeway, Unix ms), so
    that a connection does not outlive it; None for keys, which the store checks per request.
    It says how long, not who: principals compare without it."""

    tenant_id: int
    subject: str
    role: Role
    key_id: int = 0
    expires_ms: int | None = attrs.field(default=None, eq=False)


ANONYMOUS = Principal(TENANT_WITHOUT_AUTH, ANONYMOUS_SUBJECT, Role.OWNER)


@attrs.frozen
class AuthRefusal:
    """A credential was refused. ``tenant_id`` is the tenant of a genuine credential that
    is no longer (or not yet) good, None when nothing in it can be trusted."""

    reason: Refusal
    tenant_id: int | None = None
    subject: str | None = None

    @property
    def message(self) -> str:
        return f"authentication failed: {self.reason.value}"


@attrs.frozen
class JwtPolicy:
    """How tokens are checked. ``previous`` is a retired secret still accepted (never
    needed to sign), while tokens signed with it run out: docs/SECURITY.md, rotation."""

    secret: bytes = attrs.field(repr=False)  # never in logs or reprs
    issuer: str
    audience: str
    lifetime_max_s: int
    previous: bytes | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        for secret in (self.secret, self.previous):
            if secret is not None and len(secret) < JWT_SECRET_SIZE_MIN:
                raise ValueError(f"a JWT secret must be at least {JWT_SECRET_SIZE_MIN} bytes")


@attrs.frozen
class ApiKeyEntry:
    """One API key as the replicated table holds it: never the key, only its hash."""

    key_id: int
    tenant_id: int
    role: Role
    key_hash: bytes = attrs.field(repr=False)
    expires_ms: int | None
    created_op: int
    revoked_op: int | None
    label: str

    def usable_at(self, now_ms: int) -> Refusal | None:
        """None if the key may be used at ``now_ms``, else why not."""
        if self.revoked_op is not None:
            return Refusal.REVOKED
        if self.expires_ms is not None and now_ms >= self.expires_ms:
            return Refusal.KEY_EXPIRED
        return None


class KeyTable(Protocol):
    """The replicated API keys (the event store keeps them)."""

    def api_key(self, key_id: int) -> ApiKeyEntry | None: ...


# --- Entry points ----------------------------------------------------------------------------


def authenticate(
    mode: AuthMode,
    credential: str | None,
    now_ms: int,
    policy: JwtPolicy | None,
    keys: KeyTable,
) -> Principal | AuthRefusal:
    """The principal ``credential`` proves at ``now_ms``, or why it proves none."""
    if mode is AuthMode.NONE:
        return ANONYMOUS
    if credential is None or not credential:
        return AuthRefusal(Refusal.MISSING)
    looks_like_key = credential.startswith(API_KEY_PREFIX)
    if looks_like_key and mode in (AuthMode.APIKEY, AuthMode.BOTH):
        return authenticate_key(credential, now_ms, keys)
    if not looks_like_key and mode in (AuthMode.JWT, AuthMode.BOTH):
        assert policy is not None, "jwt and both modes need a JWT policy"
        return authenticate_jwt(credential, now_ms, policy)
    return AuthRefusal(Refusal.KIND)


def allowed(principal_role: Role, action: Action) -> bool:
    """Whether ``principal_role`` may do ``action`` (in the principal's own tenant)."""
    return principal_role >= ROLE_NEEDED[action]


def may_grant(granter: Role, granted: Role) -> bool:
    """An admin grants up to admin; only an owner grants owner."""
    return granter >= Role.ADMIN and (granted <= Role.ADMIN or granter is Role.OWNER)


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


def format_api_key(key_id: int, secret: bytes) -> str:
    """The text of a key: its id in hex, then its secret in URL-safe base64 (no padding)."""
    assert 1 <= key_id <= KEY_ID_MAX and len(secret) == API_KEY_SECRET_SIZE
    encoded = base64.urlsafe_b64encode(secret).decode("ascii").rstrip("=")
    return f"{API_KEY_PREFIX}{key_id:016x}_{encoded}"


def api_key_id(key: str) -> int | None:
    """The key id a well-formed API key carries, None for anything else."""
    match = _API_KEY.fullmatch(key)
    return None if match is None else int(match.group(1), 16)


# --- API keys --------------------------------------------------------------------------------


def authenticate_key(key: str, now_ms: int, keys: KeyTable) -> Principal | AuthRefusal:
    key_id = api_key_id(key)
    if key_id is None or key_id == 0:
        return AuthRefusal(Refusal.MALFORMED)
    entry = keys.api_key(key_id)
    if entry is None or not hmac.compare_digest(hash_api_key(key), entry.key_hash):
        return AuthRefusal(Refusal.UNKNOWN_KEY)
    subject = f"key:{key_id:016x}"
    refusal = entry.usable_at(now_ms)
    if refusal is not None:
        return AuthRefusal(refusal, entry.tenant_id, subject)
    return Principal(entry.tenant_id, subject, entry.role, key_id)


# --- JWT -------------------------------------------------------------------------------------


def authenticate_jwt(token: str, now_ms: int, policy: JwtPolicy) -> Principal | AuthRefusal:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return AuthRefusal(Refusal.MALFORMED)
    if header.get("alg") != JWT_ALGORITHM:
        return AuthRefusal(Refusal.ALGORITHM)
    payload: bytes | None = None
    for secret in (policy.secret, policy.previous):
        if secret is None:
            continue
        try:
            verified = api_jws.PyJWS().decode_complete(token, secret, algorithms=[JWT_ALGORITHM])
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError:
            return AuthRefusal(Refusal.MALFORMED)
        payload = verified["payload"]
        break
    if payload is None:
        return AuthRefusal(Refusal.SIGNATURE)
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json goes
        return AuthRefusal(Refusal.MALFORMED)
    if not isinstance(claims, dict):
        return AuthRefusal(Refusal.MALFORMED)
    return _check_claims(claims, now_ms, policy)


def _check_claims(
    claims: dict[str, Any], now_ms: int, policy: JwtPolicy
) -> Principal | AuthRefusal:
    principal = _principal_of(claims)
    if principal is None:
        return AuthRefusal(Refusal.CLAIMS)
    tenant, subject = principal.tenant_id, principal.subject
    if claims.get("iss") != policy.issuer:
        return AuthRefusal(Refusal.ISSUER, tenant, subject)
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if policy.audience not in audiences:
        return AuthRefusal(Refusal.AUDIENCE, tenant, subject)
    exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", claims.get("iat"))
    if not (_is_number(exp) and _is_number(iat) and _is_number(nbf)):
        return AuthRefusal(Refusal.CLAIMS, tenant, subject)
    assert isinstance(exp, int | float) and isinstance(iat, int | float)
    assert isinstance(nbf, int | float)
    now_s = now_ms / 1000
    if now_s > exp + JWT_LEEWAY_S:
        return AuthRefusal(Refusal.EXPIRED, tenant, subject)
    if now_s + JWT_LEEWAY_S < iat or now_s + JWT_LEEWAY_S < nbf:
        return AuthRefusal(Refusal.NOT_YET_VALID, tenant, subject)
    if exp - iat > policy.lifetime_max_s:
        return AuthRefusal(Refusal.LIFETIME, tenant, subject)
    return attrs.evolve(principal, expires_ms=math.floor((exp + JWT_LEEWAY_S) * 1000))


def _principal_of(claims: dict[str, Any]) -> Principal | None:
    subject, tenant, role = claims.get("sub"), claims.get("tenant_id"), claims.get("role")
    if not isinstance(subject, str) or _SUBJECT.fullmatch(subject) is None:
        return None
    if type(tenant) is not int or not 0 <= tenant <= TENANT_ID_MAX:
        return None
    if not isinstance(role, str) or role.upper() not in Role.__members__:
        return None
    return Principal(tenant, subject, Role[role.upper()])


def _is_number(value: object) -> bool:
    return type(value) in (int, float) and value == value  # not NaN
