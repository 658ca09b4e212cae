"""
The twistd plugins of SPWM: C{twistd -n spwm-agent} and C{twistd -n spwm-contact}.
"""

from twisted.application.service import ServiceMaker

spwmAgent = ServiceMaker(
    "SPWM agent",
    "spwm.tap.agent",
    "The LAN half of SPWM: SIP outbound proxy and media relay for local "
    "applications, connected out to a contact point by one TLS tunnel.",
    "spwm-agent",
)

spwmContact = ServiceMaker(
    "SPWM contact point",
    "spwm.tap.contact",
    "The operator half of SPWM: accepts agents' tunnels and speaks plain SIP and "
    "RTP to the operator network.",
    "spwm-contact",
)
