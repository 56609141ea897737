"""Benchmark Craton's wire codec: encode and decode throughput for typical append frames.

Prints frames per second and MB/s (frame bytes, 10^6 bytes per MB) for:
- encode: ``encode(AppendEvents(...), request_id)``;
- decode: ``decode_frame(parse_frame(data))`` on one whole frame;
- stream decode: a ``FrameDecoder`` fed 64 KiB chunks of back-to-back frames, each frame
  then decoded, as a server reading a socket would.
Each figure is the best of several timed runs of about ``--seconds`` each.

Usage: .venv/bin/python scripts/bench_codec.py [--seconds 0.5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from craton.core.wire import (
    AppendEvents,
    FrameDecoder,
    Message,
    decode_frame,
    encode,
    parse_frame,
)

CHUNK_SIZE = 64 * 1024  # bytes per socket read in the stream benchmark
STREAM_FRAMES = 256  # frames in the stream benchmark's byte stream

CASES: dict[str, Message] = {
    "append 1 x 128 B": AppendEvents("orders", (bytes(range(128)),), None),
    "append 10 x 128 B": AppendEvents("orders", (bytes(range(128)),) * 10, 1_000),
    "append 100 x 128 B": AppendEvents("orders", (bytes(range(128)),) * 100, None),
    "append 1 x 64 KiB": AppendEvents("orders", (b"\x5a" * 65536,), None),
}


def best_rate(work: Callable[[], int], seconds: float, repeat: int) -> float:
    """The best, over ``repeat`` runs, of units of work per second (``work`` returns units)."""
    best = 0.0
    for _ in range(repeat):
        units = 0
        started = time.perf_counter()
        elapsed = 0.0
        while elapsed < seconds:
            units += work()
            elapsed = time.perf_counter() - started
        best = max(best, units / elapsed)
    return best


def bench_case(message: Message, seconds: float, repeat: int) -> list[tuple[str, float]]:
    frame = encode(message, 1)
    assert decode_frame(parse_frame(frame)) == message
    stream = b"".join(encode(message, request_id) for request_id in range(STREAM_FRAMES))
    chunks = [stream[i : i + CHUNK_SIZE] for i in range(0, len(stream), CHUNK_SIZE)]

    def encode_batch() -> int:
        for request_id in range(100):
            encode(message, request_id)
        return 100

    def decode_batch() -> int:
        for _ in range(100):
            decode_frame(parse_frame(frame))
        return 100

    def decode_stream() -> int:
        decoder = FrameDecoder()
        frames = 0
        for chunk in chunks:
            decoder.feed(chunk)
            while (received := decoder.next_frame()) is not None:
                decode_frame(received)
                frames += 1
        assert frames == STREAM_FRAMES
        return frames

    return [
        ("encode", best_rate(encode_batch, seconds, repeat)),
        ("decode", best_rate(decode_batch, seconds, repeat)),
        ("stream decode", best_rate(decode_stream, seconds, repeat)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one timed run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure")
    args = parser.parse_args()
    print(f"{'frame':<20} {'bytes':>7}  {'operation':<14} {'frames/s':>12} {'MB/s':>9}")
    for name, message in CASES.items():
        size = len(encode(message, 1))
        for operation, frames_per_second in bench_case(message, args.seconds, args.repeat):
            megabytes = frames_per_second * size / 1e6
            print(
                f"{name:<20} {size:>7}  {operation:<14} {frames_per_second:>12,.0f} "
                f"{megabytes:>9.1f}"
            )


if __name__ == "__main__":
    main()
