# -*- test-case-name: tests.test_config -*-
"""
Options shared by both services.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString

from spwm.config import Option, non_negative_float, optional_string, positive_float, positive_int
from spwm.limits import Limits
from spwm.status import Status, StatusHTTPService, StatusLogService

_D = Limits()

TUNNEL_LIMIT_OPTIONS = (
    Option("handshake-timeout", _D.handshake_timeout, positive_float, "Seconds for the tunnel handshake to complete."),
    Option("keepalive-interval", _D.keepalive_interval, positive_float, "Seconds without a frame sent or without one received before the tunnel sends a ping."),
    Option("keepalive-timeout", _D.keepalive_timeout, positive_float, "Seconds of silence after which the peer is declared dead."),
    Option("media-deadline", _D.media_deadline, positive_float, "Seconds a media datagram may wait in the tunnel before it is dropped."),
    Option("max-channels", _D.max_channels, positive_int, "Open channels per tunnel."),
    Option("max-sip-size", 65535, positive_int, "Largest SIP message accepted (bytes); larger ones get 413 or are dropped."),
    Option("max-signalling-queue", _D.max_priority_queue, positive_int, "Bytes of SIP and control a tunnel may queue for a peer that does not read; past a quarter of it new SIP requests get 503, past it the tunnel is closed."),
    Option("max-media-queue", _D.max_media_queue, positive_int, "Bytes of media a tunnel may queue; past it datagrams are dropped and counted."),
    Option("udp-buffer", 4 * 1024 * 1024, positive_int, "Receive buffer (bytes) of SIP and forward UDP sockets."),
    Option("media-buffer", 256 * 1024, positive_int, "Receive buffer (bytes) of each media relay socket: about 300 audio packets; a backlog beyond it is too late to play and the kernel drops it."),
    Option("user-ciphering", False, bool, "Seal each registered user's SIP and media frames with that user's key (both halves must ask).", flag=True),
    Option("resume-window", 60.0, non_negative_float, "Seconds a broken tunnel's calls and media wait to be resumed (its registrations stay, dormant, until they expire); 0: never suspend."),
)


STATUS_OPTIONS = (
    Option("status-listen", None, optional_string, "Serve /status (JSON) and /metrics (Prometheus) here, a Twisted endpoint such as tcp:9090:interface=127.0.0.1 (default: not served)."),
    Option("status-interval", 300.0, non_negative_float, "Seconds between status lines in the log; 0: none."),
)


def add_status(top: MultiService, status: Status, options: dict, reactor: Any) -> StatusHTTPService | None:
    """
    Serve C{status} on C{--status-listen} and log it every
    C{--status-interval}, as children of C{top}.

    @return: the HTTP service, if one was asked for.
    """
    service = None
    if options["status-listen"]:
        try:
            endpoint = serverFromString(reactor, options["status-listen"])
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"spwm-{status.side}: invalid configuration: status-listen: {e}") from None
        service = StatusHTTPService(endpoint, status)
        service.setServiceParent(top)
    if options["status-interval"] > 0:
        logger = StatusLogService(status, options["status-interval"], reactor)
        logger.setServiceParent(top)
    return service


def limits_from(options: dict) -> Limits:
    """
    Build the tunnel L{Limits} from parsed options.
    """
    return Limits(
        handshake_timeout=options["handshake-timeout"],
        keepalive_interval=options["keepalive-interval"],
        keepalive_timeout=options["keepalive-timeout"],
        media_deadline=options["media-deadline"],
        max_channels=options["max-channels"],
        max_priority_queue=options.get("max-signalling-queue", _D.max_priority_queue),
        max_media_queue=options.get("max-media-queue", _D.max_media_queue),
        drain_time=options.get("drain-time", _D.drain_time),
    )
