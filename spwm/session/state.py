# -*- test-case-name: tests.test_session_state -*-
"""
The life of a session as an explicit table (the h11 style):
C{TRANSITIONS[(state, input)] = (effect, new_state)}.  A pair that is not
in the table cannot happen; L{transition} raises L{BadTransition} for it
instead of guessing; the pairs that cannot happen are listed
(C{AGENT_IMPOSSIBLE}, C{CONTACT_IMPOSSIBLE}).

The table is pure: the session logic classifies what happened into an
L{Input}, looks the pair up, carries out the L{Effect} and takes the new
state.  There are two tables over the same states: L{AGENT_TRANSITIONS} drives
the agent's one session (L{spwm.security.resume.AgentResumption}),
L{CONTACT_TRANSITIONS} each session of the contact point
(L{spwm.session.manager.SessionManager}, over L{spwm.session.session.Session} records).

States:

- C{ENDED}: no session worth resuming (no key yet, or given up).
- C{LIVE}: a session with keys (per-user keys, or its own session key), on
  a live tunnel.
- C{SUSPENDED}: its tunnel broke; within the resumption window calls and
  media are kept (sockets bound, channels gone).
- C{DORMANT}: the window is over: calls and media released, keys kept so
  that a new tunnel can still resume the registrations.

Inputs (the session logic makes them from the tunnel's life and the
resume control messages):

- C{KEY_LEARNED}: a REGISTER succeeded with digest credentials, or the
  session's own key was made (both halves make one).
- C{TUNNEL_UP}: a tunnel came up (in C{SUSPENDED}/C{DORMANT} with a
  challenge to answer: the proof is sent).
- C{TUNNEL_LOST}: the tunnel broke and the session can be resumed (keys,
  a window, not stopping).
- C{TUNNEL_ENDED}: the tunnel went and there is nothing to resume.
- C{RESUME_OK}: the peer resumed the session with its media.
- C{RESUME_OK_REGISTRATIONS}: the peer resumed only the registrations.
- C{RESUME_REFUSED}: the peer refused, or offered no resumption.
- C{WINDOW_OVER}: the resumption window ran out.
- C{STOP}: the service stops.
- C{GONE_AWAY}: the tunnel is closed on purpose (C{--tunnel on-demand}),
  so its loss is not one to resume.

The contact point's only inputs: C{REGISTRATIONS_EXPIRED} (no
registration left at the window's end, or a dormant session's last one
expired), C{EVICTED} (too many dormant sessions), C{ABSORBED} (the fresh
session of a connection that resumed an older one), C{TAKEN_OVER} (the end
of a connection whose session another one took over).
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "AGENT_IMPOSSIBLE",
    "AGENT_TRANSITIONS",
    "BadTransition",
    "CONTACT_IMPOSSIBLE",
    "CONTACT_TRANSITIONS",
    "Effect",
    "Input",
    "SessionState",
    "transition",
]


class SessionState(Enum):
    ENDED = "ended"
    LIVE = "live"
    SUSPENDED = "suspended"
    DORMANT = "dormant"


class Input(Enum):
    KEY_LEARNED = "key learned"
    TUNNEL_UP = "tunnel up"
    TUNNEL_LOST = "tunnel lost"
    TUNNEL_ENDED = "tunnel ended"
    RESUME_OK = "resume ok"
    RESUME_OK_REGISTRATIONS = "resume ok, registrations only"
    RESUME_REFUSED = "resume refused"
    WINDOW_OVER = "window over"
    STOP = "stop"
    GONE_AWAY = "gone away"
    # the contact point's only
    REGISTRATIONS_EXPIRED = "registrations expired"
    EVICTED = "evicted"
    ABSORBED = "absorbed"
    TAKEN_OVER = "taken over"


#: the inputs only the agent's session has
AGENT_ONLY = frozenset({Input.KEY_LEARNED, Input.RESUME_REFUSED})
#: the inputs only the contact point's sessions have
CONTACT_ONLY = frozenset({Input.REGISTRATIONS_EXPIRED, Input.EVICTED, Input.ABSORBED, Input.TAKEN_OVER})


class Effect(Enum):
    #: nothing to do
    NOTHING = "nothing"
    #: keep calls and media of the lost tunnel, start the window
    SUSPEND = "suspend"
    #: answer the new tunnel's challenge with the proofs
    OFFER = "offer"
    #: move calls and media to the new tunnel
    RESUME = "resume"
    #: resume the registrations; release the calls' media if any is left
    RESUME_REGISTRATIONS = "resume registrations"
    #: release calls and media, keep the keys
    GO_DORMANT = "go dormant"
    #: give the session up: release what is kept, forget the keys
    RELEASE = "release"
    #: the tunnel's calls and media end with it; forget the keys
    END = "end"
    #: a tunnel that came up while suspended broke before the resumption:
    #: its own calls end; the suspended session keeps its tunnel and window
    DROP_TUNNEL = "drop tunnel"
    # the contact point's only
    #: a connection carries the session: attach its SIP
    ATTACH = "attach"
    #: a dormant session is given up: forget its registrations and keys
    FORGET = "forget"
    #: the session is live on a connection that died silently: close that
    #: one, move calls and media to the new one
    TAKE_OVER = "take over"
    #: the new connection's own fresh session is merged into the resumed one
    ABSORB = "absorb"


class BadTransition(ValueError):
    """
    An input that cannot happen in a state.
    """


S, I, E = SessionState, Input, Effect

#: the agent's session: (state, input) -> (effect, new state)
AGENT_TRANSITIONS: dict[tuple[SessionState, Input], tuple[Effect, SessionState]] = {
    # no session worth resuming
    (S.ENDED, I.KEY_LEARNED): (E.NOTHING, S.LIVE),
    (S.ENDED, I.TUNNEL_UP): (E.NOTHING, S.ENDED),
    # keys given without a registration seen (a test, an import): resumable
    (S.ENDED, I.TUNNEL_LOST): (E.SUSPEND, S.SUSPENDED),
    (S.ENDED, I.TUNNEL_ENDED): (E.END, S.ENDED),
    (S.ENDED, I.RESUME_OK): (E.NOTHING, S.ENDED),
    (S.ENDED, I.RESUME_OK_REGISTRATIONS): (E.NOTHING, S.ENDED),
    (S.ENDED, I.RESUME_REFUSED): (E.RELEASE, S.ENDED),
    (S.ENDED, I.WINDOW_OVER): (E.NOTHING, S.ENDED),
    (S.ENDED, I.STOP): (E.RELEASE, S.ENDED),
    (S.ENDED, I.GONE_AWAY): (E.RELEASE, S.ENDED),
    # a live session
    (S.LIVE, I.KEY_LEARNED): (E.NOTHING, S.LIVE),
    (S.LIVE, I.TUNNEL_UP): (E.NOTHING, S.LIVE),
    (S.LIVE, I.TUNNEL_LOST): (E.SUSPEND, S.SUSPENDED),
    (S.LIVE, I.TUNNEL_ENDED): (E.END, S.ENDED),
    (S.LIVE, I.RESUME_OK): (E.NOTHING, S.LIVE),
    (S.LIVE, I.RESUME_OK_REGISTRATIONS): (E.NOTHING, S.LIVE),
    (S.LIVE, I.RESUME_REFUSED): (E.RELEASE, S.ENDED),
    (S.LIVE, I.WINDOW_OVER): (E.NOTHING, S.LIVE),
    (S.LIVE, I.STOP): (E.RELEASE, S.ENDED),
    (S.LIVE, I.GONE_AWAY): (E.RELEASE, S.ENDED),
    # within the window
    (S.SUSPENDED, I.KEY_LEARNED): (E.NOTHING, S.SUSPENDED),
    (S.SUSPENDED, I.TUNNEL_UP): (E.OFFER, S.SUSPENDED),
    # the new tunnel broke before the peer answered: the session waits on
    # (redesign of issue 11: it used to suspend the new tunnel in place of
    # the old one, whose calls were then never resumed nor released)
    (S.SUSPENDED, I.TUNNEL_LOST): (E.DROP_TUNNEL, S.SUSPENDED),
    (S.SUSPENDED, I.TUNNEL_ENDED): (E.RELEASE, S.ENDED),
    (S.SUSPENDED, I.RESUME_OK): (E.RESUME, S.LIVE),
    (S.SUSPENDED, I.RESUME_OK_REGISTRATIONS): (E.RESUME_REGISTRATIONS, S.LIVE),
    (S.SUSPENDED, I.RESUME_REFUSED): (E.RELEASE, S.ENDED),
    (S.SUSPENDED, I.WINDOW_OVER): (E.GO_DORMANT, S.DORMANT),
    (S.SUSPENDED, I.STOP): (E.RELEASE, S.ENDED),
    (S.SUSPENDED, I.GONE_AWAY): (E.RELEASE, S.ENDED),
    # past the window, keys kept
    (S.DORMANT, I.KEY_LEARNED): (E.NOTHING, S.DORMANT),
    (S.DORMANT, I.TUNNEL_UP): (E.OFFER, S.DORMANT),
    # a tunnel that came up, was offered the registrations and broke:
    # its own calls (if any) are kept for a window
    (S.DORMANT, I.TUNNEL_LOST): (E.SUSPEND, S.SUSPENDED),
    (S.DORMANT, I.TUNNEL_ENDED): (E.RELEASE, S.ENDED),
    (S.DORMANT, I.RESUME_OK): (E.RESUME_REGISTRATIONS, S.LIVE),
    (S.DORMANT, I.RESUME_OK_REGISTRATIONS): (E.RESUME_REGISTRATIONS, S.LIVE),
    (S.DORMANT, I.RESUME_REFUSED): (E.RELEASE, S.ENDED),
    (S.DORMANT, I.WINDOW_OVER): (E.NOTHING, S.DORMANT),
    (S.DORMANT, I.STOP): (E.RELEASE, S.ENDED),
    (S.DORMANT, I.GONE_AWAY): (E.RELEASE, S.ENDED),
}

#: the pairs the agent never sees (the tests check that the table and
#: this set cover every pair, once)
AGENT_IMPOSSIBLE: frozenset[tuple[SessionState, Input]] = frozenset(
    (state, event) for state in S for event in CONTACT_ONLY
)

#: one session of the contact point, by its id.  Its state is where the
#: session is: suspended, dormant, live on a connection, or none of these.
#: A lost connection whose session is suspended or dormant already, or
#: whose end is not resumable (no keys, no window, stopping), is
#: C{TUNNEL_ENDED}; one that sent go-away first is C{GONE_AWAY}.
CONTACT_TRANSITIONS: dict[tuple[SessionState, Input], tuple[Effect, SessionState]] = {
    # a connection came up with this (fresh) session id
    (S.ENDED, I.TUNNEL_UP): (E.ATTACH, S.LIVE),
    (S.LIVE, I.TUNNEL_UP): (E.ATTACH, S.LIVE),
    (S.SUSPENDED, I.TUNNEL_UP): (E.ATTACH, S.SUSPENDED),
    (S.DORMANT, I.TUNNEL_UP): (E.ATTACH, S.DORMANT),
    # a resumable loss
    (S.ENDED, I.TUNNEL_LOST): (E.SUSPEND, S.SUSPENDED),
    (S.LIVE, I.TUNNEL_LOST): (E.SUSPEND, S.SUSPENDED),
    (S.DORMANT, I.TUNNEL_LOST): (E.SUSPEND, S.SUSPENDED),
    # the connection's SIP and media end with it; a suspended or dormant
    # session stays so
    (S.ENDED, I.TUNNEL_ENDED): (E.END, S.ENDED),
    (S.LIVE, I.TUNNEL_ENDED): (E.END, S.ENDED),
    (S.SUSPENDED, I.TUNNEL_ENDED): (E.END, S.SUSPENDED),
    (S.DORMANT, I.TUNNEL_ENDED): (E.END, S.DORMANT),
    (S.ENDED, I.GONE_AWAY): (E.END, S.ENDED),
    (S.LIVE, I.GONE_AWAY): (E.END, S.ENDED),
    (S.SUSPENDED, I.GONE_AWAY): (E.END, S.SUSPENDED),
    (S.DORMANT, I.GONE_AWAY): (E.END, S.DORMANT),
    # the window
    (S.ENDED, I.WINDOW_OVER): (E.NOTHING, S.ENDED),
    (S.LIVE, I.WINDOW_OVER): (E.NOTHING, S.LIVE),
    (S.SUSPENDED, I.WINDOW_OVER): (E.GO_DORMANT, S.DORMANT),
    (S.DORMANT, I.WINDOW_OVER): (E.NOTHING, S.DORMANT),
    # no registration left (at the window's end, or later)
    (S.ENDED, I.REGISTRATIONS_EXPIRED): (E.NOTHING, S.ENDED),
    (S.LIVE, I.REGISTRATIONS_EXPIRED): (E.NOTHING, S.LIVE),
    (S.SUSPENDED, I.REGISTRATIONS_EXPIRED): (E.END, S.ENDED),
    (S.DORMANT, I.REGISTRATIONS_EXPIRED): (E.FORGET, S.ENDED),
    (S.DORMANT, I.EVICTED): (E.FORGET, S.ENDED),
    # a proven resumption (refusals change no session)
    (S.SUSPENDED, I.RESUME_OK): (E.RESUME, S.LIVE),
    (S.SUSPENDED, I.RESUME_OK_REGISTRATIONS): (E.RESUME_REGISTRATIONS, S.LIVE),
    (S.DORMANT, I.RESUME_OK): (E.RESUME_REGISTRATIONS, S.LIVE),
    (S.DORMANT, I.RESUME_OK_REGISTRATIONS): (E.RESUME_REGISTRATIONS, S.LIVE),
    (S.LIVE, I.RESUME_OK): (E.TAKE_OVER, S.LIVE),
    (S.LIVE, I.RESUME_OK_REGISTRATIONS): (E.TAKE_OVER, S.LIVE),
    # the resuming connection's own session
    (S.LIVE, I.ABSORBED): (E.ABSORB, S.ENDED),
    # the end of a connection another one took over is not ours
    (S.ENDED, I.TAKEN_OVER): (E.NOTHING, S.ENDED),
    (S.LIVE, I.TAKEN_OVER): (E.NOTHING, S.LIVE),
    (S.SUSPENDED, I.TAKEN_OVER): (E.NOTHING, S.SUSPENDED),
    (S.DORMANT, I.TAKEN_OVER): (E.NOTHING, S.DORMANT),
    # the service stops
    (S.ENDED, I.STOP): (E.NOTHING, S.ENDED),
    (S.LIVE, I.STOP): (E.NOTHING, S.LIVE),
    (S.SUSPENDED, I.STOP): (E.END, S.ENDED),
    (S.DORMANT, I.STOP): (E.FORGET, S.ENDED),
}

#: the pairs the contact point never sees: the agent's inputs; a loss of
#: a session suspended already is C{TUNNEL_ENDED}; only dormant sessions
#: are evicted; a resumption names a session that exists (else it is
#: refused, which changes no session); only a fresh live session is absorbed
CONTACT_IMPOSSIBLE: frozenset[tuple[SessionState, Input]] = frozenset(
    {(state, event) for state in S for event in AGENT_ONLY}
    | {(S.SUSPENDED, I.TUNNEL_LOST)}
    | {(state, I.EVICTED) for state in (S.ENDED, S.LIVE, S.SUSPENDED)}
    | {(S.ENDED, I.RESUME_OK), (S.ENDED, I.RESUME_OK_REGISTRATIONS)}
    | {(state, I.ABSORBED) for state in (S.ENDED, S.SUSPENDED, S.DORMANT)}
)

del S, I, E

Table = dict[tuple[SessionState, Input], tuple[Effect, SessionState]]


def transition(table: Table, state: SessionState, event: Input) -> tuple[Effect, SessionState]:
    """
    @param table: L{AGENT_TRANSITIONS} or L{CONTACT_TRANSITIONS}.
    @return: the effect of C{event} in C{state} and the state after it.
    @raise BadTransition: C{event} cannot happen in C{state}.
    """
    try:
        return table[state, event]
    except KeyError:
        raise BadTransition(f"{event.value!r} cannot happen in state {state.value!r}") from None
