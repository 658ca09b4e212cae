# -*- test-case-name: tests.test_tunnel_cipher -*-
"""
Per-user ciphering of tunnel frames (sans-I/O).

With C{--user-ciphering} on both halves, the SIP frames of a registered
user's application flow and the datagrams of the media channels of that
flow's calls are sealed with the user's key (L{spwm.security.keys}) with
ChaCha20-Poly1305.  A sealed frame has the flag L{FLAG_SEALED} and the
payload::

    counter (8 bytes, big-endian) | ciphertext | tag (16 bytes)

The nonce is one direction byte (0: agent to contact point, 1: back), three
zero bytes and the counter; the additional data is the frame type and the
channel field.

The send counter is one per key and direction: a flow's SIP and the
channels of its calls (which share its key) take their counters from one
sequence, so no two frames sealed under a key have the same nonce, whatever
channel they are on.  It starts at a random point below 2**62 each time a
cipher state binds the key (a new session, a resumed one, a contact point
restarted from its state file): the same key bound again after a
resumption continues nowhere near the counters it used before (two ranges
of a billion frames overlap with a chance of about 2**-32).  A receiver
sees, per context, counters that grow with gaps; a receiver of an older
version (strictly growing counters per context, any first counter)
accepts them too.

One L{UserCipher} serves a whole session: every path (TLS connection or
QUIC path) of a session with several seals and opens with it, so a key's
send counter is shared by all paths and no nonce is ever used twice, and a
datagram copied onto several paths is sealed once per copy (each copy its
own counter).  Across paths frames arrive out of order, so the receiver
keeps a sliding replay window of L{WINDOW} counters per context (as DTLS
and IPsec do): a counter above the highest seen, or within the window and
not seen yet, opens; one seen already or older than the window is refused
(a replay).  Once a context has received a sealed
frame, unsealed frames for it are refused: before that they are accepted, so
that the switch-over (the key exists only once the 2xx to REGISTER has
crossed) loses nothing.
"""

from __future__ import annotations

import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

#: Flag bit of SIP, DATAGRAM and STREAM_DATA frames: the payload is sealed.
FLAG_SEALED = 0x80

_COUNTER = struct.Struct(">Q")
_AAD = struct.Struct(">BI")
#: What sealing adds to a payload: the counter and the AEAD tag.
SEAL_OVERHEAD = 8 + 16
_OVERHEAD = SEAL_OVERHEAD

#: Counters of the replay window: below the highest counter opened, a
#: counter opens once if it is within this many of it (counted in the
#: key's sequence, which the flow's SIP and all its channels share: 1024
#: is about ten seconds of one call's RTP and RTCP).
WINDOW = 1024
#: send counters start below this (random), leaving 2**62 frames of room
_START = 1 << 62


class _Sender:
    """
    The send counter of one key (shared by the contexts using the key).
    """

    __slots__ = ("counter",)

    def __init__(self, start: int) -> None:
        self.counter = start


class _Context:
    __slots__ = ("aead", "mask", "owner", "recv_counter", "recv_seen", "sealed_seen", "send", "send_prefix", "recv_prefix", "window")

    def __init__(self, aead: ChaCha20Poly1305, owner: UserCipher, send: _Sender) -> None:
        self.aead = aead
        self.owner = owner
        self.send = send
        self.window = owner.window
        self.mask = (1 << owner.window) - 1
        #: the highest counter opened (-1: none yet)
        self.recv_counter = -1
        #: bit i set: counter C{recv_counter - i} was opened
        self.recv_seen = 0
        self.sealed_seen = False
        sender = owner.sender
        self.send_prefix = bytes([sender, 0, 0, 0])
        self.recv_prefix = bytes([1 - sender, 0, 0, 0])

    def fresh(self, counter: int) -> bool:
        """
        Whether C{counter} may still open: above the highest opened, or
        within the window below it and not opened yet.
        """
        behind = self.recv_counter - counter
        if behind < 0:
            return True
        return behind < self.window and not (self.recv_seen >> behind) & 1

    def opened(self, counter: int) -> None:
        """
        Mark C{counter} as opened (after its tag checked out).
        """
        ahead = counter - self.recv_counter
        if ahead >= self.window:
            # (also the first: never shift by a random 62-bit distance)
            self.recv_seen = 1
            self.recv_counter = counter
        elif ahead > 0:
            self.recv_seen = ((self.recv_seen << ahead) | 1) & self.mask
            self.recv_counter = counter
        else:
            self.recv_seen |= 1 << -ahead


class UserCipher:
    """
    The sealing contexts of one session end (shared by all its paths).

    @ivar refused: frames refused (bad tag, replay, too old for the window,
        unsealed after sealed).
    @ivar sealed: payloads sealed.
    @ivar opened: sealed payloads opened.
    @ivar unknown: sealed payloads for a flow or channel without a key
        here (not counted as refused: a late copy of a closed channel's
        datagram on another path is one).
    """

    def __init__(self, sender: int, window: int = WINDOW) -> None:
        """
        @param sender: 0 on the agent, 1 on the contact point (the nonce's
            direction byte).
        @param window: counters in the replay window.
        """
        self.sender = sender
        self.window = window
        self._flows: dict[int, _Context] = {}
        self._channels: dict[int, _Context] = {}
        self.refused = 0
        self.sealed = 0
        self.opened = 0
        self.unknown = 0

    def bind_flow(self, flow_id: int, key: bytes) -> None:
        """
        Seal the SIP of application flow C{flow_id} with C{key} from now on.
        """
        if flow_id not in self._flows:
            self._flows[flow_id] = _Context(ChaCha20Poly1305(key), self, _Sender(secrets.randbelow(_START)))

    def bind_channel(self, channel_id: int, flow_id: int) -> bool:
        """
        Seal channel C{channel_id} with the key of C{flow_id} (the flow
        whose call the channel carries).

        @return: whether that flow has a key.
        """
        context = self._flows.get(flow_id)
        if context is None:
            return False
        # The flow's key and send counter (one nonce sequence per key), its
        # own replay window; the channel field in the additional data keeps
        # a frame of one channel from passing as another's.
        if channel_id not in self._channels:
            # bound once per session (every path's bind lands here)
            self._channels[channel_id] = _Context(context.aead, self, context.send)
        return True

    def forget_channel(self, channel_id: int) -> None:
        """
        The channel is closed.
        """
        self._channels.pop(channel_id, None)

    def flow_context(self, flow_id: int) -> _Context | None:
        return self._flows.get(flow_id)

    def channel_context(self, channel_id: int) -> _Context | None:
        return self._channels.get(channel_id)

    @staticmethod
    def seal(context: _Context, ftype: int, channel: int, data: bytes) -> bytes:
        """
        Seal one payload.
        """
        send = context.send
        counter = send.counter
        send.counter = counter + 1
        context.owner.sealed += 1
        head = _COUNTER.pack(counter)
        return head + context.aead.encrypt(context.send_prefix + head, data, _AAD.pack(ftype, channel))

    def open(self, context: _Context | None, ftype: int, channel: int, data: bytes, sealed: bool) -> bytes | None:
        """
        Open one payload, or return C{None} (and count) when it must be refused.
        """
        if context is None:
            if sealed:
                self.unknown += 1
                return None
            return data
        if not sealed:
            if context.sealed_seen:
                self.refused += 1
                return None
            return data
        if len(data) < _OVERHEAD:
            self.refused += 1
            return None
        (counter,) = _COUNTER.unpack_from(data)
        if not context.fresh(counter):
            self.refused += 1
            return None
        try:
            plain = context.aead.decrypt(context.recv_prefix + data[:8], data[8:], _AAD.pack(ftype, channel))
        except InvalidTag:
            self.refused += 1
            return None
        context.opened(counter)
        context.sealed_seen = True
        self.opened += 1
        return plain

    def snapshot(self) -> dict[str, int]:
        """
        For the status page.
        """
        return {"sealed": self.sealed, "opened": self.opened, "refused": self.refused, "unknown": self.unknown}
