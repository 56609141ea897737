"""platform-app's HTTP API (aiohttp): probes, sign-in, organisations, fleet.

Every answer is JSON; every error is ``{"error": {"code": ..., "message": ...}}`` with a
4xx/5xx status, never a traceback (an unexpected exception is logged and answered 500
``internal``). A signed-in browser carries the session cookie (HttpOnly, SameSite=Lax,
Secure unless ``PLATFORM_COOKIE_SECURE=false``); every state-changing request (anything but
GET/HEAD/OPTIONS) that acts as a user must also carry the session's CSRF token in
``X-CSRF-Token`` (the token is in ``GET /api/me``), or, for an HTML form (the console's
pages, ``pages.py``), in its ``csrf_token`` field: one check, in ``session_middleware``,
for both. The pages call the same actions (``do_*``) as the JSON routes, so they keep the
same rules and say no with the same messages. Sign-in routes are rate-limited per
client address. In an organisation, a non-member is told "not found" (no existence leak)
and a member whose role is too low "forbidden". docs/PLATFORM.md lists every route.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from aiohttp import web

from craton import __version__
from craton.io.clock import NS_PER_S, SYSTEM_CLOCK, Clock, monotonic_s
from craton.platform import domain as d
from craton.platform import fleet, github
from craton.platform.config import parse_address
from craton.platform.eventstore import StoreUnavailable, valid_id
from craton.platform.metrics import METRICS_CONTENT_TYPE
from craton.platform.service import Platform, ProjectionBehind, Refused
from craton.platform.sessions import Session

COOKIE = "craton_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"  # the same token, from an HTML form
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
NEXT_PREFIX = "/console"  # where a sign-in may send the browser back to
BODY_BYTES_MAX = 64 * 1024
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
AUDIT_PAGE_MAX = 500
RATE_WINDOW_S = 60.0
RATE_TRACKED_MAX = 10_000
TENANT_ID_MAX = 2**63 - 1
log = logging.getLogger("craton.platform")

PLATFORM: web.AppKey[Platform] = web.AppKey("platform", Platform)
LIMITER: web.AppKey[RateLimiter] = web.AppKey("signin_limiter")
SESSION: web.RequestKey[Session | None] = web.RequestKey("session")
SESSION_TOKEN: web.RequestKey[str | None] = web.RequestKey("session_token")
CSRF_CHECKED: web.RequestKey[bool] = web.RequestKey("csrf_checked")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorPage = Callable[[web.Request, int, str, str], "web.Response | None"]
"""Renders an error for a human (HTML) when the request is a page's; None for the API."""
ERROR_PAGE: web.AppKey[ErrorPage] = web.AppKey("error_page")

_REFUSAL_STATUS = {
    d.RefusalCode.NOT_FOUND: 404,
    d.RefusalCode.FORBIDDEN: 403,
    d.RefusalCode.CONFLICT: 409,
    d.RefusalCode.INVALID: 400,
    d.RefusalCode.LAST_OWNER: 409,
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def refusal_status(refusal: d.Refusal) -> int:
    return _REFUSAL_STATUS[refusal.code]


def _error_answer(request: web.Request, status: int, code: str, message: str) -> web.Response:
    page = request.app.get(ERROR_PAGE)
    answer = None if page is None else page(request, status, code, message)
    return answer if answer is not None else error_response(status, code, message)


# --- Middlewares -------------------------------------------------------------------------------


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    platform = request.app[PLATFORM]
    route = request.match_info.route.resource
    label = route.canonical if route is not None else "unmatched"
    started_s = monotonic_s(platform.clock)
    try:
        response = await handler(request)
    except ApiError as error:
        response = _error_answer(request, error.status, error.code, error.message)
    except Refused as refused:
        refusal = refused.refusal
        response = _error_answer(
            request, refusal_status(refusal), refusal.code.value, refusal.message
        )
    except ProjectionBehind:
        response = _error_answer(
            request,
            503,
            "projection_behind",
            "the change was recorded but is not visible yet; retry",
        )
    except (StoreUnavailable, nats.errors.Error):
        response = _error_answer(request, 503, "unavailable", "NATS is unreachable; retry")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = "too_large" if error.status == 413 else error.reason.lower().replace(" ", "_")
        response = _error_answer(request, error.status, code, error.reason)
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, label)
        response = _error_answer(request, 500, "internal", "internal error")
    platform.metrics.requests.labels(label, str(response.status)).inc()
    platform.metrics.duration.labels(label).observe(monotonic_s(platform.clock) - started_s)
    return response


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Loads the session; refuses unsafe methods without the session's CSRF token (the
    ``X-CSRF-Token`` header, or an HTML form's ``csrf_token`` field)."""
    platform = request.app[PLATFORM]
    token = request.cookies.get(COOKIE)
    session = await platform.sessions.get(token) if token else None
    request[SESSION] = session
    request[SESSION_TOKEN] = token if session else None
    request[CSRF_CHECKED] = False
    if request.method not in SAFE_METHODS and session is not None:
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and request.content_type in FORM_TYPES:
            field = (await request.post()).get(CSRF_FIELD)
            sent = field if isinstance(field, str) else None
        if sent is None or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise ApiError(
                403, "csrf", f"missing or wrong {CSRF_HEADER} header (or {CSRF_FIELD} field)"
            )
        request[CSRF_CHECKED] = True
    return await handler(request)


class RateLimiter:
    """At most ``per_minute`` attempts per client address in any sliding minute."""

    def __init__(self, per_minute: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._seen: dict[str, collections.deque[float]] = {}

    def allow(self, client: str) -> bool:
        now_s = monotonic_s(self.clock)
        if len(self._seen) >= RATE_TRACKED_MAX:
            self._seen.clear()
        window = self._seen.setdefault(client, collections.deque())
        while window and now_s - window[0] > RATE_WINDOW_S:
            window.popleft()
        if len(window) >= self.per_minute:
            return False
        window.append(now_s)
        return True


# --- Helpers -----------------------------------------------------------------------------------


def session_of(request: web.Request) -> Session:
    session = request[SESSION]
    if session is None:
        raise ApiError(401, "unauthenticated", "sign in first")
    if request.method not in SAFE_METHODS and not request.get(CSRF_CHECKED, False):
        raise ApiError(403, "csrf", f"missing {CSRF_HEADER} header")
    return session


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > BODY_BYTES_MAX:
        raise ApiError(413, "too_large", f"request bodies are at most {BODY_BYTES_MAX} bytes")
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return body


def text_field(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise ApiError(400, "invalid", f"'{name}' must be a string")
    return value


def role_field(body: dict[str, Any]) -> d.Role:
    role = d.Role.parse(body.get("role"))
    if role is None:
        raise ApiError(400, "invalid", "'role' must be one of viewer, member, admin, owner")
    return role


def path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not valid_id(value):
        raise ApiError(404, "not_found", f"no such {name}")
    return value


def org_access(request: web.Request, minimum: d.Role) -> tuple[str, str, d.Role]:
    """(org id, user id, role) if the signed-in user holds at least ``minimum`` there."""
    session = session_of(request)
    org_id = path_id(request, "org")
    role = request.app[PLATFORM].role_in(org_id, session.user_id)
    if role is None:
        raise ApiError(404, "not_found", "no such organisation")
    if role < minimum:
        raise ApiError(403, "forbidden", f"this needs the {minimum.label} role or higher")
    return org_id, session.user_id, role


# --- Probes ------------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM]
    return web.json_response(
        {"status": "ok", "version": __version__, "uptime_seconds": _uptime(platform)}
    )


async def ready(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM]
    checks: dict[str, dict[str, object]] = {}
    for name, (ok, detail) in (await platform.readiness()).items():
        check: dict[str, object] = {"status": "ok" if ok else "unhealthy"}
        if detail:
            check["detail"] = detail
        checks[name] = check
    healthy = all(c["status"] == "ok" for c in checks.values())
    body = {
        "status": "ok" if healthy else "unhealthy",
        "checks": checks,
        "version": __version__,
        "uptime_seconds": _uptime(platform),
    }
    return web.json_response(body, status=200 if healthy else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[PLATFORM].metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = METRICS_CONTENT_TYPE
    return response


def _uptime(platform: Platform) -> int:
    return int(monotonic_s(platform.clock) - platform.started_s)


# --- Sign-in -----------------------------------------------------------------------------------


def limited(request: web.Request, method: str) -> None:
    limiter = request.app[LIMITER]
    if not limiter.allow(request.remote or "unknown"):
        request.app[PLATFORM].metrics.signins.labels(method, "limited").inc()
        raise ApiError(429, "rate_limited", "too many sign-in attempts; wait a minute")


def _redirect_uri(request: web.Request) -> str:
    base = request.app[PLATFORM].config.public_url
    if base is None:
        base = f"{request.scheme}://{request.host}"
    return f"{base}/auth/github/callback"


async def github_start(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM]
    settings = platform.config.github
    if settings is None:
        raise ApiError(404, "not_configured", "GitHub sign-in is not configured")
    limited(request, "github")
    verifier = github.new_verifier()
    redirect_uri = _redirect_uri(request)
    state = await platform.sessions.remember_flow(
        {
            "verifier": verifier,
            "redirect_uri": redirect_uri,
            "next": next_path(request.query.get("next", "")),
        }
    )
    raise web.HTTPFound(github.authorize_url(settings, redirect_uri, state, verifier))


async def github_callback(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM]
    settings = platform.config.github
    if settings is None:
        raise ApiError(404, "not_configured", "GitHub sign-in is not configured")
    limited(request, "github")
    if "error" in request.query:
        platform.metrics.signins.labels("github", "failed").inc()
        raise ApiError(400, "oauth_denied", "GitHub sign-in was not approved")
    flow = await platform.sessions.take_flow(request.query.get("state", ""))
    code = request.query.get("code", "")
    if flow is None or not code:
        platform.metrics.signins.labels("github", "failed").inc()
        raise ApiError(400, "oauth_state", "unknown, used or expired sign-in state; start again")
    try:
        user = await github.exchange(
            platform.http,
            settings,
            code=code,
            redirect_uri=flow["redirect_uri"],
            verifier=flow["verifier"],
        )
    except github.OAuthFailed as error:
        platform.metrics.signins.labels("github", "failed").inc()
        raise ApiError(502, "oauth_failed", str(error)) from None
    user_id = await platform.sign_in_github(user.id, user.login, user.name)
    platform.metrics.signins.labels("github", "ok").inc()
    response = web.HTTPSeeOther(flow.get("next") or "/api/me")
    await start_session(request, response, user_id)
    raise response


def next_path(asked: str) -> str:
    """Where to send the browser after signing in: a console page, else nowhere ("")."""
    if asked != NEXT_PREFIX and not asked.startswith(NEXT_PREFIX + "/"):
        return ""
    if "//" in asked or "\\" in asked or len(asked) > 200 or not asked.isprintable():
        return ""
    return asked


async def start_session(request: web.Request, response: web.StreamResponse, user_id: str) -> None:
    platform = request.app[PLATFORM]
    token, _ = await platform.sessions.create(user_id)
    response.set_cookie(
        COOKIE,
        token,
        max_age=platform.config.session_ttl_secs,
        path="/",
        httponly=True,
        secure=platform.config.cookie_secure,
        samesite="Lax",
    )


async def logout(request: web.Request) -> web.Response:
    session_of(request)
    token = request[SESSION_TOKEN]
    if token is not None:
        await request.app[PLATFORM].sessions.end(token)
    response = web.json_response({"signed_out": True})
    response.del_cookie(COOKIE, path="/")
    return response


# --- Me and organisations ----------------------------------------------------------------------


async def me(request: web.Request) -> web.Response:
    session = session_of(request)
    platform = request.app[PLATFORM]
    users = platform.rows(
        "SELECT id, login, name, created_at FROM users WHERE id = ?", session.user_id
    )
    if not users:
        raise ApiError(401, "unauthenticated", "sign in first")
    orgs = platform.rows(
        "SELECT o.id, o.name, o.tenant_id, m.role FROM members m JOIN orgs o ON o.id = m.org_id "
        "WHERE m.user_id = ? ORDER BY o.created_at, o.id",
        session.user_id,
    )
    invitations = platform.rows(
        "SELECT i.org_id, o.name AS org_name, i.role FROM invitations i JOIN orgs o "
        "ON o.id = i.org_id WHERE lower(i.login) = lower(?) ORDER BY i.invited_at",
        users[0]["login"],
    )
    return web.json_response(
        {"user": users[0], "csrf_token": session.csrf, "orgs": orgs, "invitations": invitations}
    )


async def do_create_org(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    session = session_of(request)
    org_id = secrets.token_hex(8)
    tenant_id = secrets.randbelow(TENANT_ID_MAX) + 1
    command = d.CreateOrg(text_field(body, "name"), tenant_id)
    await request.app[PLATFORM].org_command(org_id, session.user_id, command)
    return _org(request.app[PLATFORM], org_id, d.Role.OWNER)


async def create_org(request: web.Request) -> web.Response:
    return web.json_response(await do_create_org(request, await json_body(request)), status=201)


def _org(platform: Platform, org_id: str, role: d.Role) -> dict[str, Any]:
    rows = platform.rows("SELECT id, name, tenant_id, created_at FROM orgs WHERE id = ?", org_id)
    if not rows:
        raise ApiError(404, "not_found", "no such organisation")
    return {**rows[0], "role": role.label}


async def get_org(request: web.Request) -> web.Response:
    org_id, _, role = org_access(request, d.Role.VIEWER)
    return web.json_response(_org(request.app[PLATFORM], org_id, role))


def members_of(request: web.Request) -> list[dict[str, Any]]:
    org_id, _, _ = org_access(request, d.Role.VIEWER)
    return request.app[PLATFORM].rows(
        "SELECT m.user_id, u.login, u.name, m.role, m.since FROM members m "
        "LEFT JOIN users u ON u.id = m.user_id WHERE m.org_id = ? ORDER BY m.since, m.user_id",
        org_id,
    )


async def list_members(request: web.Request) -> web.Response:
    return web.json_response({"members": members_of(request)})


def invitations_of(request: web.Request) -> list[dict[str, Any]]:
    org_id, _, _ = org_access(request, d.Role.ADMIN)
    return request.app[PLATFORM].rows(
        "SELECT login, role, invited_by, invited_at FROM invitations WHERE org_id = ? "
        "ORDER BY invited_at, login",
        org_id,
    )


async def list_invitations(request: web.Request) -> web.Response:
    return web.json_response({"invitations": invitations_of(request)})


async def do_invite(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    org_id, user_id, _ = org_access(request, d.Role.ADMIN)
    command = d.InviteMember(text_field(body, "login"), role_field(body))
    await request.app[PLATFORM].org_command(org_id, user_id, command)
    return {"login": command.login, "role": command.role.label}


async def invite(request: web.Request) -> web.Response:
    return web.json_response(await do_invite(request, await json_body(request)), status=201)


async def accept_invitation(request: web.Request) -> web.Response:
    return web.json_response(await do_accept_invitation(request))


async def do_accept_invitation(request: web.Request) -> dict[str, Any]:
    session = session_of(request)
    org_id = path_id(request, "org")
    platform = request.app[PLATFORM]
    logins = platform.rows("SELECT login FROM users WHERE id = ?", session.user_id)
    if not logins:
        raise ApiError(401, "unauthenticated", "sign in first")
    await platform.org_command(org_id, session.user_id, d.AcceptInvitation(logins[0]["login"]))
    role = platform.role_in(org_id, session.user_id)
    assert role is not None, "an accepted invitation makes a member"
    return _org(platform, org_id, role)


async def do_change_role(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    org_id, user_id, _ = org_access(request, d.Role.ADMIN)
    member = path_id(request, "user")
    role = role_field(body)
    await request.app[PLATFORM].org_command(org_id, user_id, d.ChangeRole(member, role))
    return {"user_id": member, "role": role.label}


async def change_role(request: web.Request) -> web.Response:
    return web.json_response(await do_change_role(request, await json_body(request)))


async def do_remove_member(request: web.Request) -> dict[str, Any]:
    member = path_id(request, "user")
    session = request[SESSION]
    own = session is not None and session.user_id == member
    org_id, user_id, _ = org_access(request, d.Role.VIEWER if own else d.Role.ADMIN)
    await request.app[PLATFORM].org_command(org_id, user_id, d.RemoveMember(member))
    return {"removed": member}


async def remove_member(request: web.Request) -> web.Response:
    return web.json_response(await do_remove_member(request))


def audit_of(request: web.Request) -> list[dict[str, Any]]:
    """The organisation's events after ``?after=`` (at most ``?limit=``), oldest first."""
    org_id, _, _ = org_access(request, d.Role.ADMIN)
    try:
        after = min(max(int(request.query.get("after", "0")), 0), TENANT_ID_MAX)
        limit = min(max(int(request.query.get("limit", "100")), 1), AUDIT_PAGE_MAX)
    except ValueError:
        raise ApiError(400, "invalid", "'after' and 'limit' must be whole numbers") from None
    rows = request.app[PLATFORM].rows(
        "SELECT seq, idx, actor, at, kind, subject, data FROM audit WHERE org_id = ? AND seq > ? "
        "ORDER BY seq, idx LIMIT ?",
        org_id,
        after,
        limit,
    )
    for row in rows:
        row["data"] = json.loads(row["data"])
    return rows


async def audit(request: web.Request) -> web.Response:
    return web.json_response({"events": audit_of(request)})


# --- Fleet -------------------------------------------------------------------------------------


def _address(text: object) -> str:
    if not isinstance(text, str):
        raise ApiError(400, "invalid", "'nodes' must be a list of host:port strings")
    parsed = parse_address(text)
    if parsed is None or parsed[1] == 0:
        raise ApiError(400, "invalid", f"node address {text[:64]!r} is not host:port")
    return text.strip()


async def do_register_cluster(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    org_id, user_id, _ = org_access(request, d.Role.ADMIN)
    platform = request.app[PLATFORM]
    nodes = body.get("nodes")
    if not isinstance(nodes, list):
        raise ApiError(400, "invalid", "'nodes' must be a list of host:port strings")
    secret = text_field(body, "jwt_secret")
    if not fleet.JWT_SECRET_BYTES_MIN <= len(secret.encode()) <= fleet.JWT_SECRET_BYTES_MAX:
        raise ApiError(
            400,
            "invalid",
            f"'jwt_secret' must be {fleet.JWT_SECRET_BYTES_MIN}.."
            f"{fleet.JWT_SECRET_BYTES_MAX} bytes",
        )
    addresses = tuple(_address(n) for n in nodes)
    key = platform.config.secret_key
    if key is None:
        raise ApiError(
            503,
            "not_configured",
            "PLATFORM_SECRET_KEY is not set: clusters' secrets cannot be stored",
        )
    cluster_id = secrets.token_hex(8)
    command = d.RegisterCluster(
        org_id,
        text_field(body, "name"),
        addresses,
        text_field(body, "issuer", "craton"),
        text_field(body, "audience", "craton"),
        fleet.seal(key, cluster_id, secret),
    )
    await platform.cluster_command(org_id, cluster_id, user_id, command)
    return cluster_of(platform, org_id, cluster_id)


async def register_cluster(request: web.Request) -> web.Response:
    body = await json_body(request)
    return web.json_response(await do_register_cluster(request, body), status=201)


def cluster_of(platform: Platform, org_id: str, cluster_id: str) -> dict[str, Any]:
    rows = platform.rows(
        "SELECT id, name, issuer, audience, created_at FROM clusters "
        "WHERE id = ? AND org_id = ? AND removed = 0",
        cluster_id,
        org_id,
    )
    if not rows:
        raise ApiError(404, "not_found", "no such cluster")
    nodes = platform.rows(
        "SELECT n.address, h.health, h.ready, h.detail, h.checked_at, h.view, h.lag "
        "FROM cluster_nodes n "
        "LEFT JOIN node_health h ON h.cluster_id = n.cluster_id AND h.address = n.address "
        "WHERE n.cluster_id = ? ORDER BY n.position",
        cluster_id,
    )
    for node in nodes:
        for field in ("health", "ready"):
            node[field] = node[field] or "unknown"
    return {**rows[0], "nodes": nodes}


def clusters_of(request: web.Request) -> list[dict[str, Any]]:
    org_id, _, _ = org_access(request, d.Role.VIEWER)
    platform = request.app[PLATFORM]
    ids = platform.rows(
        "SELECT id FROM clusters WHERE org_id = ? AND removed = 0 ORDER BY created_at, id", org_id
    )
    return [cluster_of(platform, org_id, r["id"]) for r in ids]


async def list_clusters(request: web.Request) -> web.Response:
    return web.json_response({"clusters": clusters_of(request)})


def one_cluster(request: web.Request) -> dict[str, Any]:
    org_id, _, _ = org_access(request, d.Role.VIEWER)
    cluster_id = path_id(request, "cluster")
    return cluster_of(request.app[PLATFORM], org_id, cluster_id)


async def get_cluster(request: web.Request) -> web.Response:
    return web.json_response(one_cluster(request))


async def do_remove_cluster(request: web.Request) -> dict[str, Any]:
    org_id, user_id, _ = org_access(request, d.Role.ADMIN)
    cluster_id = path_id(request, "cluster")
    platform = request.app[PLATFORM]
    cluster_of(platform, org_id, cluster_id)  # 404 for another organisation's cluster
    await platform.cluster_command(org_id, cluster_id, user_id, d.RemoveCluster())
    return {"removed": cluster_id}


async def remove_cluster(request: web.Request) -> web.Response:
    return web.json_response(await do_remove_cluster(request))


async def do_mint(request: web.Request) -> dict[str, Any]:
    org_id, user_id, role = org_access(request, d.Role.VIEWER)
    cluster_id = path_id(request, "cluster")
    platform = request.app[PLATFORM]
    cluster_of(platform, org_id, cluster_id)
    row = platform.rows(
        "SELECT c.issuer, c.audience, c.secret_sealed, o.tenant_id FROM clusters c "
        "JOIN orgs o ON o.id = c.org_id WHERE c.id = ?",
        cluster_id,
    )[0]
    key = platform.config.secret_key
    if key is None:
        raise ApiError(503, "not_configured", "PLATFORM_SECRET_KEY is not set")
    try:
        secret = fleet.unseal(key, cluster_id, row["secret_sealed"])
    except fleet.SealError as error:
        raise ApiError(503, "sealed", str(error)) from None
    now_s = platform.clock.realtime_ns() // NS_PER_S
    ttl_s = platform.config.token_ttl_secs
    token = fleet.mint_token(
        secret=secret,
        issuer=row["issuer"],
        audience=row["audience"],
        subject=user_id,
        tenant_id=int(row["tenant_id"]),
        role=role,
        now_s=now_s,
        ttl_s=ttl_s,
    )
    platform.metrics.tokens.inc()
    return {
        "token": token,
        "tenant_id": row["tenant_id"],
        "role": role.label,
        "expires_at": now_s + ttl_s,
    }


async def mint(request: web.Request) -> web.Response:
    return web.json_response(await do_mint(request), status=201)


async def index(request: web.Request) -> web.Response:
    signed_in = request[SESSION] is not None
    if "text/html" in request.headers.get("Accept", ""):
        raise web.HTTPSeeOther(NEXT_PREFIX)  # a browser: the console's pages
    return web.json_response(
        {
            "service": "platform-app",
            "version": __version__,
            "signed_in": signed_in,
            "sign_in": "/auth/github/start",
            "me": "/api/me",
            "console": NEXT_PREFIX,
        }
    )


# --- The application ---------------------------------------------------------------------------


ORG_ROUTES: tuple[tuple[str, str, Handler, d.Role], ...] = (
    ("GET", "/api/orgs/{org}", get_org, d.Role.VIEWER),
    ("GET", "/api/orgs/{org}/members", list_members, d.Role.VIEWER),
    ("PUT", "/api/orgs/{org}/members/{user}", change_role, d.Role.ADMIN),
    ("DELETE", "/api/orgs/{org}/members/{user}", remove_member, d.Role.ADMIN),
    ("GET", "/api/orgs/{org}/invitations", list_invitations, d.Role.ADMIN),
    ("POST", "/api/orgs/{org}/invitations", invite, d.Role.ADMIN),
    ("GET", "/api/orgs/{org}/audit", audit, d.Role.ADMIN),
    ("GET", "/api/orgs/{org}/clusters", list_clusters, d.Role.VIEWER),
    ("POST", "/api/orgs/{org}/clusters", register_cluster, d.Role.ADMIN),
    ("GET", "/api/orgs/{org}/clusters/{cluster}", get_cluster, d.Role.VIEWER),
    ("DELETE", "/api/orgs/{org}/clusters/{cluster}", remove_cluster, d.Role.ADMIN),
    ("POST", "/api/orgs/{org}/clusters/{cluster}/tokens", mint, d.Role.VIEWER),
)


def build_app(platform: Platform) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, session_middleware], client_max_size=BODY_BYTES_MAX
    )
    app[PLATFORM] = platform
    app[LIMITER] = RateLimiter(platform.config.signin_rate_per_min, platform.clock)
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/auth/github/start", github_start)
    app.router.add_get("/auth/github/callback", github_callback)
    app.router.add_post("/auth/logout", logout)
    app.router.add_get("/api/me", me)
    app.router.add_post("/api/orgs", create_org)
    app.router.add_post("/api/orgs/{org}/invitations/accept", accept_invitation)
    for method, path, handler, _ in ORG_ROUTES:
        app.router.add_route(method, path, handler)
    from craton.platform import pages, passkeys  # they build on this module's helpers

    passkeys.add_routes(app)
    pages.add_routes(app)
    return app
