"""
Tests for L{spwm.sdp}: parsing and rewriting session descriptions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spwm.errors import SpwmError
from spwm.sdp import (
    ICE_ATTRIBUTES,
    OriginVersioner,
    SdpError,
    find_sdp,
    parse_sdp,
    replace_sdp,
    rewrite_sdp,
)

DATA = Path(__file__).parent / "data" / "sdp"
RELAY4 = "198.51.100.7"
RELAY6 = "2001:db8::7"


def _index() -> list[dict[str, str]]:
    rows = []
    header = None
    for line in (DATA / "INDEX.tsv").read_text("utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        fields = line.split("\t")
        if header is None:
            header = fields
            continue
        rows.append(dict(zip(header, fields)))
    return rows


def _ports(description, base: int = 40000) -> list:
    return [
        None if m.port == 0 else (base + 2 * m.index, base + 2 * m.index + 1)
        for m in description.media
    ]


def _lines(body: bytes) -> list[bytes]:
    return body.splitlines()


def _kept(line: bytes) -> bool:
    """
    Lines that a rewrite must keep byte for byte.
    """
    if line[:2] in (b"c=", b"m=", b"o="):
        return False
    if line.startswith(b"a="):
        name = line[2:].partition(b":")[0].lower()
        return name not in ICE_ATTRIBUTES and name != b"rtcp"
    return True


SIMPLE = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)


class CorpusTests(SynchronousTestCase):
    """
    Every body of C{tests/data/sdp} parses, round-trips and is rewritten as
    its C{INDEX.tsv} row and the general rules of its header describe.
    """

    def test_index_lists_every_file(self) -> None:
        """
        C{INDEX.tsv} names every C{.sdp} file with its size and SHA-256, so
        the tests run against the bodies the index describes.
        """
        rows = _index()
        self.assertEqual(
            sorted(r["file"] for r in rows),
            sorted(p.name for p in DATA.glob("*.sdp")),
        )
        for row in rows:
            body = (DATA / row["file"]).read_bytes()
            self.assertEqual(len(body), int(row["bytes"]), row["file"])
            self.assertEqual(
                hashlib.sha256(body).hexdigest(), row["sha256"], row["file"]
            )

    def test_round_trip(self) -> None:
        """
        Parsing then serialising any corpus body gives the same bytes.
        """
        for row in _index():
            body = (DATA / row["file"]).read_bytes()
            self.assertEqual(parse_sdp(body).to_bytes(), body, row["file"])

    def test_general_rules(self) -> None:
        """
        For every corpus body the rewrite: rewrites every c= to the relay
        address (except a hold address, which stays), every non-zero port to
        its relay port, keeps port-0 lines and the m= order, rewrites
        C{a=rtcp} to the relay's RTCP port and address, strips every ICE
        attribute, gives C{o=} the relay address and keeps its username,
        session id and version, keeps every other line in order byte for
        byte, and keeps CRLF line endings.
        """
        for row in _index():
            name = row["file"]
            body = (DATA / name).read_bytes()
            before = parse_sdp(body)
            ports = _ports(before)
            out = rewrite_sdp(body, RELAY4, ports)
            after = parse_sdp(out)
            # m= order, types and ports
            self.assertEqual(
                [m.media for m in after.media], [m.media for m in before.media], name
            )
            for old, new in zip(before.media, after.media):
                if old.port == 0:
                    self.assertEqual(new.port, 0, name)
                else:
                    self.assertEqual(new.port, ports[old.index][0], name)
                    self.assertEqual(new.rtcp_port, ports[old.index][1], name)
                    if old.hold_address:
                        self.assertEqual(new.address, old.address, name)
                    else:
                        self.assertEqual(new.address, RELAY4, name)
                        self.assertEqual(new.address_family, "IP4", name)
                        self.assertEqual(new.rtcp_address, RELAY4, name)
                self.assertEqual(new.direction, old.direction, name)
                self.assertEqual(new.rtcp_mux, old.rtcp_mux, name)
                self.assertEqual(new.formats, old.formats, name)
                self.assertFalse(new.ice, name)
            # no ICE left anywhere
            for line in _lines(out):
                if line.startswith(b"a="):
                    attr = line[2:].partition(b":")[0].lower()
                    self.assertNotIn(attr, ICE_ATTRIBUTES, name)
            # everything else byte for byte, in order
            self.assertEqual(
                [l for l in _lines(out) if _kept(l)],
                [l for l in _lines(body) if _kept(l)],
                name,
            )
            # line endings kept
            self.assertEqual(out.count(b"\n"), out.count(b"\r\n"), name)
            self.assertTrue(out.endswith(b"\r\n"), name)
            # o=: our address, the endpoint's session
            if before.origin is not None:
                self.assertEqual(
                    after.origin, (*before.origin[:3], "IN", "IP4", RELAY4), name
                )
                if before.origin[5] not in ("0.0.0.0", "::"):  # (hold c= keeps those)
                    self.assertNotIn(before.origin[5].encode(), out, name)
            # no endpoint address survives in a c=/a=rtcp line
            for m in before.media:
                if m.port and m.address and not m.connection.unspecified:
                    for line in _lines(out):
                        if line.startswith((b"c=", b"a=rtcp:")):
                            self.assertNotIn(m.address.encode(), line, name)

    def test_fqdn_does_not_survive(self) -> None:
        """
        An FQDN in c= and o= (RFC 3264 10.1) is replaced by the relay
        address in both.
        """
        body = (DATA / "rfc3264-10.1-offer-alice.sdp").read_bytes()
        out = rewrite_sdp(body, RELAY4, _ports(parse_sdp(body)))
        self.assertIn(b"c=IN IP4 198.51.100.7\r\n", out)
        self.assertNotIn(b"host.anywhere.com", out)
        self.assertIn(b"o=alice 2890844526 2890844526 IN IP4 198.51.100.7\r\n", out)
        self.assertEqual(
            [m.port for m in parse_sdp(out).media], [40000, 40002, 40004]
        )

    def test_rejected_stream(self) -> None:
        """
        A port-0 m= line stays exactly as it was (with its attributes) and is
        not counted as a relayed stream (RFC 3264 answer).
        """
        body = (DATA / "rfc3264-10.1-answer-bob.sdp").read_bytes()
        parsed = parse_sdp(body)
        self.assertEqual([m.rejected for m in parsed.media], [False, True, False])
        out = rewrite_sdp(body, RELAY4, [(40000, 40001), (50000, 50001), (40004, 40005)])
        self.assertIn(b"\r\nm=video 0 RTP/AVP 31\r\n", out)
        self.assertEqual([m.port for m in parse_sdp(out).media], [40000, 0, 40004])

    def test_reject_by_entry(self) -> None:
        """
        An entry C{(0, None)} sets the port of a live stream to 0.
        """
        out = rewrite_sdp(SIMPLE, RELAY4, [(0, None)])
        self.assertEqual(parse_sdp(out).media[0].port, 0)

    def test_media_level_c_each_rewritten(self) -> None:
        """
        Session and media level c= are both rewritten (RFC 4317 2.8), and
        the mixed-family body of RFC 5118 gets one c= per stream and no new
        session level c=.
        """
        body = (DATA / "rfc4317-2.8-block23.sdp").read_bytes()
        out = rewrite_sdp(body, RELAY4, _ports(parse_sdp(body)))
        self.assertEqual(out.count(b"c=IN IP4 198.51.100.7\r\n"), 2)
        self.assertNotIn(b"otherhost", out)
        body = (DATA / "rfc5118-mult-ip-in-sdp-body.sdp").read_bytes()
        out = rewrite_sdp(body, RELAY4, _ports(parse_sdp(body)))
        self.assertEqual(out.count(b"c=IN IP4 198.51.100.7\r\n"), 2)
        self.assertIsNone(parse_sdp(out).connection)

    def test_ipv6_to_ipv4_and_back(self) -> None:
        """
        The address type follows the relay address (RFC 5118): an IPv6 body
        rewritten to an IPv4 relay says C{IN IP4}, never C{IN IP6 <ipv4>};
        an IPv4 body rewritten to an IPv6 relay says C{IN IP6} without
        brackets. IPv4-mapped IPv6 parses as IP6.
        """
        body = (DATA / "rfc5118-ipv6-in-sdp-body.sdp").read_bytes()
        self.assertEqual(parse_sdp(body).media[0].address_family, "IP6")
        out = rewrite_sdp(body, RELAY4, _ports(parse_sdp(body)))
        self.assertIn(b"\r\nc=IN IP4 198.51.100.7\r\n", out)
        self.assertNotIn(b"c=IN IP6", out)
        out = rewrite_sdp(SIMPLE, RELAY6, [(40000, 40001)])
        self.assertIn(b"\r\nc=IN IP6 2001:db8::7\r\n", out)
        mapped = (DATA / "rfc5118-ipv4-mapped-ipv6-body.sdp").read_bytes()
        media = parse_sdp(mapped).media[0]
        self.assertEqual((media.address_family, media.address), ("IP6", "::ffff:192.0.2.2"))

    def test_origin_follows_relay_address(self) -> None:
        """
        An IPv6 phone's offer rewritten towards an IPv4 side says
        C{o=... IN IP4 <relay>} like its c=, so a client that takes the
        address family from o= (baresip) sees one family; the username,
        session id and version stay, and the phone's address appears nowhere.
        The other way round o= says C{IN IP6 <relay>}. Spacing in o= is
        normalised, the line ending kept.
        """
        offer = (
            b"v=0\r\n"
            b"o=- 3592956540 764632573 IN IP6 fd00::2\r\n"
            b"s=-\r\n"
            b"c=IN IP6 fd00::2\r\n"
            b"t=0 0\r\n"
            b"m=audio 4000 RTP/AVP 0\r\n"
            b"a=rtcp:4001 IN IP6 fd00::2\r\n"
        )
        out = rewrite_sdp(offer, RELAY4, [(40000, 40001)])
        self.assertIn(b"\r\no=- 3592956540 764632573 IN IP4 198.51.100.7\r\n", out)
        self.assertNotIn(b"fd00", out)
        self.assertNotIn(b"IP6", out)
        self.assertEqual(
            parse_sdp(out).origin,
            ("-", "3592956540", 764632573, "IN", "IP4", RELAY4),
        )
        back = rewrite_sdp(SIMPLE.replace(b"o=alice ", b"o=alice\t "), RELAY6, [(40000, 40001)])
        self.assertIn(b"\r\no=alice 2890844526 2890844526 IN IP6 2001:db8::7\r\n", back)
        self.assertNotIn(b"192.0.2.10", back)
        self.assertNotIn(b"IP4", back)

    def test_origin_without_relayed_stream(self) -> None:
        """
        o= gets the relay address also when no stream is relayed (all left
        alone or rejected) and when every c= is a hold address.
        """
        out = rewrite_sdp(SIMPLE, RELAY4, [None])
        self.assertIn(b"o=alice 2890844526 2890844526 IN IP4 198.51.100.7\r\n", out)
        held = SIMPLE.replace(b"c=IN IP4 192.0.2.10", b"c=IN IP4 0.0.0.0")
        out = rewrite_sdp(held, RELAY6, [(40000, 40001)])
        self.assertIn(b"o=alice 2890844526 2890844526 IN IP6 2001:db8::7\r\n", out)
        self.assertIn(b"c=IN IP4 0.0.0.0\r\n", out)
        self.assertNotIn(b"192.0.2.10", out)

    def test_hold_address_stays(self) -> None:
        """
        RFC 2543 hold (c=IN IP4 0.0.0.0 with a real port, RFC 4317 5.2 and
        5.3) keeps 0.0.0.0: the relay never turns a hold into a routable
        address. The stream counts as held. The o= line, which carries no
        media, still gets the relay address (and nothing else does).
        """
        for name in ("rfc4317-5.2-block48.sdp", "rfc4317-5.3-block53.sdp"):
            body = (DATA / name).read_bytes()
            parsed = parse_sdp(body)
            self.assertTrue(parsed.media[0].hold_address, name)
            self.assertTrue(parsed.media[0].held, name)
            out = rewrite_sdp(body, RELAY4, _ports(parsed))
            self.assertIn(b"\r\nc=IN IP4 0.0.0.0\r\n", out, name)
            self.assertEqual(parse_sdp(out).origin[3:], ("IN", "IP4", RELAY4), name)
            self.assertEqual(out.count(RELAY4.encode()), 1, name)
            self.assertNotIn(parsed.origin[5].encode(), out, name)

    def test_trickle_placeholder_replaced(self) -> None:
        """
        Port 9 with c=0.0.0.0 and ICE (trickle ICE, RFC 8840: JSEP B1,
        Firefox) is a placeholder, not hold: it gets the relay address and
        port, while a bundle-only port 0 line stays 0.
        """
        for name in ("jsep-offer-B1.sdp", "webrtc-firefox-1.sdp"):
            body = (DATA / name).read_bytes()
            parsed = parse_sdp(body)
            live = [m for m in parsed.media if m.port]
            self.assertTrue(all(m.placeholder and not m.held for m in live), name)
            out = parse_sdp(rewrite_sdp(body, RELAY4, _ports(parsed)))
            for m in out.media:
                if m.port:
                    self.assertEqual(m.address, RELAY4, name)
                else:
                    self.assertEqual(m.address, "0.0.0.0", name)

    def test_direction(self) -> None:
        """
        The effective direction comes from the media attribute, else the
        session one, else sendrecv; sendonly/recvonly/inactive count as held.
        """
        body = (DATA / "rfc4317-3.2-block30.sdp").read_bytes()
        self.assertEqual(
            [(m.direction, m.held) for m in parse_sdp(body).media],
            [("sendonly", True), ("recvonly", True)],
        )
        body = (DATA / "rfc3264-10.2-offer-inactive.sdp").read_bytes()
        out = rewrite_sdp(body, RELAY4, [(40000, 40001)])
        self.assertIn(b"a=inactive\r\n", out)
        session = SIMPLE.replace(b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n")
        self.assertEqual(parse_sdp(session).media[0].direction, "sendonly")
        self.assertEqual(parse_sdp(SIMPLE).media[0].direction, "sendrecv")
        self.assertFalse(parse_sdp(SIMPLE).media[0].held)

    def test_rtcp_attribute(self) -> None:
        """
        C{a=rtcp} (RFC 3605) is parsed with and without an address; a
        rewrite puts the relay's RTCP port (or the RTP port when RTCP is
        multiplexed) and address there; when the relay's RTCP port is not
        RTP+1 and there is no C{a=rtcp}, one is added at the end of the
        section.
        """
        body = (DATA / "webrtc-unittest-1.sdp").read_bytes()
        media = parse_sdp(body).media
        self.assertEqual(
            [(m.rtcp_port, m.rtcp_address, m.rtcp_mux) for m in media],
            [(2347, "74.125.127.126", True), (3456, "74.125.224.39", False)],
        )
        out = rewrite_sdp(body, RELAY4, [(40000, None), (40002, 40003)])
        self.assertIn(b"a=rtcp:40000 IN IP4 198.51.100.7\r\n", out)
        self.assertIn(b"a=rtcp:40003 IN IP4 198.51.100.7\r\n", out)
        plain = SIMPLE.replace(b"a=rtpmap", b"a=rtcp:53020\r\na=rtpmap")
        self.assertEqual(parse_sdp(plain).media[0].rtcp_address, "192.0.2.10")
        out = rewrite_sdp(plain, RELAY4, [(40000, 40001)])
        self.assertIn(b"\r\na=rtcp:40001\r\n", out)
        out = rewrite_sdp(SIMPLE, RELAY4, [(40000, 40009)])
        self.assertTrue(out.endswith(b"a=rtpmap:0 PCMU/8000\r\na=rtcp:40009\r\n"))
        out = rewrite_sdp(SIMPLE[:-2], RELAY4, [(40000, 40009)])
        self.assertTrue(out.endswith(b"a=rtpmap:0 PCMU/8000\r\na=rtcp:40009\r\n"))

    def test_port_count(self) -> None:
        """
        C{m=} port/count is parsed; a rewrite advertises one relay port and
        drops the count.
        """
        body = SIMPLE.replace(b"49170 RTP", b"49170/2 RTP")
        self.assertEqual(parse_sdp(body).media[0].port_count, 2)
        out = rewrite_sdp(body, RELAY4, [(40000, 40001)])
        self.assertIn(b"m=audio 40000 RTP/AVP 0 8\r\n", out)

    def test_left_alone_stream_keeps_address(self) -> None:
        """
        A live stream given C{None} keeps its port, and since it inherited
        the session c= that the rewrite changes, it gets a media level copy
        of the original (after any i= line).
        """
        body = SIMPLE + b"m=video 51372 RTP/AVP 31\r\ni=the video\r\na=x\r\n"
        out = rewrite_sdp(body, RELAY4, [(40000, 40001), None])
        media = parse_sdp(out).media
        self.assertEqual((media[0].address, media[0].port), (RELAY4, 40000))
        self.assertEqual((media[1].address, media[1].port), ("192.0.2.10", 51372))
        self.assertIn(
            b"m=video 51372 RTP/AVP 31\r\ni=the video\r\nc=IN IP4 192.0.2.10\r\na=x\r\n",
            out,
        )

    def test_lf_line_endings(self) -> None:
        """
        A body with bare LF line endings keeps them.
        """
        body = SIMPLE.replace(b"\r\n", b"\n")
        out = rewrite_sdp(body, RELAY4, [(40000, 40001)])
        self.assertNotIn(b"\r", out)
        self.assertIn(b"\nc=IN IP4 198.51.100.7\n", out)

    def test_tcp_media(self) -> None:
        """
        TCP media (RFC 4145) is recognised with its C{a=setup}.
        """
        body = SIMPLE + b"m=message 7394 TCP/MSRP *\r\na=setup:active\r\n"
        media = parse_sdp(body).media
        self.assertEqual([m.is_tcp for m in media], [False, True])
        self.assertEqual(media[1].setup, "active")

    def test_no_media(self) -> None:
        """
        A body without m= lines (RFC 4317 5.1) rewrites its o= and c= and
        adds nothing.
        """
        body = (DATA / "rfc4317-5.1-block44.sdp").read_bytes()
        out = rewrite_sdp(body, RELAY4, [])
        self.assertEqual(out, body.replace(b"host.atlanta.example.com\r\n", b"198.51.100.7\r\n"))
        self.assertNotIn(b"m=", out)

    def test_misuse(self) -> None:
        """
        A relay address that is not an IP literal, or a port list of the
        wrong length, is a caller bug: C{ValueError}.
        """
        self.assertRaises(ValueError, rewrite_sdp, SIMPLE, "relay.example", [None])
        self.assertRaises(ValueError, rewrite_sdp, SIMPLE, RELAY4, [])

    def test_malformed(self) -> None:
        """
        Malformed bodies raise L{SdpError}, an L{SpwmError}.
        """
        self.assertTrue(issubclass(SdpError, SpwmError))
        for body in [
            b"",
            b"o=x 1 1 IN IP4 192.0.2.1\r\n",
            b"v=0\r\nnot a line\r\n",
            b"v=0\r\nm=audio\r\n",
            b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
            b"v=0\r\nm=audio 1/0 RTP/AVP 0\r\n",
            b"v=0\r\nm=audio x RTP/AVP 0\r\n",
            b"v=0\r\nc=IN IP4\r\n",
            b"v=0\r\nc=IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\n",
            b"v=0\r\no=a b c IN IP4 x\r\n",
            b"v=0\r\nm=audio 1 RTP/AVP 0\r\na=rtcp\r\n",
            b"v=0\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:1 IN IP4\r\n",
            b"v=0\r\nc=IN IP4 \xff\r\n",
        ]:
            self.assertRaises(SdpError, parse_sdp, body)


class OriginVersionerTests(SynchronousTestCase):
    """
    L{OriginVersioner} bumps the C{o=} version when our output changes and
    keeps it otherwise.
    """

    def test_versions(self) -> None:
        """
        The first body keeps its version; the same output again keeps it even
        if the endpoint bumped its own; a changed output gets a higher
        version even if the endpoint did not bump; a new origin starts over.
        """
        versioner = OriginVersioner()
        self.assertIsNone(versioner.version)
        first = rewrite_sdp(SIMPLE, RELAY4, [(40000, 40001)], versioner)
        self.assertIn(b"o=alice 2890844526 2890844526 IN", first)
        bumped_by_endpoint = SIMPLE.replace(b"2890844526 IN", b"2890844530 IN")
        again = rewrite_sdp(bumped_by_endpoint, RELAY4, [(40000, 40001)], versioner)
        self.assertEqual(again, first)
        changed = rewrite_sdp(SIMPLE, RELAY4, [(40002, 40003)], versioner)
        self.assertIn(b"o=alice 2890844526 2890844527 IN", changed)
        self.assertEqual(versioner.version, 2890844527)
        jump = SIMPLE.replace(b"2890844526 IN", b"2890844600 IN").replace(b"PCMU", b"PCMA")
        out = rewrite_sdp(jump, RELAY4, [(40002, 40003)], versioner)
        self.assertIn(b"o=alice 2890844526 2890844600 IN", out)
        other = SIMPLE.replace(b"o=alice 2890844526", b"o=bob 77")
        out = rewrite_sdp(other, RELAY4, [(40002, 40003)], versioner)
        self.assertIn(b"o=bob 77 2890844526 IN", out)

    def test_origin_address_is_ours(self) -> None:
        """
        After the rewrite the origin the versioner compares has our address:
        an endpoint that starts a new session id is still detected (its own
        version), while one that keeps username and session id but changes
        its address keeps the session the other side knows, and the version
        goes on rising instead of going back to the endpoint's.
        """
        versioner = OriginVersioner()
        first = rewrite_sdp(SIMPLE, RELAY4, [(40000, 40001)], versioner)
        self.assertIn(b"o=alice 2890844526 2890844526 IN IP4 198.51.100.7\r\n", first)
        moved = SIMPLE.replace(b"192.0.2.10", b"192.0.2.99")
        out = rewrite_sdp(moved, RELAY4, [(40002, 40003)], versioner)
        self.assertIn(b"o=alice 2890844526 2890844527 IN IP4 198.51.100.7\r\n", out)
        self.assertNotIn(b"192.0.2.99", out)
        again = rewrite_sdp(moved, RELAY4, [(40002, 40003)], versioner)
        self.assertEqual(again, out)
        new_session = moved.replace(b"o=alice 2890844526 2890844526", b"o=alice 5 1")
        out = rewrite_sdp(new_session, RELAY4, [(40002, 40003)], versioner)
        self.assertIn(b"o=alice 5 1 IN IP4 198.51.100.7\r\n", out)
        self.assertEqual(versioner.version, 1)

    def test_no_origin(self) -> None:
        """
        A body without o= is returned unchanged.
        """
        body = b"v=0\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\no=x 1 2 IN IP4 1.2.3.4\r\n"
        self.assertEqual(OriginVersioner().apply(body), body)


MULTIPART_TYPE = 'multipart/mixed; boundary="unique-boundary-1"'
OTHER_PART = (
    b"--unique-boundary-1\r\n"
    b"Content-Type: application/resource-lists+xml\r\n"
    b"Content-Disposition: recipient-list\r\n"
    b"\r\n"
    b'<?xml version="1.0"?>\r\n<resource-lists/>\r\n'
)


def _multipart(sdp: bytes) -> bytes:
    return (
        b"preamble\r\n"
        b"--unique-boundary-1\r\n"
        b"Content-Type: application/SDP; charset=utf-8\r\n"
        b"\r\n" + sdp + b"\r\n" + OTHER_PART + b"--unique-boundary-1--\r\nepilogue"
    )


class MultipartTests(SynchronousTestCase):
    """
    L{find_sdp} and L{replace_sdp} handle plain and multipart bodies.
    """

    def test_plain(self) -> None:
        """
        An C{application/sdp} body is the SDP; other types have none.
        """
        self.assertEqual(find_sdp("application/sdp", SIMPLE), SIMPLE)
        self.assertEqual(find_sdp("Application/SDP ; x=y", SIMPLE), SIMPLE)
        self.assertIsNone(find_sdp("text/plain", SIMPLE))
        self.assertIsNone(find_sdp("", b""))
        self.assertEqual(replace_sdp("application/sdp", SIMPLE, b"v=1"), b"v=1")
        self.assertRaises(ValueError, replace_sdp, "text/plain", b"x", b"y")

    def test_multipart(self) -> None:
        """
        The SDP part of a multipart/mixed body (RFC 5621) is found, and
        replacing it keeps every other byte.
        """
        body = _multipart(SIMPLE)
        self.assertEqual(find_sdp(MULTIPART_TYPE, body), SIMPLE)
        new = rewrite_sdp(SIMPLE, RELAY4, [(40000, 40001)])
        out = replace_sdp(MULTIPART_TYPE, body, new)
        self.assertEqual(out, _multipart(new))
        self.assertEqual(find_sdp(MULTIPART_TYPE, out), new)

    def test_multipart_lf_and_unquoted(self) -> None:
        """
        LF-only multipart bodies and an unquoted boundary work too; a
        multipart body without SDP has none.
        """
        body = _multipart(SIMPLE).replace(b"\r\n", b"\n")
        ctype = "multipart/mixed;boundary=unique-boundary-1"
        self.assertEqual(find_sdp(ctype, body), SIMPLE.replace(b"\r\n", b"\n"))
        only_other = OTHER_PART + b"--unique-boundary-1--\r\n"
        self.assertIsNone(find_sdp(ctype, only_other))

    def test_malformed_multipart(self) -> None:
        """
        A multipart body without boundary, closing delimiter or part header
        separator raises L{SdpError}.
        """
        body = _multipart(SIMPLE)
        self.assertRaises(SdpError, find_sdp, "multipart/mixed", body)
        self.assertRaises(
            SdpError, find_sdp, MULTIPART_TYPE, body.replace(b"-1--", b"-2--")
        )
        self.assertRaises(
            SdpError,
            find_sdp,
            MULTIPART_TYPE,
            b"--unique-boundary-1\r\nno separator\r\n--unique-boundary-1--",
        )


# hypothesis strategies: SDP-like bodies

_text = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12
).map(str.encode)
_address = st.sampled_from(
    [b"IN IP4 192.0.2.1", b"IN IP4 0.0.0.0", b"IN IP6 2001:db8::1", b"IN IP4 h.example"]
)
_attr = st.one_of(
    # Free-form attributes get an "x-" name so that none is one the parser
    # checks (a random "a=rtcp:" value is malformed SDP, not a round trip).
    st.builds(lambda n, v: b"a=x-" + n + b":" + v, _text, _text),
    st.sampled_from(
        [
            b"a=sendonly",
            b"a=recvonly",
            b"a=inactive",
            b"a=rtcp-mux",
            b"a=ice-ufrag:abcd",
            b"a=candidate:1 1 udp 1 192.0.2.9 5000 typ host",
            b"a=rtcp:5001",
            b"a=rtcp:5001 IN IP4 192.0.2.1",
            b"a=end-of-candidates",
        ]
    ),
)


@st.composite
def _media_section(draw) -> list[bytes]:
    port = draw(st.integers(0, 65535))
    count = draw(st.sampled_from([b"", b"/2"]))
    lines = [b"m=audio %d%s RTP/AVP 0 8" % (port, count)]
    if draw(st.booleans()):
        lines.append(b"c=" + draw(_address))
    lines += draw(st.lists(_attr, max_size=4))
    return lines


@st.composite
def _sdp_bodies(draw) -> bytes:
    lines = [b"v=0", b"o=- %d %d IN IP4 192.0.2.1" % (draw(st.integers(0, 2**64)), draw(st.integers(0, 2**64))), b"s=-"]
    if draw(st.booleans()):
        lines.append(b"c=" + draw(_address))
    lines.append(b"t=0 0")
    lines += draw(st.lists(_attr, max_size=3))
    for section in draw(st.lists(_media_section(), max_size=4)):
        lines += section
    ending = draw(st.sampled_from([b"\r\n", b"\n"]))
    body = ending.join(lines)
    if draw(st.booleans()):
        body += ending
    return body


class HoldTests(SynchronousTestCase):
    """
    C{MediaDescription.held} and C{hold_address} over every direction,
    address, port and ICE.
    """

    def test_held_table(self) -> None:
        """
        The hold address is C{0.0.0.0} or C{::} unless it is a trickle ICE
        placeholder (port 9 or ICE); a stream is held when not
        C{sendrecv} or at the hold address; a stream without C{c=} is at
        none.
        """
        for direction in ("sendrecv", "sendonly", "recvonly", "inactive"):
            for address in ("0.0.0.0", "::", "192.0.2.1", None):
                for port in (9, 4000):
                    for ice in (False, True):
                        lines = ["v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "t=0 0", f"m=audio {port} RTP/AVP 0"]
                        if address is not None:
                            lines.append(f"c=IN {'IP6' if ':' in address else 'IP4'} {address}")
                        lines.append(f"a={direction}")
                        if ice:
                            lines += ["a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuv"]
                        (media,) = parse_sdp(("\r\n".join(lines) + "\r\n").encode("ascii")).media
                        unspecified = address in ("0.0.0.0", "::")
                        placeholder = unspecified and (ice or port == 9)
                        case = (direction, address, port, ice)
                        self.assertEqual(media.placeholder, placeholder, case)
                        self.assertIs(media.hold_address, unspecified and not placeholder, case)
                        self.assertIs(media.held, direction != "sendrecv" or (unspecified and not placeholder), case)


class PropertyTests(SynchronousTestCase):
    """
    Hypothesis: round trips, and nothing but L{SdpError} for garbage.
    """

    @given(_sdp_bodies())
    def test_round_trip(self, body: bytes) -> None:
        """
        Any generated body parses and serialises back to the same bytes, and
        rewriting it with C{None} for every stream changes only ICE lines
        and c= lines.
        """
        parsed = parse_sdp(body)
        self.assertEqual(parsed.to_bytes(), body)
        out = rewrite_sdp(body, RELAY4, [None] * len(parsed.media))
        self.assertEqual(
            [l for l in _lines(out) if _kept(l) or l.startswith(b"m=")],
            [l for l in _lines(body) if _kept(l) or l.startswith(b"m=")],
        )

    @given(_sdp_bodies(), st.integers(1024, 65000))
    def test_rewrite_properties(self, body: bytes, base: int) -> None:
        """
        Any generated body rewrites to a body that parses, with the relay
        ports on the live streams, port 0 on the others, and no ICE.
        """
        parsed = parse_sdp(body)
        ports = [(base, base + 1) if m.port else None for m in parsed.media]
        out = parse_sdp(rewrite_sdp(body, RELAY4, ports))
        self.assertEqual([m.port for m in out.media], [base if m.port else 0 for m in parsed.media])
        self.assertFalse(any(m.ice for m in out.media))

    @given(_sdp_bodies(), st.integers(1024, 65000))
    def test_rewrite_with_description(self, body: bytes, base: int) -> None:
        """
        A rewrite given the description of its body (what the caller parsed
        already) gives what it gives without; given the description of
        another body, it reads its own body.
        """
        parsed = parse_sdp(body)
        ports = [(base, base + 1) if m.port else None for m in parsed.media]
        out = rewrite_sdp(body, RELAY4, ports)
        self.assertEqual(rewrite_sdp(body, RELAY4, ports, None, parsed), out)
        other = parse_sdp(SIMPLE)
        self.assertEqual(rewrite_sdp(body, RELAY4, ports, None, other), out)

    @given(st.binary(max_size=300))
    def test_garbage(self, body: bytes) -> None:
        """
        Any bytes either parse or raise L{SdpError}; so does C{find_sdp}.
        """
        for candidate in (body, b"v=0\r\n" + body):
            try:
                parsed = parse_sdp(candidate)
            except SdpError:
                pass
            else:
                rewrite_sdp(candidate, RELAY4, [None] * len(parsed.media))
        try:
            find_sdp(MULTIPART_TYPE, body)
        except SdpError:
            pass

    @given(st.lists(st.sampled_from([b"v=0", b"m=audio 1 RTP/AVP 0", b"c=IN IP4 1.2.3.4", b"a=rtcp:7", b"o=- 1 1 IN IP4 x", b"a=rtcp:", b"m=", b"c=", b"\xff", b"", b"a=rtcp:70000"]), max_size=8))
    def test_structured_garbage(self, lines: list[bytes]) -> None:
        """
        Mixes of valid and broken lines either parse or raise L{SdpError}.
        """
        try:
            parse_sdp(b"\r\n".join(lines))
        except SdpError:
            pass
