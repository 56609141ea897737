"""Sign-in through the stand-in GitHub, end to end, and what a session allows."""

from __future__ import annotations

from pathlib import Path

from tests.platform.support import NatsServer, run, running


def test_github_sign_in_end_to_end_creates_the_user_and_a_session(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, nats_server) as stack:
            browser = await stack.sign_in("octocat")
            status, me = await browser.call("GET", "/api/me")
            assert status == 200
            assert me["user"]["login"] == "octocat", f"expected octocat signed in, got {me}"
            assert me["orgs"] == [] and me["invitations"] == []
            assert stack.github.exchanges == 1, "expected exactly one code exchange"

    run(scenario())
