# -*- test-case-name: tests.test_security_keys -*-
"""
The per-user key, derived from a successful SIP registration.

When a REGISTER that carries a digest C{Authorization} is answered 2xx, both
halves derive the same key from the digest parameters and keying material
exported from the tunnel's TLS session (RFC 5705)::

    ikm  = TLS-Exporter("EXPORTER-spwm-user-key", context = none, 32 bytes)
           (empty for a plaintext tunnel)
    info = "spwm/1 user key" 0x00 username 0x00 realm 0x00 nonce 0x00
           cnonce 0x00 nc 0x00 response            (UTF-8)
    key  = HKDF-SHA256(salt = "spwm/1", ikm, info, 32 bytes)

Every session of an agent and a contact point that both say so in their
hellos (C{"session_key": 1}) also has a *session key*, made from the same
keying material when the session is made, without a registration::

    info = "spwm/1 session key" 0x00 session-id     (UTF-8)
    key  = HKDF-SHA256(salt = "spwm/1", ikm, info, 32 bytes)

so that a session whose registrations carry no digest credentials (a
registrar that does not authenticate, the embedded one) can be resumed
too: it proves the agent is the one that made the session.

A resumption proof for a fresh challenge from the contact point is::

    proof = HMAC-SHA256(key, "spwm/1 resume" 0x00 challenge 0x00 old-session-id)

and one sent in the hello of the new connection, before any challenge, is
bound to that connection's TLS session instead (its keying material is as
fresh as a challenge, and no other connection has it)::

    binding = TLS-Exporter("EXPORTER-spwm-user-key", context = none, 32 bytes)
              of the new connection
    proof   = HMAC-SHA256(key, "spwm/1 resume-bound" 0x00 binding 0x00 old-session-id)

Nothing here is configured anywhere.  Without TLS the digest parameters are
visible to anyone on the path and the key is not secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from attrs import frozen
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

EXPORTER_LABEL = b"EXPORTER-spwm-user-key"
KEY_LENGTH = 32

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)')


@frozen
class DigestCredentials:
    """
    The parameters of a digest C{Authorization} that the key is made from.
    """

    username: str
    realm: str
    nonce: str
    cnonce: str
    nc: str
    response: str

    @property
    def user_id(self) -> str:
        """
        The name of the user this key belongs to: C{username@realm}.
        """
        return f"{self.username}@{self.realm}"


def parse_digest(value: str) -> DigestCredentials | None:
    """
    Read a C{Digest} credentials header value (RFC 2617, RFC 7616: MD5 or
    SHA-256 alike: the algorithm does not matter here).

    @return: the credentials, or C{None} if it is not a digest with at least
        username, realm, nonce and response.
    """
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            return None
        name, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name] = raw
        position = match.end()
    try:
        return DigestCredentials(
            params["username"],
            params["realm"],
            params["nonce"],
            params.get("cnonce", ""),
            params.get("nc", ""),
            params["response"],
        )
    except KeyError:
        return None


def derive_user_key(credentials: DigestCredentials, exported: bytes | None) -> bytes:
    """
    The per-user key (see the module docstring).

    @param exported: keying material exported from the tunnel's TLS
        session with L{EXPORTER_LABEL}, or C{None} for a plaintext tunnel.
    """
    c = credentials
    info = b"\x00".join(
        part.encode("utf-8")
        for part in ("spwm/1 user key", c.username, c.realm, c.nonce, c.cnonce, c.nc, c.response)
    )
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LENGTH, salt=b"spwm/1", info=info).derive(exported or b"")


def derive_session_key(exported: bytes | None, session_id: str) -> bytes:
    """
    The session key (see the module docstring).

    @param exported: keying material exported with L{EXPORTER_LABEL}
        from the TLS session of the connection that made the session, or
        C{None} for a plaintext tunnel (then the key is not secret: the
        halves make none, L{spwm.security.resume.session_key}).
    """
    info = b"spwm/1 session key\x00" + session_id.encode("utf-8")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LENGTH, salt=b"spwm/1", info=info).derive(exported or b"")


def resumption_proof(key: bytes, challenge: bytes, session_id: str, *, bound: bool = False) -> str:
    """
    Prove possession of C{key} for a fresh C{challenge}, bound to the
    session being resumed; hex text.

    @param bound: C{challenge} is the new connection's own keying
        material (L{EXPORTER_LABEL}), not the contact point's challenge:
        the proof went in the hello (a round trip sooner).
    """
    label = b"spwm/1 resume-bound\x00" if bound else b"spwm/1 resume\x00"
    message = label + challenge + b"\x00" + session_id.encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def check_proof(key: bytes, challenge: bytes, session_id: str, proof: object, *, bound: bool = False) -> bool:
    """
    Whether C{proof} proves possession of C{key} (constant time).
    """
    if not isinstance(proof, str):
        return False
    # Compare bytes: compare_digest refuses non-ASCII text.
    expected = resumption_proof(key, challenge, session_id, bound=bound).encode("ascii")
    return hmac.compare_digest(expected, proof.encode("utf-8", "surrogateescape"))
