"""``Client``: the blocking face of ``AsyncClient``, for scripts, tools and threads.

Each ``Client`` runs its own asyncio loop on a private daemon thread and hands every call to
it, so it has exactly the behaviour of ``AsyncClient`` (handshake, retries with the same
request id, redirects, timeouts, typed errors) and may be shared by threads: their reads
are pipelined on one connection and their writes go one at a time. A call waits at most
the client's retry deadline plus ``CALL_GRACE_S``, so a call never hangs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
import threading
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from craton.client.aio import (
    CONNECT_TIMEOUT_S,
    DEFAULT_ADDRESS,
    READ_MAX_BYTES_DEFAULT,
    REQUEST_TIMEOUT_S,
    RETRY_DEADLINE_S,
    AppendResult,
    AsyncClient,
    ReadResult,
    ServerInfo,
)
from craton.client.errors import ConnectionFailed, RequestTimeout
from craton.core.auth import Role
from craton.core.wire.messages import (
    READ_EVENTS_MAX,
    ApiKeyInfo,
    CreateApiKeyReply,
    DataClass,
)

CALL_GRACE_S = 5.0
_T = TypeVar("_T")


class Client:
    """A blocking Craton client: ``with Client("127.0.0.1:5432") as client: ...``."""

    def __init__(
        self,
        address: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        client_id: int | None = None,
        auth_token: str | None = None,
        tls: ssl.SSLContext | bool | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        retry_deadline_s: float = RETRY_DEADLINE_S,
        first_connect_deadline_s: float | None = None,
    ) -> None:
        self._async = AsyncClient(
            address,
            client_id=client_id,
            auth_token=auth_token,
            tls=tls,
            connect_timeout_s=connect_timeout_s,
            request_timeout_s=request_timeout_s,
            retry_deadline_s=retry_deadline_s,
            first_connect_deadline_s=first_connect_deadline_s,
        )
        self._call_timeout_s = retry_deadline_s + connect_timeout_s + CALL_GRACE_S
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="craton-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def client_id(self) -> int:
        return self._async.client_id

    @property
    def info(self) -> ServerInfo | None:
        return self._async.info

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> ServerInfo:
        """Connect and handshake now (calls do it themselves when needed)."""
        return self._run(self._async.connect())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._async.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=self._call_timeout_s)
            if not self._thread.is_alive():
                self._loop.close()

    def create_stream(
        self, name: str, data_class: DataClass = DataClass.INTERNAL, *, region: str | None = None
    ) -> int:
        """Create a stream; returns the log position of its creation."""
        return self._run(self._async.create_stream(name, data_class, region=region))

    def append(
        self, stream: str, events: Sequence[bytes], *, expected_offset: int | None = None
    ) -> AppendResult:
        """Append ``events`` durably (all or none); see ``AsyncClient.append``."""
        return self._run(self._async.append(stream, events, expected_offset=expected_offset))

    def read(
        self,
        stream: str,
        from_offset: int = 0,
        *,
        max_events: int = READ_EVENTS_MAX,
        max_bytes: int = READ_MAX_BYTES_DEFAULT,
    ) -> ReadResult:
        """Committed events from ``from_offset`` on; see ``AsyncClient.read``."""
        return self._run(
            self._async.read(stream, from_offset, max_events=max_events, max_bytes=max_bytes)
        )

    def read_as_of(
        self,
        stream: str,
        log_position: int,
        from_offset: int = 0,
        *,
        max_events: int = READ_EVENTS_MAX,
        max_bytes: int = READ_MAX_BYTES_DEFAULT,
    ) -> ReadResult:
        """The stream as it was when the log ended at ``log_position``."""
        return self._run(
            self._async.read_as_of(
                stream, log_position, from_offset, max_events=max_events, max_bytes=max_bytes
            )
        )

    def sync(self) -> int:
        """Wait until everything sent before is durable; returns the committed position."""
        return self._run(self._async.sync())

    def create_api_key(
        self, role: Role, *, expires_ms: int | None = None, label: str = ""
    ) -> CreateApiKeyReply:
        """A new API key of this client's tenant; see ``AsyncClient.create_api_key``."""
        return self._run(self._async.create_api_key(role, expires_ms=expires_ms, label=label))

    def revoke_api_key(self, key_id: int) -> int:
        """Revoke a key of this client's tenant; returns the revocation's log position."""
        return self._run(self._async.revoke_api_key(key_id))

    def list_api_keys(self) -> tuple[ApiKeyInfo, ...]:
        """The keys of this client's tenant, revoked ones included."""
        return self._run(self._async.list_api_keys())

    def _run(self, call: Coroutine[Any, Any, _T]) -> _T:
        if self._closed and not self._thread.is_alive():
            call.close()
            raise ConnectionFailed("the client is closed")
        future = asyncio.run_coroutine_threadsafe(call, self._loop)
        try:
            return future.result(timeout=self._call_timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RequestTimeout(f"no result within {self._call_timeout_s:.0f} s") from None
