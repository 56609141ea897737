"""The wire protocol's fuzzing properties (``wire_properties``) under pytest.

One test per property, plus the decoder's stateful model and the completeness checks that
keep the strategies in step with the protocol: a new ``Command`` without a strategy fails
here.
"""

from __future__ import annotations

import os
import typing

from hypothesis import given, settings
from hypothesis import strategies as st
from wire_properties import PROPERTIES, DecoderMachine, hypothesis_test
from wire_strategies import MESSAGE_STRATEGIES

from craton.core.wire import Command, Message, message_class
from craton.core.wire.replica import ReplicaMessage

FUZZ = settings.get_profile(os.environ.get("CRATON_FUZZ_PROFILE", "ci"))
_BY_NAME = {prop.name: prop for prop in PROPERTIES}

test_round_trip = hypothesis_test(_BY_NAME["round_trip"], FUZZ)
test_arbitrary_bytes = hypothesis_test(_BY_NAME["arbitrary_bytes"], FUZZ)
test_sealed_body = hypothesis_test(_BY_NAME["sealed_body"], FUZZ)
test_forged_header = hypothesis_test(_BY_NAME["forged_header"], FUZZ)
test_mutated_frames = hypothesis_test(_BY_NAME["mutated_frames"], FUZZ)
test_field_mutation = hypothesis_test(_BY_NAME["field_mutation"], FUZZ)
test_chunking = hypothesis_test(_BY_NAME["chunking"], FUZZ)
test_huge_length = hypothesis_test(_BY_NAME["huge_length"], FUZZ)

TestDecoderMachine = DecoderMachine.TestCase
TestDecoderMachine.settings = settings(FUZZ, stateful_step_count=30)


def test_every_property_runs_under_pytest() -> None:
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    missing = [prop.name for prop in PROPERTIES if prop.name not in tested]
    assert missing == [], f"properties without a pytest test: {missing}"


def test_every_command_has_a_strategy() -> None:
    missing = [command.name for command in Command if command not in MESSAGE_STRATEGIES]
    assert missing == [], f"commands without a message strategy: {missing}"


def test_every_message_class_has_a_command() -> None:
    classes = {message_class(command) for command in Command}
    union = set(typing.get_args(Message)) | set(typing.get_args(ReplicaMessage))
    assert classes == union, f"message unions and Command disagree: {classes ^ union}"


@FUZZ
@given(data=st.data())
def test_each_strategy_builds_its_commands_message(data: st.DataObject) -> None:
    command = data.draw(st.sampled_from(sorted(MESSAGE_STRATEGIES)))
    message = data.draw(MESSAGE_STRATEGIES[command])
    assert type(message) is message_class(command), f"{command.name} strategy drew {message!r}"
