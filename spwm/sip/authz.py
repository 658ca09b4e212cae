# -*- test-case-name: tests.test_sip_authz -*-
"""
Tunnel authorisation from the SIP registration.

Until the operator's registrar (or the embedded one) has answered a REGISTER
that came through a tunnel with 2xx, that tunnel may send only REGISTER and
OPTIONS; anything else gets C{403}, and no media channel can be opened.
Afterwards it may send requests only as the addresses-of-record registered
through it: the From identity is checked (a withheld one, RFC 3323's
anonymous From, passes), and so is every P-Preferred-Identity value
(RFC 3325), whatever the From.  Identities are compared as RFC 3261 19.1.4
compares URIs, without their parameters (L{identity_key}).  When all
registrations of a tunnel have expired or been removed, it is unregistered
again.

L{AuthorizingContactProxy} wraps a L{spwm.sip.contact_proxy.ContactSipProxy} (same
interface) and limits REGISTER requests per address-of-record and per
tunnel; L{MediaAcceptor} guards the media channels.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from spwm.sip.errors import SipParseError
from spwm.sip.message import SipMessage, make_response, parse_message
from spwm.sip.actions import Dropped, ToTunnel
from spwm.sip.contact_proxy import ContactSipProxy, never_congested
from spwm.sip.uri import parse_name_addr, parse_uri, split_header_values, unescape
from spwm.tunnel.api import ChannelAcceptor, ChannelHandler, Refusal
from spwm.tunnel.frames import ChannelKind

#: What an unregistered tunnel may send.
UNREGISTERED_METHODS = frozenset({"REGISTER", "OPTIONS"})

#: The host of an anonymous From (RFC 3323 4.1.1.3: a caller who withholds
#: its identity, "Anonymous" <sip:anonymous@anonymous.invalid>).
ANONYMOUS_HOST = "anonymous.invalid"

#: REGISTER requests a tunnel may send per minute in all, per address-of-
#: record it may register (C{max_users}): each phone's registration is two
#: with a digest challenge, and after a power cut every phone behind an
#: agent registers in the same minute.
TUNNEL_REGISTERS_PER_USER = 4

#: An identity as compared here (L{identity_key}).
Identity = tuple[str, "str | None", "str | None", str, "int | None", "str | None"]

#: The key of a REGISTER that does not parse (the core answers it 400).
_NO_AOR: Identity = ("", None, None, "", None, None)

#: Why a request is refused for its P-Preferred-Identity.
PREFERRED_UNREGISTERED = "P-Preferred-Identity is not registered through this tunnel"
PREFERRED_MALFORMED = "P-Preferred-Identity is malformed"


def identity_key(uri: Any) -> Identity:
    """
    What two URIs naming the same identity have in common: scheme, user,
    password, host and port, compared as RFC 3261 19.1.4 compares them (the
    host without case, the user and password with case, escapes decoded; a
    port is not its default, so C{alice@example.org:5060} is another
    identity than C{alice@example.org}); URI parameters are left out, so
    C{;user=phone} does not make another identity.  A URI of another scheme
    (C{tel}) is its text without parameters.
    """
    if uri.opaque is not None:
        return (uri.scheme, None, None, "", None, uri.opaque.split(";", 1)[0])
    user = None if uri.user is None else unescape(uri.user)
    password = None if uri.password is None else unescape(uri.password)
    return (uri.scheme, user, password, uri.host.lower(), uri.port, None)


def _identity(address: Any) -> Identity | None:
    """
    The identity of a parsed From or To (C{None} when the message has
    none).
    """
    return None if address is None else identity_key(address.uri)


def preferred_refusal(msg: SipMessage, identities: set[Identity]) -> str | None:
    """
    Why a request's P-Preferred-Identity is refused: every value of every
    such header line (RFC 3325 9.2 allows two, a sip or sips and a tel URI;
    a proxy may take any of them for the identity it asserts) must be one
    of C{identities}; one that does not parse is refused too, as the
    operator's proxy might read it otherwise than we do.

    @return: the reason (L{PREFERRED_UNREGISTERED} or
        L{PREFERRED_MALFORMED}), or C{None} when all are registered or
        there is none.
    """
    for h in msg.headers:
        if h.name != "p-preferred-identity":
            continue
        try:
            values = split_header_values(h.text, strict=True)
            if not values:
                return PREFERRED_MALFORMED
            for value in values:
                if identity_key(parse_name_addr(value).uri) not in identities:
                    return PREFERRED_UNREGISTERED
        except SipParseError:
            return PREFERRED_MALFORMED
    return None


def _expire(times: "deque[float]", horizon: float) -> None:
    while times and times[0] <= horizon:
        times.popleft()


class AuthorizingContactProxy:
    """
    A contact-point SIP core that refuses what a tunnel may not send.

    @ivar refused: requests refused, by reason.
    """

    def __init__(
        self,
        core: Any,
        *,
        require_registration: bool = True,
        observer: Any = None,
        register_limit: int = 30,
        max_users: int = 64,
        clock: Any = None,
    ) -> None:
        """
        @param require_registration: refuse what an unregistered tunnel may
            not send (off: only the REGISTER rate limit applies).
        @param observer: told of REGISTER requests from tunnels
            (C{request_from_tunnel(tunnel, session_id, data)}) and of
            responses going into tunnels (C{response_to_tunnel(tunnel,
            data)}), for the per-user keys.
        @param register_limit: REGISTER requests per address-of-record
            (the To) and tunnel per minute; more get C{503} with
            C{Retry-After} (stops password guessing through us, and a phone
            that retries a wrong password for ever, without holding up the
            other phones behind the same agent).  A tunnel may send
            L{TUNNEL_REGISTERS_PER_USER} times C{max_users} in all (at
            least C{register_limit}).
        """
        self._core = core
        self.require_registration = require_registration
        self.observer = observer
        self.register_limit = register_limit
        self.max_users = max_users
        # per session: the times of its REGISTERs per address-of-record,
        # and of all of them under None
        self._register_times: dict[str, dict[Identity | None, deque[float]]] = {}
        self._identities: dict[str, tuple[tuple[str, ...], set[Identity]]] = {}
        self.refused: dict[str, int] = {}

    @property
    def tunnel_register_limit(self) -> int:
        """
        REGISTER requests a tunnel may send per minute in all.
        """
        return max(self.register_limit, TUNNEL_REGISTERS_PER_USER * self.max_users)

    # -- the core's interface, passed on ---------------------------------

    @property
    def core(self) -> ContactSipProxy:
        """
        The contact proxy this wraps.
        """
        return self._core

    @property
    def address(self) -> tuple[str, int]:
        return self._core.address

    @property
    def names(self) -> Any:
        return self._core.names

    @property
    def registrar(self) -> Any:
        return self._core.registrar

    @property
    def proxies(self) -> Any:
        return self._core.proxies

    @property
    def secret(self) -> bytes:
        return self._core.secret

    def tunnel_attached(self, tunnel_key: Any, session_id: str) -> None:
        self._core.tunnel_attached(tunnel_key, session_id)

    def registrations(self, session_id: str) -> list[Any]:
        return self._core.registrations(session_id)

    def registration_list(self) -> list[dict[str, Any]]:
        return self._core.registration_list()

    def export_registrations(self, session_id: str, now: float) -> dict[str, Any]:
        return self._core.export_registrations(session_id, now)

    def import_registrations(self, session_id: str, data: Any, now: float) -> int:
        return self._core.import_registrations(session_id, data, now)

    def next_deadline(self) -> float | None:
        return self._core.next_deadline()

    def handle_timer(self, now: float) -> list[Any]:
        return self._core.handle_timer(now)

    def leg_lost(
        self, session_id: str, flow_id: int, call_id: str, reason: str, now: float, tunnels: bool = True
    ) -> tuple[list[Any], list[str]]:
        return self._core.leg_lost(session_id, flow_id, call_id, reason, now, tunnels)

    def ringing_lost(self, session_id: str, now: float, tunnels: bool = True) -> list[Any]:
        return self._core.ringing_lost(session_id, now, tunnels)

    def identities(self, session_id: str) -> set[Identity]:
        """
        The identity (L{identity_key}) of every address-of-record registered through a
        session (parsed once per set of registrations, not per request).
        """
        aors = tuple(r.aor for r in self._core.registrations(session_id))
        cached = self._identities.get(session_id)
        if cached is not None and cached[0] == aors:
            return cached[1]
        out = set()
        for aor in aors:
            try:
                out.add(identity_key(parse_uri(aor)))
            except SipParseError:
                continue
        if len(self._identities) > 65536:
            self._identities.clear()
        self._identities[session_id] = (aors, out)
        return out

    def is_authorized(self, session_id: str) -> bool:
        """
        Whether a session has a live registration.
        """
        return bool(self._core.registrations(session_id))

    def from_network(
        self,
        transport: str,
        src: Any,
        data: bytes,
        now: float,
        *,
        congested: Callable[[Any], bool] = never_congested,
        overloaded: bool = False,
    ) -> list[Any]:
        actions = self._core.from_network(transport, src, data, now, congested=congested, overloaded=overloaded)
        if self.observer is not None and data.startswith(b"SIP/2.0 2"):
            for action in actions:
                if isinstance(action, ToTunnel):
                    self.observer.response_to_tunnel(action.tunnel_key, action.flow_id, action.data)
        return actions

    def _register_refusal(self, session_id: str, aor: Identity, now: float) -> str | None:
        """
        Count a REGISTER for C{aor} through a session, unless one of its
        minutes is full.

        @return: why it is refused, or C{None}.
        """
        windows = self._register_times.get(session_id)
        if windows is None:
            windows = self._register_times[session_id] = {None: deque()}
        horizon = now - 60.0
        total = windows[None]
        _expire(total, horizon)
        if len(total) >= self.tunnel_register_limit:
            return "too many REGISTER requests"
        own = windows.get(aor)
        if own is None:
            if len(windows) > self.tunnel_register_limit:
                # the addresses not seen for a minute (bounded: at most a
                # minute's total of them have times)
                for key, times in list(windows.items()):
                    if key is not None:
                        _expire(times, horizon)
                        if not times:
                            del windows[key]
            own = windows[aor] = deque()
        else:
            _expire(own, horizon)
            if len(own) >= self.register_limit:
                return "too many REGISTER requests for this user"
        own.append(now)
        total.append(now)
        return None

    def _new_user_over_limit(self, session_id: str, aor: Identity | None) -> bool:
        identities = self.identities(session_id)
        return len(identities) >= self.max_users and aor is not None and aor not in identities

    def status(self) -> dict[str, Any]:
        """
        The core's status, with the requests refused here (by reason).
        """
        return {**self._core.status(), "refused": dict(self.refused)}

    def undeliverable(self, tunnel_key: Any, flow_id: int, data: bytes, now: float) -> list[Any]:
        return self._core.undeliverable(tunnel_key, flow_id, data, now)

    def fails_over(self, tunnel_key: Any, flow_id: int, data: bytes) -> bool:
        return self._core.fails_over(tunnel_key, flow_id, data)

    def tunnel_detached(self, tunnel_key: Any, keep_registrations: bool = False) -> None:
        session = getattr(tunnel_key, "session_id", None)
        if session is not None:
            self._register_times.pop(session, None)
            self._identities.pop(session, None)
        self._core.tunnel_detached(tunnel_key, keep_registrations)

    def forget_session(self, session_id: str) -> None:
        self._identities.pop(session_id, None)
        self._core.forget_session(session_id)

    def from_tunnel(
        self, tunnel_key: Any, session_id: str, flow_id: int, data: bytes, now: float, *,
        congested: Callable[[Any], bool] = never_congested,
        overloaded: bool = False,
    ) -> list[Any]:
        head = data[:16].lstrip(b"\r\n")
        if not head or head.startswith(b"SIP/"):
            # Responses match our own Via or are dropped by the core.
            return self._core.from_tunnel(
                tunnel_key, session_id, flow_id, data, now, congested=congested, overloaded=overloaded
            )
        method = head.split(b" ", 1)[0].decode("ascii", "replace").upper()
        if method != "REGISTER" and (method in UNREGISTERED_METHODS or not self.require_registration):
            return self._core.from_tunnel(
                tunnel_key, session_id, flow_id, data, now, congested=congested, overloaded=overloaded
            )
        # The checks read the request as the core reads it: parsed once
        # here, by the core's parser and limits, and handed on (one
        # reading of From and To, not a second parser's of our own).  One
        # that does not parse goes to the core as it came, which answers
        # it 400 (or drops it).
        try:
            msg: SipMessage | None = parse_message(data, max_size=self._core.max_message_size)
        except SipParseError:
            msg = None

        def core() -> list[Any]:
            return self._core.from_tunnel(
                tunnel_key, session_id, flow_id, data, now, congested=congested, overloaded=overloaded, parsed=msg
            )

        if method == "REGISTER":
            aor = None if msg is None else _identity(msg.to)
            refusal = self._register_refusal(session_id, _NO_AOR if aor is None else aor, now)
            if refusal is not None:
                return self._refuse(tunnel_key, flow_id, msg, method, refusal, 503, "Service Unavailable")
            if self._new_user_over_limit(session_id, aor):
                return self._refuse(tunnel_key, flow_id, msg, method, "too many users on this tunnel")
            if self.observer is None:
                return core()
            self.observer.request_from_tunnel(tunnel_key, session_id, data)
            actions = core()
            # The embedded registrar answers at once, inside the core.
            for action in actions:
                if isinstance(action, ToTunnel) and action.data.startswith(b"SIP/2.0 2"):
                    self.observer.response_to_tunnel(action.tunnel_key, action.flow_id, action.data)
            return actions
        identities = self.identities(session_id)
        if not identities:
            return self._refuse(tunnel_key, flow_id, msg, method, "tunnel not registered")
        if msg is None:
            return core()
        identity = _identity(msg.from_)
        # A withheld caller ID (RFC 3323, any user at anonymous.invalid)
        # passes, as the tunnel is registered.
        if identity is not None and identity[3] != ANONYMOUS_HOST and identity not in identities:
            return self._refuse(tunnel_key, flow_id, msg, method, "From is not registered through this tunnel")
        # The identity a proxy may assert for the request (RFC 3325 9.2),
        # whatever the From says.
        preferred = preferred_refusal(msg, identities)
        if preferred is not None:
            return self._refuse(tunnel_key, flow_id, msg, method, preferred)
        return core()

    def _refuse(
        self,
        tunnel_key: Any,
        flow_id: int,
        request: SipMessage | None,
        method: str,
        reason: str,
        status: int = 403,
        phrase: str = "Forbidden",
    ) -> list[Any]:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        drop = Dropped(f"{method} refused: {reason}", f"{method} refused")
        if method == "ACK" or request is None:
            return [drop]
        extra = (("Retry-After", "60"),) if status == 503 else ()
        response = make_response(request, status, f"{phrase} ({reason})", extra_headers=extra)
        refusal = Dropped(f"{method} refused with {status} {phrase}: {reason}", drop.counter, answered=True)
        return [ToTunnel(tunnel_key, flow_id, response.to_bytes()), refusal]


class MediaAcceptor:
    """
    The contact point's acceptor of C{media} channels: refuses them from
    sessions that have no registration (C{Refusal("media before
    registration")}) and hands the others to the media manager's own
    acceptor.

    @ivar refused: media channels refused for want of a registration.
    """

    def __init__(self, manager: ChannelAcceptor, authz: AuthorizingContactProxy | None) -> None:
        self._manager = manager
        self._authz = authz
        self.refused = 0

    def accept(self, tunnel: Any, channel_id: int, kind: ChannelKind, meta: dict[str, Any]) -> ChannelHandler | Refusal:
        authz = self._authz
        if authz is not None and authz.require_registration and not authz.is_authorized(tunnel.session_id):
            self.refused += 1
            return Refusal("media before registration")
        return self._manager.accept(tunnel, channel_id, kind, meta)
