"""Hypothesis profiles for the fuzz tests.

"ci" (the default) keeps ``pytest tests/fuzz`` within about a minute on one core; "long" is
for deliberate runs (``CRATON_FUZZ_PROFILE=long pytest tests/fuzz``; ``scripts/fuzz`` sets
its own budget). The profile applies to the wire fuzz tests only: they pass it to
``settings`` themselves, and nothing here changes Hypothesis's global defaults. Failing
inputs are kept in Hypothesis's example database (``.hypothesis/``) and replayed first;
those worth keeping for good become explicit examples in ``wire_properties``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=20_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
