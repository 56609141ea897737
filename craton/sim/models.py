"""Reference models: what each state machine should answer, written apart from it.

The linearizability checker replays the committed log through a fresh copy of the very
state machine the replicas run, so a mistake in the machine's own semantics agrees with
itself and passes. A model is a second, independent statement of those semantics — plain
dicts, no code of the machine's — run over the same committed log; every reply the machine
gives (in the replay, and so to every client) must be the one the model predicts.

Only the wire encodings are shared (decoding a request body, a reply): they are the
protocol, tested on their own; what an operation *does* is written here again. A model
predicts a reply in a small semantic form of its own and reads the machine's reply into
the same form, so that wording (error messages) is not judged, only outcomes.

Models: ``KvModel`` for ``craton.core.kv_machine`` (registers: a put sets, a get returns the
last value put, or none). The event store has no model yet (see docs/SIMULATION.md).
"""

from __future__ import annotations

from typing import Protocol

from craton.core import kv_machine
from craton.core.wire.errors import DecodeError

Prediction = tuple[object, ...]


class Model(Protocol):
    def predict(self, op: int, body: bytes) -> Prediction:
        """What the machine must answer to ``body`` committed at ``op``; the model applies
        the operation to its own state."""
        ...

    def read(self, reply: bytes) -> Prediction:
        """The machine's encoded ``reply`` in the model's form."""
        ...


class KvModel:
    """Registers: a dict from key to the last value put."""

    def __init__(self) -> None:
        self._registers: dict[bytes, bytes] = {}

    def predict(self, op: int, body: bytes) -> Prediction:
        del op
        try:
            request = kv_machine.decode_request(body)
        except DecodeError as error:
            return ("error", error.code)
        if isinstance(request, kv_machine.Put):
            self._registers[request.key] = request.value
            return ("value", None)  # a put answers ok, with no value
        return ("value", self._registers.get(request.key))

    def read(self, reply: bytes) -> Prediction:
        decoded = kv_machine.decode_reply(reply)
        if decoded.error is not None:
            return ("error", decoded.error)
        return ("value", decoded.value)
