"""
Tests for C{tests/__main__.py}, the README's test command.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.__main__ import suites


class SuitesTests(SynchronousTestCase):
    """
    L{suites} splits the suite into what runs in parallel and what alone.
    """

    def test_every_test_module_once(self) -> None:
        """
        Every C{tests/test_*.py} module and the integration package run in
        parallel, the end-to-end package alone, and nothing twice; the
        test data directory (no package) is not a suite.
        """
        parallel, alone = suites()
        here = os.path.dirname(os.path.abspath(__file__))
        modules = {f"tests.{n[:-3]}" for n in os.listdir(here) if n.startswith("test_") and n.endswith(".py")}
        self.assertEqual(alone, ["tests.e2e"])
        self.assertIn("tests.integration", parallel)
        self.assertIn("tests.test_suite_runner", parallel)
        self.assertTrue(modules <= set(parallel), modules - set(parallel))
        self.assertEqual(len(parallel), len(set(parallel)))
        self.assertEqual(set(parallel) - modules, {"tests.integration"})
