# -*- test-case-name: tests.test_testing_required -*-
"""
A test that needs something the machine may not have (a tool, a test
bed): skipped without it, or failed when C{SPWM_REQUIRE_E2E=1} is in the
environment (CI, which installs everything), so that nothing is silently
skipped there.
"""

from __future__ import annotations

import os
from typing import NoReturn

from twisted.trial.unittest import FailTest, SkipTest


def unavailable(message: str) -> NoReturn:
    """
    What a test does when C{message} names what it needs and lacks.

    @raise FailTest: with C{SPWM_REQUIRE_E2E=1} (a failure, as from
        C{TestCase.fail}).
    @raise SkipTest: otherwise.
    """
    if os.environ.get("SPWM_REQUIRE_E2E") == "1":
        raise FailTest(message + " (SPWM_REQUIRE_E2E=1 makes this a failure)")
    raise SkipTest(message + " (set SPWM_REQUIRE_E2E=1 to fail instead)")
