"""
The operator's proxies as the contact point's next hop (L{spwm.sip.nexthop}):
the pool alone with a fake clock, then through the contact point's SIP
core.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spwm.sip.actions import OperatorProxy, ProxyChanged, ToNetwork, ToTunnel
from spwm.sip.contact_proxy import ContactSipProxy
from spwm.sip.message import make_response, parse_message
from spwm.sip.nexthop import PING_MARK, ProxyPool
from spwm.testing.tunnel import FakeTunnel
from tests.test_sip_proxy import CONTACT_ADDR, SECRET, register, request

A = OperatorProxy("198.51.100.7")
B = OperatorProxy("198.51.100.8", 5070)
C = OperatorProxy("198.51.100.9", 5060, "tcp")


def pings(actions: list[Any]) -> dict[OperatorProxy, ToNetwork]:
    """
    The OPTIONS among C{actions}, by the proxy they go to.
    """
    by_addr = {(p.host, p.port): p for p in (A, B, C)}
    return {
        by_addr[a.addr]: a
        for a in actions
        if isinstance(a, ToNetwork) and a.data.startswith(b"OPTIONS ")
    }


def reply(ping: ToNetwork, status: int = 200, reason: str = "OK") -> Any:
    """
    The proxy's response to a ping, parsed (as the core sees it).
    """
    return parse_message(make_response(parse_message(ping.data), status, reason).to_bytes())


def branch_of(ping: ToNetwork) -> str:
    via = parse_message(ping.data).top_via
    assert via is not None
    return dict(via.params)["branch"] or ""


class ProxyPoolTests(SynchronousTestCase):
    def test_single_proxy_never_probed(self) -> None:
        """
        One proxy: nothing to choose, no pings, no deadline.
        """
        pool = ProxyPool([A], CONTACT_ADDR)
        self.assertFalse(pool.probing)
        self.assertIsNone(pool.next_deadline())
        self.assertEqual(pool.due(100.0), [])
        self.assertEqual(pool.current, A)

    def test_replace_keeps_the_state_of_those_that_stay(self) -> None:
        """
        A name that resolves to other addresses: a proxy that stays keeps
        its state (out stays out), a new one counts as up, and requests go
        to the first that answers of the new list.
        """
        pool = ProxyPool([A, B], CONTACT_ADDR, interval=5)
        for now in (0.0, 5.0, 10.0):
            sent = pings(pool.due(now))
            pool.answered(reply(sent[B]), branch_of(sent[B]))
        self.assertEqual(pool.answering(), [(A, False), (B, True)])
        self.assertEqual(pool.current, B)
        self.assertTrue(pool.replace([A, C], 11.0))
        # C answered nothing yet: counts as up, after A, which is out
        self.assertEqual(pool.answering(), [(A, False), (C, True)])
        self.assertEqual(pool.current, C)
        self.assertTrue(pool.replace([B], 12.0))
        self.assertEqual(pool.current, B)
        self.assertFalse(pool.probing)
        self.assertRaises(ValueError, pool.replace, [], 13.0)

    def test_replace_one_by_two_starts_probing(self) -> None:
        """
        A single proxy is not probed; once the name gives two addresses
        both are pinged from the next deadline, the time of the change.
        """
        pool = ProxyPool([A], CONTACT_ADDR, interval=5)
        self.assertIsNone(pool.next_deadline())
        self.assertFalse(pool.replace([A, B], 40.0))
        self.assertEqual(pool.next_deadline(), 40.0)
        self.assertEqual(set(pings(pool.due(40.0))), {A, B})

    def test_ping_is_an_options_request(self) -> None:
        """
        Each proxy gets an OPTIONS for itself over its transport, with our
        Via (a branch of ours) and a CSeq that counts up.
        """
        pool = ProxyPool([A, C], CONTACT_ADDR, interval=5)
        self.assertEqual(pool.next_deadline(), 0.0)
        sent = pings(pool.due(1.0))
        self.assertEqual(set(sent), {A, C})
        self.assertEqual((sent[A].transport, sent[C].transport), ("udp", "tcp"))
        msg = parse_message(sent[C].data)
        self.assertEqual((msg.method, msg.uri), ("OPTIONS", "sip:198.51.100.9:5060"))
        via = msg.top_via
        assert via is not None
        self.assertEqual((via.transport.upper(), via.host, via.port), ("TCP", CONTACT_ADDR[0], CONTACT_ADDR[1]))
        self.assertTrue(ProxyPool.ours(branch_of(sent[C])))
        self.assertIn(PING_MARK, branch_of(sent[C]))
        self.assertEqual(msg.cseq, (1, "OPTIONS"))
        self.assertEqual(pool.next_deadline(), 6.0)
        # nothing before the next deadline
        self.assertEqual(pool.due(5.9), [])
        again = pings(pool.due(6.0))
        self.assertEqual(parse_message(again[C].data).cseq, (2, "OPTIONS"))
        self.assertNotEqual(branch_of(again[C]), branch_of(sent[C]))

    def test_failover_and_back(self) -> None:
        """
        The first proxy misses two pings in a row: requests go to the
        second (one change, with why); a late answer to an old ping changes
        nothing; the first answers again: back to it.  A single miss
        changes nothing.
        """
        pool = ProxyPool([A, B], CONTACT_ADDR, interval=5)
        now = 0.0
        sent = pings(pool.due(now))
        self.assertEqual(pool.answered(reply(sent[A]), branch_of(sent[A])), [])
        self.assertEqual(pool.answered(reply(sent[B]), branch_of(sent[B])), [])
        # one miss of A: still A
        now += 5
        sent = pings(pool.due(now))
        pool.answered(reply(sent[B]), branch_of(sent[B]))
        now += 5
        out = pool.due(now)
        self.assertEqual([a for a in out if isinstance(a, ProxyChanged)], [])
        self.assertEqual(pool.current, A)
        sent = pings(out)
        first_lost = sent[A]
        pool.answered(reply(sent[B]), branch_of(sent[B]))
        now += 5
        out = pool.due(now)
        changes = [a for a in out if isinstance(a, ProxyChanged)]
        self.assertEqual(len(changes), 1)
        self.assertEqual((changes[0].proxy, changes[0].up, changes[0].using), (A, False, B))
        self.assertIn("no response to OPTIONS, 2 times in a row", changes[0].why)
        self.assertEqual((pool.current, pool.answering()), (B, [(A, False), (B, True)]))
        # an answer to a ping already counted as missed is too late
        self.assertEqual(pool.answered(reply(first_lost), branch_of(first_lost)), [])
        self.assertEqual(pool.current, B)
        sent = pings(out)
        (back,) = pool.answered(reply(sent[A], 404, "Not Found"), branch_of(sent[A]))
        self.assertEqual((back.proxy, back.up, back.using), (A, True, A))
        self.assertEqual((pool.current, pool.changes), (A, 2))

    def test_errors_and_provisional(self) -> None:
        """
        A 5xx to a ping is a miss (503: overloaded, shutting down); a 1xx
        waits for the final response; with every proxy out, requests go to
        the first.
        """
        pool = ProxyPool([A, B], CONTACT_ADDR, interval=5, misses=1)
        sent = pings(pool.due(0.0))
        self.assertEqual(pool.answered(reply(sent[A], 100, "Trying"), branch_of(sent[A])), [])
        (change,) = pool.answered(reply(sent[A], 503, "Service Unavailable"), branch_of(sent[A]))
        self.assertEqual((change.proxy, change.up, change.using), (A, False, B))
        self.assertIn("503 Service Unavailable to OPTIONS", change.why)
        out = pool.due(5.0)
        (change,) = [a for a in out if isinstance(a, ProxyChanged)]
        self.assertEqual((change.proxy, change.up, change.using, change.answering), (B, False, A, False))
        self.assertEqual(pool.current, A)
        # both out at once: both changes name where requests go in the end
        pool = ProxyPool([A, B], CONTACT_ADDR, interval=5, misses=1)
        pool.due(0.0)
        changes = [a for a in pool.due(5.0) if isinstance(a, ProxyChanged)]
        self.assertEqual([(c.proxy, c.using, c.answering) for c in changes], [(A, A, False), (B, A, False)])

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, ProxyPool, [], CONTACT_ADDR)
        self.assertRaises(ValueError, ProxyPool, [A, B], CONTACT_ADDR, misses=0)
        self.assertFalse(ProxyPool([A, B], CONTACT_ADDR, interval=0).probing)
        self.assertFalse(ProxyPool([A, B], CONTACT_ADDR, interval=0).none_answers)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), max_size=30))
    def test_current_is_the_first_that_answers(self, rounds: list[tuple[bool, bool, bool]]) -> None:
        """
        Whatever answers when (each round, each proxy's ping answered or
        not): requests go to the first proxy that has not missed two
        pings in a row since its last answer, else to the first (and the
        pool says none answers); every ping gets a branch of its own.
        """
        proxies = [A, B, C]
        pool = ProxyPool(proxies, CONTACT_ADDR, interval=1)
        misses = {p: 0 for p in proxies}
        up = {p: True for p in proxies}
        branches: set[str] = set()
        unanswered: set[OperatorProxy] = set()

        def check() -> None:
            self.assertEqual(pool.current, next((p for p in proxies if up[p]), A))
            self.assertEqual(pool.none_answers, not any(up.values()))

        for index, answers in enumerate([*rounds, (False, False, False)]):
            sent = pings(pool.due(float(index)))
            for proxy in unanswered:
                misses[proxy] += 1
                if misses[proxy] >= 2:
                    up[proxy] = False
            check()
            self.assertEqual(set(sent), set(proxies))
            for ping in sent.values():
                self.assertNotIn(branch_of(ping), branches)
                branches.add(branch_of(ping))
            unanswered = set()
            for proxy, answer in zip(proxies, answers):
                if answer:
                    pool.answered(reply(sent[proxy]), branch_of(sent[proxy]))
                    misses[proxy] = 0
                    up[proxy] = True
                else:
                    unanswered.add(proxy)
            check()


class CoreTests(SynchronousTestCase):
    """
    Through the contact point's SIP core.
    """

    def core(self) -> ContactSipProxy:
        return ContactSipProxy(CONTACT_ADDR, SECRET, proxies=ProxyPool([A, B], CONTACT_ADDR, interval=5))

    def test_requests_follow_the_pool(self) -> None:
        """
        The core's timer sends the pings; their responses are the pool's
        (not dropped as forged); once the first proxy misses two, a
        REGISTER from the tunnel goes to the second, and back when the
        first answers; the status lists both.  The CANCEL of an INVITE
        sent to the first goes there, the INVITE's proxy (RFC 3261 9.1).
        """
        core = self.core()
        tunnel = FakeTunnel("s1")
        core.tunnel_attached(tunnel, "s1")
        self.assertEqual(core.next_deadline(), 0.0)
        now = 1000.0
        sent = pings(core.handle_timer(now))
        self.assertEqual(set(sent), {A, B})
        for proxy in (A, B):
            out = core.from_network("udp", (proxy.host, proxy.port), reply(sent[proxy]).to_bytes(), now)
            self.assertEqual(out, [])
        self.assertEqual(core.counters, {})
        (invite,) = core.from_tunnel(tunnel, "s1", 1, request("INVITE", "sip:bob@example.org"), now)
        self.assertEqual(invite.addr, ("198.51.100.7", 5060))
        for _ in range(2):
            now += 5
            sent = pings(core.handle_timer(now))
            core.from_network("udp", (B.host, B.port), reply(sent[B]).to_bytes(), now)
        now += 5
        out = core.handle_timer(now)
        (change,) = [a for a in out if isinstance(a, ProxyChanged)]
        self.assertEqual((change.proxy, change.using), (A, B))
        self.assertEqual(core.operator, B)
        (to_b,) = core.from_tunnel(tunnel, "s1", 1, register(), now)
        assert isinstance(to_b, ToNetwork)
        self.assertEqual(to_b.addr, ("198.51.100.8", 5070))
        (cancel,) = core.from_tunnel(tunnel, "s1", 1, request("CANCEL", "sip:bob@example.org"), now)
        self.assertEqual((cancel.addr, parse_message(cancel.data).top_via), (invite.addr, parse_message(invite.data).top_via))
        status = core.status()
        self.assertEqual(status["proxies"], {"198.51.100.7:5060;transport=udp": False, "198.51.100.8:5070;transport=udp": True})
        self.assertEqual(status["proxy"], "198.51.100.8:5070;transport=udp")
        sent = pings(out)
        core.from_network("udp", (A.host, A.port), reply(sent[A]).to_bytes(), now)
        (to_a,) = core.from_tunnel(tunnel, "s1", 1, register(branch="z9hG4bKreg2"), now)
        assert isinstance(to_a, ToNetwork)
        self.assertEqual(to_a.addr, ("198.51.100.7", 5060))

    def test_none_answers(self) -> None:
        """
        With every proxy out, a new request from a tunnel is answered
        C{503} with C{Retry-After} at once and counted; an ACK, a CANCEL
        and a request inside a dialog go to the first proxy all the same;
        once one answers again, new requests go to it.
        """
        core = self.core()
        tunnel = FakeTunnel("s1")
        core.tunnel_attached(tunnel, "s1")
        now = 1000.0
        core.handle_timer(now)
        for _ in range(2):
            now += 5
            out = core.handle_timer(now)
        self.assertEqual(
            [(c.proxy, c.answering) for c in out if isinstance(c, ProxyChanged)], [(A, False), (B, False)]
        )
        invite = request("INVITE", "sip:bob@example.org")
        (answer, dropped) = core.from_tunnel(tunnel, "s1", 1, invite, now)
        assert isinstance(answer, ToTunnel)
        resp = parse_message(answer.data)
        self.assertEqual(
            (resp.status, resp.reason, resp.get("Retry-After"), resp.call_id, answer.flow_id),
            (503, "Service Unavailable (no operator proxy answers)", "10", "call-1@192.0.2.10", 1),
        )
        self.assertEqual(core.counters["no operator proxy answers"], 1)
        (refused, _) = core.from_tunnel(tunnel, "s1", 1, register(), now)
        assert isinstance(refused, ToTunnel)
        self.assertEqual(parse_message(refused.data).status, 503)
        for method, to, transports in (
            ("ACK", "<sip:bob@example.org>", ["udp"]),
            # (its INVITE unknown here: by either transport it may have gone)
            ("CANCEL", "<sip:bob@example.org>", ["udp", "tcp"]),
            ("BYE", "<sip:bob@example.org>;tag=tt", ["udp"]),
        ):
            relayed = core.from_tunnel(tunnel, "s1", 1, request(method, "sip:bob@example.org", to=to), now)
            self.assertTrue(all(isinstance(a, ToNetwork) for a in relayed), method)
            self.assertEqual([(a.transport, a.addr) for a in relayed], [(t, ("198.51.100.7", 5060)) for t in transports])
        sent = pings(out)
        core.from_network("udp", (B.host, B.port), reply(sent[B]).to_bytes(), now)
        (to_b,) = core.from_tunnel(tunnel, "s1", 1, register(branch="z9hG4bKreg2"), now)
        assert isinstance(to_b, ToNetwork)
        self.assertEqual((to_b.addr, core.counters["no operator proxy answers"]), (("198.51.100.8", 5070), 2))

    def test_one_proxy_unchanged(self) -> None:
        """
        A single proxy (C{operator=}): no pings, no deadline of theirs, no
        proxies in the status.
        """
        core = ContactSipProxy(CONTACT_ADDR, SECRET, operator=A)
        self.assertIsNone(core.next_deadline())
        self.assertEqual(core.handle_timer(1000.0), [])
        self.assertNotIn("proxies", core.status())
        self.assertEqual(core.operator, A)


class ProxyNameWatchTests(SynchronousTestCase):
    """
    L{spwm.tap.parts.ProxyNameWatch}: the names resolved again on a timer
    (synchronously here, with a fake resolver).
    """

    def setUp(self) -> None:
        import socket

        from twisted.internet.defer import maybeDeferred
        from twisted.internet.task import Clock
        from twisted.logger import formatEvent, globalLogPublisher

        from spwm.tap.parts import ProxyNameWatch

        self.clock = Clock()
        self.answers: dict[str, Any] = {"operator.test": ["198.51.100.7"]}
        self.used: list[list[OperatorProxy]] = []
        self.in_use: tuple[OperatorProxy, ...] = (A,)
        self.lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "parts" in str(event.get("log_namespace", "")):
                self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

        def resolve(host: str, family: int) -> list[str]:
            answer = self.answers[host]
            if isinstance(answer, OSError):
                raise answer
            return list(answer)

        def use(proxies: list[OperatorProxy], why: str) -> None:
            self.used.append(proxies)
            self.in_use = tuple(proxies)

        self.watch = ProxyNameWatch(
            self.clock,
            [OperatorProxy("operator.test")],
            socket.AF_INET,
            lambda: self.in_use,
            use,
            60.0,
            run=maybeDeferred,
            resolve=resolve,
        )
        self.watch.startService()
        self.addCleanup(self.watch.stopService)

    def test_same_addresses(self) -> None:
        """
        A name that resolves as before: nothing used, nothing said.
        """
        for _ in range(3):
            self.clock.advance(60)
        self.assertEqual((self.used, self.lines), ([], []))

    def test_other_addresses(self) -> None:
        """
        Other addresses are handed on once: the one in use first, the new
        one after it; then the name moves to the new one alone.
        """
        self.answers["operator.test"] = ["198.51.100.9", "198.51.100.7"]
        self.clock.advance(60)
        self.clock.advance(60)
        self.assertEqual(self.used, [[A, OperatorProxy("198.51.100.9")]])
        self.answers["operator.test"] = ["198.51.100.9"]
        self.clock.advance(60)
        self.assertEqual(self.used[1:], [[OperatorProxy("198.51.100.9")]])

    def test_round_robin_changes_nothing(self) -> None:
        """
        A name served round robin (its addresses in another order at each
        query): the order in use stays; an address added comes after those
        that stay, one taken out leaves.
        """
        B7, B8, B9 = (OperatorProxy(f"198.51.100.{i}") for i in (7, 8, 9))
        self.answers["operator.test"] = ["198.51.100.7", "198.51.100.8"]
        self.clock.advance(60)
        self.assertEqual(self.used, [[B7, B8]])
        for answer in (["198.51.100.8", "198.51.100.7"], ["198.51.100.7", "198.51.100.8"]):
            self.answers["operator.test"] = answer
            self.clock.advance(60)
        self.assertEqual(len(self.used), 1)
        self.answers["operator.test"] = ["198.51.100.9", "198.51.100.8", "198.51.100.7"]
        self.clock.advance(60)
        self.assertEqual(self.used[-1], [B7, B8, B9])
        self.answers["operator.test"] = ["198.51.100.9", "198.51.100.7"]
        self.clock.advance(60)
        self.assertEqual(self.used[-1], [B7, B9])

    def test_entries_keep_their_order(self) -> None:
        """
        With two entries, the first's addresses come before the second's
        whatever was in use.
        """
        from spwm.tap.parts import merge_proxies

        P1, P2, P3 = (OperatorProxy(f"198.51.100.{i}") for i in (1, 2, 3))
        self.assertEqual(merge_proxies([[P2, P1], [P3]], (P3, P1, P2)), [P1, P2, P3])
        self.assertEqual(merge_proxies([[P1], [P1, P3]], ()), [P1, P3])

    def test_failure_keeps_the_addresses(self) -> None:
        """
        A name that stops resolving: one warning for the whole outage, the
        addresses stay; one line when it resolves again.
        """
        self.answers["operator.test"] = OSError("Temporary failure in name resolution")
        for _ in range(3):
            self.clock.advance(60)
        self.assertEqual(self.used, [])
        self.assertEqual(
            self.lines,
            [
                "--sip-proxy: cannot resolve operator.test: Temporary failure in name resolution;"
                " keeping 198.51.100.7:5060;transport=udp until it resolves again"
            ],
        )
        self.answers["operator.test"] = ["198.51.100.7"]
        self.clock.advance(60)
        self.assertEqual(self.lines[1:], ["--sip-proxy: operator.test resolves again"])
        self.assertEqual(self.used, [])

    def test_stopped(self) -> None:
        """
        Once stopped, no timer is left.
        """
        self.watch.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
