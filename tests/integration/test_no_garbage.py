"""
A lost tunnel connection is freed by reference counting on both halves:
nothing of its protocol, connection state or the exception that ended it
waits in a reference cycle for a full garbage collection, which the
twistd plugins make only every few minutes (L{spwm.gcpolicy}): a contact
point that thousands of agents reconnect to would otherwise hold each
lost connection's objects until then.
"""

from __future__ import annotations

import gc
import types
from typing import Any

from twisted.internet import defer, reactor, task

from tests.integration.test_resumption import _LoopbackPair
from tests.integration.test_tunnel_loopback import wait_until

#: SPWM's per-connection classes: none may be left in a cycle
PER_CONNECTION = {"TunnelProtocol", "TunnelConnection", "TunnelStats", "FrameDecoder"}


class LostConnectionGarbageTests(_LoopbackPair):
    """
    Two agents with two connections each; connections cut from the
    agent's side and from the contact point's.
    """

    agent_extra = ["--tunnel-connections", "2"]

    @defer.inlineCallbacks
    def test_cut_connections(self) -> Any:
        """
        Cut six connections, each replaced: no SPWM per-connection object
        and no stack frame (the traceback of a TLS error kept by a
        L{Failure} in a frame of its own) is left to the collector.
        """
        yield task.deferLater(reactor, 0.5, lambda: None)
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        self.addCleanup(lambda: gc.enable() if enabled else None)
        for n in range(6):
            agent = self.agents[n % 2]
            tunnel = agent.tunnel_service.tunnel
            if n % 3 == 2:
                # the contact point's end of it
                peer = tunnel.transport.getHost()
                [theirs] = [t for t in self.contact.factory.tunnels if t.transport.getPeer().port == peer.port]
                theirs.transport.abortConnection()
            else:
                tunnel.transport.abortConnection()
            yield wait_until(lambda: agent.tunnel_service.tunnel is not tunnel and agent.tunnel_service.tunnel is not None)
            yield task.deferLater(reactor, 0.3, lambda: None)
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            left = sorted(
                type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("spwm.") and type(o).__qualname__ in PER_CONNECTION
            )
            frames = sorted(f"{o.f_code.co_name} ({o.f_code.co_filename})" for o in gc.garbage if isinstance(o, types.FrameType))
        finally:
            gc.set_debug(0)
            del gc.garbage[:]
        self.assertEqual(left, [])
        self.assertEqual(frames, [])
