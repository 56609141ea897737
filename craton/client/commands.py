"""The ``craton`` subcommands that talk to a running node through the client.

    craton stream create NAME [--data-class CLASS] [--region REGION]
    craton append STREAM [EVENT ...] [--expected-offset N]   (no EVENT: one per stdin line)
    craton read STREAM [--from N] [--max-events N] [--as-of POSITION] [--json]
    craton status [--json]

Each takes ``--address HOST:PORT`` (default: ``$CRATON_ADDRESS``, else 127.0.0.1:5432) and
``--timeout SECONDS`` (how long to keep retrying; default ``TIMEOUT_S_DEFAULT``).

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
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from craton.client.aio import DEFAULT_ADDRESS, ReadResult
from craton.client.blocking import Client
from craton.client.errors import CratonError, ServerError
from craton.core.wire.messages import READ_EVENTS_MAX, DataClass

ADDRESS_ENV = "CRATON_ADDRESS"
TIMEOUT_S_DEFAULT = 10.0
READ_EVENTS_DEFAULT = 100
HEALTH_TIMEOUT_S = 2.0
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

_DATA_CLASSES = {member.name.lower(): member for member in DataClass}


def add_client_commands(commands: Any) -> None:
    """Add the client subcommands to ``craton``'s subparsers."""
    stream = commands.add_parser("stream", help="manage the streams of a running node")
    stream_commands = stream.add_subparsers(
        dest="stream_command", metavar="STREAM_COMMAND", required=True
    )
    create = stream_commands.add_parser("create", help="create a stream")
    create.add_argument("name")
    create.add_argument("--data-class", choices=sorted(_DATA_CLASSES), default="internal")
    create.add_argument("--region", default=None, help="keep the data in this region only")
    _connection_options(create)
    create.set_defaults(run=_guarded(_run_create))

    append = commands.add_parser("append", help="append events to a stream, durably")
    append.add_argument("stream")
    append.add_argument("events", nargs="*", metavar="EVENT", help="default: stdin lines")
    append.add_argument("--expected-offset", type=int, default=None)
    _connection_options(append)
    append.set_defaults(run=_guarded(_run_append))

    read = commands.add_parser("read", help="read events of a stream")
    read.add_argument("stream")
    read.add_argument("--from", dest="from_offset", type=int, default=0, metavar="OFFSET")
    read.add_argument("--max-events", type=int, default=READ_EVENTS_DEFAULT)
    read.add_argument("--as-of", type=int, default=None, metavar="POSITION")
    read.add_argument("--json", action="store_true", help="print one JSON object")
    _connection_options(read)
    read.set_defaults(run=_guarded(_run_read))

    status = commands.add_parser("status", help="show a running node's state")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    _connection_options(status)
    status.set_defaults(run=_guarded(_run_status))


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS,
        help=f"HOST:PORT of the node (default: ${ADDRESS_ENV} or {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--timeout", type=float, default=TIMEOUT_S_DEFAULT, help="seconds to keep trying"
    )


def _guarded(run: Callable[[argparse.Namespace, Client], int]) -> Callable[..., int]:
    """Open a client for the command and turn every failure into one line and an exit code."""

    def guarded(args: argparse.Namespace) -> int:
        if args.timeout <= 0:
            return _fail("--timeout must be positive", EXIT_USAGE)
        try:
            client = Client(args.address, retry_deadline_s=args.timeout)
        except ValueError as error:
            return _fail(f"--address: {error}", EXIT_USAGE)
        try:
            return run(args, client)
        except ServerError as error:
            return _fail(f"{args.address}: {error}", EXIT_REFUSED)
        except CratonError as error:
            return _fail(f"{args.address}: {error}", EXIT_UNREACHABLE)
        except (ValueError, TypeError) as error:
            return _fail(str(error), EXIT_USAGE)
        finally:
            client.close()

    return guarded


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
