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
channel field.  Counters only grow (the tunnel is an ordered stream), so a
replayed or reordered frame fails too.  Once a context has received a sealed
frame, unsealed frames for it are refused: before that they are accepted, so
that the switch-over (the key exists only once the 2xx to REGISTER has
crossed) loses nothing.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

#: Flag bit of SIP, DATAGRAM and STREAM_DATA frames: the payload is sealed.
FLAG_SEALED = 0x80

_COUNTER = struct.Struct(">Q")
_AAD = struct.Struct(">BI")
_OVERHEAD = 8 + 16


class _Context:
    __slots__ = ("aead", "send_counter", "recv_counter", "sealed_seen", "send_prefix", "recv_prefix")

    def __init__(self, aead: ChaCha20Poly1305, sender: int) -> None:
        self.aead = aead
        self.send_counter = 0
        self.recv_counter = -1
        self.sealed_seen = False
        self.send_prefix = bytes([sender, 0, 0, 0])
        self.recv_prefix = bytes([1 - sender, 0, 0, 0])


class UserCipher:
    """
    The sealing contexts of one tunnel end.

    @ivar refused: frames refused (bad tag, replay, unsealed after sealed).
    """

    def __init__(self, sender: int) -> None:
        """
        @param sender: 0 on the agent, 1 on the contact point (the nonce's
            direction byte).
        """
        self._sender = sender
        self._flows: dict[int, _Context] = {}
        self._channels: dict[int, _Context] = {}
        self.refused = 0

    def bind_flow(self, flow_id: int, key: bytes) -> None:
        """
        Seal the SIP of application flow C{flow_id} with C{key} from now on.
        """
        if flow_id not in self._flows:
            self._flows[flow_id] = _Context(ChaCha20Poly1305(key), self._sender)

    def bind_channel(self, channel_id: int, flow_id: int) -> bool:
        """
        Seal channel C{channel_id} with the key of C{flow_id} (the flow
        whose call the channel carries).

        @return: whether that flow has a key.
        """
        context = self._flows.get(flow_id)
        if context is None:
            return False
        # Its own counters: the channel field in the additional data keeps
        # a frame of one channel from passing as another's.
        self._channels[channel_id] = _Context(context.aead, self._sender)
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
        counter = context.send_counter
        context.send_counter = counter + 1
        head = _COUNTER.pack(counter)
        return head + context.aead.encrypt(context.send_prefix + head, data, _AAD.pack(ftype, channel))

    def open(self, context: _Context | None, ftype: int, channel: int, data: bytes, sealed: bool) -> bytes | None:
        """
        Open one payload, or return C{None} (and count) when it must be refused.
        """
        if context is None:
            if sealed:
                self.refused += 1
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
        if counter <= context.recv_counter:
            self.refused += 1
            return None
        try:
            plain = context.aead.decrypt(context.recv_prefix + data[:8], data[8:], _AAD.pack(ftype, channel))
        except InvalidTag:
            self.refused += 1
            return None
        context.recv_counter = counter
        context.sealed_seen = True
        return plain
