"""The auth machine (``craton.core.auth``) and the event store's authorization, pure.

A hypothesis state machine drives the replicated key table (``EventStore``) and
``authenticate`` with API keys, JWTs, revocations and a moving clock, and checks every
decision against a plain dict model; unit tests pin each JWT refusal.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from craton.core import event_store as es
from craton.core.auth import (
    ANONYMOUS,
    JWT_LEEWAY_S,
    Action,
    AuthMode,
    AuthRefusal,
    JwtPolicy,
    Principal,
    Refusal,
    Role,
    allowed,
    authenticate,
    format_api_key,
    hash_api_key,
    may_grant,
)
from craton.core.event_store import EventStore, KeyCreated, StoreError, StoreRequest
from craton.core.wire import DataClass, ErrorCode
from craton.core.wire.messages import (
    AUTH_TOKEN_SIZE_MAX,
    ListApiKeys,
    ListApiKeysReply,
    ReadEvents,
    ReadEventsReply,
    RevokeApiKey,
    RevokeApiKeyReply,
)

SECRET = b"k" * 32
POLICY = JwtPolicy(SECRET, "craton", "craton", 3600)
NOW_S = 1_800_000_000
NOW_MS = NOW_S * 1000


def token(secret: bytes = SECRET, algorithm: str = "HS256", **overrides: object) -> str:
    claims: dict[str, object] = {
        "sub": "alice",
        "tenant_id": 7,
        "role": "member",
        "iss": "craton",
        "aud": "craton",
        "iat": NOW_S,
        "exp": NOW_S + 600,
    }
    claims.update(overrides)
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, secret, algorithm=algorithm)


def check_jwt(credential: str, now_ms: int = NOW_MS) -> Principal | AuthRefusal:
    return authenticate(AuthMode.JWT, credential, now_ms, POLICY, EventStore())


def refusal_of(credential: str, now_ms: int = NOW_MS) -> Refusal:
    result = check_jwt(credential, now_ms)
    assert isinstance(result, AuthRefusal), f"expected a refusal, got {result}"
    return result.reason


# --- JWT -------------------------------------------------------------------------------------


def test_a_good_token_gives_its_principal() -> None:
    assert check_jwt(token()) == Principal(7, "alice", Role.MEMBER)


def test_a_token_principal_says_when_its_proof_runs_out() -> None:
    # the last moment the handshake would still accept the token: exp plus the leeway
    principal = check_jwt(token(exp=NOW_S + 600.5))
    assert isinstance(principal, Principal), principal
    assert principal.expires_ms == (NOW_S + 600 + JWT_LEEWAY_S) * 1000 + 500, principal
    last_ms = principal.expires_ms
    assert isinstance(check_jwt(token(exp=NOW_S + 600.5), last_ms), Principal)
    assert refusal_of(token(exp=NOW_S + 600.5), last_ms + 1) is Refusal.EXPIRED


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unsigned(claims: dict[str, object]) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


@pytest.mark.parametrize(
    ("name", "credential", "reason"),
    [
        ("wrong secret", token(secret=b"x" * 32), Refusal.SIGNATURE),
        ("wrong issuer", token(iss="someone-else"), Refusal.ISSUER),
        ("wrong audience", token(aud="elsewhere"), Refusal.AUDIENCE),
        ("expired", token(iat=NOW_S - 900, exp=NOW_S - JWT_LEEWAY_S - 1), Refusal.EXPIRED),
        ("not yet valid", token(nbf=NOW_S + JWT_LEEWAY_S + 5), Refusal.NOT_YET_VALID),
        ("issued in the future", token(iat=NOW_S + 300, exp=NOW_S + 900), Refusal.NOT_YET_VALID),
        ("too long-lived", token(exp=NOW_S + 3601), Refusal.LIFETIME),
        ("HS512", token(secret=SECRET * 2, algorithm="HS512"), Refusal.ALGORITHM),
        ("alg none", unsigned({"sub": "a", "tenant_id": 7, "role": "owner"}), Refusal.ALGORITHM),
        ("no tenant", token(tenant_id=None), Refusal.CLAIMS),
        ("negative tenant", token(tenant_id=-1), Refusal.CLAIMS),
        ("tenant past u64", token(tenant_id=2**64), Refusal.CLAIMS),
        ("tenant as text", token(tenant_id="7"), Refusal.CLAIMS),
        ("unknown role", token(role="root"), Refusal.CLAIMS),
        ("no exp", token(exp=None), Refusal.CLAIMS),
        ("garbage", "not-a-token", Refusal.MALFORMED),
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else "",
)
def test_each_bad_token_is_refused_for_its_reason(
    name: str, credential: str, reason: Refusal
) -> None:
    assert refusal_of(credential) is reason, f"{name}: expected {reason}"


def test_a_signed_payload_nested_too_deep_is_malformed_not_a_crash() -> None:
    # fits the handshake's 8 KiB token; json gives up on it with RecursionError
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(b"[" * 2500 + b"]" * 2500)
    signature = b64(hmac.new(SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    credential = f"{header}.{payload}.{signature}"
    assert len(credential) <= AUTH_TOKEN_SIZE_MAX, len(credential)
    assert refusal_of(credential) is Refusal.MALFORMED


def test_a_tampered_payload_fails_the_signature() -> None:
    header, payload, signature = token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["tenant_id"] = 8
    forged = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    assert refusal_of(forged) is Refusal.SIGNATURE


def test_leeway_is_allowed_on_both_sides_and_no_more() -> None:
    expiring = token(exp=NOW_S + 10)
    assert isinstance(check_jwt(expiring, (NOW_S + 10 + JWT_LEEWAY_S) * 1000), Principal)
    assert refusal_of(expiring, (NOW_S + 11 + JWT_LEEWAY_S) * 1000) is Refusal.EXPIRED
    early = token(nbf=NOW_S + 100)
    assert isinstance(check_jwt(early, (NOW_S + 100 - JWT_LEEWAY_S) * 1000), Principal)
    assert refusal_of(early, (NOW_S + 99 - JWT_LEEWAY_S) * 1000) is Refusal.NOT_YET_VALID


def test_a_refusal_names_a_tenant_only_when_the_signature_held() -> None:
    forged = check_jwt(token(secret=b"y" * 32))
    expired = check_jwt(token(iat=NOW_S - 7200, exp=NOW_S - 3600))
    assert isinstance(forged, AuthRefusal) and forged.tenant_id is None
    assert isinstance(expired, AuthRefusal) and expired.tenant_id == 7


def test_modes_accept_only_their_kind_of_credential() -> None:
    key = format_api_key(1, bytes(32))
    store = EventStore()
    assert authenticate(AuthMode.NONE, None, NOW_MS, None, store) is ANONYMOUS
    for mode in (AuthMode.JWT, AuthMode.APIKEY, AuthMode.BOTH):
        missing = authenticate(mode, None, NOW_MS, POLICY, store)
        assert isinstance(missing, AuthRefusal) and missing.reason is Refusal.MISSING
    as_jwt = authenticate(AuthMode.APIKEY, token(), NOW_MS, POLICY, store)
    assert isinstance(as_jwt, AuthRefusal) and as_jwt.reason is Refusal.KIND
    as_key = authenticate(AuthMode.JWT, key, NOW_MS, POLICY, store)
    assert isinstance(as_key, AuthRefusal) and as_key.reason is Refusal.KIND
    unknown = authenticate(AuthMode.BOTH, key, NOW_MS, POLICY, store)
    assert isinstance(unknown, AuthRefusal) and unknown.reason is Refusal.UNKNOWN_KEY


def test_a_short_jwt_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        JwtPolicy(b"k" * 31, "craton", "craton", 60)


def test_role_table() -> None:
    assert allowed(Role.VIEWER, Action.READ) and not allowed(Role.VIEWER, Action.APPEND)
    assert allowed(Role.MEMBER, Action.APPEND) and not allowed(Role.MEMBER, Action.CREATE_KEY)
    assert allowed(Role.ADMIN, Action.CREATE_KEY) and allowed(Role.ADMIN, Action.READ_AUDIT)
    assert may_grant(Role.ADMIN, Role.ADMIN) and not may_grant(Role.ADMIN, Role.OWNER)
    assert may_grant(Role.OWNER, Role.OWNER) and not may_grant(Role.MEMBER, Role.VIEWER)


# --- The key table against a model -----------------------------------------------------------

TENANTS = (1, 2)


def near(edge: int, spread: int) -> st.SearchStrategy[int]:
    """Integers around ``edge`` (within 2) half the time, else within ``spread`` of it."""
    return st.one_of(st.integers(edge - 2, edge + 2), st.integers(edge - spread, edge + spread))


class KeyTableModel(RuleBasedStateMachine):
    """Keys created, revoked and used through the replicated event store, at a moving
    time; the model is a dict of key id -> (tenant, role, expires_ms, revoked)."""

    def __init__(self) -> None:
        super().__init__()
        self.store = EventStore()
        self.op = 0
        self.now_ms = NOW_MS
        self.model: dict[int, tuple[int, Role, int | None, bool]] = {}
        self.texts: dict[int, str] = {}
        self.next_id = 1
        self.audit_records = {tenant: 0 for tenant in TENANTS}

    def apply(self, request: StoreRequest) -> es.StoreReply:
        self.op += 1
        return es.decode_reply(self.store.apply(self.op, es.encode_request(request)))

    def audited(self, tenant: int) -> None:
        self.audit_records[tenant] += 1

    @rule(
        tenant=st.sampled_from(TENANTS),
        creator=st.sampled_from(list(Role)),
        role=st.sampled_from(list(Role)),
        lifetime_ms=st.one_of(st.none(), st.integers(1, 60_000)),
        secret=st.binary(min_size=32, max_size=32),
    )
    def create(
        self, tenant: int, creator: Role, role: Role, lifetime_ms: int | None, secret: bytes
    ) -> None:
        key_id = self.next_id
        self.next_id += 1
        text = format_api_key(key_id, secret)
        expires = None if lifetime_ms is None else self.now_ms + lifetime_ms
        message = es.CreateKey(key_id, hash_api_key(text), role, expires, "k")
        reply = self.apply(StoreRequest(tenant, message, creator, 0, "op", self.now_ms))
        if may_grant(creator, role):
            assert reply == KeyCreated(key_id, self.op), f"expected the key, got {reply}"
            self.model[key_id] = (tenant, role, expires, False)
            self.texts[key_id] = text
        else:
            assert isinstance(reply, StoreError) and reply.code == ErrorCode.PERMISSION_DENIED
        self.audited(tenant)

    @rule(data=st.data(), tenant=st.sampled_from(TENANTS), revoker=st.sampled_from(list(Role)))
    def revoke(self, data: st.DataObject, tenant: int, revoker: Role) -> None:
        key_id = data.draw(st.integers(1, self.next_id), label="key_id")
        reply = self.apply(StoreRequest(tenant, RevokeApiKey(key_id), revoker, 0, "op", 0))
        known = self.model.get(key_id)
        if not allowed(revoker, Action.REVOKE_KEY):
            assert isinstance(reply, StoreError) and reply.code == ErrorCode.PERMISSION_DENIED
        elif known is None or known[0] != tenant:
            assert isinstance(reply, StoreError) and reply.code == ErrorCode.INVALID_REQUEST
        elif not may_grant(revoker, known[1]):
            assert isinstance(reply, StoreError) and reply.code == ErrorCode.PERMISSION_DENIED
        else:
            assert reply == RevokeApiKeyReply(self.op), f"expected a revocation, got {reply}"
            self.model[key_id] = (*known[:3], True)
        self.audited(tenant)

    @rule(advance_ms=st.integers(0, 30_000))
    def tick(self, advance_ms: int) -> None:
        self.now_ms += advance_ms

    @rule(data=st.data(), tamper=st.booleans())
    def use(self, data: st.DataObject, tamper: bool) -> None:
        if not self.texts:
            return
        key_id = data.draw(st.sampled_from(sorted(self.texts)), label="key_id")
        text = self.texts[key_id]
        if tamper:
            text = text[:-1] + ("A" if text[-1] != "A" else "B")
        result = authenticate(AuthMode.APIKEY, text, self.now_ms, None, self.store)
        tenant, role, expires, revoked = self.model[key_id]
        if tamper:
            expected: Refusal | None = Refusal.UNKNOWN_KEY
        elif revoked:
            expected = Refusal.REVOKED
        elif expires is not None and self.now_ms >= expires:
            expected = Refusal.KEY_EXPIRED
        else:
            expected = None
        if expected is None:
            assert result == Principal(tenant, f"key:{key_id:016x}", role, key_id)
        else:
            assert isinstance(result, AuthRefusal) and result.reason is expected, result

    @rule(
        tenant=st.integers(0, 3),
        role=st.sampled_from(list(Role)),
        expires_in_s=near(-JWT_LEEWAY_S, 4000),
        lifetime_s=near(POLICY.lifetime_max_s, 4000).filter(lambda s: s >= 0),
        not_before_in_s=st.one_of(st.none(), near(JWT_LEEWAY_S, 200)),
    )
    def present_a_token(
        self,
        tenant: int,
        role: Role,
        expires_in_s: int,
        lifetime_s: int,
        not_before_in_s: int | None,
    ) -> None:
        """A token that expires ``expires_in_s`` from now (the model: the rules written out
        plainly, with the edges drawn often)."""
        now_s = self.now_ms // 1000
        exp = now_s + expires_in_s
        iat = exp - lifetime_s
        claims = {"sub": "s", "tenant_id": tenant, "role": role.name.lower(), "iss": "craton",
                  "aud": "craton", "iat": iat, "exp": exp}  # fmt: skip
        if not_before_in_s is not None:
            claims["nbf"] = now_s + not_before_in_s
        token = jwt.encode(claims, SECRET)
        result = authenticate(AuthMode.BOTH, token, now_s * 1000, POLICY, self.store)
        nbf = iat if not_before_in_s is None else now_s + not_before_in_s
        if now_s > exp + JWT_LEEWAY_S:
            expected: Refusal | None = Refusal.EXPIRED
        elif now_s + JWT_LEEWAY_S < max(iat, nbf):
            expected = Refusal.NOT_YET_VALID
        elif lifetime_s > POLICY.lifetime_max_s:
            expected = Refusal.LIFETIME
        else:
            expected = None
        if expected is None:
            assert result == Principal(tenant, "s", role), result
        else:
            assert isinstance(result, AuthRefusal) and result.reason is expected, result
            assert result.tenant_id == tenant, "a genuine token's tenant is known"

    @rule(data=st.data())
    def request_with_a_key(self, data: st.DataObject) -> None:
        """A request made with a key is checked again when applied: revoked, expired or
        another tenant's key is refused by every replica alike."""
        if not self.model:
            return
        key_id = data.draw(st.sampled_from(sorted(self.model)), label="key_id")
        tenant = data.draw(st.sampled_from(TENANTS), label="tenant")
        request = StoreRequest(tenant, ListApiKeys(), Role.OWNER, key_id, "k", self.now_ms)
        reply = self.apply(request)
        owner, role, expires, revoked = self.model[key_id]
        usable = owner == tenant and not revoked and (expires is None or self.now_ms < expires)
        if not usable:
            assert isinstance(reply, StoreError), f"expected a refusal, got {reply}"
            assert reply.code == ErrorCode.AUTHENTICATION_FAILED
            self.audited(tenant)
        elif role < Role.ADMIN:  # the table's role decides, not the request's
            assert isinstance(reply, StoreError) and reply.code == ErrorCode.PERMISSION_DENIED
            self.audited(tenant)
        else:
            assert isinstance(reply, ListApiKeysReply)
            listed = {info.key_id: info.revoked_op is not None for info in reply.keys}
            mine = {k: v[3] for k, v in self.model.items() if v[0] == tenant}
            assert listed == mine, f"expected the tenant's keys {mine}, listed {listed}"

    @invariant()
    def audit_stream_holds_one_record_per_audited_op(self) -> None:
        for tenant in TENANTS:
            length = self.store.stream_length(tenant, es.AUDIT_STREAM) or 0
            assert length == self.audit_records[tenant], f"tenant {tenant}: audit records"

    @invariant()
    def store_invariants_hold_and_snapshots_restore(self) -> None:
        self.store.invariants()
        if self.op % 7 == 3:
            copy = EventStore.restore(self.store.snapshot())
            assert copy.digest() == self.store.digest()


TestKeyTable = KeyTableModel.TestCase
TestKeyTable.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# --- Tenants and roles at apply --------------------------------------------------------------


def test_another_tenants_stream_does_not_exist_for_you() -> None:
    store = EventStore()
    store.apply(1, es.encode_create_stream(1, "orders", DataClass.PII))
    store.apply(2, es.encode_append(1, "orders", [b"secret"]))
    for op, body in [
        (3, es.encode_read(2, "orders", 0)),
        (4, es.encode_append(2, "orders", [b"x"])),
        (5, es.encode_read_as_of(2, "orders", 3, 0)),
    ]:
        reply = es.decode_reply(store.apply(op, body))
        assert isinstance(reply, StoreError) and reply.code == ErrorCode.STREAM_NOT_FOUND


def test_reserved_names_and_the_audit_stream() -> None:
    store = EventStore()
    create = es.encode_create_stream(1, "craton:audit", DataClass.PUBLIC)
    reply = es.decode_reply(store.apply(1, create))
    assert isinstance(reply, StoreError) and reply.code == ErrorCode.PERMISSION_DENIED
    read = ReadEvents(es.AUDIT_STREAM, 0, 10, 10_000)
    member = es.decode_reply(store.apply(2, es.encode_request(StoreRequest(1, read, Role.MEMBER))))
    assert isinstance(member, StoreError) and member.code == ErrorCode.PERMISSION_DENIED
    admin = es.decode_reply(store.apply(3, es.encode_request(StoreRequest(1, read, Role.ADMIN))))
    assert isinstance(admin, ReadEventsReply) and len(admin.events) == 2
    first = json.loads(admin.events[0])
    assert first["action"] == "create_stream" and first["outcome"] == "denied"
    assert first["actor"] == "anonymous" and first["op"] == 1


def test_a_viewer_reads_but_does_not_write() -> None:
    store = EventStore()
    store.apply(1, es.encode_create_stream(1, "s", DataClass.PUBLIC))
    append = es.decode_request(es.encode_append(1, "s", [b"x"])).message
    reply = es.decode_reply(
        store.apply(2, es.encode_request(StoreRequest(1, append, Role.VIEWER, 0, "v", 5)))
    )
    assert isinstance(reply, StoreError) and reply.code == ErrorCode.PERMISSION_DENIED
    read = es.decode_request(es.encode_read(1, "s", 0)).message
    ok = es.decode_reply(store.apply(3, es.encode_request(StoreRequest(1, read, Role.VIEWER))))
    assert isinstance(ok, ReadEventsReply)


def test_key_hashes_not_keys_are_stored() -> None:
    store = EventStore()
    text = format_api_key(5, b"\x01" * 32)
    message = es.CreateKey(5, hash_api_key(text), Role.MEMBER, None, "ci")
    store.apply(1, es.encode_request(StoreRequest(3, message, Role.ADMIN)))
    snapshot = store.snapshot()
    assert text.encode() not in snapshot and hashlib.sha256(text.encode()).digest() in snapshot


def test_a_previous_secret_is_accepted_while_rotating() -> None:
    rotating = JwtPolicy(b"n" * 32, "craton", "craton", 3600, previous=SECRET)
    old = authenticate(AuthMode.JWT, token(), NOW_MS, rotating, EventStore())
    new = authenticate(AuthMode.JWT, token(secret=b"n" * 32), NOW_MS, rotating, EventStore())
    other = authenticate(AuthMode.JWT, token(secret=b"o" * 32), NOW_MS, rotating, EventStore())
    assert old == new == Principal(7, "alice", Role.MEMBER)
    assert isinstance(other, AuthRefusal) and other.reason is Refusal.SIGNATURE
    with pytest.raises(ValueError, match="at least 32 bytes"):
        JwtPolicy(SECRET, "craton", "craton", 60, previous=b"short")


def test_the_control_planes_tokens_are_accepted() -> None:
    """platform-app mints tokens for a cluster (craton.platform.fleet): the node takes them."""
    from craton.platform.domain import Role as PlatformRole
    from craton.platform.fleet import mint_token

    for platform_role in PlatformRole:
        minted = mint_token(
            secret=SECRET.decode(), issuer="craton", audience="craton", subject="gh:42",
            tenant_id=2**64 - 1, role=platform_role, now_s=NOW_S, ttl_s=900,
        )  # fmt: skip
        result = authenticate(AuthMode.JWT, minted, NOW_MS, POLICY, EventStore())
        assert result == Principal(2**64 - 1, "gh:42", Role[platform_role.name]), result
