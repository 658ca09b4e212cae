# -*- test-case-name: tests.test_sip_proxy -*-
"""
Registrations seen through the split proxy.

L{ContactRegistrations} is the contact point's record of the bindings the
operator's registrar accepted through each tunnel session, of the
REGISTERs on their way (and the contacts they rewrote), with the export
and import that keep them across a restart (L{spwm.state}).
L{AppBindings} is the agent's view of its applications' bindings, for the
log.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import attrs
from attrs import frozen

from spwm.addr import hostport
from spwm.sip.actions import Action, BindingChanged
from spwm.sip.errors import SipParseError
from spwm.sip.flows import KIND_CONTACT, Flow, FlowToken, FlowTokenCodec
from spwm.sip.message import SipMessage
from spwm.sip.rewrite import add_path, contacts, expires_of, param, short_hash
from spwm.sip.uri import SipUri, parse_name_addr, parse_uri

__all__ = ["AppBindings", "ContactRegistrations", "Registration", "outbound_register"]


@frozen
class Registration:
    """
    A binding the operator's registrar accepted through a tunnel.
    """

    aor: str
    contact: str
    flow_id: int
    expires: float


@attrs.define
class _Pending:
    session_id: str
    flow_id: int
    # each contact URI the REGISTER asked for -> its RFC 5626 reg-id
    contacts: dict[str, str | None]
    expires: float
    outbound: bool = False


class ContactRegistrations:
    """
    The contact point's registrations, per tunnel session.

    @ivar max_pending: at most this many REGISTERs waiting for their
        answer are remembered (the oldest go).
    """

    def __init__(
        self,
        codec: FlowTokenCodec,
        hostport: str,
        is_us: Callable[[SipUri], bool],
        *,
        contact_rewrite: bool = False,
        max_pending: int = 4096,
    ) -> None:
        """
        @param codec: makes and reads the flow tokens of rewritten contacts.
        @param hostport: the contact point's C{host:port} for them.
        @param is_us: whether a URI names the contact point.
        @param contact_rewrite: rewrite C{Contact}s to flow tokens instead
            of adding C{Path}.
        """
        self._codec = codec
        self._hostport = hostport
        self._is_us = is_us
        self.contact_rewrite = contact_rewrite
        self.max_pending = max_pending
        self._regs: dict[str, dict[tuple[str, str], Registration]] = {}
        self._pending: dict[str, _Pending] = {}
        # per session (so that forgetting one costs its own entries only):
        # (flow, contact hash) -> the original contact URI
        self._rewritten: dict[str, dict[tuple[int, bytes], str]] = {}
        # per session, the flows registered with RFC 5626 reg-id: their
        # registrar has another flow to try
        self._outbound: dict[str, set[int]] = {}

    # -- reading -------------------------------------------------------------

    def of(self, session_id: str) -> list[Registration]:
        """
        @return: the live bindings registered through C{session_id}.
        """
        return sorted(
            self._regs.get(session_id, {}).values(), key=lambda r: (r.aor, r.contact)
        )

    def listing(self) -> list[dict[str, Any]]:
        """
        @return: every live binding, for the status listing: C{session},
            C{aor}, C{contact}, C{flow}, C{expires} (the clock's seconds).
        """
        return [
            {"session": sid, "aor": r.aor, "contact": r.contact, "flow": r.flow_id, "expires": r.expires}
            for sid, regs in self._regs.items()
            for r in regs.values()
        ]

    def sessions(self) -> int:
        """
        @return: how many sessions have a registration.
        """
        return sum(1 for regs in self._regs.values() if regs)

    def __len__(self) -> int:
        """
        @return: the number of registrations.
        """
        return sum(len(regs) for regs in self._regs.values())

    def busy(self) -> bool:
        """
        @return: whether something is there to expire.
        """
        return any(self._regs.values()) or bool(self._pending)

    def outbound_flow(self, session_id: str, flow_id: int) -> bool:
        """
        @return: whether a binding registered through this flow with RFC
            5626 C{reg-id} (so the registrar knows other flows of the
            phone) is live (not kept across a restart).
        """
        return flow_id in self._outbound.get(session_id, ())

    def rewritten(self, session_id: str, flow_id: int, extra: bytes) -> str | None:
        """
        @return: the original contact URI a rewritten contact's token
            stands for, or C{None}.
        """
        return self._rewritten.get(session_id, {}).get((flow_id, extra))

    # -- REGISTER out, 2xx back ----------------------------------------------

    def outgoing(
        self,
        msg: SipMessage,
        session: str,
        fid: int,
        branch: str,
        route: str,
        now: float,
    ) -> None:
        """
        A REGISTER from C{session}'s flow C{fid} leaves with C{branch}:
        rewrite its contacts (or add C{route} to its C{Path}) and remember
        it until its answer.
        """
        found = contacts(msg)
        originals = {str(na.uri): param(na.params, "reg-id")[1] for na in found}
        outbound = outbound_register(msg, found)
        if self.contact_rewrite and found:
            out = []
            for na in found:
                uhash = short_hash(str(na.uri), 4)
                self._rewritten.setdefault(session, {})[(fid, uhash)] = str(na.uri)
                token = self._codec.encode(KIND_CONTACT, session, fid, uhash)
                uri = parse_uri(f"sip:{token}@{self._hostport}")
                out.append(str(dataclasses.replace(na, uri=uri, angle=True)))
            msg.set_header("Contact", ", ".join(out))
        elif not self.contact_rewrite:
            if outbound:
                # RFC 5626 5.1: the first hop supports outbound; the
                # registrar keeps the flow (and answers 439 without it)
                route = route[:-1] + ";ob>" if route.endswith(">") else route + ";ob"
            add_path(msg, route)
        self._pending[branch] = _Pending(session, fid, originals, now + 64.0, outbound)
        while len(self._pending) > self.max_pending:
            del self._pending[next(iter(self._pending))]

    def answered(
        self, msg: SipMessage, tok: FlowToken, branch: str, now: float
    ) -> list[Action] | None:
        """
        A 2xx to a REGISTER sent through a tunnel: restore rewritten
        contacts and update the session's bindings.

        @return: a L{BindingChanged} for each binding of this REGISTER's
            flow and address-of-record that appeared, moved to this flow or
            went (a refresh that changes none of them makes none); C{None}
            when the answer matches no REGISTER on its way (or its C{To}
            is unreadable), so no binding changed.
        """
        pending = self._pending.pop(branch, None)
        values = msg.get_all("Contact")
        restored = []
        # this REGISTER's contact URI -> its expiry: the entry with the
        # REGISTER's reg-id, else the first (a registrar that leaves reg-id
        # out); with two contact points the registrar lists the same URI
        # once per flow, and the other flow's entry is the other contact
        # point's binding
        mine: dict[str, int] = {}
        exact: set[str] = set()
        changed = False
        for value in values:
            try:
                na = parse_name_addr(value)
            except SipParseError:
                restored.append(value)
                continue
            expires = expires_of(msg, na.params, 3600)
            uri_text = str(na.uri)
            ctok = None
            if self._is_us(na.uri):
                ctok = self._codec.decode(na.uri.user or "", KIND_CONTACT)
            if (
                ctok is not None
                and ctok.session_id == tok.session_id
                and ctok.flow_id == tok.flow_id
            ):
                original = self._rewritten.get(ctok.session_id, {}).get((ctok.flow_id, ctok.extra))
                if original is not None:
                    uri_text = original
                    na = dataclasses.replace(na, uri=parse_uri(original), angle=True)
                    changed = True
            restored.append(str(na))
            if pending is not None and uri_text in pending.contacts and uri_text not in exact:
                if param(na.params, "reg-id")[1] == pending.contacts[uri_text]:
                    exact.add(uri_text)
                    mine[uri_text] = expires
                else:
                    mine.setdefault(uri_text, expires)
        if changed:
            msg.set_header("Contact", ", ".join(restored))
        if pending is None:
            return None
        try:
            to = msg.to
        except SipParseError:
            to = None
        if to is None:
            return None
        aor = str(to.uri)
        session, fid = tok.session_id, tok.flow_id
        regs = self._regs.setdefault(session, {})
        before = {k: r for k, r in regs.items() if r.aor == aor and r.flow_id == fid}
        for k in before:
            del regs[k]
        events: list[Action] = []
        for uri_text, expires in mine.items():
            if expires > 0:
                key = (aor, uri_text)
                if key not in before:
                    events.append(BindingChanged("registered", aor, uri_text, expires, session, fid))
                regs[key] = Registration(aor, uri_text, fid, now + expires)
        for key, reg in before.items():
            if key not in regs:
                events.append(BindingChanged("unregistered", aor, reg.contact, 0, session, fid))
        if pending.outbound:
            if any(r.flow_id == fid for r in regs.values()):
                self._outbound.setdefault(session, set()).add(fid)
            elif session in self._outbound:
                self._outbound[session].discard(fid)
                if not self._outbound[session]:
                    del self._outbound[session]
        return events

    # -- time and sessions ---------------------------------------------------

    def expire(self, now: float) -> list[Action]:
        """
        Forget expired registrations and REGISTERs that were never answered.

        @return: a L{BindingChanged} C{"expired"} for each registration
            that expired.
        """
        events: list[Action] = []
        for session, regs in self._regs.items():
            for k in [k for k, r in regs.items() if r.expires <= now]:
                r = regs.pop(k)
                events.append(BindingChanged("expired", r.aor, r.contact, 0, session, r.flow_id))
        for branch in [b for b, p in self._pending.items() if p.expires <= now]:
            del self._pending[branch]
        return events

    def drop_pending(self, session_id: str) -> None:
        """
        Forget the REGISTERs of C{session_id} that wait for their answer.
        """
        for k in [k for k, p in self._pending.items() if p.session_id == session_id]:
            del self._pending[k]

    def forget(self, session_id: str) -> None:
        """
        Forget a session's registrations and rewritten contacts.
        """
        self._regs.pop(session_id, None)
        self._rewritten.pop(session_id, None)
        self._outbound.pop(session_id, None)

    def export(self, session_id: str, now: float) -> dict[str, Any]:
        """
        A session's live registrations and rewritten contacts as JSON-ready
        data, with lifetimes relative to C{now} (see L{spwm.state}).
        """
        return {
            "registrations": [
                {"aor": r.aor, "contact": r.contact, "flow_id": r.flow_id, "ttl": r.expires - now}
                for r in self._regs.get(session_id, {}).values()
                if r.expires > now
            ],
            "rewritten": [
                [fid, extra.hex(), uri] for (fid, extra), uri in self._rewritten.get(session_id, {}).items()
            ],
        }

    def restore(self, session_id: str, data: Any, now: float) -> int:
        """
        Restore what L{export} gave.

        @return: the number of registrations restored.
        @raise ValueError: C{data} is not what L{export} makes.
        """
        try:
            regs = {}
            for r in data["registrations"]:
                ttl = float(r["ttl"])
                flow_id = int(r["flow_id"])
                if math.isfinite(ttl) and ttl > 0 and 0 <= flow_id < 2**32:
                    reg = Registration(str(r["aor"]), str(r["contact"]), flow_id, now + ttl)
                    regs[reg.aor, reg.contact] = reg
            rewritten = {(int(fid), bytes.fromhex(extra)): str(uri) for fid, extra, uri in data["rewritten"]}
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"malformed registrations of session {session_id}: {e!r}") from None
        if regs:
            self._regs[session_id] = regs
            if rewritten:
                self._rewritten.setdefault(session_id, {}).update(rewritten)
        return len(regs)


def outbound_register(msg: SipMessage, found: list[Any]) -> bool:
    """
    Whether a REGISTER asks for RFC 5626 flows: C{Supported: outbound}
    and a C{Contact} with C{reg-id} and C{+sip.instance}.
    """
    supported = {s.strip().lower() for v in msg.get_all("Supported") for s in v.split(",")}
    if "outbound" not in supported:
        return False
    for na in found:
        names = {k.lower() for k, _ in na.params}
        if "reg-id" in names and "+sip.instance" in names:
            return True
    return False


class AppBindings:
    """
    The agent's view of its applications' registrations, for the log: the
    contacts of each REGISTER until its answer, then the bindings the 2xx
    confirmed, per flow and address-of-record.  Bounded: beyond C{limit}
    entries in either table the oldest go (and are no longer reported).
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._pending: dict[tuple[int, str, int], tuple[str, frozenset[str] | None]] = {}
        self._bound: dict[tuple[int, str], dict[str, tuple[float, int]]] = {}
        self._flows: dict[int, Flow] = {}
        # the addresses-of-record of _bound, made again after a change
        self._aors: frozenset[str] | None = None
        self.next_expiry: float | None = None

    def has_aor(self, aor: str) -> bool:
        """
        Whether the address-of-record C{aor} (as C{str} of its URI) has a
        binding here, through any flow.
        """
        if self._aors is None:
            self._aors = frozenset(a for _, a in self._bound)
        return aor in self._aors

    def request(self, fid: int, msg: SipMessage) -> None:
        """
        A REGISTER from an application goes into the tunnel.
        """
        try:
            to = msg.to
        except SipParseError:
            to = None
        if to is None:
            return
        aor = str(to.uri)
        asked: frozenset[str] | None
        if any(v.strip() == "*" for v in msg.get_all("Contact")):
            asked = None  # all of this flow's bindings of the AOR
        else:
            asked = frozenset(str(na.uri) for na in contacts(msg))
        self._pending[(fid, msg.call_id, msg.cseq[0])] = (aor, asked)
        while len(self._pending) > self._limit:
            del self._pending[next(iter(self._pending))]

    def answered(self, flow: Flow, fid: int, msg: SipMessage, now: float) -> list[Action]:
        """
        A 2xx to a REGISTER comes back for C{fid}.

        @return: a L{BindingChanged} for each binding of the REGISTER's
            contacts that appeared or went.
        """
        pending = self._pending.pop((fid, msg.call_id, msg.cseq[0]), None)
        if pending is None:
            return []
        aor, asked = pending
        listed: dict[str, int] = {}
        for na in contacts(msg):
            uri = str(na.uri)
            if asked is None or uri in asked:
                listed[uri] = expires_of(msg, na.params, 3600)
        before = self._bound.pop((fid, aor), {})
        self._aors = None
        now_bound = {
            uri: (now + expires, expires) for uri, expires in listed.items() if expires > 0
        }
        if asked is not None:
            # contacts this REGISTER did not name keep their bindings
            now_bound.update({u: b for u, b in before.items() if u not in asked})
        events: list[Action] = []
        for uri, (_, expires) in now_bound.items():
            if uri not in before:
                events.append(BindingChanged("registered", aor, uri, expires, "", fid, flow))
        for uri in before:
            if uri not in now_bound:
                events.append(BindingChanged("unregistered", aor, uri, 0, "", fid, flow))
        if now_bound:
            self._bound[(fid, aor)] = now_bound
            self._flows[fid] = flow
            soonest = min(t for t, _ in now_bound.values())
            if self.next_expiry is None or soonest < self.next_expiry:
                self.next_expiry = soonest
            while len(self._bound) > self._limit:
                del self._bound[next(iter(self._bound))]
        return events

    def export(self, now: float, flow_ids: set[int]) -> list[dict[str, Any]]:
        """
        The live bindings made through C{flow_ids}, JSON-ready, their
        lifetimes relative to C{now} (for a restarted agent, L{restore}).
        """
        out = []
        for (fid, aor), bound in self._bound.items():
            if fid not in flow_ids:
                continue
            for uri, (t, expires) in bound.items():
                if t > now:
                    out.append({"flow_id": fid, "aor": aor, "contact": uri, "ttl": t - now, "expires": expires})
        return out

    def restore(self, entries: Any, flow_of: Callable[[int], Flow | None], now: float) -> int:
        """
        Take back the bindings L{export} gave (in another process), for
        the flows C{flow_of} knows; malformed or expired ones are skipped.

        @return: the number restored.
        """
        if not isinstance(entries, list):
            return 0
        count = 0
        for item in entries:
            try:
                fid, aor, uri = item["flow_id"], item["aor"], item["contact"]
                ttl, expires = float(item["ttl"]), int(item["expires"])
            except (KeyError, TypeError, ValueError, OverflowError):
                continue
            flow = flow_of(fid) if isinstance(fid, int) else None
            if flow is None or not isinstance(aor, str) or not isinstance(uri, str) or not 0 < ttl < 2**31:
                continue
            if len(self._bound) >= self._limit and (fid, aor) not in self._bound:
                break
            self._bound.setdefault((fid, aor), {})[uri] = (now + ttl, expires)
            self._flows[fid] = flow
            if self.next_expiry is None or now + ttl < self.next_expiry:
                self.next_expiry = now + ttl
            count += 1
        self._aors = None
        return count

    def listing(self) -> list[dict[str, Any]]:
        """
        @return: the applications' bindings, for the status listing:
            C{aor}, C{contact}, C{flow}, C{phone} (the flow's transport and
            address), C{expires} (the clock's seconds).
        """
        out = []
        for (fid, aor), bound in self._bound.items():
            flow = self._flows.get(fid)
            phone = None if flow is None else flow.transport + " " + hostport(*flow.remote)
            for uri, (t, _) in bound.items():
                out.append({"aor": aor, "contact": uri, "flow": fid, "phone": phone, "expires": t})
        return out

    def expire(self, now: float) -> list[Action]:
        """
        @return: a L{BindingChanged} C{"expired"} for each binding whose
            expiry passed (its application did not refresh it).
        """
        if self.next_expiry is None or self.next_expiry > now:
            return []
        events: list[Action] = []
        soonest: float | None = None
        for (fid, aor), bound in list(self._bound.items()):
            for uri, (t, _) in list(bound.items()):
                if t <= now:
                    del bound[uri]
                    events.append(BindingChanged("expired", aor, uri, 0, "", fid, self._flows.get(fid)))
                elif soonest is None or t < soonest:
                    soonest = t
            if not bound:
                del self._bound[(fid, aor)]
                self._aors = None
        live = {fid for fid, _ in self._bound}
        for fid in [f for f in self._flows if f not in live]:
            del self._flows[fid]
        self.next_expiry = soonest
        return events
