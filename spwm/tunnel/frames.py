# -*- test-case-name: tests.test_tunnel_frames -*-
"""
The tunnel's wire format: frame types, error codes, the handshake preface and
the functions that encode frames.

Every frame is an 8-byte header followed by its payload::

    0        1        2                 6                 8
    +--------+--------+--------+--------+--------+--------+----------...
    |  type  | flags  |     channel (u32, big end.)  | length (u16)  | payload
    +--------+--------+--------+--------+--------+--------+----------...

See C{docs/protocol.md} for the meaning of every field.
"""

from __future__ import annotations

import enum
import json
import struct
from typing import Any

#: The frame header: type, flags, channel, payload length.
HEADER = struct.Struct(">BBIH")
HEADER_SIZE = HEADER.size

#: The largest payload the wire format can express.
MAX_PAYLOAD = 0xFFFF

#: The handshake preface: magic, two version bytes, two reserved bytes.
MAGIC = b"SPWM"
PREFACE = struct.Struct(">4sBBH")
PREFACE_SIZE = PREFACE.size

#: Versions of the tunnel protocol this code speaks (lowest, highest).
MIN_VERSION = 1
MAX_VERSION = 1

#: The TLS ALPN protocol name of version 1.
ALPN = b"spwm/1"


class FrameType(enum.IntEnum):
    """
    The type byte of a frame.
    """

    CONTROL = 0x01
    SIP = 0x02
    DATAGRAM = 0x03
    STREAM_DATA = 0x04
    PING = 0x05
    PONG = 0x06
    GOAWAY = 0x07
    ERROR = 0x08


class ChannelKind(enum.Enum):
    """
    What a channel carries.
    """

    DATAGRAM = "datagram"
    STREAM = "stream"


class ErrorCode(enum.IntEnum):
    """
    Codes carried by ERROR and GOAWAY frames and channel-close messages.
    """

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    FRAME_TOO_LARGE = 2
    UNKNOWN_FRAME_TYPE = 3
    VERSION_MISMATCH = 4
    HANDSHAKE_TIMEOUT = 5
    KEEPALIVE_TIMEOUT = 6
    UNKNOWN_CHANNEL = 7
    CHANNEL_LIMIT = 8
    QUEUE_OVERFLOW = 9
    REFUSED = 10
    INTERNAL_ERROR = 11
    GOING_AWAY = 12
    BAD_CONTROL = 13
    FLOOD = 14


#: Flag bit of DATAGRAM frames: the datagram belongs to the second component
#: of the channel (RTCP beside RTP).
FLAG_COMPONENT = 0x01
#: Flag bit of DATAGRAM frames: the payload starts with a u32 sequence
#: number (network order), per channel and component, stamped by the
#: sending session so that the receiving one can drop the copies it got on
#: several connections.  Only between peers that both said C{"paths"}.
#: The same bit of SIP frames: the payload starts with a u32 number of the
#: message in its session and direction, so that the receiving session
#: takes each message once, in order, when the sender sent it again on
#: another connection (the carrier moved).  Only between peers that both
#: said C{"paths"} and C{"sip-seq"}.
FLAG_SEQ = 0x02
#: Flag bit of STREAM_DATA frames: the sender's end of the stream.
FLAG_FIN = 0x01

#: Flags defined per frame type; any other bit set is a protocol error.
#: Flag bit of SIP and DATAGRAM frames: the payload is sealed with a user's
#: key (see L{spwm.tunnel.cipher}).
FLAG_SEALED = 0x80

ALLOWED_FLAGS = {
    FrameType.CONTROL: 0,
    FrameType.SIP: FLAG_SEQ | FLAG_SEALED,
    FrameType.DATAGRAM: FLAG_COMPONENT | FLAG_SEQ | FLAG_SEALED,
    FrameType.STREAM_DATA: FLAG_FIN,
    FrameType.PING: 0,
    FrameType.PONG: 0,
    FrameType.GOAWAY: 0,
    FrameType.ERROR: 0,
}

#: Frame types that must carry channel 0.
CONNECTION_LEVEL = frozenset(
    {
        FrameType.CONTROL,
        FrameType.PING,
        FrameType.PONG,
        FrameType.GOAWAY,
        FrameType.ERROR,
    }
)

_ERROR_HEAD = struct.Struct(">H")


def encode_frame(ftype: int, flags: int, channel: int, payload: bytes) -> bytes:
    """
    Encode one frame.

    @raise ValueError: if the payload is larger than L{MAX_PAYLOAD}.
    """
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(ftype, flags, channel, len(payload)) + payload


#: The encoder of control messages, made once: C{json.dumps} with
#: arguments makes a new encoder for every message (a few channel opens,
#: closes and acknowledgements per call).
_CONTROL_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def encode_control(message: dict[str, Any]) -> bytes:
    """
    Encode a CONTROL frame holding a JSON object.
    """
    payload = _CONTROL_JSON.encode(message).encode()
    return encode_frame(FrameType.CONTROL, 0, 0, payload)


def encode_error(code: int, reason: str) -> bytes:
    """
    Encode an ERROR frame.
    """
    body = reason.encode("utf-8", "replace")[: MAX_PAYLOAD - _ERROR_HEAD.size]
    return encode_frame(FrameType.ERROR, 0, 0, _ERROR_HEAD.pack(code) + body)


def decode_error(payload: bytes) -> tuple[int, str]:
    """
    Decode the payload of an ERROR frame.

    @raise ValueError: if it is shorter than its code.
    """
    if len(payload) < _ERROR_HEAD.size:
        raise ValueError("error frame shorter than its code")
    (code,) = _ERROR_HEAD.unpack_from(payload)
    return code, payload[_ERROR_HEAD.size :].decode("utf-8", "replace")


def encode_preface(low: int, high: int) -> bytes:
    """
    Encode the handshake preface.  The agent sends the range of versions it
    speaks; the contact point answers with the version it chose in both bytes,
    or with 0 if there is none in common.
    """
    return PREFACE.pack(MAGIC, low, high, 0)
