"""A small deterministic pseudo-random generator (xoshiro256**), splittable into streams.

The core and the simulator draw every random choice from one of these, seeded explicitly:
the same seed gives the same sequence in any process, on any platform, under any
``PYTHONHASHSEED``. ``split(name)`` derives an independent stream from the seed and a name,
so a new draw in one subsystem does not reshuffle the draws of another.

Not for secrets: keys and tokens come from the ``Entropy`` interface (the OS in production).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

MASK_64 = (1 << 64) - 1


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (64 - shift))) & MASK_64


class Prng:
    """xoshiro256** seeded through SHA-256 of (seed, stream name)."""

    __slots__ = ("_s", "seed", "stream")

    def __init__(self, seed: int, stream: str = "") -> None:
        assert seed >= 0, "seeds are non-negative integers"
        self.seed = seed
        self.stream = stream
        material = hashlib.sha256(f"craton-prng:{seed}:{stream}".encode()).digest()
        state = [int.from_bytes(material[i : i + 8], "little") for i in range(0, 32, 8)]
        if not any(state):  # xoshiro's one forbidden state; SHA-256 will not hit it
            state[0] = 1
        self._s = state

    def split(self, name: str) -> Prng:
        """An independent stream for subsystem ``name`` (a function of seed and path)."""
        return Prng(self.seed, f"{self.stream}/{name}")

    def next_u64(self) -> int:
        s = self._s
        result = (_rotl((s[1] * 5) & MASK_64, 7) * 9) & MASK_64
        t = (s[1] << 17) & MASK_64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
        return result

    def below(self, bound: int) -> int:
        """Uniform integer in [0, bound), without modulo bias."""
        assert bound > 0
        limit = (1 << 64) - ((1 << 64) % bound)
        while True:
            value = self.next_u64()
            if value < limit:
                return value % bound

    def between(self, low: int, high: int) -> int:
        """Uniform integer in [low, high] (both inclusive)."""
        assert low <= high
        return low + self.below(high - low + 1)

    def chance(self, probability: float) -> bool:
        """True with the given probability (0 never, 1 always)."""
        assert 0.0 <= probability <= 1.0
        if probability <= 0.0:
            return False
        return self.next_u64() < int(probability * (1 << 64))

    def fraction(self) -> float:
        """Uniform float in [0, 1) with 53 bits of precision."""
        return (self.next_u64() >> 11) / float(1 << 53)

    def choice(self, items: Sequence[T]) -> T:
        assert items, "choice from an empty sequence"
        return items[self.below(len(items))]

    def shuffle(self, items: list[T]) -> None:
        for index in range(len(items) - 1, 0, -1):
            other = self.below(index + 1)
            items[index], items[other] = items[other], items[index]

    def random_bytes(self, count: int) -> bytes:
        assert count >= 0
        words = [self.next_u64().to_bytes(8, "little") for _ in range((count + 7) // 8)]
        return b"".join(words)[:count]
