# -*- test-case-name: tests.test_sip_fanout -*-
"""
An agent with two contact points (C{--contact} given twice): RFC 5626
flows through both, as a sans-I/O core.

L{FanoutCore} sits between the agent's SIP runner and one
L{spwm.sip.agent_proxy.AgentSipProxy} per contact point (its I{sides};
they share one L{spwm.sip.flows.FlowTable}, so an application flow has
the same number in both tunnels).  It

 - sends each application's REGISTER through every live side, with
   C{reg-id} 1, 2 ... in its C{Contact}s (next to the C{+sip.instance}
   the side's proxy gives them) and C{Supported: outbound}, so an
   outbound registrar (RFC 5626) keeps one flow per contact point.  The
   copy for side I{k} > 1 gets its own C{Call-ID} and Via branch (a
   registration flow has its own C{Call-ID}, and the registrar must not
   take the copies for retransmissions of each other); the answer gets
   them back;
 - answers the application once: the first 2xx (its C{Contact} list
   without our C{reg-id}s, one entry per contact), or, when every side
   failed (or the others gave no final answer within C{answer_wait}
   seconds of the first failure), the best failure (RFC 3261 16.7: a
   6xx, else a 401/407 challenge, else the lowest class);
 - sends other new requests through the first live side, and everything
   else of a call (requests and responses of the application with the
   same C{Call-ID}) through the side that carried it.

It does no I/O and keeps no clock: time comes in, actions go out.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Sequence

import attrs
import dataclasses

from spwm.sip.actions import Action, BindingChanged, Counters, ToApp, ToTunnel
from spwm.sip.errors import SipParseError
from spwm.sip.message import SipMessage, parse_message
from spwm.sip.rewrite import map_contacts, param
from spwm.sip.uri import NameAddr, parse_name_addr

__all__ = ["FanoutCore", "side_call_id"]

#: How long a REGISTER's fan-out is remembered (RFC 3261 timer F, 64*T1).
TRANSACTION_TIME = 32.0


def side_call_id(call_id: str, side: int) -> str:
    """
    @return: the C{Call-ID} of the copy of a REGISTER for C{side}
        (counted from 0): the application's own for side 0.
    """
    return call_id if side == 0 else f"{call_id}-spwm{side + 1}"


def _side_branch(branch: str, side: int) -> str:
    return branch if side == 0 else f"{branch}.spwm{side + 1}"


def _rank(status: int) -> tuple[int, int]:
    """
    The order of failures, best first (RFC 3261 16.7).
    """
    if status >= 600:
        return (0, status)
    if status in (401, 407):
        return (1, status)
    return (2, status // 100)


@attrs.define
class _Fanout:
    """
    One REGISTER transaction of an application, sent through several sides.
    """

    sides: tuple[int, ...]
    expires: float
    finals: dict[int, int] = attrs.Factory(dict)
    winner: int | None = None
    registered: bool = False
    best: tuple[tuple[int, int], int, list[Action]] | None = None
    hold_until: float | None = None


class FanoutCore:
    """
    The agent's SIP core with several contact points.

    @ivar sides: the per-contact-point cores (C{AgentSipProxy}, or what
        wraps one), side 0 the default.
    @ivar counters: named counts (C{register fan-out}, C{register answers
        merged} ...).
    """

    def __init__(
        self,
        sides: Sequence[Any],
        live: Callable[[int], bool],
        *,
        answer_wait: float = 4.0,
        limit: int = 65536,
        max_message_size: int = 65535,
    ) -> None:
        """
        @param live: whether side C{k}'s tunnel is up now.
        @param answer_wait: seconds to wait, after one side's failure, for
            the others' final answers to a REGISTER.
        @param limit: at most this many calls (and REGISTER transactions)
            are remembered; the oldest go.
        """
        self.sides = list(sides)
        self._live = live
        self.answer_wait = answer_wait
        self.limit = limit
        self.max_message_size = max_message_size
        self.counters = Counters()
        # Call-ID -> side that carries the call
        self._calls: OrderedDict[str, int] = OrderedDict()
        # (application Call-ID, CSeq number) -> the REGISTER's fan-out
        self._registers: OrderedDict[tuple[str, int], _Fanout] = OrderedDict()

    # -- what the runner and the status page read ------------------------

    def preferred(self) -> int:
        """
        @return: the side new requests go through: the first live one
            (side 0 when none is).
        """
        for k in range(len(self.sides)):
            if self._live(k):
                return k
        return 0

    def _side_for(self, msg: SipMessage) -> int:
        """
        The side a new request goes through: the first live one through
        which its From is registered (a contact point may have refused
        the phone's REGISTER, or not reached the registrar, while the
        other took it: only that one lets the phone call), else the first
        live one.
        """
        live = [k for k in range(len(self.sides)) if self._live(k)]
        if len(live) > 1:
            try:
                from_ = msg.from_
            except SipParseError:
                from_ = None
            if from_ is not None:
                aor = str(from_.uri)
                for k in live:
                    if self.sides[k].registered(aor):
                        return k
        return live[0] if live else 0

    @property
    def tunnel_key(self) -> Any:
        """
        The preferred side's tunnel key (the runner asks it whether the
        tunnel is congested).
        """
        return self.sides[self.preferred()].tunnel_key

    @property
    def flows(self) -> Any:
        """
        The application flows, shared by the sides.
        """
        return self.sides[0].flows

    @property
    def names(self) -> Any:
        return self.sides[0].names

    def busy(self, now: float) -> bool:
        return any(side.busy(now) for side in self.sides)

    def byes_unsent(self) -> int:
        return sum(side.byes_unsent() for side in self.sides)

    def flow_closed(self, flow: Any) -> None:
        self.sides[0].flow_closed(flow)

    def status(self) -> dict[str, Any]:
        """
        The sides' status (flows, events summed) and our own counts.
        """
        events: dict[str, int] = {}
        for side in self.sides:
            for name, n in side.status().get("events", {}).items():
                events[name] = events.get(name, 0) + n
        for name, n in self.counters.items():
            events[name] = events.get(name, 0) + n
        return {"flows": len(self.flows), "events": events}

    def registration_list(self) -> list[dict[str, Any]]:
        """
        The applications' bindings, each once.
        """
        out: list[dict[str, Any]] = []
        seen = set()
        for side in self.sides:
            for entry in side.registration_list():
                key = (entry.get("aor"), entry.get("contact"), entry.get("flow"))
                if key not in seen:
                    seen.add(key)
                    out.append(entry)
        return out

    def next_deadline(self) -> float | None:
        times = [t for t in (side.next_deadline() for side in self.sides) if t is not None]
        times.extend(f.hold_until for f in self._registers.values() if f.hold_until is not None)
        if self._registers:
            times.append(min(f.expires for f in self._registers.values()))
        return min(times) if times else None

    def leg_lost(
        self, session_id: str, flow_id: int, call_id: str, reason: str, now: float, tunnels: bool = True
    ) -> tuple[list[Action], list[str]]:
        """
        The media of a call leg is lost: each side's core ends what
        dialogs of it it has (the call went through one).
        """
        actions: list[Action] = []
        told: list[str] = []
        for side in self.sides:
            more, whom = side.leg_lost(session_id, flow_id, call_id, reason, now, tunnels)
            actions.extend(more)
            told.extend(whom)
        return actions, told

    def ringing_lost(self, session_id: str, now: float, tunnels: bool = True) -> list[Action]:
        """
        A session is lost for good: the side whose it is ends its calls
        that still ring.
        """
        actions: list[Action] = []
        for side in self.sides:
            actions.extend(side.ringing_lost(session_id, now, tunnels))
        return actions

    def handle_timer(self, now: float) -> list[Action]:
        """
        The sides' timers (a binding that expired in several sides is
        reported once), failures held past C{answer_wait}, REGISTER
        transactions over.
        """
        actions: list[Action] = []
        seen: set[tuple[str, str, str, int]] = set()
        for side in self.sides:
            for action in side.handle_timer(now):
                if isinstance(action, BindingChanged):
                    key = (action.change, action.aor, action.contact, action.flow_id)
                    if key in seen:
                        continue
                    seen.add(key)
                actions.append(action)
        for tx, fan in list(self._registers.items()):
            if fan.winner is None and fan.hold_until is not None and fan.hold_until <= now:
                actions.extend(self._release(fan))
            if fan.expires <= now:
                if fan.registered:
                    for k in fan.sides:
                        if k != fan.winner and k not in fan.finals:
                            actions.append(self._flow_failed(k, "no answer"))
                del self._registers[tx]
        return actions

    # -- from the applications ---------------------------------------------

    def from_app(
        self, flow: Any, data: bytes, now: float, *, congested: bool = False, overloaded: bool = False
    ) -> list[Action]:
        """
        A message from a LAN application: a REGISTER goes through every
        live side, anything else through one (C{congested}, C{overloaded}:
        as L{spwm.sip.agent_proxy.AgentSipProxy.from_app}'s).
        """
        try:
            msg = parse_message(data, max_size=self.max_message_size)
        except SipParseError:
            # the default side answers (or drops) it as it does alone
            return self.sides[self.preferred()].from_app(
                flow, data, now, congested=congested, overloaded=overloaded
            )
        call_id = msg.call_id
        if msg.is_request and msg.method == "REGISTER" and not _has_reg_id(msg):
            return self._register(flow, msg, data, now, congested, overloaded)
        side = self._calls.get(call_id)
        if side is None or (msg.is_request and msg.to_tag is None and msg.method not in ("ACK", "CANCEL")):
            # a new request: the first live side (a retransmission of
            # one finds its side again, as long as that side lives)
            if side is None or not self._live(side):
                side = self._side_for(msg)
        self._remember(call_id, side)
        return self.sides[side].from_app(flow, data, now, congested=congested, overloaded=overloaded)

    def _register(
        self, flow: Any, msg: SipMessage, data: bytes, now: float, congested: bool, overloaded: bool
    ) -> list[Action]:
        key = (msg.call_id, msg.cseq[0])
        fan = self._registers.get(key)
        if fan is None:
            live = tuple(k for k in range(len(self.sides)) if self._live(k))
            fan = _Fanout(live or (0,), now + TRANSACTION_TIME)
            self._registers[key] = fan
            while len(self._registers) > self.limit:
                self._registers.popitem(last=False)
            if len(fan.sides) > 1:
                self.counters.count("register fan-out")
            else:
                self.counters.count("register through one contact point")
        actions: list[Action] = []
        for n, k in enumerate(fan.sides):
            for action in self.sides[k].from_app(flow, data, now, congested=congested, overloaded=overloaded):
                if isinstance(action, ToTunnel):
                    actions.append(dataclasses.replace(action, data=_leg_request(action.data, k, self.max_message_size)))
                elif n == 0:
                    # a side's own answer (400, 483, 503 ...) and its
                    # counts: once
                    actions.append(action)
        return actions

    # -- from the tunnels ------------------------------------------------

    def from_side(
        self, side: int, flow_id: int, data: bytes, now: float, *, overloaded: bool = False
    ) -> list[Action]:
        """
        A message for application flow C{flow_id} from side C{side}'s tunnel
        (C{overloaded}: as L{spwm.sip.agent_proxy.AgentSipProxy.from_tunnel}'s).
        """
        try:
            msg = parse_message(data, max_size=self.max_message_size)
        except SipParseError:
            return self.sides[side].from_tunnel(flow_id, data, now)
        if msg.is_request:
            self._remember(msg.call_id, side)
            return self.sides[side].from_tunnel(flow_id, data, now, overloaded=overloaded)
        if msg.cseq_method != "REGISTER":
            return self.sides[side].from_tunnel(flow_id, data, now)
        return self._register_answer(side, flow_id, msg, data, now)

    def _register_answer(
        self, side: int, flow_id: int, msg: SipMessage, data: bytes, now: float
    ) -> list[Action]:
        suffix = side_call_id("", side)
        call_id = msg.call_id
        if suffix and call_id.endswith(suffix):
            call_id = call_id[: -len(suffix)]
        fan = self._registers.get((call_id, msg.cseq[0]))
        if fan is None or side not in fan.sides:
            return self.sides[side].from_tunnel(flow_id, data, now)
        status = msg.status or 0
        if status < 200:
            return []  # the application retransmits until the final answer
        actions = self.sides[side].from_tunnel(flow_id, _leg_answer(msg, call_id, side), now)
        if 200 <= status < 300:
            if fan.winner is None:
                fan.winner = side
                fan.registered = True
                fan.hold_until = None
                fan.best = None
                # the flows that failed before: the phone is registered
                # through this one, so only the log tells
                failed = [self._flow_failed(k, f"{code}") for k, code in fan.finals.items()]
                return actions + failed
            if fan.winner == side:
                return actions  # the same answer again
            fan.finals[side] = status
            return _quiet(actions)
        fan.finals[side] = status
        if fan.winner is not None:
            if fan.registered:
                return _quiet(actions) + [self._flow_failed(side, f"{status} {msg.reason or ''}".strip())]
            return _quiet(actions)
        rank = _rank(status)
        if fan.best is None or rank < fan.best[0]:
            fan.best = (rank, side, actions)
        else:
            _ = _quiet(actions)
        if all(k in fan.finals for k in fan.sides):
            return self._release(fan)
        if fan.hold_until is None:
            fan.hold_until = now + self.answer_wait
        return []

    def _release(self, fan: _Fanout) -> list[Action]:
        """
        Give the application the best failure held for C{fan}.
        """
        fan.hold_until = None
        if fan.best is None:
            return []
        _, side, actions = fan.best
        fan.best = None
        fan.winner = side
        if len(fan.sides) > 1:
            self.counters.count("register failed through every contact point")
        return actions

    # -- helpers ---------------------------------------------------------

    def _flow_failed(self, side: int, what: str) -> Action:
        """
        The line for a REGISTER that failed through one contact point while
        the phone is registered through another.
        """
        return self.counters.drop(
            f"REGISTER through contact point {side + 1} failed ({what}); registered through another only",
            "register failed through one contact point",
        )

    def _remember(self, call_id: str, side: int) -> None:
        calls = self._calls
        calls[call_id] = side
        calls.move_to_end(call_id)
        while len(calls) > self.limit:
            calls.popitem(last=False)


def _has_reg_id(msg: SipMessage) -> bool:
    """
    Whether the application registers with RFC 5626 itself (a C{reg-id}
    of its own): then its REGISTER goes through one side, untouched.
    """
    for na in msg.contact_addresses():
        present, _ = param(na.params, "reg-id")
        if present:
            return True
    return False


def _quiet(actions: list[Action]) -> list[Action]:
    """
    A side's actions for an answer the application does not get: no
    message to it, no binding line twice.
    """
    return [a for a in actions if not isinstance(a, (ToApp, BindingChanged))]


def _leg_request(data: bytes, side: int, max_size: int) -> bytes:
    """
    The copy of a REGISTER (as a side's proxy sends it) for C{side}:
    C{reg-id} on each C{Contact} with a C{+sip.instance}, C{Supported:
    outbound}, and for sides after the first its own C{Call-ID} and branch.
    """
    try:
        msg = parse_message(data, max_size=max_size + 4096)
    except SipParseError:
        return data
    reg_id = str(side + 1)

    def change(na: NameAddr) -> NameAddr | None:
        present, _ = param(na.params, "+sip.instance")
        return na.with_param("reg-id", reg_id) if present else None

    map_contacts(msg, change, keep_unreadable=True)
    supported = {s.strip().lower() for v in msg.get_all("Supported") for s in v.split(",")}
    if "outbound" not in supported:
        msg.append_header("Supported", "outbound")
    if side > 0:
        msg.set_header("Call-ID", side_call_id(msg.call_id, side))
        via = msg.top_via
        if via is not None:
            present, branch = param(via.params, "branch")
            if branch:
                msg.replace_first_value("Via", str(via.with_param("branch", _side_branch(branch, side))))
    return msg.to_bytes()


def _leg_answer(msg: SipMessage, call_id: str, side: int) -> bytes:
    """
    The answer to a side's copy of a REGISTER, as the application's own
    REGISTER would have had it: its C{Call-ID} and branch, no C{reg-id}
    we added, each contact once, no C{Require: outbound}.
    """
    if side > 0:
        msg.set_header("Call-ID", call_id)
        via = msg.top_via
        if via is not None:
            present, branch = param(via.params, "branch")
            mark = _side_branch("", side)
            if branch and branch.endswith(mark):
                msg.replace_first_value("Via", str(via.with_param("branch", branch[: -len(mark)])))
    values = msg.get_all("Contact")
    if values:
        out: list[str] = []
        seen = set()
        for value in values:
            try:
                na = parse_name_addr(value)
            except SipParseError:
                text, key = value, value
            else:
                text = str(na.without_param("reg-id"))
                key = str(na.uri) + " " + str(param(na.params, "+sip.instance")[1])
            if key not in seen:
                seen.add(key)
                out.append(text)
        msg.set_header("Contact", ", ".join(out))
    requires = [
        s.strip() for v in msg.get_all("Require") for s in v.split(",") if s.strip().lower() != "outbound"
    ]
    if msg.has("Require"):
        if requires:
            msg.set_header("Require", ", ".join(requires))
        else:
            msg.remove_header("Require")
    return msg.to_bytes()
