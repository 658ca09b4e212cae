# -*- test-case-name: tests.test_sip_registrar -*-
"""
The contact point's embedded registrar and location proxy (sans-I/O).

With no operator proxy configured, the contact point hands every request it
would send to the operator network to L{EmbeddedRegistrar.handle_request}
and feeds what comes back into its own network input, as if the registrar
were a peer on the operator network (except a request inside a dialog with
an operator-side UA, for that UA's recorded remote target, which the
contact point sends there itself: see
L{spwm.sip.contact_proxy.ContactSipProxy}):

  - C{REGISTER} (no authentication) stores the bindings of an
    address-of-record with their C{Path} and expiry and is answered
    C{200 OK} listing the live bindings;
  - a request that still carries a C{Route} goes back unchanged (its next
    hop is the contact point itself: a loose route from C{Record-Route} or
    C{Path});
  - any other request for a registered address-of-record is retargeted to
    the newest live binding (Request-URI := contact) and routed along its
    stored C{Path}, which names the tunnel and flow;
  - unknown users get C{404}, users without live bindings C{480};
  - a C{PUBLISH} gets C{489 Bad Event}: there is no presence server (no
    event state compositor, RFC 3903), and routing it to the registered
    contacts would hand a phone its own publication.

Addresses-of-record are compared whole, in their canonical form
(L{aor_key}).  With C{domains} the registrar serves only those: a REGISTER
for another domain gets C{403} (RFC 3261 10.3 step 1: it has no bindings
for that domain and, without an operator proxy, nowhere to forward to).

The registrar is stateless apart from its bindings: it does not fork in
parallel (a stateless proxy cannot aggregate responses); it picks the newest
binding.
"""

from __future__ import annotations

import math
from typing import Any

from attrs import define, field, frozen

from spwm.sip.errors import SipParseError
from spwm.sip.message import SipMessage, make_response, stable_tag

from spwm.sip.names import normalize_host
from spwm.sip.uri import parse_name_addr, parse_uri, unescape


@frozen
class Binding:
    """
    One contact of an address-of-record.

    @ivar key: the C{+sip.instance} value, or the contact URI without one.
    @ivar contact: the contact URI text.
    @ivar path: the C{Path} values, top first.
    @ivar expires: absolute expiry time.
    @ivar params: the contact's header parameters other than C{expires}.
    @ivar registered: when it was last refreshed (newest wins).
    """

    key: str
    contact: str
    path: tuple[str, ...]
    expires: float
    params: tuple[tuple[str, str | None], ...] = ()
    registered: float = 0.0


def aor_key(uri: Any) -> str:
    """
    The table key of an address-of-record URI, its canonical form (RFC 3261
    10.3 step 5, 19.1.4): C{sips} read as C{sip}, the user part unescaped
    (its case kept), the host lower-cased (an IP literal in its compressed
    form), the port only when it is not the scheme's default, no
    parameters or headers.

    @return: C{user@host} or C{user@host:port}.
    """
    user = unescape(uri.user or "")
    host = normalize_host(uri.host)
    if ":" in host:
        host = f"[{host}]"
    if uri.port is not None and uri.port != (5061 if uri.scheme == "sips" else 5060):
        host = f"{host}:{uri.port}"
    return f"{user}@{host}"


def domain_key(domain: str) -> str:
    """
    @return: a C{--domain} value as it is compared with the host of an
        address-of-record (lower-cased, IP literals compressed).
    """
    return normalize_host(domain)


@define
class EmbeddedRegistrar:
    """
    A small registrar and location proxy without authentication.

    @ivar default_expires: expiry granted when a REGISTER names none.
    @ivar max_expires: the longest expiry granted.
    @ivar max_aors: the table's limit; REGISTERs for new AORs beyond it get
        C{503}.
    @ivar max_bindings: bindings per AOR; the oldest go beyond it.
    @ivar domains: the domains served (see L{domain_key}), or C{None} for
        any; a REGISTER for an address-of-record in another domain gets
        C{403}.
    """

    default_expires: int = 3600
    max_expires: int = 86400
    max_aors: int = 10000
    max_bindings: int = 16
    domains: frozenset[str] | None = field(
        default=None,
        converter=lambda v: None if v is None else frozenset(domain_key(d) for d in v),
    )
    _table: dict[str, dict[str, Binding]] = field(factory=dict, init=False)

    def bindings(self, aor: str, now: float | None = None) -> list[Binding]:
        """
        @param aor: an AOR URI text (C{sip:alice@example.org}).
        @return: its bindings, live at C{now} when given, newest first.
        """
        try:
            key = aor_key(parse_uri(aor))
        except SipParseError:
            return []
        out = list(self._table.get(key, {}).values())
        if now is not None:
            out = [b for b in out if b.expires > now]
        return sorted(out, key=lambda b: -b.registered)

    def expire(self, now: float) -> None:
        """
        Forget bindings whose expiry passed.
        """
        for key in list(self._table):
            per = self._table[key]
            for k in [k for k, b in per.items() if b.expires <= now]:
                del per[k]
            if not per:
                del self._table[key]

    def export_bindings(self, now: float) -> list[dict[str, Any]]:
        """
        The live bindings as JSON-ready data, times relative to C{now}
        (kept across a restart by L{spwm.state}).
        """
        return [
            {
                "aor": aor,
                "key": b.key,
                "contact": b.contact,
                "path": list(b.path),
                "ttl": b.expires - now,
                "params": [list(p) for p in b.params],
                "age": now - b.registered,
            }
            for aor, per in self._table.items()
            for b in per.values()
            if b.expires > now
        ]

    def import_bindings(self, data: Any, now: float) -> int:
        """
        Restore what L{export_bindings} gave (within the table's limits).

        @return: the number of bindings restored.
        @raise ValueError: C{data} is not what L{export_bindings} makes.
        """
        count = 0
        try:
            for b in data:
                ttl = float(b["ttl"])
                age = float(b["age"])
                if not (math.isfinite(ttl) and math.isfinite(age)) or ttl <= 0:
                    continue
                aor = str(b["aor"])
                per = self._table.get(aor)
                if per is None:
                    if len(self._table) >= self.max_aors:
                        continue
                    per = self._table[aor] = {}
                if len(per) >= self.max_bindings:
                    continue
                params = tuple((str(k), None if v is None else str(v)) for k, v in b["params"])
                binding = Binding(
                    str(b["key"]), str(b["contact"]), tuple(str(p) for p in b["path"]),
                    now + ttl, params, now - age,
                )
                per[binding.key] = binding
                count += 1
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"malformed registrar bindings: {e!r}") from None
        return count

    def handle_request(self, msg: SipMessage, now: float) -> list[SipMessage]:
        """
        Process a request the contact point sends to the operator side.

        @return: messages that arrive from the "network" in reply: a
            response, or the request itself retargeted.  Nothing for an ACK
            that cannot be routed.
        """
        if msg.has("Route"):
            return [msg]
        if msg.method == "REGISTER":
            return [self._register(msg, now)]
        if msg.method == "PUBLISH":
            # RFC 3903 6 step 2: where the address-of-record lives, the
            # event state compositor answers an event package it does not
            # support with 489; here it supports none
            return self._answer(msg, 489, "Bad Event (no presence server here)")
        try:
            target = aor_key(parse_uri(msg.uri or ""))
        except SipParseError:
            return self._answer(msg, 400, "Bad Request: malformed Request-URI")
        per = self._table.get(target)
        if per is None:
            return self._answer(msg, 404, "Not Found")
        live = sorted(
            (b for b in per.values() if b.expires > now), key=lambda b: -b.registered
        )
        if not live:
            return self._answer(msg, 480, "Temporarily Unavailable")
        best = live[0]
        msg.uri = best.contact
        for route in reversed(best.path):
            msg.prepend_header("Route", route)
        return [msg]

    def serves(self, uri: Any) -> bool:
        """
        @return: whether the host of C{uri} is a domain this registrar
            serves (always, without C{domains}).
        """
        return self.domains is None or normalize_host(uri.host) in self.domains

    def _answer(self, msg: SipMessage, status: int, reason: str) -> list[SipMessage]:
        if msg.method == "ACK":
            return []
        return [make_response(msg, status, reason, to_tag=stable_tag(msg))]

    def _register(self, msg: SipMessage, now: float) -> SipMessage:
        try:
            to = parse_name_addr(msg.get("To") or "").uri
        except SipParseError:
            return self._answer(msg, 400, "Bad Request: malformed To")[0]
        if to.scheme not in ("sip", "sips") or not to.host:
            return self._answer(msg, 400, "Bad Request: To is not a SIP URI")[0]
        if not self.serves(to):
            # RFC 3261 10.3 step 1: no bindings for that domain here, and
            # no proxy to forward to.
            return self._answer(msg, 403, "Forbidden: domain not served here")[0]
        aor = aor_key(to)
        header_expires = msg.get("Expires")
        values = msg.get_all("Contact")
        per = self._table.get(aor)
        if per is None:
            if len(self._table) >= self.max_aors and values:
                return self._answer(msg, 503, "Service Unavailable: registrar full")[0]
            per = {}
        if any(v.strip() == "*" for v in values):
            if (
                header_expires is None
                or header_expires.strip() != "0"
                or len(values) != 1
            ):
                return self._answer(
                    msg, 400, "Bad Request: wildcard Contact needs Expires: 0"
                )[0]
            per.clear()
        path = tuple(msg.get_all("Path"))
        for value in values:
            if value.strip() == "*":
                continue
            try:
                na = parse_name_addr(value)
            except SipParseError:
                return self._answer(msg, 400, "Bad Request: malformed Contact")[0]
            expires = None
            params = []
            instance = None
            for name, val in na.params:
                low = name.lower()
                if low == "expires":
                    expires = val
                    continue
                if low == "+sip.instance":
                    instance = val
                params.append((name, val))
            if expires is None:
                expires = header_expires
            try:
                secs = int(expires) if expires is not None else self.default_expires
            except ValueError:
                return self._answer(msg, 400, "Bad Request: malformed expires")[0]
            secs = min(max(secs, 0), self.max_expires)
            contact = str(na.uri)
            key = instance or contact
            if secs == 0:
                per.pop(key, None)
                continue
            per.pop(key, None)
            per[key] = Binding(key, contact, path, now + secs, tuple(params), now)
            while len(per) > self.max_bindings:
                del per[next(iter(per))]
        if per:
            self._table[aor] = per
        else:
            self._table.pop(aor, None)
        extra = []
        for b in sorted(per.values(), key=lambda b: -b.registered):
            if b.expires <= now:
                continue
            ps = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in b.params)
            extra.append(
                ("Contact", f"<{b.contact}>{ps};expires={int(b.expires - now)}")
            )
        for p in path:
            extra.append(("Path", p))
        return make_response(msg, 200, "OK", to_tag=stable_tag(msg), extra_headers=extra)
