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

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from spwm._mypyc import instance_logger
from spwm.security.keys import (
    EXPORTER_LABEL,
    KEY_LENGTH,
    DigestCredentials,
    derive_session_key,
    derive_user_key,
    parse_digest,
    resumption_proof,
)
from spwm.session.codec import from_json, to_json
from spwm.session.session import Session
from spwm.session.state import AGENT_TRANSITIONS, Effect, Input, SessionState, transition
from spwm.sip.errors import SipParseError
from spwm.sip.message import parse_message

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


def session_key(tunnel: Any) -> bytes | None:
    """
    Derive the key of C{tunnel}'s (fresh) session with the keying material
    of its TLS session; C{None} without TLS keying material (a plaintext
    tunnel, a QUIC one): the session id alone is no secret (it is in the
    flow tokens of C{Record-Route} and C{Path}), so such a session gets
    no key of its own.
    """
    exported = tunnel.export_keying_material(EXPORTER_LABEL, KEY_LENGTH)
    return None if exported is None else derive_session_key(exported, tunnel.session_id)


def both_make_session_keys(hello: Any) -> bool:
    """
    Whether the peer's C{hello} says it makes session keys (both halves
    of this version do; an older peer does not, and its sessions are
    resumable only by per-user keys, as before).
    """
    return isinstance(hello, dict) and hello.get("session_key") == 1


class _Lifecycle:
    """
    What both halves share: who gets told when a session ends for good.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, window: float, media: Any, sip: Any) -> None:
        self.log = instance_logger(self)  # compiled, the class attribute is not bound
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

    The session itself is a L{Session} record (C{session}), the same
    record the contact point keeps per session; C{state}, C{keys},
    C{flows} and C{session_id} read it.  Its C{connections} hold what
    carries it: the one connection, or with C{--tunnel-connections} over
    1 the session's L{spwm.session.carrier.PathFront}, which owns the
    connections attached to it (the tunnel handle's C{current} is the
    same object).
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
        #: the agent's one session: state, keys, flows, the contact
        #: point's name for it, the suspended connection, the window's timer
        self.session = Session("")
        #: called with the application flow ids of the users of a session
        #: that is given up for good (see L{_release}); the agent closes
        #: their TCP/TLS connections so that those phones register again
        self.session_lost = session_lost
        self._stopping = False
        self.resumed = 0
        #: hellos that carried the resumption's proofs bound to their
        #: connection (L{proofs}), and the resumptions among them that the
        #: contact point took from the hello (no challenge answered)
        self.bound_sent = 0
        self.bound_taken = 0
        #: the contact point's C{sip_next} in its C{resumed}, for the
        #: tunnel handle's carried SIP
        self._peer_sip_next: object = None
        #: the agent's SIP core (L{wrap}), for its registrations
        self._core: Any = None
        #: the contact point's C{resumed} said that it did not end the
        #: calls for their far parties (C{calls_ended: false}: it died)
        self._calls_unended = False
        #: the session whose calls are being released after such a
        #: resumption: their far parties are ended through the tunnel
        #: (L{far_party_reachable})
        self._ending_far: str | None = None

    @property
    def state(self) -> SessionState:
        """
        The session's L{SessionState}.
        """
        return self.session.state

    @property
    def keys(self) -> dict[str, bytes]:
        """
        User id -> key, for the current (or suspended) session.
        """
        return self.session.keys

    @property
    def flows(self) -> dict[str, int]:
        """
        User id -> the application flow that registered it.
        """
        return self.session.flows

    @property
    def session_id(self) -> str | None:
        """
        The contact point's name for our session, if any.
        """
        return self.session.session_id or None

    @session_id.setter
    def session_id(self, value: str | None) -> None:
        self.session.session_id = value or ""

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
        before, self.session.state = self.session.state, new_state
        self._carry_out(effect, before, tunnel, reason)
        if before is SessionState.SUSPENDED and new_state is not SessionState.SUSPENDED:
            # the SIP the lost connection took with it goes on the resumed
            # session (its flows' keys bound by now) only when the contact
            # point kept its calls
            settled = getattr(self.handle, "resume_settled", None)
            if settled is not None:
                settled(effect is Effect.RESUME, self._peer_sip_next)
            self._peer_sip_next = None

    def _carry_out(self, effect: Effect, before: SessionState, tunnel: Any, reason: str) -> None:
        if effect is Effect.NOTHING:
            return
        if effect is Effect.SUSPEND:
            self.session.suspended = tunnel
            self.media.session_suspended(tunnel.session_id)
            self._cancel()
            self.session.timer = self.clock.callLater(self.window, self._window_over)
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
            self.session.session_key = None
        elif effect is Effect.DROP_TUNNEL:
            self.media.session_ended(tunnel.session_id, reason)

    # -- the SIP core's traffic -------------------------------------------

    def wrap(self, core: Any) -> Any:
        """
        Watch the REGISTER transactions of an L{AgentSipProxy}.
        """
        self._core = core
        return _ObservedAgentCore(core, self)

    def _registered_flows(self) -> set[int]:
        """
        The application flows with a live registration through the
        session: those that gave a per-user key, and (from the SIP core's
        bindings) those that registered without credentials.
        """
        flows = set(self.flows.values())
        core = self._core
        if core is not None:
            flows.update(b["flow"] for b in core.registration_list() if isinstance(b.get("flow"), int))
        return flows

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
            "bound_sent": self.bound_sent,
            "bound_taken": self.bound_taken,
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
        Extra hello fields: that this agent makes session keys and says
        when it stops for good, and the resumption offer, if there is something to resume.
        """
        waiting = self.state in (SessionState.SUSPENDED, SessionState.DORMANT)
        # "final-stop": this agent says when it stops for good
        # (TunnelProtocol.close_for_good)
        if not waiting or not self.session.resumable or not self.session_id:
            return {"session_key": 1, "final-stop": 1}
        return {
            "session_key": 1,
            "final-stop": 1,
            "resume": {"session_id": self.session_id, "users": sorted(self.keys)[:MAX_RESUME_USERS]},
            # the contact point may open the forwards' flows again itself
            # as it resumes the session (spwm.forward)
            "reopen-forwards": 1,
        }

    @property
    def resuming(self) -> bool:
        """
        Whether the session's connection was lost and the agent is
        reconnecting to resume it (within the window): the tunnel handle
        holds SIP meanwhile rather than refuse it.
        """
        return self.state is SessionState.SUSPENDED and not self._stopping

    def tunnel_established(self, tunnel: Any) -> None:
        """
        The one observer of the agent's tunnels: the resumption offer,
        the handle, the forwards, in this order (the offer goes before
        the SIP that waited for the tunnel, so the contact point resumes
        the session before it reads that SIP).
        """
        self.session.use_tunnel(tunnel)
        problem = None
        if self.state in (SessionState.SUSPENDED, SessionState.DORMANT):
            challenge = tunnel.peer_hello.get("challenge")
            if not isinstance(challenge, str) or not self.session.resumable or not self.session_id:
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
        self._new_session_key(tunnel)
        self.handle.tunnel_established(tunnel)
        if self.forwarder is not None:
            self.forwarder.tunnel_established(tunnel)

    def _new_session_key(self, tunnel: Any) -> None:
        """
        A connection that carries a fresh session (not one being resumed):
        make its session key, when the contact point makes one too, so
        that the session can be resumed without a per-user key.
        """
        if self.state in (SessionState.SUSPENDED, SessionState.DORMANT):
            return
        if self.session.session_key is not None or not both_make_session_keys(getattr(tunnel, "peer_hello", None)):
            return
        if self.session_id not in (None, tunnel.session_id):
            return
        key = session_key(tunnel)
        if key is None:
            return
        self.session.session_key = key
        self.session_id = tunnel.session_id
        self._apply(Input.KEY_LEARNED)

    # -- HelloSeal: the proofs in the hello ---------------------------------

    def proofs(self, path: Any) -> dict[str, Any] | None:
        """
        The resumption's proofs for the hello of C{path}, bound to its TLS
        session (L{spwm.security.keys}), once its handshake is done: the
        contact point resumes the session on the hello, without a
        challenge to answer first. C{None} when there is nothing to
        resume or no keying material (a plaintext tunnel): the hello goes
        without, and the challenge is answered as before.
        """
        if self.state not in (SessionState.SUSPENDED, SessionState.DORMANT) or self._stopping:
            return None
        if not self.session.resumable or not self.session_id:
            return None
        binding = path.export_keying_material(EXPORTER_LABEL, KEY_LENGTH)
        if binding is None:
            return None
        return self._proof_fields(binding, media=self.state is SessionState.SUSPENDED, bound=True)

    def seal_hello(self, path: Any, hello: dict[str, Any]) -> dict[str, Any] | None:
        """
        L{HelloSeal<spwm.tunnel.protocol.HelloSeal>}: a hello that
        resumes the session gets the proofs (L{proofs}).
        """
        resume = hello.get("resume")
        if not isinstance(resume, dict):
            return None
        bound = self.proofs(path)
        return None if bound is None else {**hello, "resume": {**resume, "bound": bound}}

    def sent(self, path: Any) -> None:
        self.bound_sent += 1

    @staticmethod
    def _bound(tunnel: Any) -> bool:
        """
        Whether C{tunnel}'s hello carried bound proofs and its welcome
        says the contact point takes them (C{resume_bound}): it answers
        the hello, and no C{resume} message is sent (an older contact
        point does not say so: its challenge is answered).
        """
        resume = tunnel.local_hello.get("resume") if isinstance(tunnel.local_hello, dict) else None
        return (
            isinstance(resume, dict)
            and isinstance(resume.get("bound"), dict)
            and isinstance(tunnel.peer_hello, dict)
            and tunnel.peer_hello.get("resume_bound") == 1
        )

    def _proof_fields(self, raw: bytes, media: bool, bound: bool = False) -> dict[str, Any]:
        """
        A resumption's fields: the proofs for C{raw} (the contact point's
        challenge, or the new connection's keying material when
        C{bound}), whether the calls' media is still here and what the
        agent took of the SIP the contact point sent on the lost
        connection.
        """
        assert self.session_id is not None
        session_id = self.session_id
        fields: dict[str, Any] = {
            "proofs": {user: resumption_proof(key, raw, session_id, bound=bound) for user, key in self.keys.items()}
        }
        if self.session.session_key is not None:
            fields["session_proof"] = resumption_proof(self.session.session_key, raw, session_id, bound=bound)
        if not media:
            fields["media"] = False
        else:
            # what the agent took of the SIP the contact point sent on the
            # lost connection: the contact point carries the rest
            taken = getattr(self.handle, "carried_next", None)
            if isinstance(taken, int):
                fields["sip_next"] = taken
        return fields

    def _offer(self, tunnel: Any, media: bool) -> None:
        if self._bound(tunnel):
            # the hello said it all: the contact point's answer comes
            self.bound_taken += 1
            return
        raw = bytes.fromhex(tunnel.peer_hello["challenge"])
        assert self.session_id is not None
        message: dict[str, Any] = {"op": "resume", "session_id": self.session_id}
        message.update(self._proof_fields(raw, media))
        tunnel.send_control(message)

    def control_received(self, tunnel: Any, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "resumed" and message.get("session_id") == self.session_id:
            media = message.get("media") is not False
            self._calls_unended = not media and message.get("calls_ended") is False
            self._peer_sip_next = message.get("sip_next")
            self._apply(Input.RESUME_OK if media else Input.RESUME_OK_REGISTRATIONS, tunnel)
        elif op == "resume-failed":
            self._apply(Input.RESUME_REFUSED, tunnel, str(message.get("reason", "refused")))
            # the connection goes on with the fresh session it came with
            if tunnel is self.handle.current:
                self._new_session_key(tunnel)

    def _resume(self, tunnel: Any, media: bool) -> None:
        old, self.session.suspended = self.session.suspended, None
        self._cancel()
        assert self.session_id is not None
        fresh = tunnel.session_id
        tunnel.adopt_session(self.session_id)
        for user, key in self.keys.items():
            tunnel.bind_flow_key(self.flows[user], key)
        if old is not None and not media:
            # The contact point kept only the registrations (past its
            # window, or restarted): our calls' media is gone there.
            # After a process that died, its far parties were not told:
            # our SIP core ends their calls too, through this tunnel.
            self._ending_far = old.session_id if self._calls_unended else None
            try:
                self.media.session_ended(old.session_id, "the contact point resumed the registrations only")
            finally:
                self._ending_far = None
            old = None
        elif old is not None:
            self.media.session_resumed(old.session_id, tunnel, reopen=False)
            self.media.session_absorbed(old.session_id, self.session_id)
        self._calls_unended = False
        # calls made on the new connection before the answer go on
        self.media.session_absorbed(fresh, self.session_id)
        self.resumed += 1
        self.log.info(
            "session {session_id} resumed on the new tunnel to {peer}{what}",
            session_id=self.session_id,
            peer=tunnel.peer,
            what="" if old is not None else " (registrations only)",
        )

    def export_session(self) -> dict[str, Any] | None:
        """
        The session, JSON-ready (L{spwm.session.codec}, with its id), for
        a restarted agent to resume (L{import_session}); C{None} when there
        is nothing a key could resume.
        """
        if not self.session_id or not self.session.resumable or self.state is SessionState.ENDED:
            return None
        return {"session_id": self.session_id, **to_json(self.session, None)}

    def import_session(self, entry: Any) -> bool:
        """
        At the start, before any tunnel: the session a stopped (or dead)
        process of this agent had, dormant (its calls are gone; its
        registrations wait at the contact point), so that the first
        tunnel offers its resumption (L{hello}) and the phones are
        reachable again through the same flow tokens, with no REGISTER.

        @return: whether it was taken (not when malformed).
        """
        if not isinstance(entry, dict) or self.state is not SessionState.ENDED:
            return False
        session_id = entry.get("session_id")
        try:
            restored, _ = from_json(session_id, entry)
        except ValueError:
            return False
        if (
            not isinstance(session_id, str)
            or not 0 < len(session_id) <= 64
            or not restored.resumable
            or any(len(key) != KEY_LENGTH for key in restored.keys.values())
            or (restored.session_key is not None and len(restored.session_key) != KEY_LENGTH)
            or set(restored.keys) != set(restored.flows)
            or not all(0 < fid < 2**32 for fid in restored.flows.values())
        ):
            return False
        self.session.keys.update(restored.keys)
        self.session.flows.update(restored.flows)
        self.session.session_key = restored.session_key
        self.session_id = session_id
        self.session.state = SessionState.DORMANT
        return True

    def far_party_reachable(self, session_id: str) -> bool:
        """
        Whether the calls of C{session_id} now released can be ended for
        their far parties through the tunnel: the session was just resumed
        (its registrations only) at a contact point whose process before
        died with them (C{resumed}'s C{calls_ended: false}).
        """
        return session_id == self._ending_far

    def tunnel_lost(self, tunnel: Any, reason: str) -> None:
        self.handle.tunnel_lost(tunnel, reason)
        self.session.stop_using_tunnel(tunnel)
        resumable = self.session.resumable and self.window > 0 and not self._stopping
        self._apply(Input.TUNNEL_LOST if resumable else Input.TUNNEL_ENDED, tunnel, reason)
        if self.forwarder is not None:
            self.forwarder.tunnel_lost(tunnel, reason)

    def _window_over(self) -> None:
        self.session.timer = None
        self._apply(Input.WINDOW_OVER)

    def _go_dormant(self) -> None:
        """
        The window is over: release the calls' media, keep the keys so
        that the next connection can still resume the registrations.
        """
        old, self.session.suspended = self.session.suspended, None
        self.log.info(
            "session {session_id} not resumed within {window} s: calls and media released,"
            " registrations kept for a later resumption",
            session_id=self.session_id,
            window=self.window,
        )
        self.media.session_ended(old.session_id, "resumption window over")

    def _release(self, reason: str, was: SessionState) -> None:
        self._cancel()
        old, self.session.suspended = self.session.suspended, None
        if was in (SessionState.SUSPENDED, SessionState.DORMANT):
            self.log.info("session {session_id} not resumed: {reason}", session_id=self.session_id, reason=reason)
            flows = self._registered_flows()
            if self.session_lost is not None and flows and not self._stopping:
                # The contact point has no registration of ours any more:
                # phones on TCP/TLS re-register at once when their
                # connection closes; phones on UDP wait for their refresh.
                closed = self.session_lost(sorted(flows))
                if closed:
                    self.log.info(
                        "closed {count} phone connection(s) so that they register again", count=closed
                    )
        if old is not None:
            self.media.session_ended(old.session_id, reason)
        self.keys.clear()
        self.flows.clear()
        self.session.session_key = None
        self.session_id = None

    def _cancel(self) -> None:
        self.session.cancel_timer()

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

    def leg_lost(
        self, session_id: str, flow_id: int, call_id: str, reason: str, now: float, tunnels: bool = True
    ) -> tuple[list[Any], list[str]]:
        far = tunnels and self._resumption.far_party_reachable(session_id)
        return self._core.leg_lost(session_id, flow_id, call_id, reason, now, tunnels, far=far)

    def ringing_lost(self, session_id: str, now: float, tunnels: bool = True) -> list[Any]:
        # (with two contact points, each side's core has its own calls:
        # only the side whose session it is, when it knows one)
        if self._resumption.session_id not in (None, session_id):
            return []
        far = tunnels and self._resumption.far_party_reachable(session_id)
        return list(self._core.ringing_lost(session_id, now, tunnels, far=far))

    def byes_unsent(self) -> int:
        return int(self._core.byes_unsent())

    def flow_closed(self, flow: Any) -> None:
        self._core.flow_closed(flow)

    def status(self) -> dict[str, Any]:
        return dict(self._core.status())

    def registration_list(self) -> list[dict[str, Any]]:
        return list(self._core.registration_list())

    def registered(self, aor: str) -> bool:
        return bool(self._core.registered(aor))

    def next_deadline(self) -> float | None:
        return self._core.next_deadline()

    def handle_timer(self, now: float) -> list[Any]:
        return self._core.handle_timer(now)

    def from_app(
        self, flow: Any, data: bytes, now: float, *, congested: bool = False, overloaded: bool = False
    ) -> list[Any]:
        actions = self._core.from_app(flow, data, now, congested=congested, overloaded=overloaded)
        if data.startswith(b"REGISTER "):
            for action in actions:
                if hasattr(action, "flow_id") and hasattr(action, "data"):
                    self._resumption.watcher.request(action.data)
        return actions

    def from_tunnel(self, flow_id: int, data: bytes, now: float, *, overloaded: bool = False) -> list[Any]:
        actions = self._core.from_tunnel(flow_id, data, now, overloaded=overloaded)
        if data.startswith(b"SIP/2.0 2"):
            credentials = self._resumption.watcher.response(data)
            if credentials is not None:
                self._resumption.key_learned(credentials, flow_id)
        return actions
