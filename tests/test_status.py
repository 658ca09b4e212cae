"""
The status document, its JSON and Prometheus forms, the periodic log line,
and the media manager's counters behind it.
"""

from __future__ import annotations

import errno
import importlib
import json
import sys

from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

import spwm
from spwm.errors import ListenError
from spwm.status import Status, StatusHTTPService, StatusLogService, StatusResource, add_agent_lists, summary
from spwm.tap import contact
from tests.test_media_manager import (
    AGENT_ADDR,
    CONTACT_ADDR,
    DIALOG,
    OPERATOR,
    PHONE,
    SDP_TYPE,
    _pair,
    _sdp,
)


def _status() -> tuple[Clock, Status, dict]:
    clock = Clock()
    clock.advance(100)
    status = Status("contact", clock)
    numbers = {"open": 2, "refused": 0}
    status.add("tunnels", lambda: dict(numbers))
    status.add("sip", lambda: {"registrations": 5, "events": {"430": 1, "malformed": 2}, "up": True, "note": "x"})
    clock.advance(12.5)
    return clock, status, numbers


class DocumentTests(SynchronousTestCase):
    def test_document(self) -> None:
        """
        The document names the side, the version, the uptime and every
        section, computed when asked.
        """
        clock, status, numbers = _status()
        numbers["open"] = 3
        doc = status.document()
        self.assertEqual(
            doc,
            {
                "side": "contact",
                "version": spwm.__version__,
                "uptime": 12.5,
                "tunnels": {"open": 3, "refused": 0},
                "sip": {"registrations": 5, "events": {"430": 1, "malformed": 2}, "up": True, "note": "x"},
            },
        )

    def test_summary(self) -> None:
        """
        The log line keeps non-zero numbers, sums labelled ones.
        """
        _, status, _ = _status()
        self.assertEqual(summary(status.document()), "tunnels open=2; sip registrations=5 events=3 up=1")
        self.assertEqual(summary({"side": "agent", "media": {"streams": 0}}), "idle")


class ResourceTests(SynchronousTestCase):
    def test_page_reloads_less_often_when_slow(self) -> None:
        """
        The page reloads every 5 s while it renders quickly; after a page
        that took 0.3 s the next asks to be reloaded after 15 s (2 % of the
        half's time), and after a quick one every 5 s again.
        """
        _, status, _ = _status()
        resource = StatusResource(status)
        readings: list[float] = []
        resource._timer = lambda: readings.pop(0)

        def page(seconds: float) -> bytes:
            readings[:] = [100.0, 100.0 + seconds]
            return resource.render_GET(DummyRequest([b""]))

        self.assertIn(b'<meta http-equiv="refresh" content="5">', page(0.3))
        body = page(0.01)
        self.assertIn(b'<meta http-equiv="refresh" content="15">', body)
        self.assertIn(b"refreshes every 15 s", body)
        self.assertIn(b'<meta http-equiv="refresh" content="5">', page(0.0))

    def test_paths(self) -> None:
        """
        C{/status} is the JSON document, C{/metrics} the Prometheus text,
        C{/} the page, anything else 404.
        """
        _, status, _ = _status()
        resource = StatusResource(status)
        request = DummyRequest([b"status"])
        body = resource.render_GET(request)
        self.assertEqual(json.loads(body)["tunnels"], {"open": 2, "refused": 0})
        # compact, as json's C encoder writes it (an indent turns it off)
        self.assertEqual(body, json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() + b"\n")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])
        request = DummyRequest([b"metrics", b""])
        self.assertIn(b'spwm_sip_registrations{side="contact"} 5.0\n', resource.render_GET(request))
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"text/plain; version=0.0.4; charset=utf-8"]
        )
        request = DummyRequest([b""])
        self.assertIn(b"<h1>SPWM contact point</h1>", resource.render_GET(request))
        self.assertIn(b"default-src 'none'", request.responseHeaders.getRawHeaders(b"content-security-policy")[0])
        request = DummyRequest([b"other"])
        resource.render_GET(request)
        self.assertEqual(request.responseCode, 404)


    def test_no_import_at_a_request(self) -> None:
        """
        The page, C{/status} (with a tunnel listed) and C{/metrics} import
        nothing at a request: with C{spwm.statusweb} and
        C{spwm.tunnel.info} unimportable after the resource is made (the
        package upgraded or removed under the running process), all three
        still answer.
        """

        class Tunnel:
            agent_id = "office"
            session_id = "s1"
            peer = "192.0.2.9:4000"
            connected_at = 100.0
            transport = None
            connection = None
            is_open = True
            congested = False

        class Sip:
            def registration_list(self) -> list:
                return []

        _, status, _ = _status()
        _, agent, _, _, _ = _pair()
        add_agent_lists(status, "office", Tunnel, Sip(), agent)
        resource = StatusResource(status)
        for name in ("spwm.statusweb", "spwm.tunnel.info"):
            self.addCleanup(sys.modules.__setitem__, name, importlib.import_module(name))
            sys.modules[name] = None  # type: ignore[assignment]
        body = resource.render_GET(DummyRequest([b"status"]))
        self.assertEqual([t["source"] for t in json.loads(body)["lists"]["tunnels"]["items"]], ["192.0.2.9:4000"])
        self.assertIn(b"<h1>SPWM contact point</h1>", resource.render_GET(DummyRequest([b""])))
        self.assertIn(b"spwm_sip_registrations", resource.render_GET(DummyRequest([b"metrics"])))


class LogServiceTests(SynchronousTestCase):
    def test_interval(self) -> None:
        """
        The first line comes after one interval, then one per interval;
        none after the service stopped.
        """
        clock, status, _ = _status()
        service = StatusLogService(status, 300.0, clock)
        with capturedLogs() as events:
            service.startService()
            clock.advance(299)
            self.assertEqual(events, [])
            clock.advance(1)
            clock.advance(300)
            service.stopService()
            clock.advance(600)
        lines = [e["summary"] for e in events if "summary" in e]
        self.assertEqual(lines, ["tunnels open=2; sip registrations=5 events=3 up=1"] * 2)
        self.assertEqual(clock.getDelayedCalls(), [])


class MediaCountersTests(SynchronousTestCase):
    def test_traffic_kept_after_release(self) -> None:
        """
        The media section counts what is open now and the packets of live
        and released streams alike.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        offer = _sdp(PHONE, ("audio", 4000, ""))
        agent.sdp_into_tunnel(a_end, DIALOG, SDP_TYPE, offer)
        contact.sdp_out_of_tunnel(c_end, DIALOG, SDP_TYPE, offer)
        answer = _sdp(OPERATOR, ("audio", 6000, ""))
        contact.sdp_into_tunnel(c_end, DIALOG, SDP_TYPE, answer)
        agent.sdp_out_of_tunnel(a_end, DIALOG, SDP_TYPE, answer)
        phone_rtp = reactor.udp[AGENT_ADDR, 20000]
        op_rtp = reactor.udp[CONTACT_ADDR, 30000]
        phone_rtp.receive(b"a" * 172, (PHONE, 4000))
        phone_rtp.receive(b"b" * 172, (PHONE, 4000))
        op_rtp.receive(b"c" * 172, (OPERATOR, 6000))
        op_rtp.receive(b"x" * 172, ("203.0.113.99", 6000))
        live = contact.status()
        self.assertEqual(
            {k: live[k] for k in ("streams", "relay_sockets", "channels", "port_pairs_in_use", "port_pairs_total")},
            {"streams": 1, "relay_sockets": 2, "channels": 1, "port_pairs_in_use": 1, "port_pairs_total": 50},
        )
        self.assertEqual(
            {k: live[k] for k in ("packets_in", "bytes_in", "packets_out", "bytes_out", "dropped_source")},
            {"packets_in": 1, "bytes_in": 172, "packets_out": 2, "bytes_out": 344, "dropped_source": 1},
        )
        agent.dialog_ended(a_end, DIALOG)
        contact.dialog_ended(c_end, DIALOG)
        gone = contact.status()
        self.assertEqual((gone["streams"], gone["relay_sockets"], gone["port_pairs_in_use"]), (0, 0, 0))
        self.assertEqual(
            {k: gone[k] for k in ("packets_in", "packets_out", "dropped_source")},
            {"packets_in": 1, "packets_out": 2, "dropped_source": 1},
        )


class ConfigurationTests(SynchronousTestCase):
    def test_bad_endpoint_stops_start(self) -> None:
        """
        A C{--status-listen} that is no endpoint description stops the
        service at assembly with one line naming the option.
        """
        options = contact.Options()
        options.parseOptions(["--plaintext", "--status-listen", "nonsense:1"])
        with self.assertRaises(SystemExit) as caught:
            contact.makeService(options, Clock())
        self.assertIn("invalid configuration: status-listen:", str(caught.exception))

    def test_port_in_use(self) -> None:
        """
        A status port that cannot be bound fails the service's start with
        L{ListenError} naming the option, the address and the problem.
        """
        class Refusing(MemoryReactor):
            def listenTCP(self, port, factory, backlog=50, interface=""):
                raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))

        _, status, _ = _status()
        endpoint = TCP4ServerEndpoint(Refusing(), 9090, interface="127.0.0.1")
        service = StatusHTTPService(endpoint, status, description="tcp:9090:interface=127.0.0.1")
        error = self.assertRaises(ListenError, service.startService)
        self.assertEqual(str(error), "--status-listen tcp:9090:interface=127.0.0.1: address already in use")
        self.assertEqual(self.flushLoggedErrors(), [])
