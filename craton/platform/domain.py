"""The control plane's aggregates and their rules, as pure functions.

Three aggregates, each an event stream of its own (one JetStream subject per aggregate):
a **user** (signed in through GitHub, with passkeys), an **organisation** (its members with
their roles, its pending invitations; memberships live here so that "the last owner cannot
leave" is decided on one consistent state) and a **cluster** (a registered Craton cluster:
its nodes' addresses and its JWT secret, encrypted by the caller before it gets here).

``decide_*(state, command, ...)`` returns the events a command produces, or a ``Refusal``;
``evolve(state, event)`` folds one event into a state. Both are pure: no clock (times come
in with the command), no randomness (ids come in with the command), no I/O. The shell
(``craton.platform.service``) loads the state, decides, appends with optimistic
concurrency and retries on a conflict, which re-decides on the newer state.

Roles: owner > admin > member > viewer. Viewers read; members also get cluster tokens;
admins invite, remove and re-role members up to their own role (never owners) and
register clusters; owners do everything, including making and removing owners. The last
owner can neither leave, be removed, nor be demoted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

NAME_CHARS_MAX = 100
LOGIN_CHARS_MAX = 39  # GitHub's limit
MEMBERS_MAX = 1000
INVITATIONS_MAX = 1000
NODES_MAX = 16  # a Craton cluster has at most 16 replicas
PASSKEYS_MAX = 20


class Role(enum.IntEnum):
    VIEWER = 1
    MEMBER = 2
    ADMIN = 3
    OWNER = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: object) -> Role | None:
        if not isinstance(text, str):
            return None
        for role in cls:
            if role.label == text:
                return role
        return None


class RefusalCode(enum.Enum):
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    CONFLICT = "conflict"
    INVALID = "invalid"
    LAST_OWNER = "last_owner"


@attrs.frozen
class Refusal:
    code: RefusalCode
    message: str


@attrs.frozen
class Event:
    """One fact: ``kind`` names it, ``data`` holds JSON values."""

    kind: str
    data: Mapping[str, Any]


Decision = list[Event] | Refusal


# --- User ----------------------------------------------------------------------------------


@attrs.frozen
class Passkey:
    credential_id: str  # urlsafe base64
    public_key: str  # urlsafe base64 (COSE)
    sign_count: int


@attrs.frozen
class UserState:
    exists: bool = False
    github_id: int = 0
    login: str = ""
    name: str = ""
    passkeys: tuple[Passkey, ...] = ()

    def passkey(self, credential_id: str) -> Passkey | None:
        for key in self.passkeys:
            if key.credential_id == credential_id:
                return key
        return None


@attrs.frozen
class SignInWithGithub:
    github_id: int
    login: str
    name: str


@attrs.frozen
class AddPasskey:
    credential_id: str
    public_key: str
    sign_count: int


@attrs.frozen
class UsePasskey:
    credential_id: str
    sign_count: int


UserCommand = SignInWithGithub | AddPasskey | UsePasskey


def decide_user(state: UserState, command: UserCommand) -> Decision:
    match command:
        case SignInWithGithub(github_id, login, name):
            if not 0 < len(login) <= LOGIN_CHARS_MAX:
                return Refusal(RefusalCode.INVALID, "the GitHub login is empty or too long")
            if not state.exists:
                data = {"github_id": github_id, "login": login, "name": name[:NAME_CHARS_MAX]}
                return [Event("UserRegistered", data)]
            if (state.login, state.name) != (login, name[:NAME_CHARS_MAX]):
                return [Event("UserRenamed", {"login": login, "name": name[:NAME_CHARS_MAX]})]
            return []
        case AddPasskey(credential_id, public_key, sign_count):
            if not state.exists:
                return Refusal(RefusalCode.NOT_FOUND, "no such user")
            if state.passkey(credential_id) is not None:
                return Refusal(RefusalCode.CONFLICT, "this passkey is already registered")
            if len(state.passkeys) >= PASSKEYS_MAX:
                return Refusal(RefusalCode.INVALID, f"at most {PASSKEYS_MAX} passkeys per user")
            data = {
                "credential_id": credential_id,
                "public_key": public_key,
                "sign_count": sign_count,
            }
            return [Event("PasskeyAdded", data)]
        case UsePasskey(credential_id, sign_count):
            key = state.passkey(credential_id)
            if key is None:
                return Refusal(RefusalCode.NOT_FOUND, "unknown passkey")
            if sign_count != 0 and sign_count <= key.sign_count:
                # A counter that does not grow means a cloned authenticator.
                return Refusal(RefusalCode.FORBIDDEN, "the passkey's signature counter went back")
            return [
                Event("PasskeyUsed", {"credential_id": credential_id, "sign_count": sign_count})
            ]


def evolve_user(state: UserState, event: Event) -> UserState:
    data = event.data
    match event.kind:
        case "UserRegistered":
            return UserState(True, int(data["github_id"]), data["login"], data["name"], ())
        case "UserRenamed":
            return attrs.evolve(state, login=data["login"], name=data["name"])
        case "PasskeyAdded":
            key = Passkey(data["credential_id"], data["public_key"], int(data["sign_count"]))
            return attrs.evolve(state, passkeys=(*state.passkeys, key))
        case "PasskeyUsed":
            keys = tuple(
                attrs.evolve(key, sign_count=int(data["sign_count"]))
                if key.credential_id == data["credential_id"]
                else key
                for key in state.passkeys
            )
            return attrs.evolve(state, passkeys=keys)
    raise AssertionError(f"unknown user event {event.kind}")


# --- Organisation ------------------------------------------------------------------------------


@attrs.frozen
class OrgState:
    exists: bool = False
    name: str = ""
    tenant_id: int = 0
    members: tuple[tuple[str, Role], ...] = ()  # (user id, role), in joining order
    invitations: tuple[tuple[str, Role], ...] = ()  # (GitHub login, role)

    def role_of(self, user_id: str) -> Role | None:
        for member, role in self.members:
            if member == user_id:
                return role
        return None

    def invitation_for(self, login: str) -> Role | None:
        for invited, role in self.invitations:
            if invited.lower() == login.lower():
                return role
        return None

    def owners(self) -> int:
        return sum(1 for _, role in self.members if role is Role.OWNER)


@attrs.frozen
class CreateOrg:
    name: str
    tenant_id: int


@attrs.frozen
class InviteMember:
    login: str
    role: Role


@attrs.frozen
class AcceptInvitation:
    login: str


@attrs.frozen
class ChangeRole:
    user_id: str
    role: Role


@attrs.frozen
class RemoveMember:
    user_id: str


OrgCommand = CreateOrg | InviteMember | AcceptInvitation | ChangeRole | RemoveMember


def decide_org(state: OrgState, command: OrgCommand, actor: str) -> Decision:
    """What ``actor`` (a user id) asking ``command`` of this organisation produces."""
    if isinstance(command, CreateOrg):
        if state.exists:
            return Refusal(RefusalCode.CONFLICT, "the organisation already exists")
        if not 0 < len(command.name.strip()) <= NAME_CHARS_MAX:
            return Refusal(RefusalCode.INVALID, f"name must be 1..{NAME_CHARS_MAX} characters")
        data = {"name": command.name.strip(), "tenant_id": command.tenant_id, "owner": actor}
        return [Event("OrgCreated", data)]
    if not state.exists:
        return Refusal(RefusalCode.NOT_FOUND, "no such organisation")
    if isinstance(command, AcceptInvitation):
        return _accept(state, command, actor)
    role = state.role_of(actor)
    if role is None:
        return Refusal(RefusalCode.NOT_FOUND, "no such organisation")
    match command:
        case InviteMember():
            return _invite(state, command, role)
        case ChangeRole():
            return _change_role(state, command, role)
        case RemoveMember():
            return _remove(state, command, actor, role)


def _accept(state: OrgState, command: AcceptInvitation, actor: str) -> Decision:
    invited = state.invitation_for(command.login)
    if invited is None:
        return Refusal(RefusalCode.NOT_FOUND, "no invitation for you in this organisation")
    if state.role_of(actor) is not None:
        return Refusal(RefusalCode.CONFLICT, "you are already a member")
    if len(state.members) >= MEMBERS_MAX:
        return Refusal(RefusalCode.INVALID, f"an organisation has at most {MEMBERS_MAX} members")
    data = {"user_id": actor, "login": command.login, "role": invited.label}
    return [Event("InvitationAccepted", data)]


def _invite(state: OrgState, command: InviteMember, role: Role) -> Decision:
    if role < Role.ADMIN:
        return Refusal(RefusalCode.FORBIDDEN, "inviting members needs the admin role")
    if command.role > role or (command.role is Role.OWNER and role is not Role.OWNER):
        return Refusal(RefusalCode.FORBIDDEN, "you cannot grant a role above your own")
    if not 0 < len(command.login) <= LOGIN_CHARS_MAX:
        return Refusal(RefusalCode.INVALID, "login must be a GitHub login")
    if state.invitation_for(command.login) is not None:
        return Refusal(RefusalCode.CONFLICT, f"{command.login} is already invited")
    if len(state.invitations) >= INVITATIONS_MAX:
        return Refusal(RefusalCode.INVALID, f"at most {INVITATIONS_MAX} pending invitations")
    return [Event("MemberInvited", {"login": command.login, "role": command.role.label})]


def _change_role(state: OrgState, command: ChangeRole, role: Role) -> Decision:
    if role < Role.ADMIN:
        return Refusal(RefusalCode.FORBIDDEN, "changing roles needs the admin role")
    current = state.role_of(command.user_id)
    if current is None:
        return Refusal(RefusalCode.NOT_FOUND, "no such member")
    if role is not Role.OWNER and (current is Role.OWNER or command.role >= Role.OWNER):
        return Refusal(RefusalCode.FORBIDDEN, "only an owner can make or change an owner")
    if command.role > role:
        return Refusal(RefusalCode.FORBIDDEN, "you cannot grant a role above your own")
    if current is Role.OWNER and command.role is not Role.OWNER and state.owners() == 1:
        return Refusal(RefusalCode.LAST_OWNER, "the last owner cannot be demoted")
    if current is command.role:
        return []
    return [Event("RoleChanged", {"user_id": command.user_id, "role": command.role.label})]


def _remove(state: OrgState, command: RemoveMember, actor: str, role: Role) -> Decision:
    target = state.role_of(command.user_id)
    if target is None:
        return Refusal(RefusalCode.NOT_FOUND, "no such member")
    if command.user_id != actor:
        if role < Role.ADMIN:
            return Refusal(RefusalCode.FORBIDDEN, "removing members needs the admin role")
        if target is Role.OWNER and role is not Role.OWNER:
            return Refusal(RefusalCode.FORBIDDEN, "only an owner can remove an owner")
    if target is Role.OWNER and state.owners() == 1:
        return Refusal(RefusalCode.LAST_OWNER, "the last owner cannot leave the organisation")
    return [Event("MemberRemoved", {"user_id": command.user_id})]


def evolve_org(state: OrgState, event: Event) -> OrgState:
    data = event.data
    match event.kind:
        case "OrgCreated":
            return OrgState(
                True, data["name"], int(data["tenant_id"]), ((data["owner"], Role.OWNER),)
            )
        case "MemberInvited":
            invitation = (str(data["login"]), _role(data["role"]))
            return attrs.evolve(state, invitations=(*state.invitations, invitation))
        case "InvitationAccepted":
            login = str(data["login"]).lower()
            rest = tuple(i for i in state.invitations if i[0].lower() != login)
            member = (str(data["user_id"]), _role(data["role"]))
            return attrs.evolve(state, members=(*state.members, member), invitations=rest)
        case "RoleChanged":
            members = tuple(
                (user, _role(data["role"]) if user == data["user_id"] else role)
                for user, role in state.members
            )
            return attrs.evolve(state, members=members)
        case "MemberRemoved":
            members = tuple(m for m in state.members if m[0] != data["user_id"])
            return attrs.evolve(state, members=members)
    raise AssertionError(f"unknown organisation event {event.kind}")


def _role(text: object) -> Role:
    role = Role.parse(text)
    assert role is not None, f"a stored event names an unknown role {text!r}"
    return role


# --- Cluster -----------------------------------------------------------------------------------


@attrs.frozen
class ClusterState:
    exists: bool = False
    removed: bool = False
    org_id: str = ""
    name: str = ""
    nodes: tuple[str, ...] = ()
    issuer: str = "craton"
    audience: str = "craton"
    secret_sealed: str = ""  # the cluster's JWT secret, encrypted (urlsafe base64)


@attrs.frozen
class RegisterCluster:
    org_id: str
    name: str
    nodes: tuple[str, ...]
    issuer: str
    audience: str
    secret_sealed: str


@attrs.frozen
class RemoveCluster:
    pass


ClusterCommand = RegisterCluster | RemoveCluster


def decide_cluster(state: ClusterState, command: ClusterCommand, role: Role | None) -> Decision:
    """``role`` is the actor's role in the organisation that owns (or would own) it."""
    if role is None:
        return Refusal(RefusalCode.NOT_FOUND, "no such organisation")
    if role < Role.ADMIN:
        return Refusal(RefusalCode.FORBIDDEN, "managing clusters needs the admin role")
    match command:
        case RegisterCluster():
            if state.exists:
                return Refusal(RefusalCode.CONFLICT, "the cluster already exists")
            if not 0 < len(command.name.strip()) <= NAME_CHARS_MAX:
                return Refusal(RefusalCode.INVALID, f"name must be 1..{NAME_CHARS_MAX} characters")
            if not 0 < len(command.nodes) <= NODES_MAX or len(set(command.nodes)) != len(
                command.nodes
            ):
                return Refusal(RefusalCode.INVALID, f"give 1..{NODES_MAX} distinct node addresses")
            data = {
                "org_id": command.org_id,
                "name": command.name.strip(),
                "nodes": list(command.nodes),
                "issuer": command.issuer,
                "audience": command.audience,
                "secret_sealed": command.secret_sealed,
            }
            return [Event("ClusterRegistered", data)]
        case RemoveCluster():
            if not state.exists or state.removed:
                return Refusal(RefusalCode.NOT_FOUND, "no such cluster")
            return [Event("ClusterRemoved", {"org_id": state.org_id})]


def evolve_cluster(state: ClusterState, event: Event) -> ClusterState:
    data = event.data
    match event.kind:
        case "ClusterRegistered":
            return ClusterState(
                True,
                False,
                data["org_id"],
                data["name"],
                tuple(data["nodes"]),
                data["issuer"],
                data["audience"],
                data["secret_sealed"],
            )
        case "ClusterRemoved":
            return attrs.evolve(state, removed=True)
    raise AssertionError(f"unknown cluster event {event.kind}")
