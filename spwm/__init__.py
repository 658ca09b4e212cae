# -*- test-case-name: tests -*-
"""
SPWM, Split Proxy With Media.

An agent on the user's LAN and a contact point at the operator's edge split one
SIP proxy in two; one outbound TCP/TLS tunnel between them carries the SIP and
every media stream of the applications behind the agent.
"""

__version__ = "0.1.0"

# A module built by "spwm compile" whose source has changed since runs as
# its source (spwm.compiled); nothing to do without a build.
from spwm import compiled as _compiled  # noqa: E402

_compiled.guard()
