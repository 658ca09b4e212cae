"""
SPWM's tests.  Run them all with C{python3 -m tests} (L{tests.__main__}:
the unit and integration tests in two trial workers, then the end-to-end
tests alone), or in one process with C{python3 -m twisted.trial tests}.
"""

import os
import types
import unittest

from hypothesis import HealthCheck, settings

# "ci" is the default.  "hunt" runs fifty times as many examples, for a
# search by hand: SPWM_HYPOTHESIS=hunt python3 -m twisted.trial tests.test_sdp
settings.register_profile(
    "ci",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("hunt", settings.get_profile("ci"), max_examples=5000)
settings.load_profile(os.environ.get("SPWM_HYPOTHESIS", "ci"))


def skip_if_compiled(module: types.ModuleType, why: str) -> None:
    """
    Skip the calling test when C{module} runs compiled (C{spwm compile}):
    the test C{why} (replaces a method of one of its objects, or a name
    its functions call), which compiled code does not see or allow. CI
    runs the suite on the source, where the test runs; the compiled run
    (C{tests.integration.test_compiled_build}) lists it as skipped.
    """
    if not (module.__file__ or "").endswith(".py"):
        raise unittest.SkipTest(f"{module.__name__} runs compiled and this test {why}")
