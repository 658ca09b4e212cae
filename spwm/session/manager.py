# -*- test-case-name: tests.test_security_resume -*-
"""
The contact point's sessions: the one observer of its tunnels
(L{spwm.tunnel.api.TunnelObserver}).  It owns a L{Session} per session id,
moves each through L{CONTACT_TRANSITIONS} and drives the SIP runner, the
media manager and the forwards by explicit calls; media and SIP are keyed
by the session id, so a resumption is attaching a connection
(L{Session.use_tunnel}) and telling the media manager which one.

A session may hold more than one connection (L{Session.connections}, the
primary first).  Losing one that is not the last is no event of the
table: the next one becomes the primary, SIP is attached to it and the
media channels are opened again on it.  (Only tests attach a second
connection today; the redundant-path and UDP-path work will.)

What resumption is, for both halves: L{spwm.security.resume}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from spwm.security.keys import EXPORTER_LABEL, KEY_LENGTH, check_proof
from spwm.security.resume import (
    MAX_DORMANT,
    MAX_RESUME_USERS,
    RegistrationWatcher,
    both_make_session_keys,
    session_key,
    user_key,
)
from spwm.session.codec import from_json, to_json
from spwm.session.session import Session
from spwm.session.state import CONTACT_TRANSITIONS, Effect, Input, SessionState, transition
from spwm.tunnel.frames import ErrorCode

__all__ = ["SessionManager"]


class SessionManager:
    """
    Derives keys per session as registrations succeed, suspends sessions
    with keys when their tunnel breaks, checks resumption proofs and moves
    sessions to new connections.

    @ivar sessions: session id -> its L{Session} (live, suspended, dormant,
        or with keys restored from the state file).
    @ivar refused: resumptions refused (wrong proof, unknown session).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        window: float,
        media: Any,
        sip_runner: Any,
        max_dormant: int = MAX_DORMANT,
        forwarder: Any = None,
        elsewhere: Callable[[object], int | None] | None = None,
    ) -> None:
        """
        @param forwarder: the UDP forward targets (C{ContactForwarder}),
            told when a tunnel is lost.
        @param elsewhere: C{--workers}: the own port of the worker that
            holds a session id, when another worker does
            (L{spwm.workers.WorkerPorts.redirect}); a resume of such a
            session is answered with that port (C{redirect}).
        """
        self.clock = clock
        self.window = window
        self.media = media
        self.sip = sip_runner
        self.forwarder = forwarder
        self.sessions: dict[str, Session] = {}
        #: restored sessions whose calls the process before did not end
        #: for their far parties (L{import_state}), until resumed
        self.calls_unended: set[str] = set()
        # the dormant sessions' ids, oldest first (for MAX_DORMANT)
        self._dormant: dict[str, None] = {}
        self.max_dormant = max_dormant
        self._stopping = False
        # connections whose session another connection took over (their
        # end is no longer ours to handle), by id()
        self._taken_over: set[int] = set()
        self._bind_later: list[tuple[Any, int, bytes]] = []
        self.elsewhere = elsewhere
        self.refused = 0
        self.resumed = 0
        #: resumptions whose proofs came bound in the hello (no challenge)
        self.resumed_bound = 0
        self.redirected = 0

    @property
    def keys(self) -> dict[str, dict[str, bytes]]:
        """
        Session id -> user id -> key, for the sessions with keys (a view
        for the status and the tests; the keys live in the sessions).
        """
        return {sid: s.keys for sid, s in self.sessions.items() if s.keys}

    def resuming(self, session_id: str) -> bool:
        """
        Whether the session's connection broke and its agent may still
        resume it (suspended, within the window): SIP for it waits.
        """
        session = self.sessions.get(session_id)
        return session is not None and session.state is SessionState.SUSPENDED and not self._stopping

    def resumable_ids(self) -> set[str]:
        """
        The ids of the sessions a key can resume (a per-user key or the
        session's own), live, suspended or dormant.
        """
        return {sid for sid, s in self.sessions.items() if s.resumable}

    @property
    def flows(self) -> dict[str, dict[str, int]]:
        """
        Session id -> user id -> flow, as L{keys}.
        """
        return {sid: s.flows for sid, s in self.sessions.items() if s.keys}

    # -- the SIP core's traffic (called by the authorising wrapper) -------

    def request_from_tunnel(self, tunnel: Any, session_id: str, data: bytes) -> None:
        if data.startswith(b"REGISTER "):
            session = self.sessions.get(session_id)
            if session is None:
                session = self.sessions[session_id] = Session(session_id)
            if session.watcher is None:
                session.watcher = RegistrationWatcher(64)
            session.watcher.request(data)

    def response_to_tunnel(self, tunnel: Any, flow_id: int, data: bytes) -> None:
        session = self.sessions.get(tunnel.session_id)
        if session is None or session.watcher is None:
            return
        credentials = session.watcher.response(data)
        if credentials is not None:
            key = session.keys[credentials.user_id] = user_key(tunnel, credentials)
            session.flows[credentials.user_id] = flow_id
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
        session = self.sessions.get(session_id)
        return SessionState.ENDED if session is None else session.state

    def _decide(self, session_id: str, event: Input) -> Effect:
        """
        Feed the table one input for a session: its effect; the session
        takes the new state (a session C{ENDED} without keys is dropped).

        @raise BadTransition: it cannot happen in the session's state.
        """
        effect, new_state = transition(CONTACT_TRANSITIONS, self.state_of(session_id), event)
        session = self.sessions.get(session_id)
        if session is None:
            if new_state is SessionState.ENDED:
                return effect
            session = self.sessions[session_id] = Session(session_id)
        session.state = new_state
        return effect

    def tunnel_established(self, tunnel: Any) -> None:
        self._decide(tunnel.session_id, Input.TUNNEL_UP)  # always ATTACH
        session = self.sessions[tunnel.session_id]
        session.use_tunnel(tunnel)
        if session.session_key is None and both_make_session_keys(getattr(tunnel, "peer_hello", None)):
            # a fresh session: its own key, which the agent makes too
            # (none without TLS keying material)
            session.session_key = session_key(tunnel)
        self.sip.tunnel_established(tunnel)
        self._resume_bound(tunnel)

    def tunnel_lost(self, tunnel: Any, reason: str) -> None:
        """
        The one observer of the contact point's tunnels: the session, then
        the forwards.
        """
        self._session_lost(tunnel, reason)
        if self.forwarder is not None:
            # a session that goes on (suspended, or on another of its
            # connections) keeps its forwards for the agent to open again
            session = self.sessions.get(tunnel.session_id)
            kept = session is not None and session.state in (SessionState.LIVE, SessionState.SUSPENDED)
            self.forwarder.tunnel_lost(tunnel, reason, resumable=kept)

    def _session_lost(self, tunnel: Any, reason: str) -> None:
        session_id = tunnel.session_id
        if id(tunnel) in self._taken_over:
            self._taken_over.discard(id(tunnel))
            self._decide(session_id, Input.TAKEN_OVER)  # nothing
            return
        session = self.sessions.get(session_id)
        if session is not None and len(session.connections) > 1 and any(c is tunnel for c in session.connections):
            # one of several connections: the session goes on on the others
            if session.stop_using_tunnel(tunnel):
                self._switch(session, reason)
            return
        resumable = (
            session is not None
            and session.resumable
            and self.window > 0
            and not self._stopping
            and session.state is not SessionState.SUSPENDED
        )
        # An agent that stops for good (its go-away said "final") cannot
        # resume: its session is released as at the window's end, now.
        stopped = resumable and bool(getattr(tunnel, "agent_stopped", False))
        # An agent that sent go-away before closing (an on-demand tunnel
        # nobody needs) is not coming back for this session: end it now.
        if getattr(tunnel, "go_away_info", None) is not None and not stopped:
            event = Input.GONE_AWAY
        elif resumable:
            event = Input.TUNNEL_LOST
        else:
            event = Input.TUNNEL_ENDED
        effect = self._decide(session_id, event)
        session = self.sessions.get(session_id)
        if session is not None:
            session.stop_using_tunnel(tunnel)
        if effect is Effect.SUSPEND:
            assert session is not None
            self.media.session_suspended(session_id)
            session.cancel_timer()
            session.suspended = tunnel
            session.timer = self.clock.callLater(self.window, self._expire, session_id)
            self._dormant.pop(session_id, None)
            if stopped:
                self._release_suspended(session, "ended: its agent stopped", "agent stopped")
        else:  # END
            self._end(tunnel, session_id, reason)

    def _forwards_ended(self, session_id: str) -> None:
        if self.forwarder is not None:
            self.forwarder.session_ended(session_id)

    def _switch(self, session: Session, reason: str) -> None:
        """
        The primary of a session with another connection went: SIP and
        the channels go on on the next one.
        """
        primary = session.primary
        self.log.info(
            "session {session_id}: its primary connection is gone ({reason}); going on on {peer}",
            session_id=session.session_id,
            reason=reason,
            peer=primary.peer,
        )
        self.sip.tunnel_established(primary)
        self.media.session_resumed(session.session_id, primary, reopen=True)

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
        live = sum(1 for s in self.sessions.values() if s.connections and s.state is SessionState.LIVE)
        suspended = sum(1 for s in self.sessions.values() if s.state is SessionState.SUSPENDED)
        return {
            "live": live,
            "suspended": suspended,
            "dormant": len(self._dormant),
            "resumed": self.resumed,
            "resumed_bound": self.resumed_bound,
            "resume_refused": self.refused,
            "resume_redirected": self.redirected,
        }

    def session_list(self) -> list[dict[str, Any]]:
        """
        For the status listing: every session with its state, its agent
        (the primary connection's), its connections' source addresses and
        how many users have keys.
        """
        out = []
        for sid, s in self.sessions.items():
            primary = s.primary
            out.append(
                {
                    "session": sid,
                    "state": s.state.value,
                    "agent": (str(getattr(primary, "agent_id", "") or "") if primary is not None else "") or s.agent_id,
                    "connections": [str(getattr(c, "peer", "?")) for c in s.connections],
                    "users": len(s.keys),
                }
            )
        return out

    def _expire(self, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is None or session.state is not SessionState.SUSPENDED:
            return  # (not suspended, WINDOW_OVER): nothing
        session.timer = None
        self._release_suspended(session, f"not resumed within {self.window} s", "resumption window over")

    def _release_suspended(self, session: Session, what: str, reason: str) -> None:
        """
        A suspended session is not resumed (its window is over, or its
        agent stopped for good): its calls and media go; its
        registrations, if any, are kept (dormant) until they expire, for
        an agent that comes back later; without any it ends.

        @param what: what happened, for the log line.
        @param reason: why, for the SIP and media it ends.
        """
        session_id = session.session_id
        session.cancel_timer()
        registrations = self.sip.registrations(session_id)
        effect = self._decide(session_id, Input.WINDOW_OVER if registrations else Input.REGISTRATIONS_EXPIRED)
        tunnel, session.suspended = session.suspended, None
        if effect is Effect.END:
            self.log.info("session {session_id} {what}: released", session_id=session_id, what=what)
            self._end(tunnel, session_id, reason)
            return
        # the media first: the SIP core still has the session's dialogs,
        # to end them for the far parties (a BYE of its own)
        self.media.session_ended(session_id, reason)
        self._forwards_ended(session_id)
        self.sip.tunnel_dormant(tunnel)
        session.watcher = None
        last = self._make_dormant(session, registrations)
        self.log.info(
            "session {session_id} {what}: calls and media released; {count} registrations kept for {left:.0f} s more",
            session_id=session_id,
            what=what,
            count=len(registrations),
            left=last - self.clock.seconds(),
        )

    def _make_dormant(self, session: Session, registrations: list[Any]) -> float:
        """
        Keep C{session} dormant until its last registration expires.

        @return: when that is.
        """
        last = max(r.expires for r in registrations)
        session.state = SessionState.DORMANT
        session.timer = self.clock.callLater(max(last - self.clock.seconds(), 0.0) + 1.0, self._wake, session.session_id)
        self._dormant[session.session_id] = None
        while len(self._dormant) > self.max_dormant:
            oldest = next(iter(self._dormant))
            self._decide(oldest, Input.EVICTED)  # FORGET
            self._forget_dormant(oldest, "too many dormant sessions")
        return last

    # -- across a restart (spwm.state) ------------------------------------

    def export_state(self, sip: Any = None) -> dict[str, dict[str, Any]]:
        """
        Every session with keys (live, suspended or dormant), JSON-ready
        (L{spwm.session.codec}), for L{import_state} in the next process.

        @param sip: C{sip(session_id)}: the SIP core's export of the
            session's registrations, or C{None}: none.
        """
        return {
            session_id: to_json(session, None if sip is None else sip(session_id))
            for session_id, session in self.sessions.items()
            if session.resumable
        }

    def export_session(self, session_id: str, sip: Any = None) -> dict[str, Any] | None:
        """
        One session's entry of L{export_state} (for a write in slices,
        L{spwm.state.ContactState.start}).

        @return: the entry, or C{None} when the session is gone or no key
            can resume it.
        """
        session = self.sessions.get(session_id)
        if session is None or not session.resumable:
            return None
        return to_json(session, None if sip is None else sip(session_id))

    def import_state(self, sessions: Any, calls_ended: bool = True) -> int:
        """
        Restore sessions saved by L{export_state} as dormant, for those of
        them whose registrations the SIP core got back (restore those
        first); the others are dropped.

        @param calls_ended: whether the process that wrote them ended
            their calls for the far parties (it stopped); else (it died:
            the file is one of its periodic writes) the agent that resumes
            one is told so (C{resumed}'s C{calls_ended: false}) and ends
            them itself.

        @return: the number of dormant sessions.
        @raise ValueError: C{sessions} is not what L{export_state} makes.
        """
        try:
            loaded = [from_json(session_id, entry)[0] for session_id, entry in sessions.items()]
        except AttributeError as e:
            raise ValueError(f"malformed sessions: {e!r}") from None
        count = 0
        for restored in loaded:
            session_id, keys, flows = restored.session_id, restored.keys, restored.flows
            registrations = self.sip.registrations(session_id)
            if (
                not registrations
                or not restored.resumable
                or (restored.session_key is not None and len(restored.session_key) != KEY_LENGTH)
                or set(keys) != set(flows)
                or any(len(key) != KEY_LENGTH for key in keys.values())
                or not all(0 <= fid < 2**32 for fid in flows.values())
            ):
                continue
            self.sessions[session_id] = restored
            self._make_dormant(restored, registrations)
            if not calls_ended:
                self.calls_unended.add(session_id)
            count += 1
        return count

    def _wake(self, session_id: str) -> None:
        """
        A dormant session's registrations should have expired by now.
        """
        session = self.sessions.get(session_id)
        if session is None or session_id not in self._dormant:
            return
        registrations = self.sip.registrations(session_id)
        now = self.clock.seconds()
        live = [r.expires for r in registrations if r.expires > now]
        if live:
            session.timer = self.clock.callLater(max(live) - now + 1.0, self._wake, session_id)
            return
        self._decide(session_id, Input.REGISTRATIONS_EXPIRED)  # FORGET
        self._forget_dormant(session_id, "registrations expired")

    def _forget_dormant(self, session_id: str, reason: str, quiet: bool = False) -> None:
        del self._dormant[session_id]
        self.calls_unended.discard(session_id)
        session = self.sessions.pop(session_id)
        session.cancel_timer()
        if not quiet:
            self.log.info("dormant session {session_id} released: {reason}", session_id=session_id, reason=reason)
        self.sip.forget_session(session_id)

    def _end(self, tunnel: Any, session_id: str, reason: str) -> None:
        session = self.sessions.get(session_id)
        if session is not None and session.state is not SessionState.ENDED:
            # a connection of a session suspended or dormant already: the
            # session's calls are not this connection's to end
            self.sip.tunnel_lost(tunnel, reason)
            return
        # the media first: the SIP core still has the session's dialogs,
        # to end them for the far parties (a BYE of its own)
        self.media.session_ended(session_id, reason)
        self._forwards_ended(session_id)
        self.sip.tunnel_lost(tunnel, reason)
        if session is not None:
            session.cancel_timer()
            del self.sessions[session_id]

    def control_received(self, tunnel: Any, message: dict[str, Any]) -> None:
        """
        A C{resume} from a new connection: check its proofs against the
        keys of the session it names (suspended, dormant, or live on a
        connection that died silently); all good: the connection takes the
        session's name and the session goes on on it (its media reopened,
        unless the agent says it released it or the session is dormant).
        Anything wrong: C{resume-failed}, logged, nothing attached.
        """
        if message.get("op") != "resume":
            return
        challenge = tunnel.local_hello.get("challenge") if tunnel.local_hello else None
        raw = bytes.fromhex(challenge) if isinstance(challenge, str) else None
        self._resume(tunnel, message, raw, bound=False)

    def _resume_bound(self, tunnel: Any) -> None:
        """
        A new connection's hello that resumes a session with proofs bound
        to the connection's TLS session (C{resume.bound}): checked and
        answered now, as a C{resume} message would be, without the round
        trip of the challenge (C{docs/protocol.md}, "Resumption").
        """
        hello = getattr(tunnel, "peer_hello", None)
        resume = hello.get("resume") if isinstance(hello, dict) else None
        if not isinstance(resume, dict) or not isinstance(resume.get("bound"), dict):
            return
        message = {**resume["bound"], "op": "resume", "session_id": resume.get("session_id")}
        # (no TLS keying material here: refused, as a proof that cannot
        # be checked; an agent would not send these without it)
        self._resume(tunnel, message, tunnel.export_keying_material(EXPORTER_LABEL, KEY_LENGTH), bound=True)

    def _resume(self, tunnel: Any, message: dict[str, Any], raw: bytes | None, bound: bool) -> None:
        """
        Check a resumption (C{message}: a C{resume} message, or the bound
        fields of the hello) against C{raw} (the challenge, or the
        connection's keying material when C{bound}) and carry it out.
        """
        old_session = message.get("session_id")
        proofs = message.get("proofs")
        session = self.sessions.get(old_session) if isinstance(old_session, str) else None
        state = SessionState.ENDED if session is None else session.state
        found = session is not None and (
            state in (SessionState.SUSPENDED, SessionState.DORMANT)
            # The old path died silently (no FIN, keepalive not yet out):
            # the agent proves it is the same session, so the old
            # connection is taken over rather than waited for.
            or (state is SessionState.LIVE and session.primary is not None and session.primary is not tunnel)
        )
        problem = None
        redirect = self.elsewhere(old_session) if session is None and self.elsewhere is not None else None
        if redirect is not None:
            # another worker's session (the kernel spread this connection
            # to the shared port): the agent is told where it is
            self.redirected += 1
            self.log.info(
                "resumption of session {session_id} from {peer}: held by the worker on port {port}; agent sent there",
                session_id=old_session,
                peer=tunnel.peer,
                port=redirect,
            )
            tunnel.send_control({"op": "resume-failed", "reason": "session held by another worker", "redirect": redirect})
            return
        own = message.get("session_proof")
        if not found or session is None or not isinstance(old_session, str):
            problem = "no suspended session by that name"
        elif not isinstance(proofs, dict) or len(proofs) > MAX_RESUME_USERS or not (proofs or own is not None):
            problem = "no proofs"
        elif raw is None:
            problem = "bound proofs without TLS keying material" if bound else "no challenge was sent"
        else:
            for user, proof in proofs.items():
                key = session.keys.get(user)
                if key is None or not check_proof(key, raw, old_session, proof, bound=bound):
                    problem = f"wrong proof for {user}"
                    break
            if problem is None and session.session_key is not None and not check_proof(
                session.session_key, raw, old_session, own, bound=bound
            ):
                # the session has its own key: the agent that made the
                # session proves it, whatever users it names
                problem = "wrong session proof" if own is not None else "no session proof"
            elif problem is None and session.session_key is None and not proofs:
                problem = "no proofs"
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
        # the checks above passed: a session name, a session, proofs
        assert isinstance(old_session, str) and session is not None and isinstance(proofs, dict)
        effect = self._decide(
            old_session, Input.RESUME_OK_REGISTRATIONS if message.get("media") is False else Input.RESUME_OK
        )
        media = True
        if state is SessionState.SUSPENDED:
            session.cancel_timer()
            session.suspended = None
            if effect is Effect.RESUME_REGISTRATIONS:
                # The agent has released the calls' media already.
                self.media.session_ended(old_session, "the agent released the calls")
                media = False
        elif state is SessionState.DORMANT:
            session.cancel_timer()
            del self._dormant[old_session]
            media = False
        else:  # TAKE_OVER
            taken = list(session.connections)
            # the SIP in flight on them, as when the last connection is
            # lost (an agent whose address changed: they died silently)
            carry = getattr(self.sip, "carry", None)
            for old_tunnel in taken:
                order = getattr(old_tunnel, "sip_order", None)
                if carry is not None and order is not None:
                    carry(old_session, order.unacked() if order.kept else [], order.expected, taken_over=True)
            for old_tunnel in taken:
                self._taken_over.add(id(old_tunnel))
                session.stop_using_tunnel(old_tunnel)
            self.media.session_suspended(old_session)
            for old_tunnel in taken:
                old_tunnel.close(ErrorCode.GOING_AWAY, "session resumed on another connection")
        unended = old_session in self.calls_unended
        self.calls_unended.discard(old_session)
        fresh = tunnel.session_id
        self._decide(fresh, Input.ABSORBED)  # ABSORB
        # The new connection takes the old session's name, so flow tokens
        # in Path/Record-Route keep pointing at it.
        self.sip.tunnel_lost(tunnel, "resumed as another session")
        self.sessions.pop(fresh, None)
        tunnel.adopt_session(old_session)
        session.use_tunnel(tunnel)
        resumed: dict[str, Any] = {"op": "resumed", "session_id": old_session, "users": sorted(proofs)}
        if not media:
            resumed["media"] = False
            if unended:
                # the process before died with the calls: their far
                # parties were not told; the agent can (docs/sip-proxy.md)
                resumed["calls_ended"] = False
        # the SIP the session's last connection took with it: dropped
        # without the calls, else what the agent did not take goes first
        settle = getattr(self.sip, "settle_carried", None)
        sip_next = settle(old_session, media, message.get("sip_next")) if settle is not None else None
        if sip_next is not None:
            resumed["sip_next"] = sip_next
        # the answer goes before the SIP that waited for the session (the
        # runner sends it now): the agent takes that SIP as the resumed
        # session's, not as its new connection's fresh one
        tunnel.send_control(resumed)
        for user, key in session.keys.items():
            tunnel.bind_flow_key(session.flows[user], key)
        self.sip.tunnel_established(tunnel)
        if media:
            self.media.session_resumed(old_session, tunnel, reopen=True)
        hello = getattr(tunnel, "peer_hello", None)
        if self.forwarder is not None and isinstance(hello, dict) and hello.get("reopen-forwards") == 1:
            # the forwards' flows too, without waiting for the agent's opens
            self.forwarder.session_resumed(old_session, tunnel)
        # calls made on the new connection before the proof go on
        self.media.session_absorbed(fresh, old_session)
        self.resumed += 1
        self.resumed_bound += bound
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
        for session_id, session in list(self.sessions.items()):
            if session.state is SessionState.SUSPENDED:
                self._decide(session_id, Input.STOP)  # END
                session.cancel_timer()
                tunnel, session.suspended = session.suspended, None
                self._end(tunnel, session_id, "contact point stopping")
        dormant = list(self._dormant)
        for session_id in dormant:
            self._decide(session_id, Input.STOP)  # FORGET
            self._forget_dormant(session_id, "contact point stopping", quiet=True)
        if dormant:
            # one line, not one per session: a contact point with a state
            # file stops with every dormant session saved in it
            self.log.info("{count} dormant sessions released: contact point stopping", count=len(dormant))
