"""
The status listings (paging, filters), the Prometheus families and
histograms, the web page's escaping, and the media manager's call
listing with quality figures (from a stand-in until the measurements
exist).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from spwm.__main__ import render as render_status
from spwm.media import manager as media_manager
from spwm.media import quality as media_quality
from spwm.session.manager import SessionManager
from spwm.sip.contact_proxy import ContactSipProxy
from spwm.state import ContactState
from spwm.media.manager import END_REASONS
from spwm.status import MAX_LIMIT, SIP_EVENT_KEYS, Metrics, Query, Status, StatusResource, add_agent_lists, add_media_lists
from spwm.statusweb import render_page
from spwm.tunnel.info import describe_tunnel
from tests import skip_if_compiled
from tests.test_media_manager import AGENT_ADDR, DIALOG, OPERATOR, PHONE, SDP_TYPE, _pair, _sdp

#: What a stream's C{quality.snapshot()} returns (the interface of the
#: quality measurements).
SNAPSHOT = {
    "legs": {
        "lan": {
            "packets": 250,
            "bytes": 43000,
            "lost": 3,
            "reordered": 1,
            "duplicates": 0,
            "jitter_ms": 4.5,
            "transit_ms": None,
            "late_dropped": 0,
            "rtcp": None,
        },
        "tunnel": {
            "packets": 248,
            "bytes": 42656,
            "lost": 0,
            "reordered": 0,
            "duplicates": 0,
            "jitter_ms": 12.0,
            "transit_ms": 35.0,
            "late_dropped": 2,
            "rtcp": None,
        },
        "operator": None,
    },
    "mos": {"up": 4.21, "down": 3.9},
    "codec": "PCMU/8000",
}


def _get(resource: StatusResource, path: bytes, **args: str) -> tuple[DummyRequest, bytes]:
    request = DummyRequest([path])
    request.args = {k.encode(): [v.encode()] for k, v in args.items()}
    return request, resource.render_GET(request)


def _listed(n: int) -> list[dict[str, Any]]:
    return [
        {"agent": f"agent-{i % 3}", "aor": f"sip:user{i}@example.org", "state": "live" if i % 2 else "dormant"}
        for i in range(n)
    ]


class QueryTests(SynchronousTestCase):
    def test_paging(self) -> None:
        """
        C{limit} and C{offset} page every listing; the total counts the
        matching items; a limit above L{MAX_LIMIT} is cut to it, and
        numbers that do not parse are the defaults.
        """
        status = Status("contact", Clock())
        status.add_list("registrations", lambda: _listed(2500))
        resource = StatusResource(status)
        _, body = _get(resource, b"status", limit="10", offset="20")
        page = json.loads(body)["lists"]["registrations"]
        self.assertEqual((page["total"], page["offset"], page["limit"]), (2500, 20, 10))
        self.assertEqual([r["aor"] for r in page["items"]], [f"sip:user{i}@example.org" for i in range(20, 30)])
        _, body = _get(resource, b"status", limit="100000")
        self.assertEqual(len(json.loads(body)["lists"]["registrations"]["items"]), MAX_LIMIT)
        _, body = _get(resource, b"status", limit="x", offset="-5")
        page = json.loads(body)["lists"]["registrations"]
        self.assertEqual((page["offset"], len(page["items"])), (0, 100))

    def test_filters(self) -> None:
        """
        C{agent} and C{state} must be equal, C{aor} is a case-insensitive
        substring of the address-of-record (or From, To, contact); filters
        combine.
        """
        status = Status("contact", Clock())
        status.add_list("registrations", lambda: _listed(30))
        resource = StatusResource(status)
        _, body = _get(resource, b"status", agent="agent-1", state="live")
        items = json.loads(body)["lists"]["registrations"]["items"]
        self.assertEqual([r["aor"] for r in items], [f"sip:user{i}@example.org" for i in (1, 7, 13, 19, 25)])
        _, body = _get(resource, b"status", aor="USER2")
        page = json.loads(body)["lists"]["registrations"]
        self.assertEqual(page["total"], 11)  # user2, user20..user29
        calls = [{"from": "sip:alice@example.org", "to": "sip:bob@example.org"}]
        self.assertTrue(Query(filters=(("aor", "bob"),)).matches(calls[0]))
        self.assertFalse(Query(filters=(("aor", "carol"),)).matches(calls[0]))
        self.assertFalse(Query(filters=(("agent", "a"),)).matches(calls[0]))

    def test_document_without_lists(self) -> None:
        """
        The periodic line and the metrics use the document without the
        listings; the JSON has them under C{lists}.
        """
        status = Status("agent", Clock())
        status.add("media", lambda: {"streams": 1})
        status.add_list("calls", lambda: [{"call": "1/x"}])
        self.assertNotIn("lists", status.document())
        self.assertEqual(status.full()["lists"]["calls"]["items"], [{"call": "1/x"}])


def _families(text: str) -> dict[str, str]:
    """
    Family name -> TYPE of a Prometheus text exposition; checks that every
    TYPE has its HELP.
    """
    helps = set(re.findall(r"^# HELP (\S+) ", text, re.M))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert set(types) == helps, (set(types) ^ helps)
    return types


class MetricsTests(SynchronousTestCase):
    def _status(self) -> Status:
        clock = Clock()
        clock.advance(100)
        status = Status("contact", clock)
        status.add("tunnels", lambda: {"open": 2, "refused": 1})
        status.add("sip", lambda: {"registrations": 5, "events": {"430": 1, 'a"b\n': 2}, "up": True, "note": "x"})
        clock.advance(12.5)
        return status

    def test_families(self) -> None:
        """
        Every family has HELP and TYPE; numbers kept since the start are
        counters (C{_total}), numbers of now gauges, labelled numbers carry
        a C{key} label (escaped by the library), booleans are 0/1, text is
        left out; the histograms are there before any observation.
        """
        text, content_type = self._status().metrics.exposition()
        text = text.decode()
        self.assertEqual(content_type, "text/plain; version=0.0.4; charset=utf-8")
        types = _families(text)
        self.assertEqual(types["spwm_tunnels_open"], "gauge")
        self.assertEqual(types["spwm_tunnels_refused_total"], "counter")
        self.assertEqual(types["spwm_sip_events_total"], "counter")
        self.assertEqual(types["spwm_call_setup_seconds"], "histogram")
        self.assertEqual(types["spwm_media_jitter_seconds"], "histogram")
        self.assertIn('spwm_uptime_seconds{side="contact"} 12.5\n', text)
        self.assertIn('spwm_tunnels_refused_total{side="contact"} 1.0\n', text)
        self.assertIn('spwm_sip_events_total{key="430",side="contact"} 1.0\n', text)
        self.assertIn('spwm_sip_events_total{key="a\\"b\\n",side="contact"} 2.0\n', text)
        self.assertIn('spwm_sip_up{side="contact"} 1.0\n', text)
        self.assertNotIn("note", text)
        self.assertIn('spwm_media_transit_seconds_count{leg="tunnel",side="contact"} 0.0\n', text)

    def test_sip_events_from_the_start(self) -> None:
        """
        C{spwm_sip_events_total} has a series at 0 for each of the side's
        common keys before anything was dropped or refused (a rate of it
        is 0, not "no data"); a key counted since has its count, others
        appear when counted; nothing is added where the half has no
        C{sip.events}.
        """
        for side in ("contact", "agent"):
            status = Status(side, Clock())
            status.add("sip", lambda: {"events": {"tunnel congested": 2, "other": 1}})
            text = status.metrics.exposition()[0].decode()
            series = dict(re.findall(r'^spwm_sip_events_total\{key="([^"]*)",side="\w+"\} (\S+)$', text, re.M))
            expected = {**dict.fromkeys(SIP_EVENT_KEYS[side], "0.0"), "tunnel congested": "2.0", "other": "1.0"}
            self.assertEqual(series, expected)
        status = Status("contact", Clock())
        status.add("tunnels", lambda: {"open": 0})
        self.assertNotIn("spwm_sip_events_total{", status.metrics.exposition()[0].decode())

    def test_second_contact_point_same_types(self) -> None:
        """
        The sections of an agent's second contact point (C{tunnel_2},
        C{sessions_2}, C{paths_2}) have the first's counters and gauges:
        C{spwm_sessions_2_resumed_total} is a counter as
        C{spwm_sessions_resumed_total} is, the failures since the tunnel
        was last up a gauge in both; their HELP is the first's, naming the
        contact point.
        """
        status = Status("agent", Clock())
        for suffix in ("", "_2"):
            status.add("tunnel" + suffix, lambda: {"up": False, "failures": 3})
            status.add("sessions" + suffix, lambda: {"users": 1, "resumed": 2})
            status.add("paths" + suffix, lambda: {"paths": 2, "attach_refused": 1})
        text = status.metrics.exposition()[0].decode()
        types = _families(text)
        for first, second in [
            ("spwm_sessions_resumed_total", "spwm_sessions_2_resumed_total"),
            ("spwm_sessions_users", "spwm_sessions_2_users"),
            ("spwm_tunnel_failures", "spwm_tunnel_2_failures"),
            ("spwm_paths_attach_refused_total", "spwm_paths_2_attach_refused_total"),
        ]:
            self.assertEqual(types[second], types[first], second)
        self.assertEqual(types["spwm_sessions_2_resumed_total"], "counter")
        self.assertEqual(types["spwm_tunnel_2_failures"], "gauge")
        self.assertIn(
            "# HELP spwm_sessions_2_resumed_total Contact point 2 (--contact given more than once):"
            " Sessions resumed on a new connection.\n",
            text,
        )

    def test_documented_counters(self) -> None:
        """
        The contact point's numbers that operations.md lists as counted
        since the start are counters: the accept pauses and the kernel's
        accept-queue growth, the paths' refused, redirected and handed-on
        attaches.
        """
        status = Status("contact", Clock())
        status.add("tunnels", lambda: {"accept_pauses": 1, "host_listen_overflows": 2, "host_listen_drops": 3})
        status.add("paths", lambda: {"attach_refused": 1, "attach_redirected": 0, "attach_handed_on": 0})
        types = _families(status.metrics.exposition()[0].decode())
        for name in [
            "spwm_tunnels_accept_pauses",
            "spwm_tunnels_host_listen_overflows",
            "spwm_tunnels_host_listen_drops",
            "spwm_paths_attach_refused",
            "spwm_paths_attach_redirected",
            "spwm_paths_attach_handed_on",
        ]:
            self.assertEqual(types.get(name + "_total"), "counter", name)

    def test_one_family_per_name(self) -> None:
        """
        A number of the document named like one of the families the
        metrics make themselves is left out, so that each family appears
        once.
        """
        status = self._status()
        status.add("media", lambda: {"lost_packets": 3, "jitter_seconds": 0.5})
        text = status.metrics.exposition()[0].decode()
        self.assertEqual(text.count("# TYPE spwm_media_lost_packets_total "), 1)
        self.assertEqual(text.count("# TYPE spwm_media_jitter_seconds "), 1)
        self.assertNotIn('spwm_media_lost_packets_total{side="contact"} 3.0', text)

    def test_registry_per_status(self) -> None:
        """
        Two halves in one process each have their own registry: no clash,
        each exposes its own side.
        """
        contact = self._status()
        agent = Status("agent", Clock())
        self.assertIsNot(contact.metrics.registry, agent.metrics.registry)
        text = agent.metrics.exposition()[0].decode()
        self.assertIn('spwm_call_setup_seconds_count{side="agent"} 0.0', text)
        self.assertNotIn('side="contact"', text)

    def test_call_events(self) -> None:
        """
        A call's answer feeds the set-up histogram; its end the per-leg
        jitter and transit histograms and the lost packets (from the
        quality figures, in seconds), and the ended calls by answer.
        """
        status = self._status()
        metrics = status.metrics
        metrics.call_event("answered", {"setup_s": 0.3})
        # the call detail record's shape (spwm.media.manager.call_detail_record)
        metrics.call_event(
            "ended", {"answered_s": 5.0, "reason": "dialog ended", "streams": [{"legs": SNAPSHOT["legs"]}, {"legs": None}]}
        )
        metrics.call_event("ended", {"answered_s": None, "reason": "no response", "streams": []})
        # a stream that carried nothing (a 407 to the INVITE) adds no sample
        silent = {"legs": {"lan": dict(SNAPSHOT["legs"]["lan"], packets=0, jitter_ms=0.0, lost=0),  # type: ignore[call-overload]
                           "tunnel": dict(SNAPSHOT["legs"]["tunnel"], packets=0, jitter_ms=0.0, transit_ms=1.0)}}  # type: ignore[call-overload]
        metrics.call_event("ended", {"answered_s": None, "reason": "dialog ended", "streams": [{"legs": silent["legs"]}]})
        text = metrics.exposition()[0].decode()
        self.assertIn('spwm_call_setup_seconds_bucket{le="0.25",side="contact"} 0.0\n', text)
        self.assertIn('spwm_call_setup_seconds_bucket{le="0.5",side="contact"} 1.0\n', text)
        self.assertIn('spwm_media_jitter_seconds_bucket{le="0.005",leg="lan",side="contact"} 1.0\n', text)
        self.assertIn('spwm_media_jitter_seconds_bucket{le="0.01",leg="tunnel",side="contact"} 0.0\n', text)
        self.assertIn('spwm_media_jitter_seconds_bucket{le="0.02",leg="tunnel",side="contact"} 1.0\n', text)
        self.assertIn('spwm_media_transit_seconds_count{leg="tunnel",side="contact"} 1.0\n', text)
        self.assertIn('spwm_media_transit_seconds_count{leg="lan",side="contact"} 0.0\n', text)
        self.assertIn('spwm_media_lost_packets_total{leg="lan",side="contact"} 3.0\n', text)
        # by answer and reason, every known reason from the start
        ended = re.findall(r'^spwm_calls_ended_total\{answered="(\w+)",reason="(\w+)",side="contact"\} (\S+)$', text, re.M)
        self.assertEqual(len(ended), 2 * len(END_REASONS))
        self.assertEqual(
            sorted((a, r, float(n)) for a, r, n in ended if float(n)),
            [("no", "dialog_ended", 1.0), ("no", "no_response", 1.0), ("yes", "dialog_ended", 1.0)],
        )
        self.assertIn('spwm_media_jitter_seconds_count{leg="lan",side="contact"} 1.0\n', text)

    def test_rtt_sampled_per_scrape(self) -> None:
        """
        Each scrape observes the round trip of every tunnel listed that
        has one.
        """
        status = self._status()
        status.add_list("tunnels", lambda: [{"rtt_ms": 20.0}, {"rtt_ms": None}])
        status.metrics.exposition()
        text = status.metrics.exposition()[0].decode()
        self.assertIn('spwm_tunnel_rtt_seconds_count{side="contact"} 2.0\n', text)
        self.assertIn('spwm_tunnel_rtt_seconds_bucket{le="0.01",side="contact"} 0.0\n', text)


class PageTests(SynchronousTestCase):
    def test_escaped(self) -> None:
        """
        Agent ids, URIs and filter values come from outside: the page shows
        them as text, never as markup.
        """
        status = Status("contact", Clock())
        evil = "<script>alert(1)</script>"
        status.add_list("tunnels", lambda: [{"agent": evil, "source": "[2001:db8::1]:443", "tls": "TLSv1.3"}])
        status.add_list(
            "registrations", lambda: [{"aor": 'sip:"><img src=x onerror=alert(2)>@x', "contact": "sip:a@b", "agent": evil}]
        )
        status.add_list(
            "calls", lambda: [{"call": "1/" + evil, "call_id": evil, "from": evil, "to": "sip:b@x", "streams": []}]
        )
        resource = StatusResource(status)
        _, body = _get(resource, b"", agent=evil)
        page = body.decode()
        self.assertNotIn("<script", page)
        self.assertNotIn("<img", page)
        self.assertIn("&lt;script&gt;alert(1)&lt;/script&gt;", page)
        self.assertIn("&lt;img src=x onerror=alert(2)&gt;", page)
        self.assertIn("[2001:db8::1]:443", page)

    def test_operator_proxies(self) -> None:
        """
        A contact point's page says which of its operator proxies answer
        and which is in use (with several); nothing about them without.
        """
        status = Status("contact", Clock())
        self.assertNotIn("Operator proxies", render_page(status, Query()).decode())
        status.add(
            "sip",
            lambda: {
                "proxies": {"198.51.100.7:5060;transport=udp": True, "198.51.100.8:5060;transport=tcp": False},
                "proxy": "198.51.100.7:5060;transport=udp",
            },
        )
        self.assertIn(
            '<p class="proxies">Operator proxies: 198.51.100.7:5060;transport=udp answers (in use),'
            " 198.51.100.8:5060;transport=tcp DOES NOT ANSWER</p>",
            render_page(status, Query()).decode(),
        )

    def test_ended_call_bye_sent(self) -> None:
        """
        An ended call's reason on the page says whom the half sent a BYE
        of its own to (C{bye_sent}), or for a call lost while it rang what
        it sent; a call without says only its reason.
        """
        status = Status("agent", Clock())
        ended = [
            {"call": "1/a", "call_id": "a", "reason": "tunnel lost", "bye_sent": ["phone"], "streams": []},
            {"call": "1/b", "call_id": "b", "reason": "dialog ended", "bye_sent": [], "streams": []},
            {"call": "1/c", "call_id": "c", "reason": "tunnel lost", "bye_sent": ["phone (CANCEL)"], "streams": []},
        ]
        status.add_list("ended_calls", lambda: ended)
        page = render_page(status, Query()).decode()
        self.assertIn("<td>tunnel lost: BYE sent to the phone</td>", page)
        # a call lost while it rang: what went
        self.assertIn("<td>tunnel lost: CANCEL sent to the phone</td>", page)
        self.assertIn("<td>dialog ended</td>", page)

    def test_certificate(self) -> None:
        """
        A contact point's page names its certificate and when it expires
        (with TLS); nothing about it without; its numbers are metrics,
        the reloads a counter.
        """
        status = Status("contact", Clock())
        self.assertNotIn("Certificate", render_page(status, Query()).decode())
        status.add(
            "certificate",
            lambda: {
                "file": "/etc/spwm/cp.pem",
                "subject": "cp.example.net",
                "not_after": 1811462400.0,
                "expires_in": 10 * 86400,
                "loaded_at": 1811000000.0,
                "reloads": 1,
                "reload_failures": 0,
                "error": None,
            },
        )
        self.assertIn(
            '<p class="certificate">Certificate: cp.example.net, expires 2027-05-28, in 10 days: RENEW IT;'
            " loaded again once since the start</p>",
            render_page(status, Query()).decode(),
        )
        text = Metrics(status).exposition()[0].decode()
        self.assertIn('spwm_certificate_expires_in{side="contact"} 864000.0', text)
        self.assertIn('spwm_certificate_reloads_total{side="contact"} 1.0', text)
        self.assertIn("# TYPE spwm_certificate_not_after gauge", text)

    def test_cdr_file(self) -> None:
        """
        A half with C{--cdr-file}: its page says when records wait or were
        lost; its counts are counters, the records waiting a gauge.
        """
        status = Status("contact", Clock())
        counts = {"path": "/var/log/spwm/cdr.jsonl", "written": 7, "waiting": 0, "write_errors": 0, "failures": 0, "reopened": 1}
        status.add("cdr_file", lambda: dict(counts))
        self.assertNotIn('class="cdr"', render_page(status, Query()).decode())
        counts.update(failures=2, waiting=3, write_errors=4)
        self.assertIn(
            '<p class="cdr">CDR file /var/log/spwm/cdr.jsonl: 3 RECORDS WAIT (the file takes no writes, see the'
            " log); 2 RECORDS LOST; 7 written</p>",
            render_page(status, Query()).decode(),
        )
        text = Metrics(status).exposition()[0].decode()
        self.assertIn('spwm_cdr_file_failures_total{side="contact"} 2.0', text)
        self.assertIn('spwm_cdr_file_written_total{side="contact"} 7.0', text)
        self.assertIn('spwm_cdr_file_write_errors_total{side="contact"} 4.0', text)
        self.assertIn('spwm_cdr_file_waiting{side="contact"} 3.0', text)

    def test_state_file(self) -> None:
        """
        A half with C{--state-file}: its writes and failures are counters,
        when it last wrote a gauge; its page and C{spwm status} say so
        while the writes fail, and not once they work again.
        """
        path = os.path.abspath(self.mktemp())
        clock = Clock()
        state = ContactState(os.path.join(path, "state.json"), clock, lambda: 1_700_000_000.0)
        status = Status("contact", clock)
        status.add("state_file", state.status)
        core = ContactSipProxy(("198.51.100.1", 5060), b"s" * 32)
        sessions = SessionManager(clock, 60.0, None, core)
        state.start(core, sessions, 30.0)
        text = Metrics(status).exposition()[0].decode()
        self.assertIn('spwm_state_file_failures_total{side="contact"} 1.0', text)
        self.assertIn('spwm_state_file_failing{side="contact"} 1.0', text)
        self.assertNotIn("spwm_state_file_written_at", text)
        line = f"State file {path}/state.json: NOT WRITTEN (1 writes failed, see the log); 0 written"
        self.assertIn(line, render_page(status, Query()).decode())
        self.assertIn(line, render_status(status.document()))
        os.makedirs(path)
        clock.advance(30.0)
        text = Metrics(status).exposition()[0].decode()
        self.assertIn('spwm_state_file_writes_total{side="contact"} 1.0', text)
        self.assertIn('spwm_state_file_written_at{side="contact"} 1.7e+09', text)
        self.assertIn('spwm_state_file_failing{side="contact"} 0.0', text)
        self.assertNotIn("State file", render_page(status, Query()).decode())
        state.stop()

    def test_tunnel_connections(self) -> None:
        """
        An agent's page says when C{--tunnel-connections auto} keeps more
        connections than it starts with, and why; the reason is no metric.
        """
        status = Status("agent", Clock())
        paths = {"paths": 2, "connections_wanted": 2, "connections_floor": 2, "connections_why": ""}
        status.add("paths", lambda: dict(paths))
        self.assertNotIn("Tunnel connections", render_page(status, Query()).decode())
        paths.update(connections_wanted=4, connections_why="the media keeps stalling on every connection at once")
        self.assertIn(
            '<p class="tunnel">Tunnel connections: 4 (auto starts with 2): the media keeps stalling on every'
            " connection at once</p>",
            render_page(status, Query()).decode(),
        )
        text = Metrics(status).exposition()[0].decode()
        self.assertIn('spwm_paths_connections_wanted{side="agent"} 4.0', text)
        self.assertNotIn("connections_why", text)

    def test_calls_with_quality(self) -> None:
        """
        A call in progress is shown with its streams' figures per leg and
        the E-model estimates; a leg without figures is left out, a stream
        without quality says so.
        """
        status = Status("agent", Clock())
        call = {
            "call": "3/abc@h",
            "call_id": "abc@h",
            "from": "sip:alice@example.org",
            "to": "sip:bob@example.org",
            "agent": "office",
            "started": 0.0,
            "duration": 12.0,
            "state": "answered",
            "setup_s": 0.25,
            "codec": "PCMU/8000",
            "streams": [
                {"index": 0, "media": "audio", "quality": SNAPSHOT},
                {"index": 1, "media": "video", "quality": None, "packets_in": 7, "packets_out": 8},
            ],
        }
        status.add_list("calls", lambda: [call])
        page = render_page(status, Query()).decode()
        self.assertIn('<td class="call-id" data-call="3/abc@h">abc@h</td>', page)
        self.assertIn("MOS up 4.21 down 3.90", page)
        self.assertIn("<tr><th>lan</th><td class=\"n\">250</td><td class=\"n bad\">3</td>", page)
        self.assertIn("<td class=\"n\">12.0</td><td class=\"n\">35.0</td>", page)
        self.assertNotIn("<th>operator</th>", page)
        self.assertIn("7 in, 8 out (no quality figures)", page)

    def test_paged(self) -> None:
        """
        A listing longer than the limit says which items it shows and links
        the next page, keeping the filters.
        """
        status = Status("contact", Clock())
        status.add_list("registrations", lambda: _listed(30))
        page = render_page(status, Query(limit=5, offset=5, filters=(("state", "live"),))).decode()
        self.assertIn("Registrations (15)", page)
        self.assertIn("6\u201310 of 15", page)
        self.assertIn('href="?state=live&amp;offset=10&amp;limit=5">next</a>', page)
        self.assertIn('href="?state=live&amp;offset=0&amp;limit=5">previous</a>', page)


def _streams(manager: Any) -> list[Any]:
    """
    The streams of C{manager}'s calls.
    """
    return [
        stream
        for dialogs in manager._sessions.values()
        for dialog in dialogs.values()
        for stream in dialog.streams.values()
    ]


def _snapshots(test: SynchronousTestCase, manager: Any, snapshot: Any) -> None:
    """
    Have the quality figures of every stream of C{manager}'s calls give
    what C{snapshot()} gives (on the figures' objects, not the manager's
    module: compiled, its calls do not look the module's names up; nor
    the figures' own, compiled: the test is skipped then).
    """
    skip_if_compiled(media_quality, "replaces the quality figures' snapshot on their objects")
    streams = _streams(manager)
    test.assertTrue(streams)
    for stream in streams:
        test.patch(stream.quality, "snapshot", snapshot)


class MediaListingTests(SynchronousTestCase):
    def _call(self) -> tuple[Any, Any, Any, Any]:
        reactor, agent, a_end, contact, c_end = _pair()
        offer = _sdp(PHONE, ("audio", 4000, ""))
        agent.sdp_into_tunnel(a_end, DIALOG, SDP_TYPE, offer)
        agent.call_parties(a_end, DIALOG, "sip:alice@example.org", "sip:bob@example.org")
        agent.call_parties(a_end, DIALOG, "sip:later@example.org", "sip:x@example.org")
        contact.sdp_out_of_tunnel(c_end, DIALOG, SDP_TYPE, offer)
        answer = _sdp(OPERATOR, ("audio", 6000, ""))
        contact.sdp_into_tunnel(c_end, DIALOG, SDP_TYPE, answer)
        agent.sdp_out_of_tunnel(a_end, DIALOG, SDP_TYPE, answer)
        return reactor, agent, a_end, contact

    def test_call_in_progress(self) -> None:
        """
        A call with media is listed with its Call-ID, From and To (the
        first ones given), its codec and its streams' quality snapshots.
        """
        from .test_media_quality import rtp

        reactor, agent, a_end, _ = self._call()
        reactor.udp[AGENT_ADDR, 20000].receive(rtp(1, 160), (PHONE, 4000))
        (call,) = agent.call_list()
        (figures,) = [stream.quality for stream in _streams(agent)]
        self.assertEqual(
            {k: call[k] for k in ("call", "call_id", "from", "to", "codec", "state", "answered_at")},
            {
                "call": DIALOG,
                "call_id": DIALOG,
                "from": "sip:alice@example.org",
                "to": "sip:bob@example.org",
                "codec": "PCMU/8000",
                "state": "setting up",
                "answered_at": None,
            },
        )
        (stream,) = call["streams"]
        self.assertEqual((stream["index"], stream["media"], stream["quality"]), (0, "audio", figures.snapshot()))
        self.assertEqual(stream["quality"]["legs"]["lan"]["packets"], 1)
        self.assertEqual(stream["packets_in"], 1)

    def test_ended_calls_ring(self) -> None:
        """
        An ended call leaves the live list for the ring of ended calls
        (with its end, reason and last figures), and the metrics count it;
        the ring keeps the newest L{ENDED_CALLS}.
        """
        reactor, agent, a_end, _ = self._call()
        status = Status("agent", reactor)
        add_media_lists(status, agent)
        agent.dialog_answered(a_end, DIALOG, "b", ours=False)
        from .test_media_quality import rtp

        # one RTP packet from the phone: the lan leg has a jitter sample
        # (a leg without packets adds none)
        reactor.udp[AGENT_ADDR, 20000].receive(rtp(1, 160), (PHONE, 4000))
        agent.dialog_ended(a_end, DIALOG)
        self.assertEqual(agent.call_list(), [])
        (ended,) = status.full()["lists"]["ended_calls"]["items"]
        self.assertEqual((ended["call_id"], ended["reason"], ended["state"]), (DIALOG, "dialog ended", "ended"))
        # the snapshot taken when the stream was released
        self.assertEqual(set(ended["streams"][0]["quality"]), {"legs", "mos", "codec"})
        # one end record: the call detail record (the log line's, the
        # metrics') is the ring's, and the listing agrees with it
        (cdr,) = agent.cdrs
        self.assertEqual(cdr["streams"][0]["legs"], ended["streams"][0]["quality"]["legs"])
        self.assertEqual((cdr["dialog"], cdr["started"]), (ended["call"], round(ended["started"], 3)))
        self.assertAlmostEqual(ended["ended"] - ended["started"], ended["duration"], places=3)
        text = status.metrics.exposition()[0].decode()
        self.assertIn('spwm_calls_ended_total{answered="yes",reason="dialog_ended",side="agent"} 1.0\n', text)
        self.assertIn('spwm_media_jitter_seconds_count{leg="lan",side="agent"} 1.0\n', text)
        self.assertIn('spwm_media_jitter_seconds_count{leg="tunnel",side="agent"} 0.0\n', text)
        for n in range(media_manager.ENDED_CALLS + 5):
            key = f"{n}/call"
            agent.sdp_into_tunnel(a_end, key, SDP_TYPE, _sdp(PHONE, ("audio", 4000, "")))
            agent.dialog_ended(a_end, key)
        ended = agent.ended_calls()
        self.assertEqual(len(ended), media_manager.ENDED_CALLS)
        self.assertEqual(ended[0]["call"], f"{media_manager.ENDED_CALLS + 4}/call")
        self.assertEqual([r["dialog"] for r in agent.cdrs], [r["call"] for r in reversed(ended)])

    def test_calls_section_and_limit(self) -> None:
        """
        The C{calls} section has the calls in progress and the manager's
        C{--max-calls} limit; the metrics show the limit only when one is
        set.
        """
        reactor, agent, a_end, _ = self._call()
        status = Status("agent", reactor)
        add_media_lists(status, agent)
        self.assertEqual(status.full()["calls"], {"in_progress": 1, "limit": None})
        self.assertNotIn("spwm_calls_limit", status.metrics.exposition()[0].decode())
        agent.max_calls = 300
        self.assertEqual(status.full()["calls"], {"in_progress": 1, "limit": 300})
        self.assertIn('spwm_calls_limit{side="agent"} 300.0\n', status.metrics.exposition()[0].decode())

    def test_without_quality(self) -> None:
        """
        Streams without quality measurements list C{None}.
        """
        self.assertIsNone(media_manager._quality(object()))
        reactor, agent, a_end, contact, c_end = _pair()
        agent.sdp_into_tunnel(a_end, DIALOG, SDP_TYPE, _sdp(PHONE, ("audio", 4000, "")))
        _snapshots(self, agent, lambda: None)
        (call,) = agent.call_list()
        self.assertIsNone(call["streams"][0]["quality"])
        self.assertIsNone(call["from"])


class TunnelInfoTests(SynchronousTestCase):
    def test_in_memory(self) -> None:
        """
        A tunnel without a socket or TLS (in-memory) is described with
        what is known: no RTT, no TLS.
        """

        class Tunnel:
            agent_id = "<b>office</b>"
            session_id = "s1"
            peer = "[2001:db8::5]:40000"
            connected_at = 10.0
            transport = None
            connection = None
            is_open = True
            congested = False

        info = describe_tunnel(Tunnel(), 25.0)
        self.assertEqual(
            {k: info[k] for k in ("agent", "session", "source", "tls", "cipher", "rtt_ms", "uptime", "established")},
            {
                "agent": "<b>office</b>",
                "session": "s1",
                "source": "[2001:db8::5]:40000",
                "tls": None,
                "cipher": None,
                "rtt_ms": None,
                "uptime": 15.0,
                "established": True,
            },
        )

    def test_agent_with_two_contact_points(self) -> None:
        """
        The agent's C{tunnels} listing shows the tunnel to each contact
        point that is up (C{--contact} given twice), not only the first.
        """

        def tunnel(peer: str) -> Any:
            class Tunnel:
                agent_id = "office"
                session_id = peer
                connected_at = 10.0
                transport = None
                connection = None
                is_open = True
                congested = False

            Tunnel.peer = peer
            return Tunnel()

        reactor, agent, a_end, contact, c_end = _pair()
        up: list[Any] = [tunnel("192.0.2.1:443"), None]
        status = Status("agent", Clock())
        add_agent_lists(status, "office", lambda: up, None, agent)
        self.assertEqual([t["source"] for t in status.listing("tunnels")], ["192.0.2.1:443"])
        up[1] = tunnel("192.0.2.2:443")
        self.assertEqual(
            [t["source"] for t in status.listing("tunnels")], ["192.0.2.1:443", "192.0.2.2:443"]
        )
        single = Status("agent", Clock())
        add_agent_lists(single, "office", lambda: up[0], None, agent)
        self.assertEqual(len(single.listing("tunnels")), 1)

    def test_path_of_a_session(self) -> None:
        """
        A connection that is a path of a session (its C{front}) carries
        the session's C{media_on}, C{carrier_on} and switch counts; one
        without a front C{None} and 0.
        """

        class Front:
            def summary(self) -> dict:
                return {"session": "s1", "paths": ["quic", "tcp"], "media_on": "quic", "carrier_on": "tcp",
                        "media_switches": 2, "carrier_switches": 1}

        class Tunnel:
            agent_id = "office"
            session_id = "s1"
            peer = "192.0.2.9:4000"
            connected_at = None
            transport = None
            connection = None
            is_open = True
            congested = False
            front: object = None

        keys = ("media_on", "carrier_on", "media_switches", "carrier_switches")
        plain = describe_tunnel(Tunnel(), 1.0)
        self.assertEqual([plain[k] for k in keys], [None, None, 0, 0])
        tunnel = Tunnel()
        tunnel.front = Front()
        self.assertEqual([describe_tunnel(tunnel, 1.0)[k] for k in keys], ["quic", "tcp", 2, 1])


class LazyTunnelListingTests(SynchronousTestCase):
    """
    The C{tunnels} listing describes a tunnel only when a field of it is
    read beyond those it is sorted and filtered by: a page of 10,000
    tunnels describes its page, the metrics read the round trips alone.
    """

    def tunnels(self, n: int) -> list[Any]:
        class Tunnel:
            connected_at = 10.0
            transport = None
            connection = None
            is_open = True
            congested = False

            def __init__(self, i: int) -> None:
                self.agent_id = f"agent-{i % 7}"
                self.session_id = f"s{i}"
                self.peer = f"192.0.2.{i % 250 + 1}:{4000 + i}"

        return [Tunnel(i) for i in range(n)]

    def counted(self) -> list[int]:
        from spwm.tunnel import info

        described = [0]
        real = info.describe_tunnel

        def counting(tunnel: Any, now: float) -> dict[str, Any]:
            described[0] += 1
            return real(tunnel, now)

        self.patch(info, "describe_tunnel", counting)
        return described

    def test_same_fields_as_described(self) -> None:
        """
        An item reads as L{describe_tunnel}'s dict, the same keys in the
        same order, and C{rtt_ms} alone as it does.
        """
        from spwm.tunnel.info import TUNNEL_FIELDS, TunnelItem

        [tunnel] = self.tunnels(1)
        item = TunnelItem(tunnel, 25.0)
        self.assertEqual(item["rtt_ms"], describe_tunnel(tunnel, 25.0)["rtt_ms"])
        self.assertEqual(list(dict(item).items()), list(describe_tunnel(tunnel, 25.0).items()))
        self.assertEqual(tuple(describe_tunnel(tunnel, 25.0)), TUNNEL_FIELDS)
        self.assertNotIn("state", item)
        self.assertRaises(KeyError, lambda: item["state"])

    def test_page_describes_only_its_items(self) -> None:
        """
        C{/status} over 500 tunnels, sorted by agent and source, pages
        them and describes the 10 on its page; a filter on the agent
        describes none it does not show; a scrape of the metrics reads
        every round trip and describes none.
        """
        from spwm.status import add_contact_lists

        described = self.counted()
        tunnels = self.tunnels(500)

        class Sessions:
            def session_list(self) -> list[dict[str, Any]]:
                return []

        class Sip:
            def registration_list(self) -> list[dict[str, Any]]:
                return []

        status = Status("contact", Clock())
        add_contact_lists(status, tunnels, Sessions(), Sip(), _pair()[1])
        page = status.full(Query(limit=10, offset=3))["lists"]["tunnels"]
        self.assertEqual((page["total"], len(page["items"]), described[0]), (500, 10, 10))
        everything = sorted((describe_tunnel(t, 0.0) for t in tunnels), key=lambda t: (t["agent"], t["source"]))
        self.assertEqual([i["session"] for i in page["items"]], [t["session"] for t in everything[3:13]])
        self.assertTrue(all(type(i) is dict and i["uptime"] == -10.0 for i in page["items"]))
        page = status.full(Query(limit=5, filters=(("agent", "agent-3"),)))["lists"]["tunnels"]
        self.assertEqual((page["total"], len(page["items"]), described[0]), (71, 5, 15))
        status.metrics.exposition()
        self.assertEqual(described[0], 15)


    def test_round_trips_sampled_in_turn(self) -> None:
        """
        A scrape samples the round trips of at most C{most} tunnels, the
        next ones at the next scrape, round the list; with fewer, all.
        """
        from spwm.session.paths import PathKind
        from spwm.status import rtt_sampler

        class Quic:
            path_kind = PathKind.QUIC

            def __init__(self, rtt: float) -> None:
                self.rtt = (rtt, 0.0)

        tunnels = self.tunnels(7)
        for i, tunnel in enumerate(tunnels):
            tunnel.transport = Quic(i / 100)
        sample = rtt_sampler(tunnels, most=3)
        self.assertEqual([sample() for _ in range(3)], [[0.0, 0.01, 0.02], [0.03, 0.04, 0.05], [0.06, 0.0, 0.01]])
        self.assertEqual(rtt_sampler(tunnels[:2], most=3)(), [0.0, 0.01])

        class Sessions:
            def session_list(self) -> list[dict[str, Any]]:
                return []

        from spwm.status import add_contact_lists

        status = Status("contact", Clock())
        add_contact_lists(status, tunnels, Sessions(), None, _pair()[1])
        text = status.metrics.exposition()[0].decode()
        self.assertIn('spwm_tunnel_rtt_seconds_count{side="contact"} 7.0', text)
        self.assertIn('spwm_tunnel_rtt_seconds_bucket{le="0.05",side="contact"} 6.0', text)


class ContactSessionListTests(SynchronousTestCase):
    """
    The contact point's C{sessions} listing.
    """

    def test_every_connection_of_a_session(self) -> None:
        """
        A session's C{connections} are all its tunnel connections: the one
        the session logic knows, and those the paths layer attached
        (C{--tunnel-connections} 2 and more), each once.
        """
        from spwm.status import add_contact_lists

        class Tunnel:
            def __init__(self, session_id: str, peer: str) -> None:
                self.session_id, self.peer = session_id, peer

        class Sessions:
            def session_list(self) -> list[dict[str, Any]]:
                return [
                    {"session": "s1", "state": "live", "agent": "a", "connections": ["192.0.2.1:4000"], "users": 1},
                    {"session": "s2", "state": "suspended", "agent": "b", "connections": [], "users": 0},
                ]

        tunnels = [Tunnel("s1", "192.0.2.1:4000"), Tunnel("s1", "192.0.2.1:4002"), Tunnel("s3", "198.51.100.9:1")]
        status = Status("contact", Clock())
        _, agent, _, contact, _ = _pair()
        add_contact_lists(status, tunnels, Sessions(), type("Sip", (), {"registration_list": lambda self: []})(), contact)
        listed = status.lists()["sessions"]["items"]
        self.assertEqual(
            [(s["session"], s["connections"]) for s in listed],
            [("s1", ["192.0.2.1:4000", "192.0.2.1:4002"]), ("s2", [])],
        )
