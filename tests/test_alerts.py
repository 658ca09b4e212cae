"""
The alerting rules of C{examples/deploy/prometheus-alerts.yml}, checked by
Prometheus's own C{promtool}: the file loads (C{check rules}), and its unit
tests (C{prometheus-alerts.test.yml}: synthetic series, the alerts they
must raise or not, with their rendered texts) pass.  That the series they
select exist is checked against running halves in
C{tests/integration/test_status.py}.

Without C{promtool} (Debian: the C{prometheus} package) the tests are
skipped, or fail with C{SPWM_REQUIRE_E2E=1} (CI installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from spwm.testing.required import unavailable

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "deploy")


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is not None:
        return found
    unavailable("promtool not found (apt-get install prometheus)")


class PromtoolTests(SynchronousTestCase):
    def run_promtool(self, *args: str) -> str:
        done = subprocess.run(
            [_promtool(), *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60
        )
        output = done.stdout + done.stderr
        self.assertEqual(done.returncode, 0, output)
        return output

    def test_rules_load(self) -> None:
        """
        C{promtool check rules} reads every rule of the file.
        """
        output = self.run_promtool("check", "rules", "prometheus-alerts.yml")
        self.assertIn("SUCCESS: 13 rules found", output)

    def test_rules_unit_tests(self) -> None:
        """
        C{promtool test rules}: a tunnel down for 2 minutes, an overload, media
        ports at 95 %, calls ending without media, certificates (the contact
        point's, an agent's client certificate) close to their end raise their alerts (with their texts), and the healthy series
        beside them none.
        """
        output = self.run_promtool("test", "rules", "prometheus-alerts.test.yml")
        self.assertIn("SUCCESS", output)
