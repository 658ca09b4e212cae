"""
End-to-end: a contact point with two operator proxies (C{--sip-proxy}
twice, two Kamailio in the operator network, each with its own location
table).  Both answer the contact point's OPTIONS; the phone registers
through the first; the first Kamailio is stopped: the contact point logs
it, the phone's next REGISTER goes to the second, and a call from the
operator network through the second reaches the phone with RTP both ways.

The verdicts come from the Kamailio location tables, the contact point's
log, SIPp and kernel packet counters.
"""

from __future__ import annotations

import time

from .netbed import AGENT, KAMAILIO, Kamailio, NetbedError
from .sipbed import SpwmSipTestCase

PROXY = f"{AGENT}:5060"

KAMAILIO_2 = "203.0.113.21"
"""The second Kamailio's address in the operator network."""


class ProxyPoolTests(SpwmSipTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.make_topology("strict")
        self.topology.exec("op", ["ip", "addr", "add", f"{KAMAILIO_2}/24", "dev", "eth0", "nodad"])
        self.start_kamailio()
        self.kamailio_2 = Kamailio.start(self.topology, address=KAMAILIO_2, name="kamailio-2")
        self.addCleanup(self.kamailio_2.stop)
        self.start_spwm_contact(tls=True, extra=["--sip-proxy", f"{KAMAILIO_2}:5060", "--sip-proxy-ping", "1"])
        self.start_spwm_agent()

    def contact_log(self) -> str:
        return self.contact.stdout() + self.contact.stderr()

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        """
        Wait until the contact point's log says C{text} (bounded).
        """
        deadline = time.monotonic() + timeout
        while text not in self.contact_log():
            if self.contact.returncode is not None:
                raise NetbedError(f"the contact point exited with {self.contact.returncode}")
            if time.monotonic() > deadline:
                raise NetbedError(f"the contact point did not log {text!r} within {timeout}s")
            time.sleep(0.2)

    def registered(self, kamailio: Kamailio) -> list[str]:
        return [b.aor for b in kamailio.location_table()]

    def test_second_proxy_takes_over(self) -> None:
        """
        Both Kamailio answer the pings (no warning); alice's REGISTER goes
        to the first only.  The first stops: one warning names it and the
        second; alice registers again (the phone's refresh): the second
        holds her binding, and carol's call to her through the second
        Kamailio is answered with RTP both ways.
        """
        # a few rounds of pings, all answered
        time.sleep(3.0)
        log = self.contact_log()
        self.assertIn(f"operator proxies {KAMAILIO}:5060;transport=udp, {KAMAILIO_2}:5060;transport=udp", log)
        self.assertNotIn("does not answer", log)
        result = self.sipp_uac("register.xml", PROXY, user="alice", name="register-alice")
        self.assertSippSuccess(result)
        self.assertEqual((self.registered(self.kamailio), self.registered(self.kamailio_2)), (["alice"], []))
        self.kamailio.stop()
        self.wait_for_log(f"operator proxy {KAMAILIO}:5060;transport=udp does not answer")
        self.assertIn(f"requests go to {KAMAILIO_2}:5060;transport=udp", self.contact_log())
        result = self.sipp_uac("register.xml", PROXY, user="alice", name="register-alice-again")
        self.assertSippSuccess(result)
        self.assertEqual(self.registered(self.kamailio_2), ["alice"])
        self.assertCallFromOperatorReachesPhone(proxy=KAMAILIO_2)
        self.assertEqual(self.contact_log().count("does not answer"), 1)
