# -*- test-case-name: tests.integration.test_embedding -*-
"""
The public surface for running an SPWM agent or contact point inside
another Twisted program (C{docs/embedding.md}).

Build a configuration, build the half from it, and add its C{service} to
your own service tree::

    from twisted.application.service import MultiService
    from spwm.embed import AgentConfig, build_agent

    config = AgentConfig.from_options({
        "contact": "contact.example.net:443",
        "agent-id": "pbx-1",
        "sip-listen": ["127.0.0.1:5070"],
    })
    agent = build_agent(config, reactor)
    agent.service.setServiceParent(application)  # a MultiService of yours

The configuration takes the same keys and values as the C{--config} TOML
file of C{twistd spwm-agent} / C{spwm-contact} (C{docs/configuration.md});
C{AgentConfig(...)}/C{ContactConfig(...)} by keyword take the same
defaults.  Invalid values raise L{ConfigError}; so do certificates, keys
or endpoint descriptions that do not load when the half is built.  Starting
the service binds the sockets; one that cannot be bound raises
L{ListenError} from C{startService} (your tree decides what to do), and
stopping it drains the tunnels and releases every socket.

Everything else in the package is internal and may change between
releases.
"""

from __future__ import annotations

from spwm.errors import ConfigError, ListenError
from spwm.limits import Limits, MediaLimits, SessionLimits, SipLimits, TunnelLimits
from spwm.sip.actions import OperatorProxy
from spwm.tap.assembly import Agent, ContactPoint, build_agent, build_contact
from spwm.tap.options import AgentConfig, ContactConfig, StatusConfig

__all__ = [
    "Agent",
    "AgentConfig",
    "ConfigError",
    "ContactConfig",
    "ContactPoint",
    "Limits",
    "ListenError",
    "MediaLimits",
    "OperatorProxy",
    "SessionLimits",
    "SipLimits",
    "StatusConfig",
    "TunnelLimits",
    "build_agent",
    "build_contact",
]
