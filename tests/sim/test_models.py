"""The independent models (``craton.sim.models``) and the checker that runs them.

- ``KvModel`` predicts every reply of the key-value machine from plain dicts;
- the checker replays the committed log through the machine and the model side by side and
  fails, naming the op and both answers, where they differ (fed a machine that disagrees).
"""

from __future__ import annotations

from craton.core import kv_machine
from craton.core.kv_machine import KvMachine
from craton.core.wire.errors import ErrorCode
from craton.sim.checkers import Checker
from craton.sim.linearizability import Committed
from craton.sim.models import KvModel

OPERATIONS = [
    kv_machine.encode_put(b"a", b"1"),
    kv_machine.encode_get(b"a"),
    kv_machine.encode_get(b"b"),
    kv_machine.encode_put(b"a", b""),
    kv_machine.encode_get(b"a"),
    b"\x09garbage",
]


def test_the_kv_model_predicts_what_the_machine_answers() -> None:
    model, machine = KvModel(), KvMachine()
    for op, body in enumerate(OPERATIONS):
        assert model.check(op, body, machine.apply(op, body)) is None, op
    assert model.judged == len(OPERATIONS)
    wrong = kv_machine.encode_reply(kv_machine.KvReply(b"2", None, ""))
    assert model.check(9, kv_machine.encode_get(b"a"), wrong) == (
        "answered ('value', b'2'), its model predicts ('value', b'')"
    )
    refused = kv_machine.encode_reply(kv_machine.error_reply(ErrorCode.TOO_LARGE, "full"))
    assert "predicts ('value', None)" in str(model.check(10, OPERATIONS[0], refused))


class ForgetfulKv(KvMachine):
    """Answers every get as if the register had never been set."""

    def apply(self, op: int, body: bytes) -> bytes:
        reply = super().apply(op, body)
        if body[:1] == bytes([kv_machine.KvRequestKind.GET]):
            return kv_machine.encode_reply(kv_machine.KvReply(None, None, ""))
        return reply


def test_the_checker_fails_where_machine_and_model_disagree() -> None:
    committed = [Committed(op, 1, op + 1, body) for op, body in enumerate(OPERATIONS)]
    faithful = Checker(1, KvMachine, 3, make_model=KvModel)
    faithful._check_model(committed, KvModel())
    assert faithful.violations == [] and faithful.model_replies_checked == len(OPERATIONS)
    forgetful = Checker(1, ForgetfulKv, 3, make_model=KvModel)
    forgetful._check_model(committed, KvModel())
    assert forgetful.violations == [
        "op 1: the craton.kv machine answered ('value', None), its model predicts ('value', b'1')"
    ]
