"""
End-to-end: an agent stops at once while the LAN's DNS does not answer.

The agent's C{--contact} is a name; the LAN namespace's resolver asks a
name server behind the C{strict} router, which drops every UDP packet
out (C{ip netns exec} mounts the namespace's own C{resolv.conf}): each
lookup blocks in C{getaddrinfo} for the resolver's whole timeout (5 s
times 2 tries here).  SIGTERM in the middle of such a lookup must end the
process within a second or two, not after the lookup gives up (which is
what happened while lookups ran in the reactor's thread pool: the reactor
joins it when it stops).

The verdict is the process's own exit, timed from outside, and its log.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from .netbed import AGENT, E2ETestCase

#: Where C{ip netns exec NAME} finds the namespace's own files.
NETNS_ETC = Path("/etc/netns")

#: A name server on the operator's side that the router never reaches.
SILENT_NAME_SERVER = "203.0.113.53"


class StopDuringLookupTests(E2ETestCase):
    def setUp(self) -> None:
        super().setUp()
        self.make_topology("strict")
        etc = NETNS_ETC / self.topology.namespaces["lan"]
        etc.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, etc, True)
        (etc / "resolv.conf").write_text(
            f"nameserver {SILENT_NAME_SERVER}\noptions timeout:5 attempts:2\n", "ascii"
        )

    def test_sigterm_during_a_blocked_lookup(self) -> None:
        """
        The agent has logged that it listens and is inside a lookup of
        its contact point's name that will take 10 s: SIGTERM ends it in
        under 3 s, with twistd's shutdown line.
        """
        agent = self.start_agent(
            [
                "--contact", "contact.spwm.test:443", "--plaintext",
                "--sip-listen", f"{AGENT}:5060", "--media-address", AGENT,
            ]
        )  # fmt: skip
        self.wait_for_log(agent, r"SIP on udp and tcp")
        # well inside the first lookup (it gives up after 10 s)
        time.sleep(2.0)
        self.assertIsNone(agent.returncode)
        asked = time.monotonic()
        os.kill(agent.pid, signal.SIGTERM)
        status = agent.wait(15.0)
        took = time.monotonic() - asked
        self.assertLess(took, 3.0, f"the agent took {took:.1f} s to stop")
        # twistd ends with the signal that stopped it
        self.assertEqual(status, -signal.SIGTERM)
        self.assertIn("Server Shut Down.", agent.stdout() + agent.stderr())
        self.assertNotIn("DNS lookup failed", agent.stdout() + agent.stderr())
