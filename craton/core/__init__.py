"""Craton's pure core: storage log, replica, auth and state machines, free of I/O.

The core keeps its assertions on in production: its invariants are checked with ``assert``,
so running it under ``python -O`` (which strips them) is refused.
"""

if not __debug__:  # pragma: no cover - only reachable under python -O
    raise ImportError("craton refuses to run under python -O: its invariant checks are asserts")
