"""
Tests for L{spwm.testing.required}.
"""

from __future__ import annotations

import os
from unittest import mock

from twisted.trial.unittest import FailTest, SkipTest, SynchronousTestCase

from spwm.testing.required import unavailable


class UnavailableTests(SynchronousTestCase):
    def test_skipped(self) -> None:
        """
        Without C{SPWM_REQUIRE_E2E=1} the test is skipped, saying what it
        lacks and how to fail instead.
        """
        with mock.patch.dict(os.environ, {"SPWM_REQUIRE_E2E": "0"}):
            e = self.assertRaises(SkipTest, unavailable, "promtool not found")
        self.assertEqual(str(e), "promtool not found (set SPWM_REQUIRE_E2E=1 to fail instead)")

    def test_failed_when_required(self) -> None:
        """
        With C{SPWM_REQUIRE_E2E=1} (CI) it fails, as C{TestCase.fail} does.
        """
        with mock.patch.dict(os.environ, {"SPWM_REQUIRE_E2E": "1"}):
            e = self.assertRaises(FailTest, unavailable, "promtool not found")
        self.assertIsInstance(e, self.failureException)
        self.assertEqual(str(e), "promtool not found (SPWM_REQUIRE_E2E=1 makes this a failure)")
