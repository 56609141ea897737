"""The production Entropy: the operating system's cryptographic randomness.

Keys, tokens and nonces come from here (``os.urandom``). It is never used for simulation
choices: those come from the seeded ``Prng`` so that a run is a function of its seed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from craton.io.interfaces import Entropy

# One request larger than this is a caller's mistake, not a need for more randomness.
RANDOM_BYTES_MAX = 1 << 20


class OsEntropy:
    """``Entropy`` over ``os.urandom``."""

    def random_bytes(self, count: int) -> bytes:
        if not 0 <= count <= RANDOM_BYTES_MAX:
            raise ValueError(f"random byte count must be 0..{RANDOM_BYTES_MAX}: {count}")
        return os.urandom(count)


if TYPE_CHECKING:

    def _conforms(entropy: OsEntropy) -> Entropy:
        return entropy
