"""``DirectReader``: an ordinary StreamReader until a consumer is attached, then a pipe from
the transport to that consumer that loses, reorders and holds back nothing."""

from __future__ import annotations

import asyncio

from craton.net.connection import DirectReader


class Consumer:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ends: list[Exception | None] = []

    def sink(self, data: bytes) -> None:
        self.chunks.append(data)

    def end(self, error: Exception | None) -> None:
        self.ends.append(error)


def test_attach_returns_the_unread_bytes_then_hands_over_each_chunk() -> None:
    async def scenario() -> None:
        reader = DirectReader()
        reader.feed_data(b"hello, ")
        reader.feed_data(b"world")
        assert await reader.read(3) == b"hel", "before attach it is a StreamReader"
        consumer = Consumer()
        held = await reader.attach(consumer.sink, consumer.end)
        assert held == b"lo, world", "every byte received and not read comes back once"
        reader.feed_data(b"more")
        reader.feed_data(b"")
        assert consumer.chunks == [b"more"], "chunks go straight to the consumer"
        assert consumer.ends == []
        reader.feed_eof()
        assert consumer.ends == [None], "the end of the stream is told once, as None"

    asyncio.run(scenario())


def test_an_end_that_came_before_attach_is_told_at_attach() -> None:
    async def scenario() -> None:
        reader = DirectReader()
        reader.feed_data(b"last words")
        reader.feed_eof()
        consumer = Consumer()
        assert await reader.attach(consumer.sink, consumer.end) == b"last words"
        assert consumer.ends == [None]

        broken = DirectReader()
        broken.feed_data(b"lost")
        error = ConnectionResetError("reset")
        broken.set_exception(error)
        consumer = Consumer()
        assert await broken.attach(consumer.sink, consumer.end) == b"", (
            "a broken connection's bytes cannot be answered: none are handed over"
        )
        assert consumer.ends == [error]

    asyncio.run(scenario())


def test_an_error_after_attach_is_told_to_the_consumer() -> None:
    async def scenario() -> None:
        reader = DirectReader()
        consumer = Consumer()
        assert await reader.attach(consumer.sink, consumer.end) == b""
        error = ConnectionResetError("reset")
        reader.set_exception(error)
        assert consumer.ends == [error]

    asyncio.run(scenario())
