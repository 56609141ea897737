"""The ``craton`` subcommands that talk to a running node through the client.

    craton stream create NAME [--data-class CLASS] [--region REGION]
    craton append STREAM [EVENT ...] [--expected-offset N]   (no EVENT: one per stdin line)
    craton read STREAM [--from N] [--max-events N] [--as-of POSITION] [--json]
    craton status [--json]
    craton apikey create --role ROLE [--expires-in SECONDS] [--label TEXT]
    craton apikey list [--json]
    craton apikey revoke KEY_ID
    craton token issue --tenant ID --role ROLE [--subject NAME] [--ttl SECONDS]

Each client command takes ``--address HOST:PORT`` (default: ``$CRATON_ADDRESS``, else
127.0.0.1:5432), ``--timeout SECONDS`` (how long to keep retrying; default
``TIMEOUT_S_DEFAULT``), ``--connect-timeout SECONDS`` (how long to keep trying to reach the
node at all; default ``CONNECT_TIMEOUT_S_DEFAULT``, so a wrong address or a node that is not
running fails within about 2 s, where a node that was reached and then lost is retried until
``--timeout``), ``--token CREDENTIAL`` (a JWT or an API key; default
``$CRATON_TOKEN``) and, for a node with TLS, ``--ca-file PEM`` (default ``$CRATON_CA_FILE``:
trust these CAs and check the node's host name) or ``--tls`` (trust the system's CAs).

``apikey create`` prints the key id, then the key on a line of its own: it is shown this
once. ``token issue`` talks to no node: it signs a token with ``$VDB_JWT_SECRET`` (and
``$VDB_JWT_ISSUER``, ``$VDB_JWT_AUDIENCE``, ``$VDB_JWT_EXPIRATION_SECS`` as the node reads
them), for operators.

Output: what was asked for on stdout (``read`` prints one event per line, ``offset<TAB>``
then the event as UTF-8 text, or ``hex:`` and its bytes when it is not printable text);
every failure is one line on stderr. Exit codes: 0 done; 1 the node refused the request
(the line names the error code); 2 bad usage; 3 the node could not be reached or did not
answer in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt

from craton.client.aio import DEFAULT_ADDRESS, ReadResult
from craton.client.blocking import Client
from craton.client.errors import ConnectionFailed, CratonError, InvalidArgument, ServerError
from craton.core.auth import (
    JWT_ALGORITHM,
    JWT_SECRET_SIZE_MIN,
    SUBJECT_SIZE_MAX,
    TENANT_ID_MAX,
    Role,
)
from craton.core.wire.messages import API_KEY_LABEL_SIZE_MAX, READ_EVENTS_MAX, DataClass
from craton.io.clock import NS_PER_S, SYSTEM_CLOCK, Clock, realtime_ms

ADDRESS_ENV = "CRATON_ADDRESS"
TOKEN_ENV = "CRATON_TOKEN"
CA_FILE_ENV = "CRATON_CA_FILE"
TIMEOUT_S_DEFAULT = 10.0
CONNECT_TIMEOUT_S_DEFAULT = 2.0
READ_EVENTS_DEFAULT = 100
HEALTH_TIMEOUT_S = 2.0
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

_JSON_HELP = "print one JSON object (default: text)"
_ROLE_HELP = "the role it grants (required)"
_OPTIONS = {"address": "--address", "auth_token": "--token"}  # Client argument -> option
_DATA_CLASSES = {member.name.lower(): member for member in DataClass}
_ROLES = {member.name.lower(): member for member in Role}


def add_client_commands(commands: Any) -> None:
    """Add the client subcommands to ``craton``'s subparsers."""
    stream = commands.add_parser("stream", help="manage the streams of a running node")
    stream_commands = stream.add_subparsers(
        dest="stream_command", metavar="STREAM_COMMAND", required=True
    )
    create = stream_commands.add_parser("create", help="create a stream")
    create.add_argument("name", help="the stream's name: letters, digits and . _ : -")
    create.add_argument(
        "--data-class",
        choices=sorted(_DATA_CLASSES),
        default="internal",
        help="how sensitive its events are (default: internal)",
    )
    create.add_argument(
        "--region",
        default=None,
        help="keep the data in this region only (default: anywhere in the cluster)",
    )
    _connection_options(create)
    create.set_defaults(run=_guarded(_run_create))

    append = commands.add_parser("append", help="append events to a stream, durably")
    append.add_argument("stream", help="the stream to append to")
    append.add_argument(
        "events", nargs="*", metavar="EVENT", help="an event's text (default: one per stdin line)"
    )
    append.add_argument(
        "--expected-offset",
        type=int,
        default=None,
        metavar="N",
        help="append only if the stream holds exactly N events (default: no check)",
    )
    _connection_options(append)
    append.set_defaults(run=_guarded(_run_append))

    read = commands.add_parser("read", help="read events of a stream")
    read.add_argument("stream", help="the stream to read")
    read.add_argument(
        "--from",
        dest="from_offset",
        type=int,
        default=0,
        metavar="OFFSET",
        help="the first event's offset (default: 0)",
    )
    read.add_argument(
        "--max-events",
        type=int,
        default=READ_EVENTS_DEFAULT,
        metavar="N",
        help=f"at most this many events, 1..{READ_EVENTS_MAX} (default: {READ_EVENTS_DEFAULT})",
    )
    read.add_argument(
        "--as-of",
        type=int,
        default=None,
        metavar="POSITION",
        help="the stream as it was at this log position (default: as it is now)",
    )
    read.add_argument("--json", action="store_true", help=_JSON_HELP)
    _connection_options(read)
    read.set_defaults(run=_guarded(_run_read))

    status = commands.add_parser("status", help="show a running node's state")
    status.add_argument("--json", action="store_true", help=_JSON_HELP)
    _connection_options(status)
    status.set_defaults(run=_guarded(_run_status))
    _add_key_commands(commands)
    _add_token_commands(commands)


def _add_key_commands(commands: Any) -> None:
    apikey = commands.add_parser("apikey", help="manage the API keys of your tenant (admin)")
    key_commands = apikey.add_subparsers(dest="apikey_command", metavar="APIKEY_COMMAND")
    key_commands.required = True
    create = key_commands.add_parser("create", help="create a key (shown once)")
    create.add_argument("--role", choices=list(_ROLES), required=True, help=_ROLE_HELP)
    create.add_argument(
        "--expires-in",
        type=int,
        default=None,
        metavar="SECONDS",
        help="the key expires this long after it is made (default: never)",
    )
    create.add_argument(
        "--label",
        default="",
        help=f"a note for people, up to {API_KEY_LABEL_SIZE_MAX} bytes (default: none)",
    )
    _connection_options(create)
    create.set_defaults(run=_guarded(_run_key_create))
    listing = key_commands.add_parser("list", help="list the tenant's keys")
    listing.add_argument("--json", action="store_true", help=_JSON_HELP)
    _connection_options(listing)
    listing.set_defaults(run=_guarded(_run_key_list))
    revoke = key_commands.add_parser("revoke", help="revoke a key on every replica")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key id, 16 hex digits")
    _connection_options(revoke)
    revoke.set_defaults(run=_guarded(_run_key_revoke))


def _add_token_commands(commands: Any) -> None:
    token = commands.add_parser("token", help="sign JWTs with $VDB_JWT_SECRET (operators)")
    token_commands = token.add_subparsers(dest="token_command", metavar="TOKEN_COMMAND")
    token_commands.required = True
    issue = token_commands.add_parser("issue", help="print a signed token")
    issue.add_argument(
        "--tenant",
        type=int,
        required=True,
        metavar="ID",
        help=f"the tenant, 0..{TENANT_ID_MAX} (required)",
    )
    issue.add_argument("--role", choices=list(_ROLES), required=True, help=_ROLE_HELP)
    issue.add_argument(
        "--subject",
        default="operator",
        metavar="NAME",
        help="who the token is for, its sub claim (default: operator)",
    )
    issue.add_argument(
        "--ttl",
        type=int,
        default=None,
        metavar="SECONDS",
        help="its lifetime (default: $VDB_JWT_EXPIRATION_SECS, else 3600, the longest allowed)",
    )
    issue.set_defaults(run=_run_token_issue)


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS,
        help=f"HOST:PORT of the node (default: ${ADDRESS_ENV} or {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT_S_DEFAULT,
        metavar="SECONDS",
        help=f"how long to keep retrying a request (default: {TIMEOUT_S_DEFAULT:g})",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT_S_DEFAULT,
        metavar="SECONDS",
        help="how long to keep trying to reach the node at all "
        f"(default: {CONNECT_TIMEOUT_S_DEFAULT:g})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"a JWT or an API key (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--ca-file",
        default=os.environ.get(CA_FILE_ENV) or None,
        help=f"TLS: trust these CAs, check the host name (default: ${CA_FILE_ENV})",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="TLS with the system's CAs (default: no TLS, unless --ca-file)",
    )


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.ca_file is None:
        return ssl.create_default_context() if args.tls else None
    try:
        return ssl.create_default_context(cafile=args.ca_file)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"--ca-file: cannot load {args.ca_file}: {error}") from None


def _guarded(run: Callable[[argparse.Namespace, Client], int]) -> Callable[..., int]:
    """Open a client for the command and turn every failure into one line and an exit code."""

    def guarded(args: argparse.Namespace) -> int:
        if args.timeout <= 0 or args.connect_timeout <= 0:
            return _fail("--timeout and --connect-timeout must be positive", EXIT_USAGE)
        try:
            tls = _tls(args)
        except ValueError as error:
            return _fail(str(error), EXIT_USAGE)
        try:
            client = Client(
                args.address,
                auth_token=args.token,
                tls=tls,
                retry_deadline_s=args.timeout,
                first_connect_deadline_s=min(args.connect_timeout, args.timeout),
            )
        except InvalidArgument as error:
            return _fail(_as_option(error), EXIT_USAGE)
        try:
            return run(args, client)
        except ServerError as error:
            return _fail(f"{args.address}: {error}", EXIT_REFUSED)
        except InvalidArgument as error:
            return _fail(str(error), EXIT_USAGE)
        except ConnectionFailed as error:
            return _fail(f"{error} (is a node running there? see --address)", EXIT_UNREACHABLE)
        except CratonError as error:
            return _fail(f"{args.address}: {error}", EXIT_UNREACHABLE)
        except (ValueError, TypeError) as error:
            return _fail(str(error), EXIT_USAGE)
        finally:
            client.close()

    return guarded


def _as_option(error: InvalidArgument) -> str:
    """The client's complaint about an argument, named as the option that gave it."""
    argument, _, problem = str(error).partition(": ")
    option = _OPTIONS.get(argument)
    return f"{option}: {problem}" if option is not None else str(error)


def _fail(message: str, code: int) -> int:
    print(f"craton: {message}", file=sys.stderr)
    return code


def _run_create(args: argparse.Namespace, client: Client) -> int:
    data_class = _DATA_CLASSES[args.data_class]
    position = client.create_stream(args.name, data_class, region=args.region)
    print(f"created stream {args.name} at log position {position}")
    return EXIT_OK


def _run_append(args: argparse.Namespace, client: Client) -> int:
    texts: list[str] = args.events or [line.rstrip("\n") for line in sys.stdin]
    if not texts:
        return _fail("no events to append (give EVENT arguments or lines on stdin)", EXIT_USAGE)
    result = client.append(
        args.stream, [text.encode("utf-8") for text in texts], expected_offset=args.expected_offset
    )
    last = result.first_offset + len(texts) - 1
    offsets = str(last) if len(texts) == 1 else f"{result.first_offset}..{last}"
    print(
        f"appended {len(texts)} event{'s' if len(texts) != 1 else ''} to {args.stream}: "
        f"offset {offsets}, log position {result.log_position}"
    )
    return EXIT_OK


def _run_read(args: argparse.Namespace, client: Client) -> int:
    if not 1 <= args.max_events <= READ_EVENTS_MAX:
        return _fail(f"--max-events must be in 1..{READ_EVENTS_MAX}", EXIT_USAGE)
    if args.from_offset < 0 or (args.as_of is not None and args.as_of < 0):
        return _fail("--from and --as-of must not be negative", EXIT_USAGE)
    if args.as_of is None:
        result = client.read(args.stream, args.from_offset, max_events=args.max_events)
    else:
        result = client.read_as_of(
            args.stream, args.as_of, args.from_offset, max_events=args.max_events
        )
    if args.json:
        print(json.dumps(_read_json(args.stream, result)))
        return EXIT_OK
    for index, event in enumerate(result.events):
        print(f"{result.from_offset + index}\t{_show(event)}")
    print(
        f"{len(result.events)} events as of log position {result.log_position}; "
        f"next offset {result.next_offset}",
        file=sys.stderr,
    )
    return EXIT_OK


def _run_status(args: argparse.Namespace, client: Client) -> int:
    info = client.connect()
    committed = client.sync()
    health = _health(args.address)
    if args.json:
        body = {
            "address": info.address,
            "server_version": info.server_version,
            "protocol_version": info.protocol_version,
            "replica_id": info.replica_id,
            "cluster_size": info.cluster_size,
            "view": info.view,
            "role": role(info.replica_id, info.cluster_size, info.view),
            "committed": committed,
            "health": health,
        }
        print(json.dumps(body))
        return EXIT_OK
    print(f"node {info.address}: craton {info.server_version}, protocol {info.protocol_version}")
    print(f"replica {info.replica_id} of {info.cluster_size}, view {info.view}")
    print(f"role: {role(info.replica_id, info.cluster_size, info.view)}")
    print(f"committed log positions: {committed}")
    if "status" in health:
        print(f"health: {health['status']} (up {health.get('uptime_seconds', '?')} s)")
    else:
        print(f"health: unknown ({health.get('error', 'no answer')})")
    return EXIT_OK


def _run_key_create(args: argparse.Namespace, client: Client, clock: Clock = SYSTEM_CLOCK) -> int:
    if args.expires_in is not None and args.expires_in <= 0:
        return _fail("--expires-in must be positive", EXIT_USAGE)
    if len(args.label.encode("utf-8")) > API_KEY_LABEL_SIZE_MAX:
        return _fail(f"--label is longer than {API_KEY_LABEL_SIZE_MAX} bytes", EXIT_USAGE)
    expires_ms = None
    if args.expires_in is not None:
        expires_ms = realtime_ms(clock) + args.expires_in * 1000
    made = client.create_api_key(_ROLES[args.role], expires_ms=expires_ms, label=args.label)
    print(f"created API key {made.key_id:016x} ({args.role}) at log position "
          f"{made.log_position}; it is shown this once:", file=sys.stderr)  # fmt: skip
    print(made.api_key)
    return EXIT_OK


def _run_key_list(args: argparse.Namespace, client: Client) -> int:
    keys = client.list_api_keys()
    rows = [
        {
            "key_id": f"{key.key_id:016x}",
            "role": key.role.name.lower(),
            "expires_ms": key.expires_ms,
            "created_op": key.created_op,
            "revoked_op": key.revoked_op,
            "label": key.label,
        }
        for key in keys
    ]
    if args.json:
        print(json.dumps({"keys": rows}))
        return EXIT_OK
    for row in rows:
        state = "active" if row["revoked_op"] is None else f"revoked at {row['revoked_op']}"
        expiry = "" if row["expires_ms"] is None else f", expires at {row['expires_ms']} ms"
        print(f"{row['key_id']}\t{row['role']}\t{state}{expiry}\t{row['label']}")
    return EXIT_OK


def _run_key_revoke(args: argparse.Namespace, client: Client) -> int:
    try:
        key_id = int(args.key_id, 16)
    except ValueError:
        return _fail("KEY_ID must be the key id in hex (as apikey list shows it)", EXIT_USAGE)
    if not 1 <= key_id < 2**64:
        return _fail("KEY_ID is out of range", EXIT_USAGE)
    position = client.revoke_api_key(key_id)
    print(f"revoked API key {key_id:016x} at log position {position}")
    return EXIT_OK


def _run_token_issue(args: argparse.Namespace, clock: Clock = SYSTEM_CLOCK) -> int:
    secret = os.environ.get("VDB_JWT_SECRET", "").strip()
    if len(secret.encode("utf-8")) < JWT_SECRET_SIZE_MIN:
        return _fail(
            f"VDB_JWT_SECRET must be set to the nodes' secret (at least {JWT_SECRET_SIZE_MIN} "
            "bytes)",
            EXIT_USAGE,
        )
    if not 0 <= args.tenant <= TENANT_ID_MAX:
        return _fail(f"--tenant must be in 0..{TENANT_ID_MAX}", EXIT_USAGE)
    if re.fullmatch(rf"[!-~]{{1,{SUBJECT_SIZE_MAX}}}", args.subject) is None:
        return _fail(f"--subject must be 1..{SUBJECT_SIZE_MAX} printable characters", EXIT_USAGE)
    try:
        lifetime_max = int(os.environ.get("VDB_JWT_EXPIRATION_SECS", "").strip() or 3600)
    except ValueError:
        return _fail("VDB_JWT_EXPIRATION_SECS must be a whole number", EXIT_USAGE)
    ttl = lifetime_max if args.ttl is None else args.ttl
    if not 1 <= ttl <= lifetime_max:
        return _fail(f"--ttl must be in 1..{lifetime_max} (VDB_JWT_EXPIRATION_SECS)", EXIT_USAGE)
    now_s = clock.realtime_ns() // NS_PER_S
    claims = {
        "sub": args.subject,
        "tenant_id": args.tenant,
        "role": args.role,
        "iss": os.environ.get("VDB_JWT_ISSUER", "").strip() or "craton",
        "aud": os.environ.get("VDB_JWT_AUDIENCE", "").strip() or "craton",
        "iat": now_s,
        "exp": now_s + ttl,
    }
    print(jwt.encode(claims, secret, algorithm=JWT_ALGORITHM))
    return EXIT_OK


def role(replica_id: int, cluster_size: int, view: int) -> str:
    """``primary`` or ``backup`` in the node's view (VSR: the primary of view v is replica
    v mod n), ``single`` for a one-replica node."""
    if cluster_size <= 1:
        return "single"
    return "primary" if view % cluster_size == replica_id else "backup"


def _health(address: str) -> dict[str, object]:
    """The node's ``/health`` answer (its main port speaks HTTP too)."""
    try:
        with urllib.request.urlopen(f"http://{address}/health", timeout=HEALTH_TIMEOUT_S) as got:
            answer = json.loads(got.read())
    except urllib.error.HTTPError as error:
        try:
            answer = json.loads(error.read())
        except ValueError:
            return {"error": f"HTTP {error.code}"}
    except (OSError, ValueError) as error:
        return {"error": str(getattr(error, "reason", error))}
    return answer if isinstance(answer, dict) else {"error": "not a JSON object"}


def _show(event: bytes) -> str:
    try:
        text = event.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + event.hex()
    if text.isprintable():
        return text
    return "hex:" + event.hex()


def _read_json(stream: str, result: ReadResult) -> dict[str, object]:
    events: list[dict[str, object]] = []
    for index, event in enumerate(result.events):
        try:
            shown: dict[str, object] = {"text": event.decode("utf-8")}
        except UnicodeDecodeError:
            shown = {"hex": event.hex()}
        events.append({"offset": result.from_offset + index, **shown})
    return {
        "stream": stream,
        "from_offset": result.from_offset,
        "log_position": result.log_position,
        "next_offset": result.next_offset,
        "events": events,
    }
