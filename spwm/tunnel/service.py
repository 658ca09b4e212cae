# -*- test-case-name: tests.test_tunnel_service -*-
"""
The services that keep tunnels: the agent's reconnecting client (TLS, HTTP
CONNECT proxies, jittered backoff) and the contact point's listener (TLS,
go-away and drain on stop).
"""

from __future__ import annotations

import base64
import math
import random
from typing import Any, Callable, Sequence, cast

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet import error, ssl
from automat import NoTransition
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorCore,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from spwm.errors import ListenError
from spwm.tunnel.frames import ALPN
from spwm.tunnel.protocol import AdmissionFactory, AgentTunnelFactory, ContactTunnelFactory, TunnelProtocol
from spwm.tunnel.retry import LOST_SPREAD, PROMPT_BURST, STEADY_UP, PromptBucket
from spwm.tunnel.tlsread import TunnelTLSClientEndpoint, TunnelTLSFactory

# OpenSSL's X509_V_ERR_* codes that people meet, in words (the common ones
# get a sentence of their own in _verify_error).
_VERIFY_ERRORS = {
    7: "certificate signature failure (untrusted)",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate (untrusted)",
    19: "self-signed certificate in chain (untrusted)",
    20: "issuer certificate not found (untrusted)",
    21: "unable to verify the first certificate (untrusted)",
    23: "certificate has been revoked",
    26: "unsupported certificate purpose",
    62: "hostname mismatch",
}

#: what OpenSSL says when the peer's first bytes are not TLS at all
_NOT_TLS = ("wrong version number", "packet length too long", "http request", "unknown protocol", "record layer failure")

#: OpenSSL's words for an alert the contact point sent about the client
#: certificate (mutual TLS, its --client-ca): "sslv3 alert bad
#: certificate", "tls alert certificate expired", "tlsv1 alert unknown
#: ca"; OpenSSL names alerts it receives so, not errors of its own
_CERTIFICATE_REFUSED = (
    "alert bad certificate",
    "alert certificate expired",
    "alert certificate revoked",
    "alert certificate unknown",
    "alert unsupported certificate",
    "alert unknown ca",
    "alert access denied",
)

PLAINTEXT_ANSWER = "the contact point answered in plaintext (is it started with --plaintext?)"

PLAINTEXT_UNANSWERED = (
    "the contact point closed the connection without a word"
    " (if it uses TLS, start the agent without --plaintext)"
)


def cert_names(cert: Any) -> str:
    """
    The names a certificate is for (subjectAltName, else its common name).
    """
    try:
        c = cert.to_cryptography()
        try:
            san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [str(n.value) for n in san]
        except x509.ExtensionNotFound:
            names = [str(a.value) for a in c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except Exception:
        names = []
    if len(names) > 4:
        names = names[:4] + [f"{len(names) - 4} more"]
    return ", ".join(names) or "no name"


def _common_name(cert: Any, issuer: bool) -> str:
    try:
        c = cert.to_cryptography()
        name = c.issuer if issuer else c.subject
        common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(common[0].value) if common else name.rfc4514_string()
    except Exception:
        return "unknown issuer" if issuer else "unknown"


def _issuer(cert: Any) -> str:
    """
    The common name (else the whole name) of a certificate's issuer.
    """
    return _common_name(cert, True)


def _asn1_date(value: bytes | None) -> str:
    """
    C{b"20261201093000Z"} as C{"2026-12-01 09:30 UTC"}.
    """
    text = (value or b"").decode("ascii", "replace")
    if len(text) >= 12 and text[:12].isdigit():
        return f"{text[0:4]}-{text[4:6]}-{text[6:8]} {text[8:10]}:{text[10:12]} UTC"
    return text or "an unknown date"


def _verify_error(errno: int, depth: int, cert: Any) -> str:
    """
    One sentence for a failed certificate check, naming the certificate.
    """
    which = f"certificate for {cert_names(cert)}" if depth == 0 else f"CA certificate {_common_name(cert, False)}"
    if errno == 10:
        return f"{which} expired on {_asn1_date(cert.get_notAfter())}"
    if errno == 9:
        return f"{which} is not valid before {_asn1_date(cert.get_notBefore())} (is this machine's clock right?)"
    if errno == 18:
        return f"untrusted issuer (the {which} is self-signed; give its CA with --ca)"
    if errno in (2, 19, 20, 21):
        return f"untrusted issuer ({_issuer(cert)}) of the {which}: not in --ca or the system's trust store"
    if errno == 7:
        return f"untrusted issuer ({_issuer(cert)}): the signature of the {which} does not verify"
    return f"{which}: " + _VERIFY_ERRORS.get(errno, f"X509 verify error {errno}")


def _ssl_text(exc: BaseException) -> str:
    """
    The reasons in an OpenSSL error, without its Python representation.
    """
    reasons = []
    try:
        for entry in exc.args[0]:
            if isinstance(entry, tuple) and entry and entry[-1]:
                reasons.append(str(entry[-1]))
    except (IndexError, TypeError):
        pass
    return ", ".join(reasons) or "TLS handshake failed"


def describe_failure(failure: Failure | BaseException | None, tls_error: str | None = None) -> str:
    """
    Say in one line why a connection attempt failed: the certificate
    check's own sentence when there is one, else the error's text (never
    the representation of an exception object).
    """
    if tls_error:
        return tls_error
    if failure is None:
        return "unknown reason"
    exc = failure.value if isinstance(failure, Failure) else failure
    name = type(exc).__name__
    if name == "VerificationError":
        return "certificate does not match the server name"
    if isinstance(exc, SSL.Error):
        text = _ssl_text(exc)
        lower = text.lower()
        if any(marker in lower for marker in _NOT_TLS):
            return PLAINTEXT_ANSWER
        if "alert certificate required" in lower:
            return f"TLS error: the contact point asks for a client certificate (mutual TLS: give --client-cert and --client-key) ({text})"
        if any(marker in lower for marker in _CERTIFICATE_REFUSED):
            return f"TLS error: the contact point refused this agent's client certificate ({text}; its log says why)"
        return f"TLS error: {text}"
    return str(exc) or name


@implementer(IOpenSSLClientConnectionCreator)
class ReportingClientTLS:
    """
    Twisted's client TLS options, with a verify callback that remembers why
    a certificate check failed (expired, untrusted, wrong name) in words.
    It does the same service-identity check of the leaf certificate as
    Twisted's own callback, which it replaces.

    @ivar last_error: the reason of the latest failed check, or C{None}.
    """

    def __init__(self, inner: Any, hostname: str) -> None:
        self._inner = inner
        #: when set, called before each new connection (the agent's
        #: L{spwm.security.certwatch.CertificateWatch.check}: files that
        #: changed are loaded and put in use by L{use} first)
        self.refresh: Callable[[], Any] | None = None
        self.hostname = hostname
        if isIPAddress(hostname) or isIPv6Address(hostname):
            self._service_id: Any = IPAddress_ID(hostname)
        else:
            self._service_id = DNS_ID(hostname)
        self.last_error: str | None = None

    @property
    def options(self) -> Any:
        """
        The options new connections are made with (Twisted's).
        """
        return self._inner

    def use(self, options: Any) -> None:
        """
        New connections from now on are made with C{options} (files loaded
        again).
        """
        self._inner = options

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        self.last_error = None
        if self.refresh is not None:
            self.refresh()
        connection = self._inner.clientConnectionForTLS(tlsProtocol)
        service_id = self._service_id

        def verify(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
            try:
                if not ok and self.last_error is None:
                    self.last_error = _verify_error(errno, depth, cert)
                if depth != 0:
                    return bool(ok)
                try:
                    verify_service_identity(extract_patterns(cert), [service_id], [])
                except VerificationError:
                    if self.last_error is None:
                        self.last_error = (
                            f"certificate for {cert_names(cert)} does not match server name {self.hostname}"
                        )
                    tlsProtocol.failVerification(Failure())
                    return False
                return bool(ok)
            except BaseException:
                # An exception must never escape into OpenSSL.
                self.last_error = "error while verifying the certificate"
                return False

        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        return connection


def client_tls_options(server_name: str, ca_file: str | None, client_cert: Any = None) -> ReportingClientTLS:
    """
    TLS options of the agent: TLS 1.2 or later, ALPN C{spwm/1}, the contact
    point's certificate checked against C{server_name} (service-identity)
    with the system's trust store or the certificates in C{ca_file}.
    """
    return ReportingClientTLS(client_options(server_name, ca_file, client_cert), server_name)


def client_options(server_name: str, ca_file: str | None, client_cert: Any = None) -> Any:
    """
    Twisted's client TLS options under L{client_tls_options}'s reporter.
    """
    if ca_file is None:
        trust = ssl.platformTrust()
    else:
        trust = ssl.trustRootFromCertificates(load_pem_certificates(ca_file))
    options = ssl.optionsForClientTLS(
        server_name,
        trustRoot=trust,
        clientCertificate=client_cert,
        acceptableProtocols=[ALPN],
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
    )
    return options


def server_tls_factory(
    cert_file: str, key_file: str, wrapped: Factory, clock: IReactorTime | None = None, client_ca: str | None = None
) -> TLSMemoryBIOFactory:
    """
    Wrap the contact point's tunnel factory in TLS with the PEM certificate
    (and chain) in C{cert_file} and the key in C{key_file}; the records
    of one socket read reach the tunnel together
    (L{spwm.tunnel.tlsread}).
    """
    return TunnelTLSFactory(server_tls_options(cert_file, key_file, client_ca), False, wrapped, clock=clock)


def load_pem_certificates(path: str) -> list[ssl.Certificate]:
    """
    Every certificate in a PEM file, in order (Twisted's objects; their
    C{original} is pyOpenSSL's).  Used by all three TLS builders: the
    agent's trust (C{--ca}), the contact point's certificate chain and
    its client CA (C{--client-ca}).
    """
    with open(path, "rb") as f:
        pem = f.read()
    marker = b"-----BEGIN CERTIFICATE-----"
    return [ssl.Certificate.loadPEM(marker + block) for block in pem.split(marker)[1:]]


def client_certificate(cert_file: str, key_file: str) -> ssl.PrivateCertificate:
    """
    The agent's own certificate for mutual TLS.
    """
    with open(cert_file, "rb") as f:
        cert_pem = f.read()
    with open(key_file, "rb") as f:
        key_pem = f.read()
    return ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)


def server_tls_options(cert_file: str, key_file: str, client_ca: str | None = None) -> ssl.CertificateOptions:
    """
    TLS options of the contact point: TLS 1.2 or later, ALPN C{spwm/1}, the
    PEM certificate (and chain) in C{cert_file} and the key in C{key_file};
    with C{client_ca}, agents must present a certificate signed by one of
    the certificates in that file (mutual TLS).
    """
    certificates = load_pem_certificates(cert_file)
    if not certificates:
        raise ValueError(f"no certificate in {cert_file}")
    with open(key_file, "rb") as f:
        key = ssl.KeyPair.load(f.read(), crypto.FILETYPE_PEM)
    # Raises VerifyError when the key does not belong to the certificate.
    pair = ssl.PrivateCertificate.fromCertificateAndKeyPair(certificates[0], key)
    chain = [c.original for c in certificates[1:]]
    client_cas = [c.original for c in load_pem_certificates(client_ca)] if client_ca else []
    options = ssl.CertificateOptions(
        privateKey=pair.privateKey.original,
        certificate=pair.original,
        extraCertChain=chain,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableProtocols=[ALPN],
        **(
            cast(dict[str, Any], {"verify": True, "caCerts": client_cas, "requireCertificate": True})
            if client_ca
            else {}
        ),
    )
    return options


# -- HTTP CONNECT ---------------------------------------------------------


def _proxy_name(address: str) -> str:
    """
    The HTTP proxy as log lines name it: C{"HTTP proxy 192.0.2.1:3128"}.
    """
    return f"HTTP proxy {address}" if address else "HTTP proxy"


class HTTPProxyTimeout(error.TimeoutError):
    """
    The HTTP proxy took the connection and did not answer the C{CONNECT}
    in time; its text is the whole line (without Twisted's prefix).
    """

    def __str__(self) -> str:
        return str(self.args[0])


class _ConnectProtocol(Protocol):
    """
    Speaks HTTP CONNECT to a proxy, then hands the connection to the real
    protocol.
    """

    max_response = 16384
    transport: Any

    def __init__(self, factory: _ConnectFactory, wrapped: Any) -> None:
        # the attempt's settings are its factory's
        self._target = factory.target
        self._done = factory.done
        self._auth = factory.auth
        self._proxy = factory.proxy
        self._who = _proxy_name(factory.proxy)
        self._clock = factory.clock
        self._timeout = factory.timeout
        self._wrapped = wrapped
        self._buf = b""
        self._tunnelled = False
        self._timer: IDelayedCall | None = None

    def _no_answer(self) -> None:
        # a proxy that takes the connection but never answers the CONNECT
        # (it waits on a target a firewall drops): the attempt fails, as a
        # TCP connection that times out does, and the agent tries again
        self._timer = None
        self.transport.abortConnection()
        if not self._done.called:
            why = f"{self._who}: no answer to CONNECT {self._target} within {self._timeout:g} s"
            self._done.errback(Failure(HTTPProxyTimeout(string=why)))

    def _answered(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionMade(self) -> None:
        if self._clock is not None:
            self._timer = self._clock.callLater(self._timeout, self._no_answer)
        head = f"CONNECT {self._target} HTTP/1.1\r\nHost: {self._target}\r\n"
        if self._auth is not None:
            # RFC 7617: Basic, user-id ":" password in UTF-8, base64.
            token = base64.b64encode(self._auth.encode("utf-8")).decode("ascii")
            head += f"Proxy-Authorization: Basic {token}\r\n"
        self.transport.write((head + "\r\n").encode("ascii"))

    def dataReceived(self, data: bytes) -> None:
        if self._tunnelled:
            self._wrapped.dataReceived(data)
            return
        self._buf += data
        if not self._buf.startswith(b"HTTP/"[: len(self._buf)]):
            # something else answers on that port (an SSH or TLS server):
            # no point in waiting for the rest
            self._fail(f"{self._who}: not an HTTP answer to CONNECT")
            return
        head, sep, rest = self._buf.partition(b"\r\n\r\n")
        if not sep:
            if len(self._buf) > self.max_response:
                self._fail(f"{self._who}: answer to CONNECT over {self.max_response} bytes")
            return
        self._answered()
        status_line = head.split(b"\r\n", 1)[0]
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            self._fail(f"{self._who}: not an HTTP answer to CONNECT")
            return
        if parts[1] == b"407":
            self._fail(self._auth_demanded(head))
            return
        if not parts[1].startswith(b"2"):
            # the status and reason as the proxy wrote them, printable only
            answer = b" ".join(parts[1:]).decode("latin-1")[:80]
            self._fail(f"{self._who} refused CONNECT: {''.join(c for c in answer if c.isprintable())}")
            return
        self._tunnelled = True
        self._buf = b""
        # Hand over: the real protocol now owns this transport.
        self.transport.protocol = self._wrapped
        self._wrapped.makeConnection(self.transport)
        self._done.callback(self._wrapped)
        if rest:
            self._wrapped.dataReceived(rest)

    def _auth_demanded(self, head: bytes) -> str:
        """
        The one line that says what a C{407} from the proxy means.
        """
        offered = []
        for header in head.split(b"\r\n")[1:]:
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"proxy-authenticate":
                offered.append(value.strip().decode("latin-1")[:80])
        schemes = {o.split(None, 1)[0].lower() for o in offered if o}
        what = "; ".join(offered) or "no scheme named"
        line = f"the HTTP proxy at {self._proxy or 'the --http-proxy address'} demands authentication (Proxy-Authenticate: {what}); "
        if "basic" not in schemes and schemes:
            return line + (
                "SPWM supports only Basic: for NTLM or Negotiate (Kerberos) run a local proxy"
                " such as cntlm or px that authenticates for you and point --http-proxy at it"
            )
        if self._auth is None:
            return line + 'set http-proxy-auth = "user:password" in the --config file or SPWM_HTTP_PROXY_AUTH'
        return line + "it refused the user and password of http-proxy-auth (or SPWM_HTTP_PROXY_AUTH)"

    def _fail(self, reason: str) -> None:
        self._answered()
        self.transport.loseConnection()
        if not self._done.called:
            self._done.errback(Failure(ConnectionError(reason)))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._answered()
        if self._tunnelled:
            self._wrapped.connectionLost(reason)
        elif not self._done.called:
            if reason is None or reason.check(error.ConnectionDone, error.ConnectionLost):
                what = "closed the connection before answering CONNECT"
            else:
                what = f"lost the connection before answering CONNECT ({describe_failure(reason)})"
            self._done.errback(Failure(ConnectionError(f"{self._who}: {what}")))


class _ConnectFactory(Factory):
    noisy = False

    def __init__(
        self,
        target: str,
        wrapped: Factory,
        done: Deferred[IProtocol],
        auth: str | None = None,
        proxy: str = "",
        clock: IReactorTime | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.target = target
        self.wrapped_factory = wrapped
        self.done = done
        self.auth = auth
        self.proxy = proxy
        self.clock = clock
        self.timeout = timeout

    def buildProtocol(self, addr: Any) -> Protocol | None:
        wrapped = self.wrapped_factory.buildProtocol(addr)
        if wrapped is None:
            return None
        return _ConnectProtocol(self, wrapped)


@implementer(IStreamClientEndpoint)
class HTTPConnectEndpoint:
    """
    Connect through an HTTP proxy with C{CONNECT host:port}, with
    C{Proxy-Authorization: Basic} when given C{auth} (C{"user:password"}).
    """

    def __init__(
        self,
        proxy: IStreamClientEndpoint,
        host: str,
        port: int,
        *,
        auth: str | None = None,
        description: str = "",
        clock: IReactorTime | None = None,
        timeout: float = 10.0,
    ) -> None:
        """
        @param auth: C{"user:password"} for Basic proxy authentication.
        @param description: the proxy's address, for messages.
        @param clock: with it, a proxy that does not answer the CONNECT
            within C{timeout} seconds fails the attempt with
            L{error.TimeoutError} (without: no bound).
        """
        self._proxy = proxy
        self._target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._auth = auth
        self._description = description
        self._clock = clock
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        done: Deferred[IProtocol] = Deferred()
        d: Deferred[Any] = self._proxy.connect(
            _ConnectFactory(
                self._target,
                cast(Factory, protocolFactory),
                done,
                self._auth,
                self._description,
                self._clock,
                self._timeout,
            )
        )

        def connected(_: Any) -> Deferred[IProtocol]:
            return done

        def unreachable(f: Failure) -> Failure:
            # the proxy, not the contact point, is what cannot be reached:
            # the line names it (Twisted's text names neither)
            if f.check(CancelledError):
                return f
            if f.check(error.ConnectionRefusedError):
                what = "connection refused"
            elif f.check(error.TimeoutError):
                what = "no answer to the TCP connection (timed out)"
            else:
                what = describe_failure(f)
            return Failure(ConnectionError(f"{_proxy_name(self._description)}: {what}"))

        d.addErrback(unreachable)
        d.addCallback(connected)
        return d


# -- the agent ----------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """
    An endpoint wrapper that remembers why the last attempt failed.
    """

    def __init__(self, inner: IStreamClientEndpoint, description: str) -> None:
        self._inner = inner
        self.description = description
        self.last_failure: str | None = None
        self.attempts = 0
        #: an attempt is under way (until the handshake or a failure)
        self.in_progress = False
        #: called without arguments when an attempt fails
        self.on_failure: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return self.description

    def at_port(self, why: str) -> str:
        """
        C{why}, naming the port when the attempt went to a worker's own
        port rather than the configured one
        (L{spwm.session.workerroute.SteeredEndpoint}).
        """
        port = getattr(self._inner, "last_port", None)
        return why if port is None else f"{why} (at the worker's own port {port})"

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts += 1
        self.in_progress = True
        d: Deferred[Any] = self._inner.connect(_AttemptFactory(factory))
        # ClientService gets back the protocol its factory built.
        d.addCallback(lambda attempt: attempt.proxy)

        def failed(f: Failure) -> Failure:
            self.last_failure = self.at_port(describe_failure(f))
            self.in_progress = False
            if self.on_failure is not None:
                self.on_failure()
            return f

        d.addErrback(failed)
        return d


#: L{StaggeredEndpoint}: a further attempt while none has connected after this long (s)
STAGGER = 0.3
#: ... and at most this many attempts in all
STAGGER_ATTEMPTS = 3


class _FirstOnly(Factory):
    """
    The factory of one of L{StaggeredEndpoint}'s attempts: it builds the
    real protocol for the first attempt that connects only; a later one
    gets no protocol (the endpoint then closes its connection).
    """

    noisy = False

    def __init__(self, inner: IProtocolFactory, race: _Race) -> None:
        self._inner = inner
        self._race = race

    def buildProtocol(self, addr: Any) -> Any:
        if self._race.won or self._race.done:
            return None
        self._race.won = True
        return self._inner.buildProtocol(addr)


class _Race:
    """
    The attempts of one L{StaggeredEndpoint.connect}.
    """

    def __init__(self) -> None:
        #: a protocol was built (by the first attempt that connected)
        self.won = False
        #: the connect's result is known: no attempt builds a protocol after it
        self.done = False
        self.pending: list[Deferred[Any]] = []
        self.timer: Any = None
        self.started = 0
        self.last_failure: Failure | None = None


@implementer(IStreamClientEndpoint)
class StaggeredEndpoint:
    """
    Happy eyeballs on one contact point: C{connect} makes an attempt with
    the inner endpoint and, while none has connected, another every
    C{stagger} seconds, at most C{attempts} in all; the first that
    connects (TCP) is the connection, the others are cancelled (one that
    connects all the same builds no protocol and is closed).  On a lossy
    link a lost SYN or SYN-ACK costs the kernel's retransmission timeout
    (1 s, then 2 s more); here it costs C{stagger}.  An attempt that fails
    while none other is under way fails the whole (a refusal is not tried
    again here: the caller's backoff decides).
    """

    def __init__(
        self,
        inner: IStreamClientEndpoint,
        clock: IReactorTime,
        stagger: float = STAGGER,
        attempts: int = STAGGER_ATTEMPTS,
    ) -> None:
        self._inner = inner
        self._clock = clock
        self.stagger = stagger
        self.attempts = attempts
        #: attempts made beyond the first of each connect
        self.extra_attempts = 0

    def __repr__(self) -> str:
        return repr(self._inner)

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        race = _Race()

        def cancel(d: Deferred[IProtocol]) -> None:
            stop()
            for attempt in list(race.pending):
                attempt.cancel()

        result: Deferred[IProtocol] = Deferred(cancel)

        def known(value: Any) -> Any:
            race.done = True
            return value

        result.addBoth(known)

        def stop() -> None:
            if race.timer is not None and race.timer.active():
                race.timer.cancel()
            race.timer = None

        def start() -> None:
            race.timer = None
            race.started += 1
            if race.started > 1:
                self.extra_attempts += 1
            attempt: Deferred[Any] = self._inner.connect(_FirstOnly(factory, race))
            race.pending.append(attempt)
            attempt.addCallbacks(connected, failed, callbackArgs=(attempt,), errbackArgs=(attempt,))
            if race.started < self.attempts and not result.called:
                race.timer = self._clock.callLater(self.stagger, start)

        def connected(protocol: IProtocol, attempt: Deferred[Any]) -> None:
            race.pending.remove(attempt)
            stop()
            if not result.called:
                result.callback(protocol)
            for other in list(race.pending):
                other.cancel()

        def failed(reason: Failure, attempt: Deferred[Any]) -> None:
            race.pending.remove(attempt)
            if result.called:
                return
            race.last_failure = reason
            if not race.pending:
                stop()
                result.errback(reason)

        start()
        return result


def backoff(
    initial: float = 1.0, factor: float = 2.0, cap: float = 60.0, rng: Callable[[], float] = random.random
) -> Callable[[int], float]:
    """
    Jittered exponential backoff: attempt M{n} waits a random time between
    half and all of C{min(cap, initial * factor ** (n - 1))}.

    Like Twisted's C{backoffPolicy}, the exponent is bounded and an overflow
    means the cap, so the policy answers for any number of attempts (an
    agent may try for days while the contact point is away).
    """

    def policy(attempt: int) -> float:
        try:
            base = min(cap, initial * factor ** min(100, max(0, attempt - 1)))
        except OverflowError:
            base = cap
        return base * (0.5 + 0.5 * rng())

    return policy




@implementer(IReactorTime)
class _RetryClock:
    """
    The clock C{ClientService} waits between attempts with (it uses it for
    nothing else): it remembers the wait under way, so that
    L{AgentTunnelService.session_lost} can bring the next attempt forward.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.pending: IDelayedCall | None = None

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object, **kwargs: object) -> IDelayedCall:
        self.pending = self.clock.callLater(delay, callable, *args, **kwargs)
        return self.pending

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return self.clock.getDelayedCalls()


class _RetryPolicy:
    """
    The retry policy given to C{ClientService}: the backoff policy, except
    that after the contact point went away gracefully the next attempt is
    made at once (L{now}), and after a tunnel that had been up for a while
    was lost, within a short spread (L{now} with C{spread}).  Such an
    attempt is not a failure: the attempts after it wait as if it had not
    been counted.

    @ivar failures: failed attempts since the tunnel was last up, as the
        latest call counted them.
    @ivar short_lived: tunnels in a row that were lost within
        L{STEADY_UP} of coming up (a contact point that refuses this agent
        once its hello is read, say a client certificate for another agent
        id) and not retried at once (L{prompt}): each such loss waits one
        backoff step more, so a refusal does not cost a handshake a second
        for ever.
    """

    def __init__(self, policy: Callable[[int], float], rng: Callable[[], float] = random.random) -> None:
        #: the backoff policy: failed attempts in a row -> seconds
        self.policy = policy
        self.rng = rng
        self._now = False
        self._spread = 0.0
        self._free = 0
        self.failures = 0
        self.short_lived = 0
        self._prompt = PromptBucket()

    @property
    def asked_now(self) -> bool:
        """
        Whether the next attempt is to be made at once (L{now}) already.
        """
        return self._now

    def prompt(self, at: float) -> bool:
        """
        May a tunnel that worked, lost soon after it came up, be tried
        again at once?  Yes L{PROMPT_BURST} times in a row, then once per
        L{STEADY_UP}; each yes takes one.

        @param at: the time now.
        """
        return self._prompt.take(at)

    def now(self, spread: float = 0.0) -> None:
        """
        Make the next retry at once, or within C{spread} seconds (a random
        time in it).
        """
        if self._now:
            spread = min(spread, self._spread)
        self._now = True
        self._spread = spread

    def reset(self) -> None:
        """
        The tunnel is up: no failures.
        """
        self._now = False
        self._free = 0
        self.failures = 0

    def __call__(self, attempt: int) -> float:
        # ClientService counts from 1 again after every connection it kept.
        if attempt == 1:
            self._free = 0
        if self._now:
            self._now = False
            self._free += 1
            self.failures = attempt - self._free
            return self._spread * self.rng() if self._spread else 0.0
        self.failures = attempt - self._free
        return self.policy(self.failures + max(0, self.short_lived - 1))


@implementer(IProtocol)
class _Attempt:
    """
    The protocol the transport sees for one connection attempt: it hands
    everything to C{ClientService}'s own wrapper (L{proxy}), except that
    the loss of a connection whose handshake C{prepareConnection} rejected
    is not reported to C{ClientService} again.

    C{ClientService} (Twisted 26.10) has no transition for the loss of a
    connection it has already counted as a failed attempt: its state
    machine raises C{NoTransition} from C{connectionLost}.  The rejection
    has already scheduled the retry, so that report carries nothing.
    """

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.transport: Any = None
        #: replaced in makeConnection by the tunnel's own
        self.dataReceived: Callable[[bytes], None] = self._to_proxy

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.proxy.makeConnection(transport)
        # Straight to the tunnel: no extra call per read.
        self.dataReceived = self.proxy.dataReceived

    def _to_proxy(self, data: bytes) -> None:
        self.proxy.dataReceived(data)

    def connectionMade(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        try:
            self.proxy.connectionLost(reason)
        except NoTransition:
            pass


class _AttemptFactory(Factory):
    noisy = False

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def buildProtocol(self, addr: Any) -> Any:
        proxy = self._inner.buildProtocol(addr)
        return None if proxy is None else _Attempt(proxy)


def _without_twisted_retry_line(event: dict[str, Any]) -> None:
    """
    C{ClientService}'s log, less its own line for each retry
    (C{Scheduling retry N to connect ... in 0.7610160266955841 seconds.}):
    L{AgentTunnelService} logs each retry itself, with the reason.
    """
    if str(event.get("log_format", "")).startswith("Scheduling retry "):
        return
    globalLogPublisher(event)


class AgentTunnelService(ClientService):
    """
    Keeps the agent's tunnel up: connects (over TLS unless plaintext),
    reconnects with jittered exponential backoff and logs every retry with
    the reason of the last failure; reconnects at once after the contact
    point went away gracefully.

    An attempt is good only once the SPWM handshake has completed: the
    service's C{prepareConnection} waits for it (L{TunnelProtocol.when_established}),
    so C{ClientService} counts a contact point that takes TCP but fails TLS
    or the handshake as a failed attempt, and resets its count only when a
    tunnel is up.

    @ivar tunnel: the current open L{TunnelProtocol}, or C{None}.
    """

    log = Logger()
    # what ClientService itself logs (its retry line is ours, with the reason)
    _log = Logger(observer=cast(ILogObserver, _without_twisted_retry_line))

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        factory: AgentTunnelFactory,
        clock: IReactorTime,
        *,
        description: str,
        tls: ReportingClientTLS | None = None,
        policy: Callable[[int], float] | None = None,
        attempt_failed: Callable[[], None] | None = None,
    ) -> None:
        """
        @param attempt_failed: called without arguments when an attempt
            fails (an on-demand tunnel answers the requests it held).
        """
        self._reporting = _ReportingEndpoint(endpoint, description)
        self._tls = tls
        self._retry = _RetryPolicy(policy or backoff())
        self._time = clock
        self.tunnel: TunnelProtocol | None = None
        self.description = description
        #: when the next attempt is due while waiting between attempts
        self.next_attempt_at: float | None = None
        self.attempt_failed = attempt_failed
        #: the reason of the latest failed attempt logged as a warning
        self._warned: str | None = None
        self._reporting.on_failure = self._connect_failed
        self._waits = _RetryClock(clock)
        #: the attempt whose handshake is under way (TCP is up)
        self._preparing: Any = None
        #: an attempt to join the session closed on purpose (session_lost)
        self._dropped: Any = None
        super().__init__(
            self._reporting, factory, retryPolicy=self._schedule, clock=self._waits, prepareConnection=self._prepare
        )

    @property
    def connecting(self) -> bool:
        """
        Whether a connection attempt is under way now (TCP, TLS or handshake).
        """
        return self._reporting.in_progress

    @property
    def attempts(self) -> int:
        """
        Connection attempts made since the service was created.
        """
        return self._reporting.attempts

    @property
    def policy(self) -> Callable[[int], float]:
        """
        The backoff policy: failed attempts in a row -> seconds to wait.
        """
        return self._retry.policy

    @policy.setter
    def policy(self, policy: Callable[[int], float]) -> None:
        self._retry.policy = policy

    def _attempt_failed(self) -> None:
        if self.attempt_failed is not None:
            self.attempt_failed()

    def _connect_failed(self) -> None:
        """
        An attempt could not connect (TCP refused or timed out, an HTTP
        proxy's CONNECT failed): the first failure of a kind is a warning,
        as for an attempt whose handshake fails; its repeats are the retry
        line's.
        """
        why = self._reporting.last_failure
        # (an attempt cancelled because the service stops is no failure)
        if self.running and why is not None and why != self._warned:
            self.log.warn("tunnel to {contact} failed: {reason}", contact=self.description, reason=why)
            self._warned = why
        self._attempt_failed()

    def retry_after(self, cap: int = 30) -> int:
        """
        Seconds an application should wait before it tries again while the
        tunnel is down: until the next attempt, at least 1, at most C{cap}.
        """
        now = self._time.seconds()
        at = self.next_attempt_at
        if at is None or at <= now:
            return 1
        return max(1, min(cap, math.ceil(at - now)))

    def _schedule(self, attempt: int) -> float:
        delay = self._retry(attempt)
        self.next_attempt_at = self._time.seconds() + delay
        self.log.info(
            "tunnel to {contact} down ({reason}); attempt {attempt} in {delay:.1f} s",
            contact=self.description,
            reason=self._reporting.last_failure or "not connected",
            attempt=self._retry.failures + 1,
            delay=delay,
        )
        return delay

    def status(self) -> dict[str, Any]:
        """
        For the status page: the contact point, whether the tunnel is up,
        failed attempts since it was last up, the last failure's reason.
        """
        return {
            "contact": self.description,
            "up": self.tunnel is not None,
            "failures": 0 if self.tunnel is not None else self._retry.failures,
            "last_failure": self._reporting.last_failure,
        }

    def _prepare(self, protocol: Any) -> Deferred[TunnelProtocol]:
        """
        C{prepareConnection}: the attempt is good once the handshake has
        completed.  Stopping the service while it waits closes the tunnel.
        """
        ready: Deferred[TunnelProtocol] = Deferred(lambda d: protocol.close_for_good("agent stopping"))
        self._preparing = protocol

        def settle(result: Any) -> None:
            if self._preparing is protocol:
                self._preparing = None
            # Once cancelled, ready has fired already.
            if not ready.called:
                if isinstance(result, Failure):
                    ready.errback(result)
                else:
                    ready.callback(result)

        protocol.when_going_away().addCallback(self.on_go_away)
        protocol.when_established().addCallbacks(self._up, self._handshake_failed, errbackArgs=(protocol,)).addBoth(
            settle
        )
        return ready

    def _up(self, protocol: TunnelProtocol) -> TunnelProtocol:
        self.tunnel = protocol
        self._warned = None
        if protocol.is_open:
            self._retry.reset()
        # else closed as it came up (an attach to a session that is gone):
        # an attempt at once asked for meanwhile (session_lost) still holds
        self._reporting.last_failure = None
        self._reporting.in_progress = False
        self.next_attempt_at = None
        protocol.when_closed().addCallback(self._down)
        return protocol

    def _why(self, protocol: Any, reason: Failure | None, was_up: bool) -> str:
        if protocol.go_away_info is not None:
            return f"contact point went away: {protocol.go_away_info.reason}"
        if protocol.close_info is not None:
            why = protocol.close_info.reason
        else:
            tls_error = self._tls.last_error if self._tls is not None else None
            why = describe_failure(reason, tls_error)
            connection = protocol.connection
            if self._tls is None and not was_up and (connection is None or connection.stats.bytes_in == 0):
                why = PLAINTEXT_UNANSWERED
        explain = getattr(self._tls, "explain", None)
        if explain is not None and not was_up:
            # over QUIC: a hint when nothing came back at all
            why = explain(why)
        return why

    def _handshake_failed(self, reason: Failure, protocol: Any) -> Failure:
        self._reporting.in_progress = False
        if not self.running:
            # Closed because the service stops: not a failed attempt.
            return reason
        why = self._reporting.at_port(self._why(protocol, reason, False))
        if protocol.go_away_info is not None:
            self._retry.now()
        self._reporting.last_failure = why
        if protocol is self._dropped:
            # closed by us (the session it was to join is gone): part of
            # an address change, not a fault
            self._dropped = None
            self.log.info("tunnel to {contact}: attempt dropped: {reason}", contact=self.description, reason=why)
        elif why != self._warned:
            # the first failure of a kind; its repeats are the retry line's
            # (one line per attempt)
            self.log.warn("tunnel to {contact} failed: {reason}", contact=self.description, reason=why)
        self._warned = why
        self._attempt_failed()
        return reason

    def _down(self, protocol: TunnelProtocol) -> None:
        # Told before ClientService hears of the loss and asks the policy.
        reason = protocol.lost_reason
        if self.tunnel is protocol:
            self.tunnel = None
        if protocol.go_away_info is not None:
            self._retry.now()
        elif protocol.connected_at is not None and self._time.seconds() - protocol.connected_at >= STEADY_UP:
            # a tunnel that worked (a network change, every path of the
            # session broken at once): try again now, not after a backoff
            # step; one that keeps dropping soon after it is up backs off
            self._retry.short_lived = 0
            self._retry.now(LOST_SPREAD)
        elif self._retry.asked_now or (protocol.close_info is None and self._retry.prompt(self._time.seconds())):
            # up a short while, lost by the network (the contact point did
            # not close it): at once too, a few times in a row (or at once
            # already: the session lost its last path, told first)
            self._retry.now(LOST_SPREAD)
        else:
            # further each time it drops again soon after it is up
            self._retry.short_lived += 1
        self._reporting.last_failure = self._why(protocol, reason, True)

    def session_lost(self, up_for: float) -> None:
        """
        The agent's session lost its last connection at once (an address
        change breaks them all; L{spwm.session.carrier.PathSessions} tells
        it), after it had been up C{up_for} seconds.  A session up at
        least L{STEADY_UP} (or a shorter while, L{PROMPT_BURST} times in a
        row, then once per L{STEADY_UP}) is tried again within
        L{LOST_SPREAD}, as a lone tunnel that worked is: the next attempt,
        or, when this service's own connection was lost before the others
        and it is waiting a backoff step, that wait, cut short.  An attempt under way that was
        made to join the session (its hello says C{attach}) is closed: the
        next one resumes the session; but not one whose hello waits for
        its TLS handshake: it resumes the session itself
        (L{spwm.session.carrier.PathSessions.seal}).
        """
        if not self.running:
            return
        if up_for < STEADY_UP and not self._retry.asked_now and not self._retry.prompt(self._time.seconds()):
            return
        pending = self._waits.pending
        if pending is None or not pending.active():
            # connected (its connection is the one lost) or connecting:
            # the policy is asked next
            self._retry.now(LOST_SPREAD)
            preparing = self._preparing
            hello = getattr(preparing, "local_hello", None)
            if isinstance(hello, dict) and "attach" in hello and not getattr(preparing, "hello_held", False):
                # an attempt made to join the session while it was up: it
                # would be refused once its handshake is done; one that
                # resumes the session goes now instead
                self._dropped = preparing
                preparing.close(0, "the session it was to join is gone; resuming it instead")
                # without waiting for its TLS handshake to take the close
                # over the lossy link (seen: 1 s on bad)
                transport = getattr(preparing, "transport", None)
                if transport is not None:
                    transport.abortConnection()
        else:
            now = self._time.seconds()
            delay = LOST_SPREAD * self._retry.rng()
            if pending.getTime() - now <= delay:
                return
            pending.reset(delay)
            self.next_attempt_at = now + delay
            self.log.info(
                "tunnel to {contact}: the session lost its last connection; attempt in {delay:.1f} s",
                contact=self.description,
                delay=delay,
            )

    def stopService(self) -> Deferred[None]:
        """
        Close the tunnel with a reason, then stop reconnecting.
        """
        if self.tunnel is not None:
            self.tunnel.close_for_good("agent stopping")
        return super().stopService()

    def reconnect_now(self) -> None:
        """
        The session moves (go-away on another of its connections): close
        this service's connection and make the next attempt at once.
        """
        self._retry.now()
        if self.tunnel is not None:
            self.tunnel.close(0, "moving after go-away")

    def on_go_away(self, protocol: TunnelProtocol) -> None:
        """
        The contact point is draining: drop this tunnel now and reconnect at once.
        """
        self._retry.now()
        protocol.close(0, "moving after go-away")


class OnDemandTunnel(Service):
    """
    C{--tunnel on-demand}: the agent's tunnel is up only while an
    application needs it.  The first SIP message from an application
    starts the L{AgentTunnelService}; once no registration made through
    the agent is valid any more, no dialog is established and no SIP has
    passed for C{idle} seconds, the tunnel is closed with go-away (the
    contact point forgets the session at once) and the service stopped,
    until the next message.

    @ivar closes: tunnels closed because they were no longer needed.
    """

    log = Logger()

    def __init__(
        self,
        service: AgentTunnelService,
        clock: IReactorTime,
        busy: Callable[[float], bool],
        idle: float,
        *,
        before_close: Callable[[], None] | None = None,
        check_interval: float = 1.0,
    ) -> None:
        """
        @param busy: C{busy(now)}: whether an application still needs the
            tunnel (L{spwm.sip.agent_proxy.AgentSipProxy.busy}).
        @param idle: seconds without need and without SIP before closing.
        @param before_close: called just before an idle tunnel is closed
            (the resumption logic forgets the session: nothing to resume).
        @param check_interval: how often the need is checked while up.
        """
        self.service = service
        self._clock = clock
        self._busy = busy
        self.idle = idle
        self._before_close = before_close
        self._check_interval = check_interval
        self._last_activity = clock.seconds()
        self._timer: Any = None
        self.closes = 0

    @property
    def wanted(self) -> bool:
        """
        Whether the tunnel service runs (is up or trying to be).
        """
        return bool(self.service.running)

    def touch(self) -> None:
        """
        SIP passed: the idle time starts again.
        """
        self._last_activity = self._clock.seconds()

    def want(self) -> bool:
        """
        An application sent SIP while no tunnel is up: start connecting if
        the service is not running.

        @return: whether an attempt is under way now (the message may wait
            for it); C{False} while waiting between failed attempts.
        """
        self.touch()
        if not self.running:
            return False
        if not self.service.running:
            self.log.info(
                "an application needs the tunnel: connecting to {contact}", contact=self.service.description
            )
            self.service.startService()
            self._arm()
        return bool(self.service.connecting)

    def startService(self) -> None:
        """
        No tunnel at start, unless an application needs one already:
        registrations restored from the agent's C{--state-file} wait at
        the contact point, and calls to their phones need the tunnel now.
        """
        super().startService()
        if self._busy(self._clock.seconds()):
            self.want()

    def _arm(self) -> None:
        if self._timer is None or not self._timer.active():
            self._timer = self._clock.callLater(self._check_interval, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self.service.running:
            return
        now = self._clock.seconds()
        if self._busy(now):
            # The idle time counts from the end of the last need.
            self._last_activity = now
        if now - self._last_activity < self.idle:
            self._arm()
            return
        self.close("no registration, no dialog and no SIP for {:g} s".format(self.idle))

    def close(self, why: str) -> None:
        """
        Close the tunnel (with go-away) and stop reconnecting.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._before_close is not None:
            self._before_close()
        tunnel = self.service.tunnel
        self.log.info(
            "no application needs the tunnel to {contact} any more ({why}): closing it",
            contact=self.service.description,
            why=why,
        )
        if tunnel is not None:
            tunnel.go_away("no application needs the tunnel (on-demand)", 0.0)
            tunnel.close(0, "tunnel no longer needed (on-demand)")
        self.closes += 1
        self.service.stopService()

    def status(self) -> dict[str, Any]:
        """
        For the status page.
        """
        return {"mode": "on-demand", "wanted": int(self.wanted), "closes": self.closes}

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.service.running:
            return self.service.stopService()
        return None


def agent_endpoint(
    reactor: Any,
    host: str,
    port: int,
    *,
    plaintext: bool,
    server_name: str | None = None,
    ca_file: str | None = None,
    http_proxy: tuple[str, int] | None = None,
    client_cert: Any = None,
    timeout: float = 10.0,
    http_proxy_auth: str | None = None,
    tls: ReportingClientTLS | None = None,
) -> tuple[IStreamClientEndpoint, ReportingClientTLS | None]:
    """
    The endpoint the agent connects with: C{HostnameEndpoint} (both address
    families tried) with staggered attempts (L{StaggeredEndpoint}), through
    an HTTP CONNECT proxy if given, in TLS unless C{plaintext} (the
    tunnel's TLS, L{spwm.tunnel.tlsread}).

    @param tls: the TLS options (and reporter) to use, made for another
        port of the same contact point; else new ones.
    """
    if http_proxy is not None:
        proxy_host, proxy_port = http_proxy
        endpoint: IStreamClientEndpoint = HTTPConnectEndpoint(
            StaggeredEndpoint(HostnameEndpoint(reactor, proxy_host, proxy_port, timeout=timeout), reactor),
            host,
            port,
            auth=http_proxy_auth,
            description=f"[{proxy_host}]:{proxy_port}" if ":" in proxy_host else f"{proxy_host}:{proxy_port}",
            clock=reactor,
            timeout=timeout,
        )
    else:
        endpoint = StaggeredEndpoint(HostnameEndpoint(reactor, host, port, timeout=timeout), reactor)
    if plaintext:
        return endpoint, None
    if tls is None:
        tls = client_tls_options(server_name or host, ca_file, client_cert)
    return TunnelTLSClientEndpoint(tls, endpoint), tls


# -- the contact point ----------------------------------------------------


class ContactListenService(Service):
    """
    Listens for tunnels; on stop, stops listening, sends go-away on every
    tunnel and finishes once every tunnel has closed, or closes those left
    after the drain time.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: ContactTunnelFactory,
        clock: IReactorTime,
        *,
        tls_factory: Factory | None = None,
        drain: float = 5.0,
        description: str = "",
        option: str = "listen",
        reactor: IReactorCore | None = None,
    ) -> None:
        """
        @param option: the option that names the address (C{listen},
            C{quic-listen}), for the line of a start-up error.
        @param reactor: stopped when listening fails after the start (an
            endpoint that listens later); C{clock} if it is a reactor.
        """
        self._endpoint = endpoint
        self.factory = factory
        # With TLS the limits apply before the TLS wrapper builds anything.
        self._listen_factory = AdmissionFactory(factory, tls_factory) if tls_factory is not None else factory
        self._clock = clock
        self._reactor = reactor if reactor is not None else (clock if IReactorCore.providedBy(clock) else None)
        self._drain = drain
        self._stop_waiters: list[Deferred[None]] = []
        self._port: Any = None
        self.description = description
        # the option that names the address, for a start-up error
        self.option = option
        self.listening: Deferred[Any] | None = None

    def startService(self) -> None:
        """
        Listen for tunnels.

        @raise ListenError: the endpoint refused at once (an address in use,
            or not ours): the process stops at start.
        """
        super().startService()
        self.listening = self._endpoint.listen(self._listen_factory)
        refused: list[Failure] = []
        starting = True

        def listening(port: Any) -> Any:
            self._port = port
            self.log.info("contact point listening for tunnels on {address}", address=self.description or port.getHost())
            return port

        def failed(f: Failure) -> None:
            if starting:
                refused.append(f)
                return
            # A contact point that cannot take tunnels is of no use: one
            # line, and the process stops.
            error = ListenError.from_exception(self.option, self.description or "?", f.value)
            self.log.error("cannot take tunnels: {error}; stopping", error=str(error))
            if self._reactor is not None and self._reactor.running:
                self._reactor.stop()

        self.listening.addCallbacks(listening, failed)
        starting = False
        if refused:
            raise ListenError.from_exception(self.option, self.description or "?", refused[0].value)

    #: Seconds L{when_stopped} waits, after the drain, for the tunnels it
    #: closed to be lost (a connection's loss is told when its transport
    #: has closed, a turn or so later).
    CLOSE_WAIT = 2.0

    def when_stopped(self) -> Deferred[None]:
        """
        @return: a Deferred that fires with C{None} once the service has
            stopped and the loss of every tunnel it had has been told (the
            sessions' ends, and their calls'), at most L{CLOSE_WAIT}
            seconds after its drain.
        """
        waiting: Deferred[None] = Deferred()
        self._stop_waiters.append(waiting)
        return waiting

    def stopService(self) -> Deferred[Any] | None:
        """
        Stop listening and drain (L{_stop}); then tell those waiting
        (L{when_stopped}).
        """
        tunnels = list(self.factory.tunnels)

        def tell(result: Any) -> Any:
            self._tell_stopped(tunnels)
            return result

        stopping = self._stop()
        if stopping is None:
            return tell(None)
        return stopping.addBoth(tell)

    def _tell_stopped(self, tunnels: list[Any]) -> None:
        """
        Fire the L{when_stopped} Deferreds in the turn after the last of
        C{tunnels} is lost (its connection's loss is told after its
        C{when_closed}), or after L{CLOSE_WAIT}.
        """
        waiters, self._stop_waiters = self._stop_waiters, []
        if not waiters:
            return
        fired = False

        def fire() -> None:
            nonlocal fired
            if fired:
                return
            fired = True
            if timer.active():
                timer.cancel()
            for waiting in waiters:
                waiting.callback(None)

        timer = self._clock.callLater(self.CLOSE_WAIT, fire)
        gone = DeferredList([t.when_closed() for t in tunnels], consumeErrors=True)
        gone.addCallback(lambda _: self._clock.callLater(0, fire))

    def _stop(self) -> Deferred[Any] | None:
        """
        Stop listening and drain: go-away on every tunnel, then wait for
        their own close notifications (L{TunnelProtocol.when_closed}), at
        most the drain time; tunnels still open then are closed.  With a
        drain time of 0, that is in the reactor's next turn.
        """
        super().stopService()
        stopped = self._port.stopListening() if self._port is not None else None
        tunnels = list(self.factory.tunnels)
        if not tunnels:
            return stopped
        if self._drain > 0:
            self.log.info("draining {count} tunnel(s) for {drain} s", count=len(tunnels), drain=self._drain)
        else:
            self.log.info("closing {count} tunnel(s) at once (no drain time)", count=len(tunnels))
        self.factory.go_away_all("contact point shutting down", self._drain)
        gone = DeferredList([t.when_closed() for t in tunnels], consumeErrors=True)
        done: Deferred[None] = Deferred()

        def over() -> None:
            for tunnel in list(self.factory.tunnels):
                tunnel.close(0, "drain time over")
            if not done.called:
                done.callback(None)

        timer = self._clock.callLater(self._drain, over)

        def all_gone(_: Any) -> None:
            # Every agent has moved before the drain time was over.
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        gone.addCallback(all_gone)
        return done
