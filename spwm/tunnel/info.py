# -*- test-case-name: tests.test_status_lists -*-
"""
What the status listing says about one tunnel connection: a plain dict
made from the protocol's public attributes and its socket, when asked
(a status request), never per frame.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Mapping
from typing import Any

from spwm.session.paths import PathKind
from spwm.tunnel.protocol import find_socket

__all__ = ["TUNNEL_FIELDS", "TunnelItem", "describe_tunnel", "tcp_rtt", "tls_of", "tunnel_rtt"]

#: struct tcp_info (Linux): tcpi_rtt and tcpi_rttvar, microseconds, at
#: byte 68 and 72.
_TCP_INFO_RTT = 68


def tcp_rtt(sock: Any) -> float | None:
    """
    The kernel's smoothed round-trip time of a TCP socket, in seconds
    (Linux C{TCP_INFO}); C{None} where it cannot be read.
    """
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, 104)
    except (OSError, TypeError, AttributeError):
        return None
    if len(raw) < _TCP_INFO_RTT + 4:
        return None
    (rtt,) = struct.unpack_from("I", raw, _TCP_INFO_RTT)
    return rtt / 1e6 if rtt else None


def tls_of(transport: Any) -> tuple[str | None, str | None]:
    """
    The TLS version and cipher of a transport (C{None, None} without TLS);
    for a connection another worker handed on (C{--workers}), those of its
    TLS session there.
    """
    for _ in range(4):
        if transport is None:
            break
        told = getattr(transport, "handed_on_tls", None)
        if told is not None:
            return told[0], told[1]
        handle = getattr(transport, "getHandle", None)
        if handle is not None:
            try:
                connection = handle()
            except Exception:
                connection = None
            version = getattr(connection, "get_protocol_version_name", None)
            cipher = getattr(connection, "get_cipher_name", None)
            if version is not None and cipher is not None:
                try:
                    return str(version()), cipher() and str(cipher())
                except Exception:
                    return None, None
        transport = getattr(transport, "transport", None)
    return None, None


def _quic(transport: Any) -> Any:
    """
    The QUIC transport (L{spwm.tunnel.quic.QuicTunnelTransport}) under a
    tunnel, or C{None} when it runs on TCP.
    """
    for _ in range(4):
        if transport is None:
            break
        if getattr(transport, "path_kind", None) is PathKind.QUIC:
            return transport
        transport = getattr(transport, "transport", None)
    return None


def _quic_tls(transport: Any) -> tuple[str | None, str | None]:
    """
    The TLS version and cipher of a QUIC connection: QUIC is always TLS
    1.3; the cipher suite is the one aioquic's TLS context negotiated
    (written as OpenSSL names it, C{TLS_AES_128_GCM_SHA256}), C{None}
    before the handshake chose one.
    """
    tls = getattr(getattr(transport, "quic", None), "tls", None)
    suite = getattr(getattr(tls, "key_schedule", None), "cipher_suite", None)
    name = getattr(suite, "name", None)
    return "TLSv1.3", f"TLS_{name}" if name else None


def _quic_rtt(transport: Any) -> float | None:
    """
    QUIC's smoothed round-trip time of a connection, in seconds, once
    measured.
    """
    rtt = getattr(transport, "rtt", None)
    return rtt[0] if rtt else None


def tunnel_rtt(tunnel: Any) -> float | None:
    """
    A tunnel connection's round trip in seconds: the kernel's TCP
    estimate, or QUIC's own; C{None} where it has none.
    """
    transport = getattr(tunnel, "transport", None)
    return _rtt(transport, _quic(transport))


def _rtt(transport: Any, quic: Any) -> float | None:
    """
    L{tunnel_rtt} of a connection's C{transport}, whose QUIC transport
    (L{_quic}) is C{quic}.
    """
    return _quic_rtt(quic) if quic is not None else tcp_rtt(find_socket(transport))


def describe_tunnel(tunnel: Any, now: float) -> dict[str, Any]:
    """
    One tunnel connection for the status listing.

    @param tunnel: a L{spwm.tunnel.protocol.TunnelProtocol} (or anything
        with its public attributes).
    @return: C{agent}, C{session}, C{source} (C{HOST:PORT}, IPv6 in
        brackets), C{tls} (version, or C{None} in plaintext; C{TLSv1.3}
        on QUIC), C{cipher}, C{paths} (the connections it runs on: one,
        with its C{transport}: C{tls}, C{tcp} or C{quic}), C{rtt_ms} (the
        kernel's TCP estimate, or QUIC's own), C{queue_signalling} and C{queue_stream}
        (bytes waiting), C{keepalive} (C{tcp}: the kernel's keepalive, both
        ends offered it; C{ping}: PING frames), C{uptime} (s),
        C{established}, C{congested};
        for a path of a session: C{media_on}, C{carrier_on},
        C{media_switches}, C{carrier_switches} (L{_paths}).
    """
    connection = getattr(tunnel, "connection", None)
    transport = getattr(tunnel, "transport", None)
    quic = _quic(transport)
    if quic is not None:
        version, cipher = _quic_tls(quic)
        kind = "quic"
    else:
        version, cipher = tls_of(transport)
        kind = "tls" if version else "tcp"
    rtt = _rtt(transport, quic)
    connected = getattr(tunnel, "connected_at", None)
    source = str(getattr(tunnel, "peer", "?"))
    return {
        "agent": str(getattr(tunnel, "agent_id", "") or ""),
        "session": str(getattr(tunnel, "session_id", "") or ""),
        "source": source,
        "tls": version,
        "cipher": cipher,
        "paths": [{"source": source, "transport": kind, "rtt_ms": _ms(rtt)}],
        "rtt_ms": _ms(rtt),
        "queue_signalling": getattr(connection, "priority_queue_bytes", 0) if connection is not None else 0,
        "queue_stream": getattr(connection, "stream_queue_bytes", 0) if connection is not None else 0,
        "keepalive": ("tcp" if getattr(connection, "tcp_keepalive", False) else "ping") if connection is not None else None,
        "uptime": None if connected is None else round(now - connected, 1),
        "established": bool(_call(tunnel, "is_open")),
        "congested": bool(getattr(tunnel, "congested", False)),
        **_paths(tunnel),
    }


def _paths(tunnel: Any) -> dict[str, Any]:
    """
    For a connection that is a path of a session (its C{front}, the
    connections said C{paths}): what carries the session's media and SIP
    now and how often each moved (L{spwm.session.carrier.PathFront.summary});
    C{None} and 0 for a connection without.
    """
    front = getattr(tunnel, "front", None)
    summary = getattr(front, "summary", None)
    if summary is None:
        return {"media_on": None, "carrier_on": None, "media_switches": 0, "carrier_switches": 0}
    found = summary()
    return {key: found.get(key) for key in ("media_on", "carrier_on", "media_switches", "carrier_switches")}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _call(obj: Any, name: str) -> Any:
    value = getattr(obj, name, None)
    return value() if callable(value) else value


#: The fields of L{describe_tunnel}, in its order.
TUNNEL_FIELDS: tuple[str, ...] = (
    "agent", "session", "source", "tls", "cipher", "paths", "rtt_ms", "queue_signalling", "queue_stream",
    "keepalive", "uptime", "established", "congested", "media_on", "carrier_on", "media_switches",
    "carrier_switches",
)  # fmt: skip


class TunnelItem(Mapping[str, Any]):
    """
    One tunnel of the status listing, described only when read: its
    C{agent}, C{session} and C{source} at once (what the listing sorts and
    filters by), C{rtt_ms} alone when only it is read (the metrics' sample
    at each scrape), the rest (L{describe_tunnel}: TLS, socket options,
    paths) on the first read of another field.  A listing of 10,000
    tunnels is sorted and paged, and only its page described: a status
    request runs in the event loop, and every tunnel waits for it.
    """

    __slots__ = ("_tunnel", "_now", "_cheap", "_full", "key")

    def __init__(self, tunnel: Any, now: float) -> None:
        self._tunnel = tunnel
        self._now = now
        agent = str(getattr(tunnel, "agent_id", "") or "")
        source = str(getattr(tunnel, "peer", "?"))
        self._cheap = {"agent": agent, "session": str(getattr(tunnel, "session_id", "") or ""), "source": source}
        self._full: dict[str, Any] | None = None
        #: what the listing sorts by
        self.key = (agent, source)

    def __getitem__(self, key: str) -> Any:
        cheap = self._cheap.get(key)
        if cheap is not None:
            return cheap
        full = self._full
        if full is None:
            if key == "rtt_ms":
                return _ms(tunnel_rtt(self._tunnel))
            if key not in TUNNEL_FIELDS:
                raise KeyError(key)
            full = self._full = describe_tunnel(self._tunnel, self._now)
        return full[key]

    def __contains__(self, key: object) -> bool:
        return key in TUNNEL_FIELDS

    def __iter__(self) -> Iterator[str]:
        return iter(TUNNEL_FIELDS)

    def __len__(self) -> int:
        return len(TUNNEL_FIELDS)
