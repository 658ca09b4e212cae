# -*- test-case-name: tests.test_status -*-
"""
What a running half reports about itself: a status document (nested
sections of numbers), served as JSON (C{/status}) and in the Prometheus
text format (C{/metrics}) on C{--status-listen}, and summed up in one log
line every C{--status-interval} seconds.

The document is built when asked for (a status request, the periodic
line): nothing here runs per packet or per message.  See
C{docs/operations.md}, "Status and metrics".
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web import http
from twisted.web.server import Request, Site

import spwm
from spwm.addr import peer
from spwm.errors import ListenError

#: A section of the document: metric name -> number, or -> {label: number}.
Section = dict[str, Any]

_NAME = re.compile(r"[^a-zA-Z0-9_]")


class Status:
    """
    The status of one half: named sections, each computed by a callable
    when the document is built.

    @ivar side: C{"agent"} or C{"contact"}.
    """

    def __init__(self, side: str, clock: Any) -> None:
        self.side = side
        self.clock = clock
        self.started = clock.seconds()
        self._sections: list[tuple[str, Callable[[], Section]]] = []

    def add(self, name: str, section: Callable[[], Section]) -> None:
        """
        Add a section, computed by C{section()} for every document.
        """
        self._sections.append((name, section))

    def document(self) -> dict[str, Any]:
        """
        @return: C{{"side", "version", "uptime", <section>: {...}, ...}}.
        """
        doc: dict[str, Any] = {
            "side": self.side,
            "version": spwm.__version__,
            "uptime": round(self.clock.seconds() - self.started, 3),
        }
        for name, section in self._sections:
            doc[name] = section()
        return doc


def prometheus_text(doc: dict[str, Any]) -> str:
    """
    The numbers of a status document in the Prometheus text exposition
    format: C{spwm_<section>_<name>{side="..."} value}; a section's
    C{{label: number}} entries become one metric with a C{key} label.
    Booleans are 0 or 1; text (and C{None}) is left out.
    """
    side = _escape(str(doc.get("side", "")))
    lines = [f'spwm_uptime_seconds{{side="{side}"}} {_number(doc.get("uptime", 0))}']
    for section, values in doc.items():
        if not isinstance(values, dict):
            continue
        for name, value in values.items():
            metric = _NAME.sub("_", f"spwm_{section}_{name}")
            if isinstance(value, dict):
                for key, number in sorted(value.items()):
                    if _is_number(number):
                        lines.append(f'{metric}{{side="{side}",key="{_escape(str(key))}"}} {_number(number)}')
            elif _is_number(value):
                lines.append(f'{metric}{{side="{side}"}} {_number(value)}')
    return "\n".join(lines) + "\n"


def summary(doc: dict[str, Any]) -> str:
    """
    One line for the log: every section's non-zero numbers (and its
    labelled numbers summed), e.g. C{tunnels open=3; media streams=4
    packets_in=1234}.
    """
    parts = []
    for section, values in doc.items():
        if not isinstance(values, dict):
            continue
        fields = []
        for name, value in values.items():
            if isinstance(value, dict):
                value = sum(v for v in value.values() if _is_number(v))
            if _is_number(value) and value:
                fields.append(f"{name}={_number(value)}")
        if fields:
            parts.append(section + " " + " ".join(fields))
    return "; ".join(parts) or "idle"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class StatusResource(Resource):
    """
    C{/status} (JSON) and C{/metrics} (Prometheus text) of a L{Status};
    anything else is C{404}.
    """

    isLeaf = True

    def __init__(self, status: Status) -> None:
        super().__init__()
        self.status = status

    def render_GET(self, request: Request) -> bytes:
        path = b"/" + b"/".join(s for s in request.postpath or () if s)
        if path == b"/status":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(self.status.document(), indent=1, sort_keys=True).encode() + b"\n"
        if path == b"/metrics":
            request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            return prometheus_text(self.status.document()).encode()
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain")
        return b"not found: try /status or /metrics\n"


class _QuietSite(Site):
    noisy = False

    def log(self, request: http.Request) -> None:
        """
        No access log line per request.
        """


class StatusHTTPService(Service):
    """
    Serves a L{StatusResource} on a server endpoint while running.

    @ivar listening: fires with the listening port once bound (or fails).
    """

    log = Logger()

    def __init__(self, endpoint: Any, status: Status, description: str = "") -> None:
        """
        @param description: the C{--status-listen} text, for the line that
            says it cannot be bound.
        """
        self.endpoint = endpoint
        self.description = description
        self.site = _QuietSite(StatusResource(status))
        self.port: Any = None
        self.listening: Deferred[Any] = Deferred()

    def startService(self) -> None:
        """
        Bind the status page.

        @raise ListenError: the endpoint refused at once (an address in use,
            or not ours): the process stops at start, as for C{--listen}.
        """
        super().startService()
        failed: list[Failure] = []
        starting = True

        def bound(port: Any) -> None:
            self.port = port
            self.log.info("status page on {address}", address=self.description or peer(port.getHost()))
            self.listening.callback(port)

        def refused(failure: Failure) -> None:
            failed.append(failure)
            if not starting:
                error = ListenError.from_exception("status-listen", self.description or "?", failure.value)
                self.log.error("status page not served: {error}", error=str(error))
            self.listening.errback(failure)

        self.endpoint.listen(self.site).addCallbacks(bound, refused)
        starting = False
        self.listening.addErrback(lambda f: None)
        if failed:
            raise ListenError.from_exception("status-listen", self.description or "?", failed[0].value)

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class StatusLogService(TimerService):
    """
    Logs L{summary} of the status every C{interval} seconds (the first
    after one interval).
    """

    log = Logger()

    def __init__(self, status: Status, interval: float, clock: Any) -> None:
        super().__init__(interval, self._report)
        self.clock = clock
        self.status = status
        self._first = True

    def _report(self) -> None:
        if self._first:
            # TimerService calls at once on start; the first line comes
            # after one interval.
            self._first = False
            return
        self.log.info("status: {summary}", summary=summary(self.status.document()))
