# -*- test-case-name: tests.test_sip_nexthop -*-
"""
The operator's proxies as the contact point's next hop: C{--sip-proxy}
given more than once is a list in order of preference, and every request
from the tunnels goes to the first proxy that answers.

Whether a proxy answers is what a SIP proxy pool's front (Kamailio's
C{dispatcher} with its probing, an SBC's next-hop monitoring) asks too: an
C{OPTIONS} to each proxy every C{interval} seconds.  Any response but a
5xx shows that the proxy is there and takes requests (a C{404} or C{405}
to an C{OPTIONS} for itself is fine); a 5xx (C{503}: overloaded, shutting
down) or no response within the interval is a miss, and C{misses} misses
in a row take the proxy out until it answers again.  With every proxy
out, new requests from the tunnels are answered C{503} at once (see
L{ProxyPool.none_answers}): a phone that waited for Timer B (32 s) on a
proxy known to be gone would fail the call all the same, and one with
another server to try (RFC 3263) tries it now; requests inside a dialog,
C{ACK} and C{CANCEL} go to the first proxy all the same.  A single
C{--sip-proxy} is never probed: there is nothing to choose.

Pure: L{ProxyPool} takes the time and the responses and gives the
C{OPTIONS} to send and the changes to log; the contact point's SIP core
(L{spwm.sip.contact_proxy.ContactSipProxy}) drives it.
"""

from __future__ import annotations

import secrets
from typing import Any, Sequence

from spwm.sip.actions import OperatorProxy, ProxyChanged, ToNetwork
from spwm.sip.message import SipMessage
from spwm.sip.rewrite import MAGIC, hostport

__all__ = ["PING_MARK", "DEFAULT_PING_INTERVAL", "DEFAULT_PING_MISSES", "ProxyPool", "proxy_text"]

#: The branches of our C{OPTIONS} pings start with this (after the magic
#: cookie): their responses are ours, not a tunnel's.
PING_MARK = "spwp"

#: Seconds between two pings of each proxy (C{--sip-proxy-ping}).
DEFAULT_PING_INTERVAL = 5.0

#: Misses in a row that take a proxy out.
DEFAULT_PING_MISSES = 2


def proxy_text(proxy: OperatorProxy) -> str:
    """
    C{HOST:PORT;transport=T} of a proxy, for the log and the status.
    """
    return f"{hostport(proxy.host, proxy.port)};transport={proxy.transport}"


class _Probe:
    """
    One proxy's probing state.
    """

    __slots__ = ("proxy", "up", "misses", "branch", "cseq")

    def __init__(self, proxy: OperatorProxy) -> None:
        self.proxy = proxy
        # unknown counts as up: a pool starts as a single proxy would
        self.up = True
        self.misses = 0
        # the branch of the ping that waits for its response, if any
        self.branch: str | None = None
        self.cseq = 0


class ProxyPool:
    """
    The operator's proxies in order of preference, probed with C{OPTIONS}
    when there are two or more (L{current} is where requests go).

    @ivar proxies: the proxies, in order of preference.
    @ivar interval: seconds between two pings of each proxy (0: never
        probe; then L{current} is always the first).
    @ivar misses: misses in a row that take a proxy out.
    @ivar changes: how many times a proxy went out of use or came back.
    """

    def __init__(
        self,
        proxies: Sequence[OperatorProxy],
        address: tuple[str, int],
        interval: float = DEFAULT_PING_INTERVAL,
        misses: int = DEFAULT_PING_MISSES,
    ) -> None:
        """
        @param address: our own SIP address, for the pings' C{Via} and
            C{From}.
        @raise ValueError: no proxy, or C{misses} below 1.
        """
        if not proxies:
            raise ValueError("no proxy")
        if misses < 1:
            raise ValueError(f"misses {misses} < 1")
        self.proxies = tuple(proxies)
        self._asked = interval
        self.interval = interval if len(self.proxies) > 1 else 0.0
        self.misses = misses
        self.changes = 0
        self._hp = hostport(*address)
        self._probes = [_Probe(p) for p in self.proxies]
        self._current = self.proxies[0]
        # the first pings go at the first timer (at once)
        self._next = 0.0
        self._call_id = f"{secrets.token_hex(8)}@{self._hp}"
        self._tag = secrets.token_hex(4)

    @property
    def probing(self) -> bool:
        """
        Whether the proxies are probed (two or more, a ping interval).
        """
        return self.interval > 0

    @property
    def none_answers(self) -> bool:
        """
        Whether the proxies are probed and every one of them is out.
        """
        return self.probing and not any(p.up for p in self._probes)

    @property
    def current(self) -> OperatorProxy:
        """
        Where requests go now: the first proxy that answers, else the
        first.
        """
        return self._current

    def next_deadline(self) -> float | None:
        """
        @return: when L{due} should next run, or C{None} (not probing).
        """
        return self._next if self.probing else None

    def due(self, now: float) -> list[ToNetwork | ProxyChanged]:
        """
        At a deadline: count the pings still unanswered as misses and, when
        their time has come, ping every proxy.

        @return: the pings to send and the changes to log.
        """
        out: list[ToNetwork | ProxyChanged] = []
        if not self.probing or now < self._next:
            return out
        changed: list[tuple[_Probe, str]] = []
        for probe in self._probes:
            if probe.branch is not None:
                probe.branch = None
                if self._missed(probe):
                    changed.append((probe, f"no response to OPTIONS, {probe.misses} times in a row"))
            out.append(self._ping(probe))
        self._next = now + self.interval
        out.extend(self._changed(changed))
        return out

    def answered(self, msg: SipMessage, branch: str) -> list[ProxyChanged]:
        """
        A response whose top C{Via} branch is C{branch} (one of our pings'
        if it starts with L{PING_MARK} after the magic cookie).

        @return: the changes to log (none for a response that is not to a
            ping of ours, or late).
        """
        probe = next((p for p in self._probes if p.branch == branch), None)
        status = msg.status or 0
        if probe is None or status < 200:
            # not the ping waiting now (or late); or provisional: the
            # final response is still to come
            return []
        probe.branch = None
        if status >= 500:
            if not self._missed(probe):
                return []
            why = f"{status} {msg.reason or ''}".strip() + f" to OPTIONS, {probe.misses} times in a row"
            return self._changed([(probe, why)])
        probe.misses = 0
        if probe.up:
            return []
        probe.up = True
        return self._changed([(probe, f"answered OPTIONS with {status}")])

    def replace(self, proxies: Sequence[OperatorProxy], now: float) -> bool:
        """
        The proxies are now C{proxies} (their names resolve to other
        addresses): a proxy that stays keeps its state (up, misses, the
        ping it waits for); a new one counts as up until it misses; a
        pool of two or more is probed (the first pings at C{now}).

        @return: whether L{current} changed.
        @raise ValueError: no proxy.
        """
        if not proxies:
            raise ValueError("no proxy")
        kept = {p.proxy: p for p in self._probes}
        self.proxies = tuple(proxies)
        self._probes = [kept.get(p) or _Probe(p) for p in self.proxies]
        was_probing = self.probing
        self.interval = self._asked if len(self.proxies) > 1 else 0.0
        if self.probing and not was_probing:
            self._next = now
        before = self._current
        answering = [p.proxy for p in self._probes if p.up]
        self._current = answering[0] if answering else self.proxies[0]
        return self._current != before

    @staticmethod
    def ours(branch: str | None) -> bool:
        """
        Whether C{branch} is a ping's.
        """
        return branch is not None and branch.startswith(MAGIC + PING_MARK)

    def answering(self) -> list[tuple[OperatorProxy, bool]]:
        """
        Every proxy and whether it answers (all of them before the first
        misses).
        """
        return [(p.proxy, p.up) for p in self._probes]

    # the state

    def _missed(self, probe: _Probe) -> bool:
        """
        One more miss of C{probe}.

        @return: whether that took it out.
        """
        probe.misses += 1
        if not probe.up or probe.misses < self.misses:
            return False
        probe.up = False
        return True

    def _changed(self, changed: list[tuple[_Probe, str]]) -> list[ProxyChanged]:
        """
        The proxies of C{changed} (with why) went out or came back: where
        requests go from now on, and the changes to log.
        """
        if not changed:
            return []
        self.changes += len(changed)
        answering = [p.proxy for p in self._probes if p.up]
        self._current = answering[0] if answering else self.proxies[0]
        return [ProxyChanged(p.proxy, p.up, why, self._current, bool(answering)) for p, why in changed]

    def _ping(self, probe: _Probe) -> ToNetwork:
        proxy = probe.proxy
        transport = proxy.transport.lower()
        branch = f"{MAGIC}{PING_MARK}{secrets.token_hex(8)}"
        probe.branch = branch
        probe.cseq += 1
        target = hostport(proxy.host, proxy.port)
        lines = [
            f"OPTIONS sip:{target} SIP/2.0",
            f"Via: SIP/2.0/{transport.upper()} {self._hp};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:spwm@{self._hp}>;tag={self._tag}",
            f"To: <sip:{target}>",
            f"Call-ID: {self._call_id}",
            f"CSeq: {probe.cseq} OPTIONS",
            "Accept: application/sdp",
            "Content-Length: 0",
        ]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        return ToNetwork(transport, (proxy.host, proxy.port), data)
