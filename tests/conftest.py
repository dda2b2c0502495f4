"""Shared pytest configuration.

Hypothesis profiles: the suite runs under Hypothesis's own ``default`` profile (or ``ci``,
which Hypothesis loads by itself on a CI machine), with the example counts each test sets.
``HYPOTHESIS_PROFILE=fuzz`` (what ``make fuzz`` sets) loads the long-running ``fuzz`` profile
below instead: the fuzz targets in ``test_fuzz.py`` and the query-path fuzz in
``test_dns_server.py`` read it and run tens of thousands of examples each; every other test
keeps its explicit ``@settings``.

Fixtures: ``sipp``, the sipp (Debian sip-tester) processes of one test, killed by PID when it
ends, pass or fail (``sipp_helpers.Sipp``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sipp_helpers import Sipp

FUZZ_EXAMPLES = 20_000

settings.register_profile(
    "fuzz",
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=False,  # new random inputs on every run: that is the point of a long fuzz
    print_blob=True,  # a failure prints the @reproduce_failure blob to replay it
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

_profile = os.environ.get("HYPOTHESIS_PROFILE")
if _profile:
    settings.load_profile(_profile)


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    s = Sipp(tmp_path)
    try:
        yield s
    finally:
        s.close()
