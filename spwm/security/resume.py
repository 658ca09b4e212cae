# -*- test-case-name: tests.test_security_resume -*-
"""
Resumption: a tunnel that breaks is resumed on a new connection (possibly
from a new address) by proving possession of the per-user keys, and the
session's registrations, dialogs and media go on without new SIP.

Both halves watch the REGISTER transactions that cross them
(L{RegistrationWatcher}); on a 2xx to a REGISTER with digest credentials they
derive the user's key (L{spwm.security.keys}).

- When a tunnel with keys breaks, each half *suspends* its session for the
  resumption window: SIP state stays, media sockets stay bound (what arrives
  meanwhile is dropped), channels are gone.
- The agent reconnects; its hello says C{resume: {session_id, users}}; the
  contact point's welcome carries a fresh C{challenge}; the agent sends
  C{{"op": "resume", "session_id", "proofs": {user: HMAC}}}.
- The contact point checks every proof against the keys of that suspended
  session.  All good: it answers C{resumed}, moves the session (SIP state
  and media) to the new connection and opens the media channels again. Any
  proof wrong, or the session unknown: C{resume-failed}, logged, nothing
  attached.
- A session not resumed within the window loses its calls and media on
  both halves.  Its registrations stay, *dormant*, until they expire (or
  C{MAX_DORMANT} newer dormant sessions push it out): meanwhile requests
  for its flows get C{430}, and an agent that comes back and proves its
  keys resumes it as above (its C{resume} says C{"media": false}: nothing
  of the calls is left to move), so its phones are reachable again
  without registering anew.  The agent keeps its keys for that until the
  contact point refuses (C{resume-failed}) or a new session replaces
  them.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from spwm.security.keys import (
    EXPORTER_LABEL,
    KEY_LENGTH,
    DigestCredentials,
    check_proof,
    derive_user_key,
    parse_digest,
    resumption_proof,
)
from spwm.session.state import AGENT_TRANSITIONS, CONTACT_TRANSITIONS, Effect, Input, SessionState, transition
from spwm.sip.errors import SipParseError
from spwm.sip.message import parse_message
from spwm.tunnel.frames import ErrorCode

#: The most users a resumption may name.
MAX_RESUME_USERS = 64

#: The most dormant sessions (registrations without a tunnel, past the
#: resumption window) a contact point keeps; beyond, the oldest goes.
MAX_DORMANT = 10000


class RegistrationWatcher:
    """
    Remembers the digest credentials of REGISTER requests and hands them
    back when a 2xx answers them.  Only REGISTER requests and 2xx responses
    to REGISTER are parsed.
    """

    def __init__(self, limit: int = 1024) -> None:
        self._pending: dict[tuple[str, int], DigestCredentials] = {}
        self._limit = limit

    def request(self, data: bytes) -> None:
        """
        A REGISTER crossing towards the registrar.
        """
        if not data.startswith(b"REGISTER "):
            return
        try:
            msg = parse_message(data)
        except SipParseError:
            return
        value = msg.get("Authorization")
        if value is None:
            return
        credentials = parse_digest(value)
        if credentials is None:
            return
        if len(self._pending) >= self._limit:
            del self._pending[next(iter(self._pending))]
        self._pending[msg.call_id, msg.cseq[0]] = credentials

    def response(self, data: bytes) -> DigestCredentials | None:
        """
        A response crossing back; the credentials it accepts, if it is a
        2xx to a REGISTER we saw.
        """
        if not data.startswith(b"SIP/2.0 2") or b"REGISTER" not in data:
            return None
        try:
            msg = parse_message(data)
        except SipParseError:
            return None
        if msg.cseq[1] != "REGISTER":
            return None
        return self._pending.pop((msg.call_id, msg.cseq[0]), None)


def user_key(tunnel: Any, credentials: DigestCredentials) -> bytes:
    """
    Derive a user's key with the keying material of C{tunnel}'s TLS session.
    """
    exported = tunnel.export_keying_material(EXPORTER_LABEL, KEY_LENGTH) if tunnel is not None else None
    return derive_user_key(credentials, exported)


class _Lifecycle:
    """
    What both halves share: who gets told when a session ends for good.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, window: float, media: Any, sip: Any) -> None:
        self.clock = clock
        self.window = window
        self.media = media
        self.sip = sip


class AgentResumption(_Lifecycle):
    """
    The agent's side: derives keys as registrations succeed, offers
    resumption when it reconnects, and releases what was not resumed.

    The session's life is the table of L{spwm.session.state}: each event is
    classified into an L{Input}, and the table's L{Effect} is carried out
    (L{_apply}); no flags.

    @ivar state: the session's L{SessionState}.
    @ivar keys: user id -> key, for the current (or suspended) session.
    @ivar session_id: the contact point's name for our session.
    """

    def __init__(
        self,
        clock: IReactorTime,
        window: float,
        media: Any,
        handle: Any,
        session_lost: Callable[[list[int]], Any] | None = None,
        forwarder: Any = None,
    ) -> None:
        """
        @param handle: the agent's tunnel handle (C{AgentTunnelHandle}),
            told first of a tunnel's life.
        @param forwarder: the UDP forwards (C{AgentForwarder}), told last.
        """
        super().__init__(clock, window, media, None)
        self.handle = handle
        self.forwarder = forwarder
        self.watcher = RegistrationWatcher()
        self.state = SessionState.ENDED
        self.keys: dict[str, bytes] = {}
        #: user id -> the application flow that registered it
        self.flows: dict[str, int] = {}
        self.session_id: str | None = None
        # the lost tunnel whose calls and media are kept (SUSPENDED)
        self._suspended: Any = None
        #: called with the application flow ids of the users of a session
        #: that is given up for good (see L{_release}); the agent closes
        #: their TCP/TLS connections so that those phones register again
        self.session_lost = session_lost
        self._timer: IDelayedCall | None = None
        self._stopping = False
        self.resumed = 0

    @property
    def dormant(self) -> bool:
        """
        Whether the session is past its window, keys kept.
        """
        return self.state is SessionState.DORMANT

    def _apply(self, event: Input, tunnel: Any = None, reason: str = "") -> None:
        """
        Feed the table one input and carry out its effect.
        """
        effect, new_state = transition(AGENT_TRANSITIONS, self.state, event)
        before, self.state = self.state, new_state
        if effect is Effect.NOTHING:
            return
        if effect is Effect.SUSPEND:
            self._suspended = tunnel
            self.media.session_suspended(tunnel.session_id)
            self._cancel()
            self._timer = self.clock.callLater(self.window, self._window_over)
        elif effect is Effect.OFFER:
            self._offer(tunnel, media=before is SessionState.SUSPENDED)
        elif effect in (Effect.RESUME, Effect.RESUME_REGISTRATIONS):
            self._resume(tunnel, media=effect is Effect.RESUME)
        elif effect is Effect.GO_DORMANT:
            self._go_dormant()
        elif effect is Effect.RELEASE:
            self._release(reason, was=before)
        elif effect is Effect.END:
            self.media.session_ended(tunnel.session_id, reason)
            self.keys.clear()
        elif effect is Effect.DROP_TUNNEL:
            self.media.session_ended(tunnel.session_id, reason)

    # -- the SIP core's traffic -------------------------------------------

    def wrap(self, core: Any) -> Any:
        """
        Watch the REGISTER transactions of an L{AgentSipProxy}.
        """
        return _ObservedAgentCore(core, self)

    def status(self) -> dict[str, int]:
        """
        For the status page: users with keys, whether our session is
        suspended or dormant now, resumptions so far.
        """
        return {
            "users": len(self.keys),
            "suspended": int(self.state is SessionState.SUSPENDED),
            "dormant": int(self.dormant),
            "resumed": self.resumed,
        }

    def key_learned(self, credentials: DigestCredentials, flow_id: int) -> None:
        tunnel = self.handle.current
        if tunnel is None:
            return
        key = self.keys[credentials.user_id] = user_key(tunnel, credentials)
        self.flows[credentials.user_id] = flow_id
        self.session_id = tunnel.session_id
        tunnel.bind_flow_key(flow_id, key)
        self._apply(Input.KEY_LEARNED)

    # -- the tunnel's life -----------------------------------------------

    def hello(self) -> dict[str, Any]:
        """
        Extra hello fields: the resumption offer, if there is something to resume.
        """
        waiting = self.state in (SessionState.SUSPENDED, SessionState.DORMANT)
        if not waiting or not self.keys or not self.session_id:
            return {}
        return {"resume": {"session_id": self.session_id, "users": sorted(self.keys)[:MAX_RESUME_USERS]}}

    def tunnel_established(self, tunnel: Any) -> None:
        """
        The one observer of the agent's tunnels: the handle, the
        resumption offer, the forwards, in this order.
        """
        self.handle.tunnel_established(tunnel)
        problem = None
        if self.state in (SessionState.SUSPENDED, SessionState.DORMANT):
            challenge = tunnel.peer_hello.get("challenge")
            if not isinstance(challenge, str) or not self.keys or not self.session_id:
                problem = "the contact point offers no resumption"
            else:
                try:
                    bytes.fromhex(challenge)
                except ValueError:
                    problem = "bad challenge"
        if problem is not None:
            self._apply(Input.RESUME_REFUSED, tunnel, problem)
        else:
            self._apply(Input.TUNNEL_UP, tunnel)
        if self.forwarder is not None:
            self.forwarder.tunnel_established(tunnel)

    def _offer(self, tunnel: Any, media: bool) -> None:
        raw = bytes.fromhex(tunnel.peer_hello["challenge"])
        assert self.session_id is not None
        proofs = {user: resumption_proof(key, raw, self.session_id) for user, key in self.keys.items()}
        message: dict[str, Any] = {"op": "resume", "session_id": self.session_id, "proofs": proofs}
        if not media:
            message["media"] = False
        tunnel.send_control(message)

    def control_received(self, tunnel: Any, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "resumed" and message.get("session_id") == self.session_id:
            media = message.get("media") is not False
            self._apply(Input.RESUME_OK if media else Input.RESUME_OK_REGISTRATIONS, tunnel)
        elif op == "resume-failed":
            self._apply(Input.RESUME_REFUSED, tunnel, str(message.get("reason", "refused")))

    def _resume(self, tunnel: Any, media: bool) -> None:
        old, self._suspended = self._suspended, None
        self._cancel()
        assert self.session_id is not None
        fresh = tunnel.session_id
        tunnel.adopt_session(self.session_id)
        for user, key in self.keys.items():
            tunnel.bind_flow_key(self.flows[user], key)
        if old is not None and not media:
            # The contact point kept only the registrations (past its
            # window, or restarted): our calls' media is gone there.
            self.media.session_ended(old.session_id, "the contact point resumed the registrations only")
            old = None
        elif old is not None:
            self.media.session_resumed(old.session_id, tunnel, reopen=False)
            self.media.session_absorbed(old.session_id, self.session_id)
        # calls made on the new connection before the answer go on
        self.media.session_absorbed(fresh, self.session_id)
        self.resumed += 1
        self.log.info(
            "session {session_id} resumed on the new tunnel to {peer}{what}",
            session_id=self.session_id,
            peer=tunnel.peer,
            what="" if old is not None else " (registrations only)",
        )

    def tunnel_lost(self, tunnel: Any, reason: str) -> None:
        self.handle.tunnel_lost(tunnel, reason)
        resumable = bool(self.keys) and self.window > 0 and not self._stopping
        self._apply(Input.TUNNEL_LOST if resumable else Input.TUNNEL_ENDED, tunnel, reason)
        if self.forwarder is not None:
            self.forwarder.tunnel_lost(tunnel, reason)

    def _window_over(self) -> None:
        self._timer = None
        self._apply(Input.WINDOW_OVER)

    def _go_dormant(self) -> None:
        """
        The window is over: release the calls' media, keep the keys so
        that the next connection can still resume the registrations.
        """
        old, self._suspended = self._suspended, None
        self.log.info(
            "session {session_id} not resumed within {window} s: calls and media released,"
            " registrations kept for a later resumption",
            session_id=self.session_id,
            window=self.window,
        )
        self.media.session_ended(old.session_id, "resumption window over")

    def _release(self, reason: str, was: SessionState) -> None:
        self._cancel()
        old, self._suspended = self._suspended, None
        if was in (SessionState.SUSPENDED, SessionState.DORMANT):
            self.log.info("session {session_id} not resumed: {reason}", session_id=self.session_id, reason=reason)
            if self.session_lost is not None and self.flows and not self._stopping:
                # The contact point has no registration of ours any more:
                # phones on TCP/TLS re-register at once when their
                # connection closes; phones on UDP wait for their refresh.
                closed = self.session_lost(sorted(self.flows.values()))
                if closed:
                    self.log.info(
                        "closed {count} phone connection(s) so that they register again", count=closed
                    )
        if old is not None:
            self.media.session_ended(old.session_id, reason)
        self.keys.clear()
        self.flows.clear()
        self.session_id = None

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def end_session(self) -> None:
        """
        The agent closes its tunnel on purpose because nothing needs it
        (C{--tunnel on-demand}): the loss that follows is not one to
        resume, so forget the session now.
        """
        self._apply(Input.GONE_AWAY, reason="tunnel no longer needed")

    def stop(self) -> None:
        """
        The service stops: release what is suspended, suspend nothing more.
        """
        self._stopping = True
        self._cancel()
        self._apply(Input.STOP, reason="agent stopping")


class _ObservedAgentCore:
    def __init__(self, core: Any, resumption: AgentResumption) -> None:
        self._core = core
        self._resumption = resumption

    # The rest of the core's interface, passed on.
    @property
    def core(self) -> Any:
        """
        The agent proxy this watches.
        """
        return self._core

    @property
    def tunnel_key(self) -> Any:
        return self._core.tunnel_key

    @property
    def flows(self) -> Any:
        return self._core.flows

    @property
    def names(self) -> Any:
        return self._core.names

    def busy(self, now: float) -> bool:
        return bool(self._core.busy(now))

    def flow_closed(self, flow: Any) -> None:
        self._core.flow_closed(flow)

    def status(self) -> dict[str, Any]:
        return dict(self._core.status())

    def next_deadline(self) -> float | None:
        return self._core.next_deadline()

    def handle_timer(self, now: float) -> list[Any]:
        return self._core.handle_timer(now)

    def from_app(self, flow: Any, data: bytes, now: float, *, congested: bool = False) -> list[Any]:
        actions = self._core.from_app(flow, data, now, congested=congested)
        if data.startswith(b"REGISTER "):
            for action in actions:
                if hasattr(action, "flow_id") and hasattr(action, "data"):
                    self._resumption.watcher.request(action.data)
        return actions

    def from_tunnel(self, flow_id: int, data: bytes, now: float) -> list[Any]:
        actions = self._core.from_tunnel(flow_id, data, now)
        if data.startswith(b"SIP/2.0 2"):
            credentials = self._resumption.watcher.response(data)
            if credentials is not None:
                self._resumption.key_learned(credentials, flow_id)
        return actions


class ContactResumption(_Lifecycle):
    """
    The contact point's side: derives keys per session as registrations
    succeed, suspends sessions with keys when their tunnel breaks, checks
    resumption proofs and moves sessions to new connections.

    Each session's state is where it is (L{state_of}); what an event does
    to it is decided by L{CONTACT_TRANSITIONS} (L{_decide}).

    @ivar keys: session id -> user id -> key.
    @ivar refused: resumptions refused (wrong proof, unknown session).
    """

    def __init__(
        self,
        clock: IReactorTime,
        window: float,
        media: Any,
        sip_runner: Any,
        max_dormant: int = MAX_DORMANT,
        forwarder: Any = None,
    ) -> None:
        """
        @param forwarder: the UDP forward targets (C{ContactForwarder}),
            told when a tunnel is lost.
        """
        super().__init__(clock, window, media, sip_runner)
        self.forwarder = forwarder
        self.keys: dict[str, dict[str, bytes]] = {}
        #: session id -> user id -> the agent's flow that registered it
        self.flows: dict[str, dict[str, int]] = {}
        self._watchers: dict[str, RegistrationWatcher] = {}
        # session id -> (old tunnel, expiry timer)
        self._suspended: dict[str, tuple[Any, IDelayedCall]] = {}
        # past the window, registrations kept: session id -> (None, timer
        # for when its registrations have expired), oldest first; the dead
        # connection itself is not kept
        self._dormant: dict[str, tuple[None, IDelayedCall]] = {}
        self.max_dormant = max_dormant
        self._stopping = False
        # session id -> its live tunnel; tunnels whose session another
        # connection took over (their end is no longer ours to handle)
        self._live: dict[str, Any] = {}
        self._taken_over: set[int] = set()
        self._bind_later: list[tuple[Any, int, bytes]] = []
        self.refused = 0
        self.resumed = 0

    # -- the SIP core's traffic (called by the authorising wrapper) -------

    def request_from_tunnel(self, tunnel: Any, session_id: str, data: bytes) -> None:
        if data.startswith(b"REGISTER "):
            self._watchers.setdefault(session_id, RegistrationWatcher(64)).request(data)

    def response_to_tunnel(self, tunnel: Any, flow_id: int, data: bytes) -> None:
        session_id = tunnel.session_id
        watcher = self._watchers.get(session_id)
        if watcher is None:
            return
        credentials = watcher.response(data)
        if credentials is not None:
            key = self.keys.setdefault(session_id, {})[credentials.user_id] = user_key(tunnel, credentials)
            self.flows.setdefault(session_id, {})[credentials.user_id] = flow_id
            # Bound after this 2xx is queued: it goes out unsealed, as the
            # agent can only make the key once it has it.
            self._bind_later.append((tunnel, flow_id, key))

    def flush_bindings(self) -> None:
        """
        Bind the keys learned while handling a message, now that the
        message's own frames are queued.
        """
        pending, self._bind_later = self._bind_later, []
        for tunnel, flow_id, key in pending:
            tunnel.bind_flow_key(flow_id, key)

    # -- the tunnel's life -----------------------------------------------

    def state_of(self, session_id: str) -> SessionState:
        """
        Where a session is: suspended, dormant, live on a connection, or
        none of these (C{ENDED}).
        """
        if session_id in self._suspended:
            return SessionState.SUSPENDED
        if session_id in self._dormant:
            return SessionState.DORMANT
        if session_id in self._live:
            return SessionState.LIVE
        return SessionState.ENDED

    def _decide(self, session_id: str, event: Input) -> Effect:
        """
        The effect of C{event} on a session, from the table.

        @raise BadTransition: it cannot happen in the session's state.
        """
        effect, _ = transition(CONTACT_TRANSITIONS, self.state_of(session_id), event)
        return effect

    def tunnel_established(self, tunnel: Any) -> None:
        self._decide(tunnel.session_id, Input.TUNNEL_UP)  # always ATTACH
        self._live[tunnel.session_id] = tunnel
        self.sip.tunnel_established(tunnel)

    def tunnel_lost(self, tunnel: Any, reason: str) -> None:
        """
        The one observer of the contact point's tunnels: the session, then
        the forwards.
        """
        self._session_lost(tunnel, reason)
        if self.forwarder is not None:
            self.forwarder.tunnel_lost(tunnel, reason)

    def _session_lost(self, tunnel: Any, reason: str) -> None:
        session_id = tunnel.session_id
        if id(tunnel) in self._taken_over:
            self._taken_over.discard(id(tunnel))
            self._decide(session_id, Input.TAKEN_OVER)  # nothing
            return
        # An agent that sent go-away before closing (an on-demand tunnel
        # nobody needs) is not coming back for this session: end it now.
        if getattr(tunnel, "go_away_info", None) is not None:
            event = Input.GONE_AWAY
        elif (
            self.keys.get(session_id)
            and self.window > 0
            and not self._stopping
            and session_id not in self._suspended
        ):
            event = Input.TUNNEL_LOST
        else:
            event = Input.TUNNEL_ENDED
        effect = self._decide(session_id, event)
        if self._live.get(session_id) is tunnel:
            del self._live[session_id]
        if effect is Effect.SUSPEND:
            self.media.session_suspended(session_id)
            timer = self.clock.callLater(self.window, self._expire, session_id)
            self._suspended[session_id] = (tunnel, timer)
        else:  # END
            self._end(tunnel, session_id, reason)

    @property
    def dormant(self) -> int:
        """
        Sessions past the window whose registrations are kept.
        """
        return len(self._dormant)

    def status(self) -> dict[str, int]:
        """
        For the status page: sessions live, suspended and dormant now;
        resumptions accepted and refused so far.
        """
        return {
            "live": len(self._live),
            "suspended": len(self._suspended),
            "dormant": len(self._dormant),
            "resumed": self.resumed,
            "resume_refused": self.refused,
        }

    def _expire(self, session_id: str) -> None:
        if session_id not in self._suspended:
            return  # (not suspended, WINDOW_OVER): nothing
        registrations = self.sip.registrations(session_id)
        effect = self._decide(session_id, Input.WINDOW_OVER if registrations else Input.REGISTRATIONS_EXPIRED)
        tunnel = self._suspended.pop(session_id)[0]
        if effect is Effect.END:
            self.log.info("session {session_id} not resumed within {window} s: released", session_id=session_id, window=self.window)
            self._end(tunnel, session_id, "resumption window over")
            return
        # Calls and media go; the registrations stay until they expire, for
        # an agent that comes back later.
        self.sip.tunnel_dormant(tunnel)
        self.media.session_ended(session_id, "resumption window over")
        self._watchers.pop(session_id, None)
        last = self._make_dormant(session_id, registrations)
        self.log.info(
            "session {session_id} not resumed within {window} s: calls and media released;"
            " {count} registrations kept for {left:.0f} s more",
            session_id=session_id,
            window=self.window,
            count=len(registrations),
            left=last - self.clock.seconds(),
        )

    def _make_dormant(self, session_id: str, registrations: list[Any]) -> float:
        """
        Keep C{session_id} dormant until its last registration expires.

        @return: when that is.
        """
        last = max(r.expires for r in registrations)
        timer = self.clock.callLater(max(last - self.clock.seconds(), 0.0) + 1.0, self._wake, session_id)
        self._dormant[session_id] = (None, timer)
        while len(self._dormant) > self.max_dormant:
            oldest = next(iter(self._dormant))
            self._decide(oldest, Input.EVICTED)  # FORGET
            self._forget_dormant(oldest, "too many dormant sessions")
        return last

    # -- across a restart (spwm.state) ------------------------------------

    def export_state(self) -> dict[str, dict[str, Any]]:
        """
        Every session with keys (live, suspended or dormant): its users'
        keys and flows, JSON-ready, for L{import_state} in the next process.
        """
        return {
            session_id: {
                "keys": {user: key.hex() for user, key in keys.items()},
                "flows": dict(self.flows.get(session_id, {})),
            }
            for session_id, keys in self.keys.items()
            if keys
        }

    def import_state(self, sessions: Any) -> int:
        """
        Restore sessions saved by L{export_state} as dormant, for those of
        them whose registrations the SIP core got back (restore those
        first); the others are dropped.

        @return: the number of dormant sessions.
        @raise ValueError: C{sessions} is not what L{export_state} makes.
        """
        try:
            loaded = {
                str(session_id): (
                    {str(user): bytes.fromhex(key) for user, key in entry["keys"].items()},
                    {str(user): int(fid) for user, fid in entry["flows"].items()},
                )
                for session_id, entry in sessions.items()
            }
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"malformed sessions: {e!r}") from None
        count = 0
        for session_id, (keys, flows) in loaded.items():
            registrations = self.sip.registrations(session_id)
            if (
                not registrations
                or not keys
                or set(keys) != set(flows)
                or any(len(key) != KEY_LENGTH for key in keys.values())
                or not all(0 <= fid < 2**32 for fid in flows.values())
            ):
                continue
            self.keys[session_id] = keys
            self.flows[session_id] = flows
            self._make_dormant(session_id, registrations)
            count += 1
        return count

    def _wake(self, session_id: str) -> None:
        """
        A dormant session's registrations should have expired by now.
        """
        entry = self._dormant.get(session_id)
        if entry is None:
            return
        registrations = self.sip.registrations(session_id)
        now = self.clock.seconds()
        live = [r.expires for r in registrations if r.expires > now]
        if live:
            self._dormant[session_id] = (None, self.clock.callLater(max(live) - now + 1.0, self._wake, session_id))
            return
        self._decide(session_id, Input.REGISTRATIONS_EXPIRED)  # FORGET
        self._forget_dormant(session_id, "registrations expired")

    def _forget_dormant(self, session_id: str, reason: str) -> None:
        _, timer = self._dormant.pop(session_id)
        if timer.active():
            timer.cancel()
        self.log.info("dormant session {session_id} released: {reason}", session_id=session_id, reason=reason)
        self.sip.forget_session(session_id)
        self.keys.pop(session_id, None)
        self.flows.pop(session_id, None)

    def _end(self, tunnel: Any, session_id: str, reason: str) -> None:
        self.sip.tunnel_lost(tunnel, reason)
        self.media.session_ended(session_id, reason)
        self.keys.pop(session_id, None)
        self.flows.pop(session_id, None)
        self._watchers.pop(session_id, None)

    def control_received(self, tunnel: Any, message: dict[str, Any]) -> None:
        if message.get("op") != "resume":
            return
        old_session = message.get("session_id")
        proofs = message.get("proofs")
        challenge = tunnel.local_hello.get("challenge") if tunnel.local_hello else None
        entry: tuple[Any, IDelayedCall | None] | None = (
            self._suspended.get(old_session) if isinstance(old_session, str) else None
        )
        if entry is None and isinstance(old_session, str):
            entry = self._dormant.get(old_session)
        live = self._live.get(old_session) if isinstance(old_session, str) else None
        if entry is None and live is not None and live is not tunnel:
            # The old path died silently (no FIN, keepalive not yet out):
            # the agent proves it is the same session, so the old
            # connection is taken over rather than waited for.
            entry = (live, None)
        keys = self.keys.get(old_session, {}) if isinstance(old_session, str) else {}
        problem = None
        if entry is None or not isinstance(old_session, str):
            problem = "no suspended session by that name"
        elif not isinstance(proofs, dict) or not proofs or len(proofs) > MAX_RESUME_USERS:
            problem = "no proofs"
        elif not isinstance(challenge, str):
            problem = "no challenge was sent"
        else:
            raw = bytes.fromhex(challenge)
            for user, proof in proofs.items():
                key = keys.get(user)
                if key is None or not check_proof(key, raw, old_session, proof):
                    problem = f"wrong proof for {user}"
                    break
        if problem is not None:
            self.refused += 1
            self.log.warn(
                "refused resumption of session {session_id} from {peer}: {reason}",
                session_id=old_session,
                peer=tunnel.peer,
                reason=problem,
            )
            tunnel.send_control({"op": "resume-failed", "reason": problem})
            return
        # the checks above passed: a session name, an entry, proofs
        assert isinstance(old_session, str) and entry is not None and isinstance(proofs, dict)
        state = self.state_of(old_session)
        effect = self._decide(
            old_session, Input.RESUME_OK_REGISTRATIONS if message.get("media") is False else Input.RESUME_OK
        )
        media = True
        if state is SessionState.SUSPENDED:
            old_tunnel, timer = self._suspended.pop(old_session)
            if timer.active():
                timer.cancel()
            if effect is Effect.RESUME_REGISTRATIONS:
                # The agent has released the calls' media already.
                self.media.session_ended(old_session, "the agent released the calls")
                media = False
        elif state is SessionState.DORMANT:
            old_tunnel, timer = self._dormant.pop(old_session)
            if timer.active():
                timer.cancel()
            media = False
        else:  # TAKE_OVER
            old_tunnel = entry[0]
            self._taken_over.add(id(old_tunnel))
            del self._live[old_session]
            self.media.session_suspended(old_session)
            old_tunnel.close(ErrorCode.GOING_AWAY, "session resumed on another connection")
        fresh = tunnel.session_id
        self._decide(fresh, Input.ABSORBED)  # ABSORB
        # The new connection takes the old session's name, so flow tokens
        # in Path/Record-Route keep pointing at it.
        self.sip.tunnel_lost(tunnel, "resumed as another session")
        if self._live.get(fresh) is tunnel:
            del self._live[fresh]
        tunnel.adopt_session(old_session)
        self._live[old_session] = tunnel
        self.sip.tunnel_established(tunnel)
        self.keys.pop(fresh, None)
        self.flows.pop(fresh, None)
        self._watchers.pop(fresh, None)
        resumed: dict[str, Any] = {"op": "resumed", "session_id": old_session, "users": sorted(proofs)}
        if not media:
            resumed["media"] = False
        tunnel.send_control(resumed)
        for user, key in self.keys.get(old_session, {}).items():
            tunnel.bind_flow_key(self.flows[old_session][user], key)
        if media:
            self.media.session_resumed(old_session, tunnel, reopen=True)
        # calls made on the new connection before the proof go on
        self.media.session_absorbed(fresh, old_session)
        self.resumed += 1
        self.log.info(
            "session {session_id} resumed from {peer}{what}",
            session_id=old_session,
            peer=tunnel.peer,
            what="" if media else " (registrations only)",
        )

    def stop(self) -> None:
        """
        The service stops: release what is suspended, suspend nothing more.
        """
        self._stopping = True
        for session_id, (tunnel, timer) in list(self._suspended.items()):
            self._decide(session_id, Input.STOP)  # END
            if timer.active():
                timer.cancel()
            del self._suspended[session_id]
            self._end(tunnel, session_id, "contact point stopping")
        for session_id in list(self._dormant):
            self._decide(session_id, Input.STOP)  # FORGET
            self._forget_dormant(session_id, "contact point stopping")
