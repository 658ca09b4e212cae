"""
The package as pip installs it: every Python package of the source tree is
in the distribution (a missing one installs a broken SPWM that only the
checkout's own tests, run with the checkout on the path, would not notice).
"""

from __future__ import annotations

import configparser
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


class PackagesTests(SynchronousTestCase):
    """
    C{setup.cfg} lists every package under C{spwm/}.
    """

    def test_every_package_is_listed(self) -> None:
        """
        Each directory of C{spwm/} with an C{__init__.py} is in
        C{[options] packages}, and each listed C{spwm} package exists.
        """
        config = configparser.ConfigParser()
        config.read(ROOT / "setup.cfg")
        listed = {p.strip() for p in config["options"]["packages"].split() if p.strip()}
        found = {
            ".".join(init.parent.relative_to(ROOT).parts)
            for init in (ROOT / "spwm").rglob("__init__.py")
        }
        self.assertEqual(sorted(found - listed), [], "packages missing from setup.cfg")
        self.assertEqual(
            sorted(p for p in listed if p.startswith("spwm") and p not in found),
            [],
            "listed packages that do not exist",
        )
