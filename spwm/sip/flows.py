# -*- test-case-name: tests.test_sip_proxy -*-
"""
Application flows (agent side) and authenticated flow tokens (contact side).

A I{flow} is the way one SIP application reaches the agent: transport, the
agent's local address, the application's address and, on stream transports,
the connection.  The agent numbers flows with a C{flow_id} that travels in the
tunnel's SIP frames.

A I{flow token} names C{(session_id, flow_id)} towards the operator network.
The contact point puts it in the user part of its C{Record-Route}/C{Path} URIs
(or a rewritten C{Contact}) and in its C{Via} branch.  Tokens are
authenticated with HMAC-SHA256 under a per-process secret, so a peer on the
operator network cannot name a tunnel or flow it was not given.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import struct

from typing import Any

from dataclasses import dataclass, field

#: Token kinds: the byte that says where a token may be used.
KIND_VIA = b"V"
KIND_ROUTE = b"R"
KIND_CONTACT = b"C"

_KINDS = frozenset({KIND_VIA, KIND_ROUTE, KIND_CONTACT})
_MAC_LEN = 8
_MAX_SESSION = 64
_FLOW = struct.Struct("!I")

#: SHA-256's block size, and HMAC's pads (RFC 2104) as translations of
#: the key's bytes.
_BLOCK = 64
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))

#: The most tokens a codec remembers (emptied when full): those it made,
#: and those it checked, each with what it names.  A token comes back
#: again and again (the Via branch in each response to its request, the
#: Record-Route token in each request of its dialog), and one remembered
#: needs no HMAC.
TOKEN_CACHE_SIZE = 4096

#: Base32's alphabet (RFC 4648), lower case, by 5-bit group value.
_B32_LOWER = bytes.maketrans(bytes(range(32)), b"abcdefghijklmnopqrstuvwxyz234567")

#: L{_spread}'s steps by number of groups (a power of two).
_SPREADS: dict[int, list[tuple[int, int, int]]] = {}


def _spread(groups: int) -> list[tuple[int, int, int]]:
    """
    The steps that move each 5-bit group of an integer of C{groups}
    groups (a power of two) into a byte of its own: at each step, in
    every block of groups still packed, the upper half moves up by 3 bits
    per group of the lower half.

    @return: (shift, mask of the lower halves, mask of the upper halves),
        from the largest blocks down.
    """
    steps = _SPREADS.get(groups)
    if steps is None:
        steps = []
        size = groups
        while size > 1:
            half = size // 2
            ones = (1 << 5 * half) - 1
            low = high = 0
            for start in range(0, 8 * groups, 8 * size):
                low |= ones << start
                high |= ones << (start + 5 * half)
            steps.append((3 * half, low, high))
            size = half
        _SPREADS[groups] = steps
    return steps


def b32_lower(data: bytes) -> str:
    """
    C{base64.b32encode(data)} without its C{=} padding, in lower case:
    the same text in a dozen operations on one integer instead of a
    Python step per five bytes (the standard library's encoder), about
    six times as fast here.

    The bytes as one integer, its zero bits shifted in below to a multiple
    of five (base32 pads the last group with zero bits); each 5-bit group
    spread into a byte of its own (L{_spread}), and those bytes translated
    to the alphabet.
    """
    bits = len(data) * 8
    tail = -bits % 5
    groups = (bits + tail) // 5
    size = 1 << (groups - 1).bit_length() if groups > 1 else 1
    x = int.from_bytes(data, "big") << tail
    for shift, low, high in _spread(size):
        x = (x & low) | ((x & high) << shift)
    return x.to_bytes(size, "big")[size - groups :].translate(_B32_LOWER).decode("ascii")


@dataclass(frozen=True, slots=True)
class Flow:
    """
    One application flow as the agent sees it.

    @ivar transport: C{"udp"}, C{"tcp"} or C{"tls"}.
    @ivar local: the agent's address the application talks to.
    @ivar remote: the application's address (source address and port).
    @ivar conn_id: the connection's number on stream transports, else C{None}.
    """

    transport: str
    local: tuple[str, int]
    remote: tuple[str, int]
    conn_id: int | None = None

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(
        self,
        transport: str,
        local: tuple[str, int],
        remote: tuple[str, int],
        conn_id: int | None = None,
    ) -> None:
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "local", local)
        object.__setattr__(self, "remote", remote)
        object.__setattr__(self, "conn_id", conn_id)


@dataclass(frozen=True, slots=True)
class FlowToken:
    """
    A decoded, authenticated flow token.

    @ivar kind: one of L{KIND_VIA}, L{KIND_ROUTE}, L{KIND_CONTACT}.
    @ivar session_id: the tunnel session it names.
    @ivar flow_id: the application flow inside that session.
    @ivar extra: kind-specific bytes (branch hash, contact hash).
    """

    kind: bytes
    session_id: str
    flow_id: int
    extra: bytes = b""

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, kind: bytes, session_id: str, flow_id: int, extra: bytes = b'') -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "session_id", session_id)
        object.__setattr__(self, "flow_id", flow_id)
        object.__setattr__(self, "extra", extra)


class FlowTokenCodec:
    """
    Encode and authenticate flow tokens.

    Tokens are lower-case base32 without padding, so they are valid both as
    a SIP URI user part and as a C{Via} branch token, and survive
    case-folding by sloppy peers.
    """

    def __init__(self, secret: bytes) -> None:
        """
        @param secret: the per-process key (at least 16 bytes).
        @raise ValueError: if the secret is too short.
        """
        if len(secret) < 16:
            raise ValueError("flow token secret must be at least 16 bytes")
        self._secret = secret
        # HMAC-SHA256 (RFC 2104) with the key's two hash states made once
        # and copied for each MAC: the MAC of hmac.digest in C calls only,
        # without setting the key up (and OpenSSL looking SHA-256 up) each
        # time (0.7 against 1.8 us here)
        key = hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))
        self._encoded: dict[tuple[bytes, str, int, bytes], str] = {}
        self._decoded: dict[str, FlowToken] = {}

    def _mac(self, payload: bytes) -> bytes:
        """
        The first L{_MAC_LEN} bytes of the HMAC-SHA256 of C{payload}.
        """
        inner = self._inner.copy()
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_MAC_LEN]

    def _remember(self, token: str, decoded: FlowToken) -> None:
        """
        Remember an authentic token (one we made or checked) and its
        meaning, within L{TOKEN_CACHE_SIZE}.
        """
        if len(self._decoded) >= TOKEN_CACHE_SIZE:
            self._decoded.clear()
            self._encoded.clear()
        self._decoded[token] = decoded
        self._encoded[decoded.kind, decoded.session_id, decoded.flow_id, decoded.extra] = token

    @property
    def secret(self) -> bytes:
        """
        The key (kept across a restart with C{--state-file}).
        """
        return self._secret

    def encode(
        self, kind: bytes, session_id: str, flow_id: int, extra: bytes = b""
    ) -> str:
        """
        Build a token.

        @raise ValueError: for an unknown kind, an over-long session id or a
            flow id outside 0..2**32-1 (caller bugs).
        """
        token = self._encoded.get((kind, session_id, flow_id, extra))
        if token is not None:
            return token
        if kind not in _KINDS:
            raise ValueError(f"unknown token kind {kind!r}")
        sess = session_id.encode("utf-8")
        if len(sess) > _MAX_SESSION:
            raise ValueError("session id too long for a flow token")
        if not 0 <= flow_id < 2**32:
            raise ValueError("flow id out of range")
        payload = kind + _FLOW.pack(flow_id) + bytes([len(sess)]) + sess + extra
        mac = self._mac(payload)
        token = b32_lower(payload + mac)
        self._remember(token, FlowToken(kind, session_id, flow_id, bytes(extra)))
        return token

    def decode(self, token: str | None, kind: bytes | None = None) -> FlowToken | None:
        """
        Check and decode a token.

        @param kind: if given, the token must be of that kind.
        @return: the token, or C{None} if it is malformed, forged or of
            another kind.  Never raises.
        """
        if not token or len(token) > 256:
            return None
        known = self._decoded.get(token)
        if known is not None:
            return known if kind is None or known.kind == kind else None
        text = token.upper()
        text += "=" * (-len(text) % 8)
        try:
            raw = base64.b32decode(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return None
        if len(raw) < 1 + 4 + 1 + _MAC_LEN:
            return None
        payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        good = self._mac(payload)
        if not hmac.compare_digest(mac, good):
            return None
        k = payload[:1]
        if k not in _KINDS or (kind is not None and k != kind):
            return None
        (flow_id,) = _FLOW.unpack_from(payload, 1)
        slen = payload[5]
        if 6 + slen > len(payload):
            return None
        try:
            session = payload[6 : 6 + slen].decode("utf-8")
        except UnicodeDecodeError:
            return None
        decoded = FlowToken(k, session, flow_id, bytes(payload[6 + slen :]))
        self._remember(token, decoded)
        return decoded


@dataclass(slots=True)
class _FlowEntry:
    flow: Flow
    flow_id: int
    expires: float | None  # None: lives until the connection closes


@dataclass(slots=True)
class FlowTable:
    """
    The agent's table of application flows.

    UDP flows live C{idle_lifetime} seconds after their last use, or longer
    when a registration through them asked for more (L{extend}).  Stream
    flows live until L{closed} is called for their connection.

    @ivar idle_lifetime: seconds a UDP flow lives after its last use.
    @ivar max_flows: the table's limit; beyond it the flow that expires
        soonest is forgotten.
    """

    idle_lifetime: float = 300.0
    max_flows: int = 4096
    _by_flow: dict[Flow, _FlowEntry] = field(default_factory=dict, init=False)
    _by_id: dict[int, _FlowEntry] = field(default_factory=dict, init=False)
    _heap: list[tuple[float, int]] = field(default_factory=list, init=False)
    _next_id: int = field(default=1, init=False)

    def __len__(self) -> int:
        return len(self._by_id)

    def use(self, flow: Flow, now: float) -> int:
        """
        Find or create the entry for C{flow}, refresh its lifetime.

        @return: its flow id.
        """
        entry = self._by_flow.get(flow)
        if entry is None:
            if len(self._by_id) >= self.max_flows:
                self._evict_one()
            fid = self._next_id
            self._next_id = self._next_id % (2**32 - 1) + 1
            entry = _FlowEntry(flow, fid, None)
            self._by_flow[flow] = entry
            self._by_id[fid] = entry
        if flow.conn_id is None:
            expires = now + self.idle_lifetime
            if entry.expires is None:
                entry.expires = expires
                heapq.heappush(self._heap, (expires, entry.flow_id))
            elif expires > entry.expires:
                # its time in the heap is earlier: L{expire} moves it on
                entry.expires = expires
        return entry.flow_id

    def lookup(self, flow_id: int, now: float) -> Flow | None:
        """
        @return: the flow with this id, or C{None} if unknown or expired.
        """
        entry = self._by_id.get(flow_id)
        if entry is None:
            return None
        if entry.expires is not None and entry.expires <= now:
            self._forget(entry)
            return None
        return entry.flow

    def extend(self, flow_id: int, seconds: float, now: float) -> None:
        """
        Keep a UDP flow at least C{seconds} from C{now} (registration expiry
        plus margin).  Stream flows are not affected.
        """
        entry = self._by_id.get(flow_id)
        if entry is None or entry.expires is None:
            return
        expires = now + seconds
        if expires > entry.expires:
            # its time in the heap is earlier: L{expire} moves it on
            entry.expires = expires

    def closed(self, flow: Flow) -> None:
        """
        Forget a flow (its connection closed).
        """
        entry = self._by_flow.get(flow)
        if entry is not None:
            self._forget(entry)

    def closed_connection(self, conn_id: int) -> list[Flow]:
        """
        Forget every flow of one stream connection.

        @return: the flows forgotten.
        """
        gone = [e for e in self._by_id.values() if e.flow.conn_id == conn_id]
        for e in gone:
            self._forget(e)
        return [e.flow for e in gone]

    def expire(self, now: float) -> None:
        """
        Forget UDP flows whose lifetime ended at or before C{now}.
        """
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, fid = heapq.heappop(heap)
            entry = self._by_id.get(fid)
            if entry is None or entry.expires is None:
                continue
            if entry.expires <= now:
                self._forget(entry)
            else:
                # used since it was pushed: its time moved on
                heapq.heappush(heap, (entry.expires, fid))

    def next_deadline(self) -> float | None:
        """
        @return: when the next UDP flow may expire, or C{None}: no later
            than its lifetime ends (a flow used since keeps its earlier
            time in the heap, which L{expire} then moves on; not one push
            per message).
        """
        heap = self._heap
        while heap:
            when, fid = heap[0]
            entry = self._by_id.get(fid)
            if entry is None or entry.expires is None:
                heapq.heappop(heap)
                continue
            return when
        return None

    def export_udp(self, now: float, flow_ids: set[int] | None = None) -> list[dict[str, Any]]:
        """
        The UDP flows that live past C{now} (those of C{flow_ids} only,
        when given), JSON-ready, their lifetimes relative to C{now}: what a
        restarted agent needs to reach its phones again through the same
        flow ids (L{restore_udp}).  Stream flows end with the process.
        """
        out = []
        for entry in self._by_id.values():
            flow = entry.flow
            if flow.conn_id is not None or entry.expires is None or entry.expires <= now:
                continue
            if flow_ids is not None and entry.flow_id not in flow_ids:
                continue
            out.append(
                {
                    "flow_id": entry.flow_id,
                    "local": [flow.local[0], flow.local[1]],
                    "remote": [flow.remote[0], flow.remote[1]],
                    "ttl": entry.expires - now,
                }
            )
        return out

    def restore_udp(self, entries: Any, now: float) -> int:
        """
        Take back UDP flows that L{export_udp} gave (in another process),
        with their flow ids; an entry that is malformed, expired, or whose
        id or address is taken already is skipped.  New flows get ids
        above the restored ones.

        @return: the number restored.
        """
        if not isinstance(entries, list):
            return 0
        count = 0
        for item in entries:
            try:
                fid = item["flow_id"]
                local = (str(item["local"][0]), int(item["local"][1]))
                remote = (str(item["remote"][0]), int(item["remote"][1]))
                ttl = float(item["ttl"])
            except (KeyError, IndexError, TypeError, ValueError, OverflowError):
                continue
            if (
                not isinstance(fid, int)
                or not 0 < fid < 2**32
                or not 0 < ttl < 2**31
                or fid in self._by_id
                or not all(0 <= port < 65536 for _, port in (local, remote))
            ):
                continue
            flow = Flow("udp", local, remote)
            if flow in self._by_flow or len(self._by_id) >= self.max_flows:
                continue
            entry = _FlowEntry(flow, fid, now + ttl)
            self._by_flow[flow] = entry
            self._by_id[fid] = entry
            heapq.heappush(self._heap, (now + ttl, fid))
            self._next_id = max(self._next_id, fid % (2**32 - 1) + 1)
            count += 1
        return count

    def _evict_one(self) -> None:
        victim = None
        for e in self._by_id.values():
            key = e.expires if e.expires is not None else float("inf")
            if victim is None or key < victim[0]:
                victim = (key, e)
        if victim is not None:
            self._forget(victim[1])

    def _forget(self, entry: _FlowEntry) -> None:
        self._by_id.pop(entry.flow_id, None)
        if self._by_flow.get(entry.flow) is entry:
            del self._by_flow[entry.flow]
