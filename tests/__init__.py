"""
SPWM's tests.  Run them all with C{python -m twisted.trial tests}.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")
