"""Hypothesis strategies for every wire message, leaning on the limits' edges.

``MESSAGE_STRATEGIES`` has one entry per ``Command``; a test fails when a command has none,
so a new message cannot be added without a way to generate it. Strategies are written from
the documented limits (the constants in ``craton.core.wire``), independently of the schema
machinery they test.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from craton.core.auth import Role
from craton.core.wire import (
    AppendEvents,
    AppendEventsReply,
    Command,
    CreateStream,
    CreateStreamReply,
    DataClass,
    ErrorCode,
    ErrorReply,
    Handshake,
    HandshakeReply,
    Message,
    Placement,
    PlacementKind,
    ReadEvents,
    ReadEventsAsOf,
    ReadEventsReply,
    Sync,
    SyncReply,
)
from craton.core.wire import replica as vsr
from craton.core.wire.frame import REQUEST_ID_MAX
from craton.core.wire.messages import (
    ADDRESS_SIZE_MAX,
    API_KEY_LABEL_SIZE_MAX,
    API_KEY_SIZE_MAX,
    APPEND_EVENTS_MAX,
    AUTH_TOKEN_SIZE_MAX,
    CLUSTER_SIZE_MAX,
    ERROR_MESSAGE_SIZE_MAX,
    EVENT_SIZE_MAX,
    READ_EVENTS_MAX,
    READ_SIZE_MAX,
    REGION_NAME_SIZE_MAX,
    SERVER_VERSION_SIZE_MAX,
    STREAM_NAME_SIZE_MAX,
    ApiKeyInfo,
    CreateApiKey,
    CreateApiKeyReply,
    ListApiKeys,
    ListApiKeysReply,
    RevokeApiKey,
    RevokeApiKeyReply,
)

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
PRINTABLE_ASCII = "".join(chr(code) for code in range(0x21, 0x7F))


def edgy_ints(low: int, high: int) -> SearchStrategy[int]:
    """Integers in low..high, with the bounds and their neighbours drawn often."""
    edges = sorted({low, min(low + 1, high), max(high - 1, low), high})
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def u64s() -> SearchStrategy[int]:
    return edgy_ints(0, 2**64 - 1)


def request_ids() -> SearchStrategy[int]:
    return edgy_ints(0, REQUEST_ID_MAX)


def ascii_text(first: str, rest: str, size_min: int, size_max: int) -> SearchStrategy[str]:
    """``first`` char then ``rest`` chars, 1..size_max long, often exactly size_max."""
    assert size_min == 1
    short = st.builds(
        lambda head, tail: head + tail,
        st.sampled_from(first),
        st.text(alphabet=rest, max_size=min(size_max - 1, 40)),
    )
    longest = st.builds(
        lambda head, tail: (head + tail * size_max)[:size_max],
        st.sampled_from(first),
        st.text(alphabet=rest, min_size=1, max_size=3),
    )
    return st.one_of(short, short, longest)


def stream_names() -> SearchStrategy[str]:
    return ascii_text(ALNUM, ALNUM + "._:-", 1, STREAM_NAME_SIZE_MAX)


def printable(size_max: int) -> SearchStrategy[str]:
    return ascii_text(PRINTABLE_ASCII, PRINTABLE_ASCII, 1, size_max)


def utf8_text(size_max: int) -> SearchStrategy[str]:
    """Any text of at most size_max UTF-8 bytes, including exactly size_max of 2-byte chars."""
    short = st.text(max_size=40).filter(lambda text: len(text.encode()) <= size_max)
    return st.one_of(short, st.just("é" * (size_max // 2)), st.just("x" * size_max))


def event_tuples(count_min: int, count_max: int, heavy: bool) -> SearchStrategy[tuple[bytes, ...]]:
    """Tuples of events; ``heavy`` adds the edges: the most events, the biggest event."""
    small = st.lists(st.binary(max_size=300), min_size=count_min, max_size=12).map(tuple)
    if not heavy:
        return small

    def edge(kind: str) -> tuple[bytes, ...]:
        if kind == "most events":
            return (b"",) * count_max
        if kind == "biggest event":
            return (b"\xff" * EVENT_SIZE_MAX,)
        return (b"a" * EVENT_SIZE_MAX, b"", b"b")

    edges = st.sampled_from(["most events", "biggest event", "biggest among others"]).map(edge)
    return st.one_of(small, small, small, edges)


def placements() -> SearchStrategy[Placement]:
    lower_alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
    region = ascii_text(lower_alnum, lower_alnum + "-", 1, REGION_NAME_SIZE_MAX)
    return st.one_of(
        st.just(Placement(PlacementKind.GLOBAL, "")),
        st.builds(Placement, st.just(PlacementKind.REGION), region),
    )


def handshake_replies() -> SearchStrategy[HandshakeReply]:
    return edgy_ints(1, CLUSTER_SIZE_MAX).flatmap(
        lambda size: st.builds(
            HandshakeReply,
            protocol_version=edgy_ints(1, 2**16 - 1),
            server_version=printable(SERVER_VERSION_SIZE_MAX),
            replica_id=edgy_ints(0, size - 1),
            cluster_size=st.just(size),
            view=u64s(),
        )
    )


def error_replies() -> SearchStrategy[ErrorReply]:
    message = utf8_text(ERROR_MESSAGE_SIZE_MAX)
    not_primary = st.builds(
        ErrorReply,
        code=st.just(ErrorCode.NOT_PRIMARY),
        message=message,
        primary_address=st.one_of(st.none(), printable(ADDRESS_SIZE_MAX)),
    )
    other = st.builds(
        ErrorReply,
        code=st.sampled_from(ErrorCode),
        message=message,
        primary_address=st.none(),
    )
    return st.one_of(not_primary, other)


def message_strategies(heavy: bool) -> dict[Command, SearchStrategy[Message]]:
    """One strategy per command; without ``heavy``, every frame stays within a few KiB."""
    return {
        Command.HANDSHAKE: st.builds(
            Handshake,
            protocol_version=edgy_ints(1, 2**16 - 1),
            client_id=edgy_ints(1, 2**128 - 1),
            auth_token=st.one_of(st.none(), printable(AUTH_TOKEN_SIZE_MAX)),
        ),
        Command.HANDSHAKE_REPLY: handshake_replies(),
        Command.CREATE_STREAM: st.builds(
            CreateStream,
            name=stream_names(),
            data_class=st.sampled_from(DataClass),
            placement=placements(),
        ),
        Command.CREATE_STREAM_REPLY: st.builds(CreateStreamReply, log_position=u64s()),
        Command.APPEND_EVENTS: st.builds(
            AppendEvents,
            stream=stream_names(),
            events=event_tuples(1, APPEND_EVENTS_MAX, heavy),
            expected_offset=st.one_of(st.none(), u64s()),
        ),
        Command.APPEND_EVENTS_REPLY: st.builds(
            AppendEventsReply, first_offset=u64s(), log_position=u64s()
        ),
        Command.READ_EVENTS: st.builds(
            ReadEvents,
            stream=stream_names(),
            from_offset=u64s(),
            max_events=edgy_ints(1, READ_EVENTS_MAX),
            max_bytes=edgy_ints(1, READ_SIZE_MAX),
        ),
        Command.READ_EVENTS_REPLY: st.builds(
            ReadEventsReply,
            from_offset=u64s(),
            log_position=u64s(),
            events=event_tuples(0, READ_EVENTS_MAX, heavy),
        ),
        Command.READ_EVENTS_AS_OF: st.builds(
            ReadEventsAsOf,
            stream=stream_names(),
            log_position=u64s(),
            from_offset=u64s(),
            max_events=edgy_ints(1, READ_EVENTS_MAX),
            max_bytes=edgy_ints(1, READ_SIZE_MAX),
        ),
        Command.SYNC: st.just(Sync()),
        Command.SYNC_REPLY: st.builds(SyncReply, log_position=u64s()),
        Command.ERROR_REPLY: error_replies(),
        **api_key_message_strategies(),
        **replica_message_strategies(heavy),
    }


def labels() -> SearchStrategy[str]:
    return st.text(alphabet=" " + PRINTABLE_ASCII, max_size=API_KEY_LABEL_SIZE_MAX)


def api_key_message_strategies() -> dict[Command, SearchStrategy[Message]]:
    key_ids = edgy_ints(1, 2**64 - 1)
    expiries = st.one_of(st.none(), u64s())
    infos = st.builds(
        ApiKeyInfo,
        key_id=key_ids,
        role=st.sampled_from(Role),
        expires_ms=expiries,
        created_op=u64s(),
        revoked_op=st.one_of(st.none(), u64s()),
        label=labels(),
    )
    return {
        Command.CREATE_API_KEY: st.builds(
            CreateApiKey, role=st.sampled_from(Role), expires_ms=expiries, label=labels()
        ),
        Command.CREATE_API_KEY_REPLY: st.builds(
            CreateApiKeyReply,
            key_id=key_ids,
            api_key=printable(API_KEY_SIZE_MAX),
            log_position=u64s(),
        ),
        Command.REVOKE_API_KEY: st.builds(RevokeApiKey, key_id=key_ids),
        Command.REVOKE_API_KEY_REPLY: st.builds(RevokeApiKeyReply, log_position=u64s()),
        Command.LIST_API_KEYS: st.just(ListApiKeys()),
        Command.LIST_API_KEYS_REPLY: st.builds(
            ListApiKeysReply,
            log_position=u64s(),
            keys=st.lists(infos, max_size=5).map(tuple),
        ),
    }


def entries(heavy: bool) -> SearchStrategy[vsr.Entry]:
    size = vsr.PREPARE_BODY_SIZE_MAX if heavy else 256
    return st.builds(
        vsr.Entry,
        op=u64s(),
        hash=st.binary(min_size=vsr.HASH_SIZE, max_size=vsr.HASH_SIZE),
        body=st.binary(max_size=size),
    )


def entry_tuples(heavy: bool) -> SearchStrategy[tuple[vsr.Entry, ...]]:
    count = vsr.SUFFIX_ENTRIES_MAX if heavy else 4
    return st.lists(entries(heavy=False), max_size=count).map(tuple)


def replica_message_strategies(heavy: bool) -> dict[Command, SearchStrategy[Message]]:
    """Replica-to-replica (VSR) messages, from the limits in ``craton.core.wire.replica``."""
    views = edgy_ints(0, 2**32 - 1)
    replicas = edgy_ints(0, vsr.REPLICAS_MAX - 1)
    suffix = {"suffix_start": u64s(), "entries": entry_tuples(heavy)}
    strategies: dict[Command, SearchStrategy[object]] = {
        Command.PREPARE: st.builds(vsr.Prepare, view=views, commit=u64s(), entry=entries(heavy)),
        Command.PREPARE_OK: st.builds(vsr.PrepareOk, view=views, op=u64s(), replica=replicas),
        Command.COMMIT: st.builds(vsr.Commit, view=views, commit=u64s()),
        Command.START_VIEW_CHANGE: st.builds(vsr.StartViewChange, view=views, replica=replicas),
        Command.DO_VIEW_CHANGE: st.builds(
            vsr.DoViewChange,
            view=views,
            log_view=views,
            head=u64s(),
            commit=u64s(),
            replica=replicas,
            **suffix,
        ),
        Command.START_VIEW: st.builds(
            vsr.StartView, view=views, head=u64s(), commit=u64s(), **suffix
        ),
        Command.REQUEST_START_VIEW: st.builds(vsr.RequestStartView, view=views, replica=replicas),
        Command.GET_STATE: st.builds(vsr.GetState, view=views, op_from=u64s(), replica=replicas),
        Command.RECOVERY: st.builds(vsr.Recovery, replica=replicas, nonce=u64s()),
        Command.REQUEST_PREPARE: st.builds(vsr.RequestPrepare, replica=replicas, op=u64s()),
        Command.PREPARE_REPLY: st.builds(vsr.PrepareReply, log_view=views, entry=entries(heavy)),
        Command.RECOVERY_RESPONSE: st.builds(
            vsr.RecoveryResponse, view=views, replica=replicas, nonce=u64s()
        ),
        Command.NEW_STATE: st.builds(
            vsr.NewState,
            view=views,
            commit=u64s(),
            head=u64s(),
            op_from=u64s(),
            entries=entry_tuples(heavy),
        ),
        Command.NEW_CHECKPOINT: st.builds(
            lambda part, offset, spare, **fields: vsr.NewCheckpoint(
                **fields, state_size=offset + len(part) + spare, offset=offset, state=part
            ),
            part=st.binary(max_size=vsr.STATE_PART_SIZE_MAX if heavy else 512),
            offset=st.integers(0, 2**32),
            spare=st.integers(0, 2**32),
            view=views,
            commit=u64s(),
            head=u64s(),
            replica=replicas,
            op=u64s(),
            chain_hash=st.binary(min_size=vsr.HASH_SIZE, max_size=vsr.HASH_SIZE),
            digest=st.binary(min_size=vsr.HASH_SIZE, max_size=vsr.HASH_SIZE),
            public_key=st.binary(max_size=32),
            signature=st.binary(max_size=64),
        ),
    }
    return strategies  # type: ignore[return-value]


MESSAGE_STRATEGIES = message_strategies(heavy=True)
messages: SearchStrategy[Message] = st.one_of(
    [MESSAGE_STRATEGIES[command] for command in Command if command in MESSAGE_STRATEGIES]
)
commands: SearchStrategy[Command] = st.sampled_from(Command)
_SMALL = message_strategies(heavy=False)


def small_messages() -> SearchStrategy[Message]:
    """Messages whose frames stay small, for streams of many frames."""
    return st.one_of([_SMALL[command] for command in Command if command in _SMALL])
