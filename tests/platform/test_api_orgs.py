"""Organisations over HTTP: RBAC on every route for every lower role, CSRF, cookies,
JSON errors, the audit log, and the sign-in flow's refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats.errors

from craton.platform import domain as d
from craton.platform.http import COOKIE, ORG_ROUTES
from tests.platform.support import Browser, NatsServer, Stack, cookie_attributes, run, running

SECRET = "s" * 40


async def _team(stack: Stack) -> tuple[str, dict[str, Browser], dict[str, str]]:
    """An organisation with one user per role, plus a stranger; (org, browsers, user ids)."""
    browsers = {"owner": await stack.sign_in("olivia")}
    status, org = await browsers["owner"].call("POST", "/api/orgs", {"name": "Acme"})
    assert status == 201, org
    for role in ("admin", "member", "viewer"):
        login = f"{role}-user"
        status, body = await browsers["owner"].call(
            "POST", f"/api/orgs/{org['id']}/invitations", {"login": login, "role": role}
        )
        assert status == 201, body
        browsers[role] = await stack.sign_in(login)
        status, body = await browsers[role].call(
            "POST", f"/api/orgs/{org['id']}/invitations/accept"
        )
        assert status == 200 and body["role"] == role, body
    browsers["stranger"] = await stack.sign_in("stranger")
    ids = {}
    for name, browser in browsers.items():
        _, me = await browser.call("GET", "/api/me")
        ids[name] = me["user"]["id"]
    return org["id"], browsers, ids


def _path(template: str, org: str, user: str, cluster: str) -> str:
    return template.format(org=org, user=user, cluster=cluster)


def _body(path: str) -> dict[str, Any]:
    if path.endswith("/clusters"):
        return {"name": "c", "nodes": ["127.0.0.1:1"], "jwt_secret": SECRET}
    return {"login": "someone", "role": "viewer", "name": "x"}


def test_every_route_refuses_every_lower_role_and_hides_the_org_from_strangers(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            org, browsers, ids = await _team(stack)
            status, cluster = await browsers["owner"].call(
                "POST", f"/api/orgs/{org}/clusters", _body("/clusters")
            )
            assert status == 201, cluster
            _, before = await browsers["owner"].call("GET", f"/api/orgs/{org}/audit")
            checked = 0
            for method, template, _, minimum in ORG_ROUTES:
                path = _path(template, org, ids["owner"], cluster["id"])
                for role in d.Role:
                    if role >= minimum:
                        continue
                    status, body = await browsers[role.label].call(method, path, _body(path))
                    assert status == 403 and body["error"]["code"] == "forbidden", (
                        f"expected {role.label} refused on {method} {template}: {status} {body}"
                    )
                    checked += 1
                status, body = await browsers["stranger"].call(method, path, _body(path))
                assert status == 404 and body["error"]["code"] == "not_found", (
                    f"expected a stranger told not found on {method} {template}: {body}"
                )
                if method == "GET":
                    status, body = await browsers[minimum.label].call(method, path)
                    assert status == 200, f"expected {minimum.label} allowed {template}: {body}"
            assert checked == 14, f"expected 7 admin routes x 2 lower roles, got {checked}"
            _, after = await browsers["owner"].call("GET", f"/api/orgs/{org}/audit")
            assert after == before, "a refused request must change nothing"

    run(scenario())


def test_members_roles_audit_and_the_last_owner_over_http(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            org, browsers, ids = await _team(stack)
            owner = browsers["owner"]
            status, body = await owner.call("DELETE", f"/api/orgs/{org}/members/{ids['owner']}")
            assert status == 409 and body["error"]["code"] == "last_owner", body
            status, body = await browsers["admin"].call(
                "PUT", f"/api/orgs/{org}/members/{ids['member']}", {"role": "admin"}
            )
            assert status == 200 and body["role"] == "admin", body
            status, body = await browsers["viewer"].call(
                "DELETE", f"/api/orgs/{org}/members/{ids['viewer']}"
            )
            assert status == 200, f"expected a viewer able to leave: {body}"
            status, members = await owner.call("GET", f"/api/orgs/{org}/members")
            roles = {m["login"]: m["role"] for m in members["members"]}
            assert roles == {"olivia": "owner", "admin-user": "admin", "member-user": "admin"}
            status, audit = await owner.call("GET", f"/api/orgs/{org}/audit")
            kinds = [(e["kind"], e["actor"]) for e in audit["events"]]
            assert kinds[0] == ("OrgCreated", ids["owner"])
            assert ("RoleChanged", ids["admin"]) in kinds
            assert kinds[-1] == ("MemberRemoved", ids["viewer"])
            assert all(e["at"] for e in audit["events"]), "every change carries its time"
            status, page = await owner.call("GET", f"/api/orgs/{org}/audit?after={10**30}&limit=-5")
            assert status == 200 and page["events"] == [], page
            first = audit["events"][0]["seq"]
            status, page = await owner.call("GET", f"/api/orgs/{org}/audit?after={first}&limit=1")
            assert [e["seq"] for e in page["events"]] == [audit["events"][1]["seq"]], page
            status, page = await owner.call("GET", f"/api/orgs/{org}/audit?after=x")
            assert status == 400 and page["error"]["code"] == "invalid"

    run(scenario())


def test_csrf_cookie_flags_and_json_errors(tmp_path: Path, nats_server: NatsServer) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server, PLATFORM_COOKIE_SECURE="true") as stack:
            browser = stack.browser()
            async with browser.http.get(
                stack.base + "/auth/github/start", allow_redirects=False
            ) as response:
                location = response.headers["Location"]
            async with browser.http.get(location, allow_redirects=False) as response:
                callback = response.headers["Location"]
            async with browser.http.get(callback, allow_redirects=False) as response:
                set_cookie = response.headers["Set-Cookie"]
            assert set_cookie.startswith(COOKIE + "=")
            flags = cookie_attributes(set_cookie)
            assert {"httponly", "secure", "samesite"} <= flags, set_cookie
            assert "samesite=lax" in set_cookie.lower().replace(" ", "")
        async with running(tmp_path / "second", nats_server) as stack:
            browser = await stack.sign_in("octocat")
            status, body = await browser.call("POST", "/api/orgs", {"name": "x"}, csrf=False)
            assert status == 403 and body["error"]["code"] == "csrf", body
            browser.csrf = "forged"
            status, body = await browser.call("POST", "/api/orgs", {"name": "x"})
            assert status == 403 and body["error"]["code"] == "csrf", body
            status, me = await browser.call("GET", "/api/me")
            browser.csrf = me["csrf_token"]
            assert me["orgs"] == [], "a refused request must not create anything"
            async with browser.http.post(
                stack.base + "/api/orgs", data=b"{not json", headers={"X-CSRF-Token": browser.csrf}
            ) as response:
                body = await response.json()
                assert response.status == 400 and body["error"]["code"] == "invalid_json"
            status, body = await browser.call("POST", "/api/orgs", {"name": "x" * 70_000})
            assert status == 413 and body["error"]["code"] == "too_large", body
            status, body = await browser.call("POST", "/api/orgs", {"name": ""})
            assert status == 400 and body["error"]["code"] == "invalid", body
            status, body = await browser.call("GET", "/api/orgs/..%2F/members")
            assert status == 404 and "error" in body
            status, body = await browser.call("PATCH", "/api/orgs")
            assert status == 405 and body["error"]["code"] == "method_not_allowed", body
            status, body = await browser.call("POST", "/auth/logout")
            assert status == 200
            status, body = await browser.call("GET", "/api/me")
            assert status == 401 and body["error"]["code"] == "unauthenticated"

    (tmp_path / "second").mkdir()
    run(scenario())


def test_oauth_refuses_a_replayed_or_unknown_state_and_rate_limits(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server, PLATFORM_SIGNIN_RATE_PER_MIN="6") as stack:
            browser = stack.browser()
            async with browser.http.get(
                stack.base + "/auth/github/start", allow_redirects=False
            ) as response:
                location = response.headers["Location"]
            assert "code_challenge=" in location and "code_challenge_method=S256" in location
            assert "state=" in location
            async with browser.http.get(location, allow_redirects=False) as response:
                callback = response.headers["Location"]
            async with browser.http.get(callback, allow_redirects=False) as response:
                assert response.status == 303
            async with browser.http.get(callback, allow_redirects=False) as response:
                body = await response.json()
                assert response.status == 400 and body["error"]["code"] == "oauth_state", body
            status, body = await browser.call("GET", "/auth/github/callback?code=x&state=forged")
            assert status == 400 and body["error"]["code"] == "oauth_state", body
            status, body = await browser.call("GET", "/auth/github/callback?error=access_denied")
            assert status == 400 and body["error"]["code"] == "oauth_denied", body
            statuses = []
            for _ in range(4):
                status, body = await browser.call("GET", "/auth/github/callback?state=x")
                statuses.append(status)
            assert statuses[-1] == 429 and body["error"]["code"] == "rate_limited", statuses

    run(scenario())


def test_nats_trouble_during_a_request_is_a_503_not_a_traceback(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            browser = await stack.sign_in("octocat")

            async def unreachable(token: str) -> None:
                raise nats.errors.TimeoutError

            stack.platform.sessions.get = unreachable  # type: ignore[method-assign]
            status, body = await browser.call("GET", "/api/me")
            assert status == 503 and body["error"]["code"] == "unavailable", body

            async def broken(token: str) -> None:
                raise RuntimeError("a bug")

            stack.platform.sessions.get = broken  # type: ignore[method-assign]
            status, body = await browser.call("GET", "/api/me")
            assert status == 500 and body == {
                "error": {"code": "internal", "message": "internal error"}
            }, body

    run(scenario())
