"""The console's pages without a browser: the same RBAC and CSRF as the API, HTML errors
with the refusal's message and status, the sign-in redirect back to the console."""

from __future__ import annotations

import tomllib
from pathlib import Path

from craton.platform import domain as d
from craton.platform.http import CSRF_FIELD, ORG_ROUTES
from craton.platform.pages import PAGE_ROUTES, STATIC_DIR, TEMPLATES_DIR
from tests.platform.support import Browser, NatsServer, Stack, run, running

SECRET = "s" * 40


async def _form(
    browser: Browser, path: str, fields: dict[str, str], csrf: str | None = None
) -> tuple[int, str, str]:
    """POST a form as a page does; (status, Location, body). ``csrf`` None: the session's."""
    data = dict(fields)
    token = browser.csrf if csrf is None else csrf
    if token:
        data[CSRF_FIELD] = token
    async with browser.http.post(browser.base + path, data=data, allow_redirects=False) as answer:
        return answer.status, answer.headers.get("Location", ""), await answer.text()


async def _get(browser: Browser, path: str) -> tuple[int, str, str]:
    async with browser.http.get(browser.base + path, allow_redirects=False) as answer:
        assert answer.status >= 400 or answer.status in (200, 303), answer.status
        return answer.status, answer.content_type, await answer.text()


async def _org_with(stack: Stack, roles: dict[str, str]) -> tuple[str, dict[str, Browser]]:
    """An organisation made on a page by "olivia" (owner), with one member per login."""
    owner = await stack.sign_in("olivia")
    status, location, body = await _form(owner, "/console/orgs", {"name": "Acme"})
    assert status == 303 and location.endswith("/clusters"), (status, body[:300])
    org = location.split("/")[3]
    browsers = {"olivia": owner}
    for login, role in roles.items():
        status, _, body = await _form(
            owner, f"/console/orgs/{org}/invitations", {"login": login, "role": role}
        )
        assert status == 303, f"expected the invitation accepted: {status} {body[:300]}"
        browsers[login] = await stack.sign_in(login)
        status, location, body = await _form(browsers[login], f"/console/orgs/{org}/accept", {})
        assert status == 303, f"expected {login} to accept: {status} {body[:300]}"
    return org, browsers


async def _user_id(browser: Browser) -> str:
    _, me = await browser.call("GET", "/api/me")
    return str(me["user"]["id"])


def test_signing_in_with_github_comes_back_to_the_console(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            browser = stack.browser()
            async with browser.http.get(
                stack.base + "/", headers={"Accept": "text/html"}, allow_redirects=False
            ) as answer:
                assert answer.status == 303 and answer.headers["Location"] == "/console"
            status, kind, body = await _get(browser, "/console")
            assert status == 200 and kind == "text/html", (status, kind)
            assert 'href="/auth/github/start?next=/console"' in body, body[:500]
            async with browser.http.get(
                stack.base + "/auth/github/start?next=/console", allow_redirects=False
            ) as answer:
                authorize = answer.headers["Location"]
            async with browser.http.get(authorize + "&login=hubot", allow_redirects=False) as a:
                callback = a.headers["Location"]
            async with browser.http.get(callback, allow_redirects=False) as answer:
                assert answer.status == 303, await answer.text()
                assert answer.headers["Location"] == "/console", answer.headers["Location"]
            status, _, body = await _get(browser, "/console")
            assert status == 200 and "hubot" in body and "Your organisations" in body, body[:500]

    run(scenario())


def test_a_sign_in_cannot_be_sent_away_from_the_app(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            for asked in ("https://evil.example/", "//evil.example/console", "/api/me"):
                browser = stack.browser()
                async with browser.http.get(
                    stack.base + "/auth/github/start",
                    params={"next": asked},
                    allow_redirects=False,
                ) as answer:
                    authorize = answer.headers["Location"]
                async with browser.http.get(authorize, allow_redirects=False) as answer:
                    callback = answer.headers["Location"]
                async with browser.http.get(callback, allow_redirects=False) as answer:
                    assert answer.headers["Location"] == "/api/me", (
                        f"expected next={asked!r} ignored, went to {answer.headers['Location']}"
                    )

    run(scenario())


def test_a_form_without_or_with_a_wrong_csrf_token_is_refused(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            owner = await stack.sign_in("olivia")
            other = await stack.sign_in("hubot")
            for token, why in (("", "without"), ("forged", "wrong"), (other.csrf, "another's")):
                status, _, body = await _form(owner, "/console/orgs", {"name": "Acme"}, token)
                assert status == 403, f"expected a form {why} a CSRF token refused: {status}"
                assert "<html" in body and "Open the page again" in body, body[:300]
            _, me = await owner.call("GET", "/api/me")
            assert me["orgs"] == [], f"expected no organisation made: {me['orgs']}"
            status, _, _ = await _form(owner, "/console/orgs", {"name": "Acme"})
            assert status == 303, "expected the same form with the session's token to pass"

    run(scenario())


def test_a_viewer_cannot_change_roles_through_the_page(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            org, browsers = await _org_with(stack, {"vera": "viewer", "mo": "member"})
            vera, mo = browsers["vera"], browsers["mo"]
            mo_id = await _user_id(mo)
            path = f"/console/orgs/{org}/members/{mo_id}/role"
            status, _, body = await _form(vera, path, {"role": "admin"})
            assert status == 403, f"expected a viewer refused: {status} {body[:300]}"
            assert "needs the admin role" in body, body
            status, _, page = await _get(vera, f"/console/orgs/{org}/members")
            assert status == 200 and 'aria-label="Role of' not in page, "no role selector"
            status, _, body = await _form(vera, f"/console/orgs/{org}/members/{mo_id}/remove", {})
            assert status == 403, f"expected a viewer unable to remove a member: {status}"
            _, listed = await browsers["olivia"].call("GET", f"/api/orgs/{org}/members")
            roles = {m["login"]: m["role"] for m in listed["members"]}
            assert roles == {"olivia": "owner", "vera": "viewer", "mo": "member"}, roles
            status, location, _ = await _form(browsers["olivia"], path, {"role": "admin"})
            assert status == 303 and location.endswith("/members"), status
            _, listed = await browsers["olivia"].call("GET", f"/api/orgs/{org}/members")
            assert {m["login"]: m["role"] for m in listed["members"]}["mo"] == "admin"

    run(scenario())


def test_bad_input_is_a_clear_message_on_the_page(tmp_path: Path, nats_server: NatsServer) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            org, browsers = await _org_with(stack, {})
            owner = browsers["olivia"]
            owner_id = await _user_id(owner)
            status, _, body = await _form(
                owner, f"/console/orgs/{org}/members/{owner_id}/role", {"role": "emperor"}
            )
            assert status == 400 and "must be one of viewer" in body, (status, body[:300])
            status, _, body = await _form(
                owner, f"/console/orgs/{org}/members/{owner_id}/role", {"role": "viewer"}
            )
            assert status == 409 and 'role="alert"' in body, (status, body[:300])
            status, _, body = await _form(
                owner,
                f"/console/orgs/{org}/clusters",
                {"name": "prod", "nodes": "127.0.0.1:1", "jwt_secret": "short-secret-123"},
            )
            assert status == 400 and "jwt_secret" in body, (status, body[:300])
            assert "short-secret-123" not in body, "the secret must never be echoed"
            assert 'value="prod"' in body, "the rest of the form is kept"
            status, _, body = await _form(
                owner,
                f"/console/orgs/{org}/clusters",
                {"name": "prod", "nodes": "no-port", "jwt_secret": SECRET},
            )
            assert status == 400 and "is not host:port" in body, (status, body[:300])
            stranger = await stack.sign_in("stranger")
            for path in ("members", "clusters", "events"):
                status, kind, body = await _get(stranger, f"/console/orgs/{org}/{path}")
                assert status == 404 and kind == "text/html", (path, status, kind)
            status, _, body = await _form(stranger, f"/console/orgs/{org}/invitations", {})
            assert status == 404 and "Traceback" not in body, status
            status, _, body = await _get(stranger, "/console/nowhere")
            assert status == 404 and "<html" in body, status

    run(scenario())


def test_members_see_but_only_admins_read_events(tmp_path: Path, nats_server: NatsServer) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            org, browsers = await _org_with(stack, {"mo": "member"})
            status, _, body = await _get(browsers["olivia"], f"/console/orgs/{org}/events")
            assert status == 200 and "MemberInvited" in body, body[:500]
            status, _, body = await _get(browsers["mo"], f"/console/orgs/{org}/events")
            assert status == 403 and "needs the admin role" in body, status
            status, _, body = await _get(browsers["mo"], f"/console/orgs/{org}/clusters")
            assert status == 200 and 'id="register"' not in body, "no register form for members"
            signed_out = stack.browser()
            status, _, _ = await _get(signed_out, f"/console/orgs/{org}/members")
            assert status == 303, "a signed-out visitor is sent to sign in"

    run(scenario())


def test_the_templates_and_static_files_ship_in_the_wheel() -> None:
    root = Path(__file__).resolve().parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["craton"]
    package = root / "craton"
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    needed = [
        path
        for folder in (TEMPLATES_DIR, STATIC_DIR)
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert len(needed) >= 10, f"expected the console's files, found {needed}"
    left_out = sorted(str(p.relative_to(package)) for p in needed if p not in shipped)
    assert not left_out, f"expected package-data to ship every console file; missing {left_out}"


# Each console page or form, and the API route whose rule it shares.
PAGE_TO_API = {
    ("GET", "/orgs/{org}/members"): ("GET", "/api/orgs/{org}/members"),
    ("POST", "/orgs/{org}/invitations"): ("POST", "/api/orgs/{org}/invitations"),
    ("POST", "/orgs/{org}/members/{user}/role"): ("PUT", "/api/orgs/{org}/members/{user}"),
    ("POST", "/orgs/{org}/members/{user}/remove"): ("DELETE", "/api/orgs/{org}/members/{user}"),
    ("GET", "/orgs/{org}/clusters"): ("GET", "/api/orgs/{org}/clusters"),
    ("GET", "/orgs/{org}/clusters/fleet"): ("GET", "/api/orgs/{org}/clusters"),
    ("POST", "/orgs/{org}/clusters"): ("POST", "/api/orgs/{org}/clusters"),
    ("POST", "/orgs/{org}/clusters/{cluster}/remove"): (
        "DELETE",
        "/api/orgs/{org}/clusters/{cluster}",
    ),
    ("GET", "/orgs/{org}/clusters/{cluster}/tokens"): (
        "GET",
        "/api/orgs/{org}/clusters/{cluster}",
    ),
    ("POST", "/orgs/{org}/clusters/{cluster}/tokens"): (
        "POST",
        "/api/orgs/{org}/clusters/{cluster}/tokens",
    ),
    ("GET", "/orgs/{org}/events"): ("GET", "/api/orgs/{org}/audit"),
}
FORM_FIELDS = {
    "invitations": {"login": "someone", "role": "viewer"},
    "role": {"role": "viewer"},
    "clusters": {"name": "c", "nodes": "127.0.0.1:1", "jwt_secret": SECRET},
}


def test_every_page_refuses_the_roles_its_api_route_refuses(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    minimum = {(method, path): role for method, path, _, role in ORG_ROUTES}
    org_pages = {(m, p) for m, p, _ in PAGE_ROUTES if p.startswith("/orgs/{org}/")}
    assert org_pages - {("POST", "/orgs/{org}/accept")} == set(PAGE_TO_API), (
        "expected every organisation page mapped to the API route whose rule it keeps"
    )

    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            logins = {"ada": "admin", "mo": "member", "vera": "viewer"}
            org, browsers = await _org_with(stack, logins)
            by_role = {"owner": browsers["olivia"]} | {r: browsers[n] for n, r in logins.items()}
            stranger = await stack.sign_in("stranger")
            owner_id = await _user_id(browsers["olivia"])
            status, cluster = await browsers["olivia"].call(
                "POST",
                f"/api/orgs/{org}/clusters",
                {"name": "c", "nodes": ["127.0.0.1:1"], "jwt_secret": SECRET},
            )
            assert status == 201, cluster
            checked = 0
            for (method, template), api in PAGE_TO_API.items():
                path = "/console" + template.format(org=org, user=owner_id, cluster=cluster["id"])
                fields = FORM_FIELDS.get(template.rsplit("/", 1)[-1], {})
                for role in d.Role:
                    if role >= minimum[api]:
                        continue
                    browser = by_role[role.label]
                    if method == "GET":
                        status, _, body = await _get(browser, path)
                    else:
                        status, _, body = await _form(browser, path, fields)
                    assert status == 403 and "needs the" in body, (
                        f"expected {role.label} refused on {method} {template}: {status}"
                    )
                    checked += 1
                if method == "GET":
                    status, _, _ = await _get(stranger, path)
                else:
                    status, _, _ = await _form(stranger, path, fields)
                assert status == 404, f"expected a stranger told not found: {template} {status}"
            assert checked >= 10, f"expected refusals checked, got {checked}"

    run(scenario())


def test_remove_a_member_and_a_cluster_and_leave(tmp_path: Path, nats_server: NatsServer) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            org, browsers = await _org_with(stack, {"mo": "member", "vera": "viewer"})
            owner = browsers["olivia"]
            mo_id, vera_id = await _user_id(browsers["mo"]), await _user_id(browsers["vera"])
            status, location, _ = await _form(
                owner, f"/console/orgs/{org}/members/{mo_id}/remove", {}
            )
            assert status == 303 and location == f"/console/orgs/{org}/members", location
            status, location, _ = await _form(
                browsers["vera"], f"/console/orgs/{org}/members/{vera_id}/remove", {}
            )
            assert status == 303 and location == "/console", f"a leaver goes home: {location}"
            _, listed = await owner.call("GET", f"/api/orgs/{org}/members")
            assert [m["login"] for m in listed["members"]] == ["olivia"], listed
            status, _, _ = await _get(browsers["mo"], f"/console/orgs/{org}/clusters")
            assert status == 404, "a removed member no longer sees the organisation"

            status, location, body = await _form(
                owner,
                f"/console/orgs/{org}/clusters",
                {"name": "prod", "nodes": "127.0.0.1:1, 127.0.0.1:2", "jwt_secret": SECRET},
            )
            assert status == 303, (status, body[:300])
            _, _, page = await _get(owner, f"/console/orgs/{org}/clusters/fleet")
            assert page.count("<tr data-address=") == 2, "expected both nodes listed"
            _, clusters = await owner.call("GET", f"/api/orgs/{org}/clusters")
            cluster = clusters["clusters"][0]["id"]
            status, _, _ = await _form(owner, f"/console/orgs/{org}/clusters/{cluster}/remove", {})
            assert status == 303
            _, clusters = await owner.call("GET", f"/api/orgs/{org}/clusters")
            assert clusters["clusters"] == [], clusters

    run(scenario())
