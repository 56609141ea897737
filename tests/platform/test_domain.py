"""The pure rules: roles, the last owner, invitations, clusters; no NATS needed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from craton.platform import domain as d

OWNER, ADMIN, MEMBER, VIEWER = "u-owner", "u-admin", "u-member", "u-viewer"


def _org(*members: tuple[str, d.Role]) -> d.OrgState:
    state = d.OrgState()
    for event in _ok(d.decide_org(state, d.CreateOrg("acme", 7), OWNER)):
        state = d.evolve_org(state, event)
    for user, role in members:
        for event in _ok(d.decide_org(state, d.InviteMember(user, role), OWNER)):
            state = d.evolve_org(state, event)
        for event in _ok(d.decide_org(state, d.AcceptInvitation(user), user)):
            state = d.evolve_org(state, event)
    return state


def _ok(decision: d.Decision) -> list[d.Event]:
    assert not isinstance(decision, d.Refusal), f"expected events, got {decision}"
    return decision


def _refused(decision: d.Decision, code: d.RefusalCode) -> None:
    assert isinstance(decision, d.Refusal), f"expected a {code.value} refusal, got {decision}"
    assert decision.code is code, f"expected {code.value}, got {decision}"


def test_the_creator_is_the_owner_and_the_last_owner_cannot_leave_or_be_demoted() -> None:
    state = _org((ADMIN, d.Role.ADMIN))
    assert state.role_of(OWNER) is d.Role.OWNER and state.tenant_id == 7
    _refused(d.decide_org(state, d.RemoveMember(OWNER), OWNER), d.RefusalCode.LAST_OWNER)
    _refused(
        d.decide_org(state, d.ChangeRole(OWNER, d.Role.ADMIN), OWNER), d.RefusalCode.LAST_OWNER
    )
    promoted = state
    for event in _ok(d.decide_org(state, d.ChangeRole(ADMIN, d.Role.OWNER), OWNER)):
        promoted = d.evolve_org(promoted, event)
    assert _ok(d.decide_org(promoted, d.RemoveMember(OWNER), OWNER))


def test_admins_cannot_touch_owners_or_grant_above_their_role() -> None:
    state = _org((ADMIN, d.Role.ADMIN), (MEMBER, d.Role.MEMBER))
    _refused(d.decide_org(state, d.RemoveMember(OWNER), ADMIN), d.RefusalCode.FORBIDDEN)
    _refused(
        d.decide_org(state, d.ChangeRole(MEMBER, d.Role.OWNER), ADMIN), d.RefusalCode.FORBIDDEN
    )
    _refused(d.decide_org(state, d.InviteMember("x", d.Role.OWNER), ADMIN), d.RefusalCode.FORBIDDEN)
    assert _ok(d.decide_org(state, d.ChangeRole(MEMBER, d.Role.ADMIN), ADMIN))
    assert _ok(d.decide_org(state, d.RemoveMember(MEMBER), ADMIN))


def test_members_and_viewers_only_leave() -> None:
    state = _org((MEMBER, d.Role.MEMBER), (VIEWER, d.Role.VIEWER))
    for actor in (MEMBER, VIEWER):
        _refused(
            d.decide_org(state, d.InviteMember("x", d.Role.VIEWER), actor), d.RefusalCode.FORBIDDEN
        )
        _refused(d.decide_org(state, d.RemoveMember(OWNER), actor), d.RefusalCode.FORBIDDEN)
        assert _ok(d.decide_org(state, d.RemoveMember(actor), actor))
    _refused(
        d.decide_org(state, d.InviteMember("x", d.Role.VIEWER), "stranger"), d.RefusalCode.NOT_FOUND
    )


def test_an_invitation_is_taken_once_and_only_by_its_login() -> None:
    state = _org()
    for event in _ok(d.decide_org(state, d.InviteMember("Hubot", d.Role.MEMBER), OWNER)):
        state = d.evolve_org(state, event)
    _refused(d.decide_org(state, d.AcceptInvitation("octocat"), "gh2"), d.RefusalCode.NOT_FOUND)
    for event in _ok(d.decide_org(state, d.AcceptInvitation("hubot"), "gh3")):
        state = d.evolve_org(state, event)
    assert state.role_of("gh3") is d.Role.MEMBER and state.invitations == ()
    _refused(d.decide_org(state, d.AcceptInvitation("hubot"), "gh3"), d.RefusalCode.NOT_FOUND)


def test_clusters_need_an_admin_and_distinct_nodes() -> None:
    command = d.RegisterCluster("o1", "prod", ("a:1", "b:2"), "craton", "craton", "sealed")
    _refused(d.decide_cluster(d.ClusterState(), command, d.Role.MEMBER), d.RefusalCode.FORBIDDEN)
    _refused(d.decide_cluster(d.ClusterState(), command, None), d.RefusalCode.NOT_FOUND)
    twice = d.RegisterCluster("o1", "prod", ("a:1", "a:1"), "craton", "craton", "sealed")
    _refused(d.decide_cluster(d.ClusterState(), twice, d.Role.ADMIN), d.RefusalCode.INVALID)
    state = d.ClusterState()
    for event in _ok(d.decide_cluster(state, command, d.Role.ADMIN)):
        state = d.evolve_cluster(state, event)
    assert state.nodes == ("a:1", "b:2") and state.secret_sealed == "sealed"
    _refused(d.decide_cluster(state, command, d.Role.OWNER), d.RefusalCode.CONFLICT)


USERS = ("u0", "u1", "u2", "u3")
commands = st.one_of(
    st.builds(d.InviteMember, st.sampled_from(USERS), st.sampled_from(list(d.Role))),
    st.builds(d.AcceptInvitation, st.sampled_from(USERS)),
    st.builds(d.ChangeRole, st.sampled_from(USERS), st.sampled_from(list(d.Role))),
    st.builds(d.RemoveMember, st.sampled_from(USERS)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(USERS), commands), max_size=40))
def test_no_sequence_of_commands_leaves_an_organisation_without_an_owner(
    steps: list[tuple[str, d.OrgCommand]],
) -> None:
    state = d.OrgState()
    for event in _ok(d.decide_org(state, d.CreateOrg("acme", 1), "u0")):
        state = d.evolve_org(state, event)
    for actor, command in steps:
        if isinstance(command, d.AcceptInvitation):
            command = d.AcceptInvitation(actor)  # one accepts only as oneself
        before = state.role_of(actor)
        decision = d.decide_org(state, command, actor)
        if isinstance(decision, d.Refusal):
            continue
        assert before is not None or isinstance(command, d.AcceptInvitation)
        for event in decision:
            state = d.evolve_org(state, event)
        assert state.owners() >= 1, f"no owner left after {command} by {actor}"
        users = [user for user, _ in state.members]
        assert len(users) == len(set(users)), "a user is a member at most once"
