"""The console: platform-app's HTML pages, rendered on the server (Jinja2, autoescaped).

Every page works without JavaScript: reading is a GET, every change a POST form that
carries the session's CSRF token in its ``csrf_token`` field (checked, like the API's
header, by ``http.session_middleware``). A page calls the same actions as the JSON API
(``http.do_*``, ``http.*_of``), so it keeps the same roles and rules and refuses with the
same messages: a refused form shows its page again with the message and the refusal's 4xx
status. Any other error is an HTML error page (``error_page``), never a traceback.

One small script (``static/console.js``) adds what needs JavaScript: the clusters' table
is fetched again every ``REFRESH_MS`` (an HTML fragment, ``/clusters/fleet``), and
passkeys are made and used (WebAuthn lives only in the browser's JavaScript API). Without
it, the page has a link to reload, and GitHub sign-in needs no script at all.

Pages (``PREFIX`` = ``/console``):
    GET  /console                                   sign in, or your organisations
    GET  /console/orgs/{org}/members                members, roles, invitations
    GET  /console/orgs/{org}/clusters               clusters and their nodes' health
    GET  /console/orgs/{org}/clusters/{cluster}/tokens   mint a token (shown once)
    GET  /console/orgs/{org}/events                 the organisation's event log
and a POST for each form (see ``add_routes``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from craton import __version__
from craton.platform import domain as d
from craton.platform import http as h
from craton.platform.service import Refused

PREFIX = h.NEXT_PREFIX
HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
REFRESH_MS = 3000
FORM_FIELD_CHARS_MAX = 4096
EVENTS_PAGE = 100
HTML_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
ROLES = tuple(role.label for role in d.Role)

TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)
Page = Callable[..., Awaitable[web.Response]]


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["compact_json"] = lambda value: json.dumps(value, sort_keys=True)
    return env


# --- Rendering ---------------------------------------------------------------------------------


def _me(request: web.Request) -> dict[str, Any] | None:
    session = request.get(h.SESSION)
    if session is None:
        return None
    rows = request.app[h.PLATFORM].rows(
        "SELECT id, login, name FROM users WHERE id = ?", session.user_id
    )
    return rows[0] if rows else None


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    session = request.get(h.SESSION)
    common = {
        "prefix": PREFIX,
        "version": __version__,
        "csrf": session.csrf if session is not None else "",
        "csrf_field": h.CSRF_FIELD,
        "me": context.pop("me", None),
        "org": context.pop("org", None),
        "error": context.pop("error", None),
        "refresh_ms": REFRESH_MS,
    }
    html = request.app[TEMPLATES].get_template(template).render(**common, **context)
    return web.Response(text=html, content_type="text/html", status=status, headers=HTML_HEADERS)


def error_page(request: web.Request, status: int, code: str, message: str) -> web.Response | None:
    """The HTML form of an error, for a console path (None elsewhere: the API's JSON)."""
    if request.path != PREFIX and not request.path.startswith(PREFIX + "/"):
        return None
    return render(request, "error.html", status, code=code, message=message, http_status=status)


def _signed_in(request: web.Request) -> dict[str, Any]:
    """The signed-in user, or a redirect to the sign-in page."""
    me = _me(request)
    if me is None:
        raise web.HTTPSeeOther(PREFIX)
    return me


def _org(request: web.Request) -> dict[str, Any]:
    """The organisation in the path with the caller's role (404 to a non-member)."""
    org_id, _, role = h.org_access(request, d.Role.VIEWER)
    rows = request.app[h.PLATFORM].rows("SELECT id, name, tenant_id FROM orgs WHERE id = ?", org_id)
    if not rows:
        raise h.ApiError(404, "not_found", "no such organisation")
    return {**rows[0], "role": role.label, "admin": role >= d.Role.ADMIN}


async def _form(request: web.Request) -> dict[str, Any]:
    """The posted form's text fields, stripped (each at most ``FORM_FIELD_CHARS_MAX``)."""
    fields: dict[str, Any] = {}
    for name, value in (await request.post()).items():
        if name == h.CSRF_FIELD:
            continue
        if not isinstance(value, str) or len(value) > FORM_FIELD_CHARS_MAX:
            limit = FORM_FIELD_CHARS_MAX
            raise h.ApiError(400, "invalid", f"'{name}' must be text of at most {limit} characters")
        fields[name] = value.strip()
    return fields


async def _submit(
    request: web.Request,
    action: Callable[[], Awaitable[dict[str, Any]]],
    again: Page,
    done: str | Callable[[dict[str, Any]], str],
) -> web.Response:
    """Run ``action``; then see ``done`` (303; given the action's answer when a function),
    or ``again`` with the refusal's message and status."""
    try:
        answer = await action()
    except h.ApiError as error:
        if error.status in (401, 404):
            raise
        return await again(request, error=error.message, status=error.status)
    except Refused as refused:
        status = h.refusal_status(refused.refusal)
        if status == 404:
            raise
        return await again(request, error=refused.refusal.message, status=status)
    raise web.HTTPSeeOther(done if isinstance(done, str) else done(answer))


def _org_path(request: web.Request, tail: str) -> str:
    return f"{PREFIX}/orgs/{request.match_info['org']}/{tail}"


# --- Sign-in and organisations -----------------------------------------------------------------


async def home(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    me = _me(request)
    if me is None:
        platform = request.app[h.PLATFORM]
        return render(
            request,
            "signin.html",
            status,
            error=error,
            github=platform.config.github is not None,
            passkeys=platform.config.webauthn is not None,
        )
    platform = request.app[h.PLATFORM]
    orgs = platform.rows(
        "SELECT o.id, o.name, o.tenant_id, m.role FROM members m JOIN orgs o ON o.id = m.org_id "
        "WHERE m.user_id = ? ORDER BY o.created_at, o.id",
        me["id"],
    )
    invitations = platform.rows(
        "SELECT i.org_id, o.name AS org_name, i.role FROM invitations i JOIN orgs o "
        "ON o.id = i.org_id WHERE lower(i.login) = lower(?) ORDER BY i.invited_at",
        me["login"],
    )
    passkeys = platform.rows(
        "SELECT credential_id, created_at FROM passkeys WHERE user_id = ? ORDER BY created_at",
        me["id"],
    )
    return render(
        request,
        "home.html",
        status,
        me=me,
        error=error,
        orgs=orgs,
        invitations=invitations,
        passkeys=passkeys,
        passkeys_on=platform.config.webauthn is not None,
    )


async def create_org(request: web.Request) -> web.Response:
    form = await _form(request)
    return await _submit(
        request,
        lambda: h.do_create_org(request, form),
        home,
        lambda created: f"{PREFIX}/orgs/{created['id']}/clusters",
    )


async def accept(request: web.Request) -> web.Response:
    return await _submit(
        request,
        lambda: h.do_accept_invitation(request),
        home,
        _org_path(request, "clusters"),
    )


async def logout(request: web.Request) -> web.Response:
    h.session_of(request)
    token = request[h.SESSION_TOKEN]
    if token is not None:
        await request.app[h.PLATFORM].sessions.end(token)
    response = web.HTTPSeeOther(PREFIX)
    response.del_cookie(h.COOKIE, path="/")
    raise response


async def org_index(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther(_org_path(request, "clusters"))


# --- Members -----------------------------------------------------------------------------------


async def members(
    request: web.Request, error: str | None = None, status: int = 200
) -> web.Response:
    me = _signed_in(request)
    org = _org(request)
    return render(
        request,
        "members.html",
        status,
        me=me,
        org=org,
        error=error,
        members=h.members_of(request),
        invitations=h.invitations_of(request) if org["admin"] else [],
        roles=ROLES,
    )


async def invite(request: web.Request) -> web.Response:
    form = await _form(request)
    return await _submit(
        request, lambda: h.do_invite(request, form), members, _org_path(request, "members")
    )


async def change_role(request: web.Request) -> web.Response:
    form = await _form(request)
    return await _submit(
        request, lambda: h.do_change_role(request, form), members, _org_path(request, "members")
    )


async def remove_member(request: web.Request) -> web.Response:
    session = request[h.SESSION]
    leaving = session is not None and session.user_id == request.match_info["user"]
    done = PREFIX if leaving else _org_path(request, "members")
    return await _submit(request, lambda: h.do_remove_member(request), members, done)


# --- Clusters and tokens -----------------------------------------------------------------------


async def clusters(
    request: web.Request, error: str | None = None, status: int = 200, **form: Any
) -> web.Response:
    me = _signed_in(request)
    org = _org(request)
    return render(
        request,
        "clusters.html",
        status,
        me=me,
        org=org,
        error=error,
        clusters=h.clusters_of(request),
        form=form,
    )


async def fleet(request: web.Request) -> web.Response:
    """The clusters' table alone, for the page's script to swap in (a 401, not the sign-in
    page, once the session is gone: the script keeps the table it has)."""
    if _me(request) is None:
        raise h.ApiError(401, "unauthenticated", "sign in first")
    org = _org(request)
    return render(request, "_fleet.html", org=org, clusters=h.clusters_of(request))


def _nodes(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


async def register_cluster(request: web.Request) -> web.Response:
    form = await _form(request)
    body: dict[str, Any] = {
        "name": form.get("name", ""),
        "nodes": _nodes(form.get("nodes", "")),
        "jwt_secret": form.get("jwt_secret", ""),
    }
    for optional in ("issuer", "audience"):
        if form.get(optional):
            body[optional] = form[optional]

    async def again(request: web.Request, error: str, status: int) -> web.Response:
        kept = {k: v for k, v in form.items() if k != "jwt_secret"}  # never echo the secret
        return await clusters(request, error, status, **kept)

    return await _submit(
        request,
        lambda: h.do_register_cluster(request, body),
        again,
        _org_path(request, "clusters"),
    )


async def remove_cluster(request: web.Request) -> web.Response:
    return await _submit(
        request, lambda: h.do_remove_cluster(request), clusters, _org_path(request, "clusters")
    )


async def tokens(
    request: web.Request,
    error: str | None = None,
    status: int = 200,
    minted: dict[str, Any] | None = None,
) -> web.Response:
    me = _signed_in(request)
    org = _org(request)
    return render(
        request,
        "tokens.html",
        status,
        me=me,
        org=org,
        error=error,
        cluster=h.one_cluster(request),
        minted=minted,
    )


async def mint(request: web.Request) -> web.Response:
    """Mints and shows the token in this one answer (``no-store``): it is not kept."""
    try:
        minted = await h.do_mint(request)
    except h.ApiError as error:
        if error.status in (401, 404):
            raise
        return await tokens(request, error=error.message, status=error.status)
    return await tokens(request, minted=minted)


# --- Events ------------------------------------------------------------------------------------


async def events(request: web.Request) -> web.Response:
    me = _signed_in(request)
    org = _org(request)
    rows = h.audit_of(request)  # admins only, as the API's audit log
    actors = {row["actor"] for row in rows}
    logins = {
        r["id"]: r["login"]
        for r in request.app[h.PLATFORM].rows("SELECT id, login FROM users")
        if r["id"] in actors
    }
    return render(
        request,
        "events.html",
        me=me,
        org=org,
        events=rows,
        logins=logins,
        next_after=rows[-1]["seq"] if len(rows) >= EVENTS_PAGE else None,
    )


# --- Routes ------------------------------------------------------------------------------------


PAGE_ROUTES: tuple[tuple[str, str, h.Handler], ...] = (
    ("GET", "", home),
    ("POST", "/orgs", create_org),
    ("POST", "/logout", logout),
    ("GET", "/orgs/{org}", org_index),
    ("POST", "/orgs/{org}/accept", accept),
    ("GET", "/orgs/{org}/members", members),
    ("POST", "/orgs/{org}/invitations", invite),
    ("POST", "/orgs/{org}/members/{user}/role", change_role),
    ("POST", "/orgs/{org}/members/{user}/remove", remove_member),
    ("GET", "/orgs/{org}/clusters", clusters),
    ("POST", "/orgs/{org}/clusters", register_cluster),
    ("GET", "/orgs/{org}/clusters/fleet", fleet),
    ("POST", "/orgs/{org}/clusters/{cluster}/remove", remove_cluster),
    ("GET", "/orgs/{org}/clusters/{cluster}/tokens", tokens),
    ("POST", "/orgs/{org}/clusters/{cluster}/tokens", mint),
    ("GET", "/orgs/{org}/events", events),
)


def add_routes(app: web.Application) -> None:
    app[TEMPLATES] = templates()
    app[h.ERROR_PAGE] = error_page
    for method, path, handler in PAGE_ROUTES:
        app.router.add_route(method, PREFIX + path, handler)
    app.router.add_static(PREFIX + "/static", STATIC_DIR)
