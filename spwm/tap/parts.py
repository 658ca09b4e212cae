# -*- test-case-name: tests.test_tap -*-
"""
Assembly helpers shared by both services: SIP listeners, the agent's stable
tunnel handle, the media hook adapter.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from spwm.forward import set_receive_buffer
from spwm.sdp import SdpError
from spwm.sip.transport import SipStreamFactory, SipUdpProtocol


class Hook(Service):
    """
    Runs start and stop callables with the service.
    """

    def __init__(self, start: Any, stop: Any) -> None:
        self._start, self._stop = start, stop

    def startService(self) -> None:
        super().startService()
        self._start()

    def stopService(self) -> Any:
        super().stopService()
        return self._stop()


class SipListeners(Service):
    """
    UDP and TCP SIP sockets on concrete addresses, feeding a runner.

    @ivar ports: the listening ports (for tests and status).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        runner: Any,
        addresses: list[tuple[str, int]],
        tls: Any = None,
        receive_buffer: int = 4 * 1024 * 1024,
        max_size: int = 65535,
    ) -> None:
        self._reactor = reactor
        self._runner = runner
        self._addresses = addresses
        self._tls = tls
        self._receive_buffer = receive_buffer
        self._max_size = max_size
        self.ports: list[Any] = []

    def startService(self) -> None:
        super().startService()
        for host, port in self._addresses:
            udp = self._reactor.listenUDP(port, SipUdpProtocol(self._runner, (host, port)), interface=host)
            # A burst of SIP (a registration storm) waits in the kernel
            # rather than being dropped there.
            set_receive_buffer(udp, self._receive_buffer)
            self.ports.append(udp)
            factory = SipStreamFactory(self._runner, "tcp", self._max_size)
            self.ports.append(self._reactor.listenTCP(port, factory, interface=host))
            self.log.info("SIP on udp and tcp {host}:{port}", host=host, port=port)
            if self._tls is not None:
                from twisted.protocols.tls import TLSMemoryBIOFactory

                tls_port = port + 1
                wrapped = TLSMemoryBIOFactory(self._tls, False, SipStreamFactory(self._runner, "tls", self._max_size))
                self.ports.append(self._reactor.listenTCP(tls_port, wrapped, interface=host))
                self.log.info("SIP on tls {host}:{port}", host=host, port=tls_port)

    def stopService(self) -> Any:
        super().stopService()
        from twisted.internet.defer import gatherResults, maybeDeferred

        ports, self.ports = self.ports, []
        self._runner.stop()
        return gatherResults([maybeDeferred(p.stopListening) for p in ports])


class AgentTunnelHandle:
    """
    The agent's one stable name for "the tunnel", whichever connection
    carries it now.  The SIP core sends through it; it drops (and counts)
    while no tunnel is up.

    @ivar current: the open L{TunnelProtocol}, or C{None}.
    """

    def __init__(self) -> None:
        self.current: Any = None
        self.dropped = 0

    def send_sip(self, flow_id: int, data: bytes) -> None:
        tunnel = self.current
        if tunnel is None or not tunnel.send_sip(flow_id, data):
            self.dropped += 1

    @property
    def congested(self) -> bool:
        """
        Whether the current tunnel's signalling backlog is over its
        high-water mark (new SIP requests get C{503}).
        """
        tunnel = self.current
        return tunnel is not None and tunnel.congested

    # tunnel application part: keep track of the connection
    def tunnel_established(self, tunnel: Any) -> None:
        self.current = tunnel

    def tunnel_lost(self, tunnel: Any, reason: str) -> None:
        if self.current is tunnel:
            self.current = None


class MediaHookAdapter:
    """
    Between a SIP core and a L{spwm.media.manager.MediaManager}: maps the
    core's tunnel key to the tunnel connection (the agent has a stable
    handle), and turns malformed SDP into a logged pass-through instead of
    an exception in the SIP path. On the agent it also tells the manager
    each dialog's signalling host (where the phone's SIP flow comes from),
    which may latch media (C{docs/media.md}, "Latching").

    @ivar source: C{source(dialog_key)}: the signalling host of our side's
        endpoint in that dialog, or C{None}; see L{flow_source}.
    """

    log = Logger()

    def __init__(self, manager: Any, resolve: Any = None, source: Any = None) -> None:
        self._manager = manager
        self._resolve = resolve or (lambda key: key)
        self.source = source
        self.sdp_errors = 0

    def sdp_into_tunnel(
        self, key: Any, dialog_key: str, content_type: str, body: bytes, tag: str | None = None
    ) -> None:
        tunnel = self._resolve(key)
        if tunnel is None:
            return
        source = None if self.source is None else self.source(dialog_key)
        try:
            self._manager.sdp_into_tunnel(tunnel, dialog_key, content_type, body, tag=tag, source=source)
        except SdpError as e:
            self.sdp_errors += 1
            self.log.warn("malformed SDP in dialog {dialog}: {reason}", dialog=dialog_key, reason=str(e))

    def sdp_out_of_tunnel(
        self, key: Any, dialog_key: str, content_type: str, body: bytes, tag: str | None = None
    ) -> bytes:
        tunnel = self._resolve(key)
        if tunnel is None:
            return body
        source = None if self.source is None else self.source(dialog_key)
        try:
            return self._manager.sdp_out_of_tunnel(
                tunnel, dialog_key, content_type, body, tag=tag, source=source
            )
        except SdpError as e:
            self.sdp_errors += 1
            self.log.warn("malformed SDP in dialog {dialog}: {reason}", dialog=dialog_key, reason=str(e))
            return body

    def dialog_answered(
        self, key: Any, dialog_key: str, tag: str | None, ours: bool = True
    ) -> None:
        tunnel = self._resolve(key)
        if tunnel is not None:
            self._manager.dialog_answered(tunnel, dialog_key, tag, ours=ours)

    def dialog_ended(self, key: Any, dialog_key: str) -> None:
        tunnel = self._resolve(key)
        if tunnel is not None:
            self._manager.dialog_ended(tunnel, dialog_key)


def flow_source(flows: Any, clock: Any) -> Any:
    """
    For the agent's L{MediaHookAdapter}: the signalling host of a dialog,
    read from the agent proxy's L{spwm.sip.flows.FlowTable} by the flow
    id in the dialog key (C{FLOW/CALL-ID}, L{spwm.sip.proxy.dialog_key}).

    @param flows: the agent proxy's C{flows}.
    @param clock: provides C{seconds()}.
    @return: C{source(dialog_key) -> str | None}.
    """

    def source(dialog_key: str) -> str | None:
        flow_id, _, _ = dialog_key.partition("/")
        if not flow_id.isdigit():
            return None
        flow = flows.lookup(int(flow_id), clock.seconds())
        return None if flow is None else flow.remote[0]

    return source


class SipOnly:
    """
    Hands a SIP runner only the SIP of the tunnel: its lifecycle comes
    through the resumption logic, which may suspend a session instead of
    ending it.
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def sip_received(self, tunnel: Any, flow_id: int, data: bytes) -> None:
        self.runner.sip_received(tunnel, flow_id, data)


def resolve_ip(host: str) -> str:
    """
    The first address of C{host} (an IP literal is returned as it is).
    Called once at start-up.
    """
    return socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0]
