# -*- test-case-name: tests.test_status -*-
"""
What a running half reports about itself, on C{--status-listen}:

 - a status document (nested sections of numbers, each part contributes
   one) and listings (tunnels, sessions, registrations, calls in progress,
   the last ended calls), served as JSON at C{/status} with paging and
   filters;
 - the same numbers, and histograms of set-up time, tunnel round trip and
   per-leg jitter and transit delay, in the Prometheus exposition format
   at C{/metrics} (C{prometheus_client}, one registry per L{Status});
 - a web page at C{/} (L{spwm.statusweb});
 - one log line every C{--status-interval} seconds.

Everything is built when asked for (a request, the periodic line): nothing
here runs per packet or per message.  See C{docs/operations.md},
"Monitoring".
"""

from __future__ import annotations

import json
import math
import operator
import time
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Iterable

from attrs import frozen
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
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
from spwm.media.manager import END_REASONS
from spwm.sip.checks import CONGESTED_COUNTER, OVERLOADED_COUNTER
from spwm.sip.byes import BYE_ANSWERED, BYE_SENT
from spwm.sip.ringing import CANCEL_ANSWERED, CANCEL_SENT, FINAL_SENT
from spwm.sip.dialogs import UNACKNOWLEDGED
from spwm.tunnel.info import TunnelItem, tunnel_rtt

#: A section of the document: metric name -> number, or -> {label: number}.
Section = dict[str, Any]

#: A listing: one mapping per item, a plain dict or one that computes its
#: fields when read (L{spwm.tunnel.info.TunnelItem}); a page of it is
#: plain dicts (L{Query.page}).
Listing = Sequence[Mapping[str, Any]]

_NAME = re.compile(r"[^a-zA-Z0-9_]")

#: Items per listing when the request does not say, and at most.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

#: The filters a request may give (C{?agent=...}), and the fields of a
#: listing's items each one looks at: C{agent}, C{session} and C{state}
#: must be equal, C{aor} is a case-insensitive substring of the
#: address-of-record, contact, From or To.
FILTERS: dict[str, tuple[str, ...]] = {
    "agent": ("agent",),
    "session": ("session",),
    "state": ("state",),
    "aor": ("aor", "contact", "from", "to"),
}


@frozen
class Query:
    """
    Which items of each listing a request wants.

    @ivar limit: at most this many items per listing (at most L{MAX_LIMIT}).
    @ivar offset: skip this many (after filtering).
    @ivar filters: filter name (L{FILTERS}) -> the value asked for.
    """

    limit: int = DEFAULT_LIMIT
    offset: int = 0
    filters: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_args(cls, args: dict[bytes, list[bytes]]) -> Query:
        """
        From a request's query arguments; unknown arguments are ignored,
        numbers that do not parse taken as their default.
        """

        def text(name: str) -> str | None:
            values = args.get(name.encode())
            return values[-1].decode("utf-8", "replace") if values else None

        def number(name: str, default: int) -> int:
            value = text(name)
            try:
                return int(value) if value is not None else default
            except ValueError:
                return default

        limit = max(0, min(number("limit", DEFAULT_LIMIT), MAX_LIMIT))
        offset = max(0, number("offset", 0))
        filters = tuple((name, value) for name in FILTERS if (value := text(name)))
        return cls(limit, offset, filters)

    def matches(self, item: Mapping[str, Any]) -> bool:
        """
        Whether an item passes every filter (a filter on fields the item
        does not have drops it).
        """
        for name, wanted in self.filters:
            fields = [item[f] for f in FILTERS[name] if f in item and item[f] is not None]
            if name == "aor":
                needle = wanted.lower()
                if not any(needle in str(v).lower() for v in fields):
                    return False
            elif not any(str(v) == wanted for v in fields):
                return False
        return True

    def page(self, items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """
        @return: C{{"total": matching items, "offset", "limit", "items":
            [...]}}, the items plain dicts (an item that computes its
            fields when read is described here, only if on the page).
        """
        matching: Sequence[Mapping[str, Any]]
        if self.filters:
            matching = [item for item in items if self.matches(item)]
        else:
            matching = items if isinstance(items, Sequence) else list(items)
        return {
            "total": len(matching),
            "offset": self.offset,
            "limit": self.limit,
            "items": [
                item if type(item) is dict else dict(item)
                for item in matching[self.offset : self.offset + self.limit]
            ],
        }


class Status:
    """
    The status of one half: named sections, each computed by a callable
    when the document is built, and named listings.

    @ivar side: C{"agent"} or C{"contact"}.
    @ivar metrics: the half's L{Metrics} (its own Prometheus registry).
    """

    def __init__(self, side: str, clock: Any) -> None:
        self.side = side
        self.clock = clock
        self.started = clock.seconds()
        self._sections: list[tuple[str, Callable[[], Section]]] = []
        self._lists: list[tuple[str, Callable[[], Listing]]] = []
        self.metrics = Metrics(self)

    def add(self, name: str, section: Callable[[], Section]) -> None:
        """
        Add a section, computed by C{section()} for every document.
        """
        self._sections.append((name, section))

    def add_list(self, name: str, listing: Callable[[], Listing]) -> None:
        """
        Add a listing, computed by C{listing()} when the JSON or the page
        is asked for.
        """
        self._lists.append((name, listing))

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

    def listing(self, name: str) -> Listing:
        """
        @return: every item of the listing C{name} (none if there is no
            such listing).
        """
        for listed, listing in self._lists:
            if listed == name:
                return listing()
        return []

    def lists(self, query: Query | None = None) -> dict[str, Any]:
        """
        @return: listing name -> L{Query.page} of it.
        """
        query = query or Query()
        return {name: query.page(listing()) for name, listing in self._lists}

    def full(self, query: Query | None = None) -> dict[str, Any]:
        """
        The C{/status} JSON: the document with C{"lists"}.
        """
        doc = self.document()
        doc["lists"] = self.lists(query)
        return doc


#: Numbers of the document that count since the start: exposed as
#: Prometheus counters (C{..._total}); every other number is a gauge.  A
#: section of the second contact point (C{sessions_2}, L{base_section})
#: has the same counters as the first.
COUNTERS: dict[str, frozenset[str]] = {
    "tunnels": frozenset(
        {"refused", "accept_pauses", "host_listen_overflows", "host_listen_drops", "handon_failed", "handed_on_in"}
    ),
    "tunnel": frozenset({"closes"}),
    "no_tunnel": frozenset({"refused_no_tunnel", "acks_dropped", "responses_dropped", "held", "held_overflow", "held_resuming", "held_duplicates", "held_carried", "carried_dropped", "carried_taken"}),
    "sessions": frozenset({"resumed", "resumed_bound", "bound_sent", "bound_taken", "resume_refused", "resume_redirected", "resume_handed_on", "worker_redirects", "worker_fallbacks", "worker_avoided"}),
    "sip": frozenset(
        {
            "events",
            "refused",
            "deferred_messages",
            "deferred_turns",
            "resume_held",
            "resume_held_sent",
            "resume_held_overflow",
            "resume_held_expired",
            "resume_held_duplicates",
            "resume_carried",
            "resume_carried_dropped",
            "resume_carried_taken",
        }
    ),
    "media": frozenset(
        {
            "packets_in",
            "bytes_in",
            "packets_out",
            "bytes_out",
            "dropped_source",
            "dropped_no_channel",
            "dropped_no_target",
            "dropped_send",
            "tcp_bytes_in",
            "tcp_bytes_out",
            "rejected_streams",
            "refused_channels",
            "crossed_channels",
            "replaced_channels",
            "refused_local_channels",
            "dropped_unknown_channel",
            "ignored_branch_sdp",
            "policy_refusals",
            "refused_unregistered",
            "relay_sockets_reused",
            "dropped_kept",
        }
    ),
    "paths": frozenset(
        {
            "attach_refused",
            "attach_redirected",
            "attach_bound",
            "attach_handed_on",
            "replacements_raced",
            "race_losers",
            "resumptions_raced",
            "resumptions_won",
            "hellos_held",
        }
    ),
    "forwards": frozenset({"refused", "dropped_no_tunnel", "dropped_no_channel", "reopened", "crossed"}),
    "loop": frozenset({"late_windows"}),
    "gc": frozenset({"full_collections", "full_for_growth"}),
    "certificate": frozenset({"reloads", "reload_failures"}),
    "client_certificate": frozenset({"reloads", "reload_failures"}),
    "cdr_file": frozenset({"written", "write_errors", "failures", "reopened"}),
    "state_file": frozenset({"writes", "failures"}),
}

#: The HELP text of the document's numbers that have one of their own.
HELP: dict[str, str] = {
    "tunnels_open": "Tunnels connected now (handshaking ones included).",
    "tunnels_refused": "Tunnel connections refused by the limits.",
    "tunnel_up": "1 while the agent's tunnel is up.",
    "tunnel_failures": "Failed connection attempts since the tunnel was last up.",
    "sessions_live": "Sessions with a live tunnel.",
    "sessions_suspended": "Sessions whose tunnel broke, inside the resumption window.",
    "sessions_dormant": "Sessions past the window whose registrations are kept.",
    "sessions_resumed": "Sessions resumed on a new connection.",
    "sip_registrations": "Bindings registered through tunnels.",
    "sip_dialogs": "Established dialogs.",
    "sip_events": "SIP messages dropped or refused, by kind or status code (key).",
    "sip_proxies": "Contact point with --sip-proxy given more than once: each operator proxy (key), 1 while it answers OPTIONS, 0 while it is skipped.",
    "media_streams": "Media streams relayed now.",
    "calls_in_progress": "Call legs with media now.",
    "calls_limit": "Contact point, --max-calls: call legs with media it relays at most; new calls beyond are refused with 503.",
    "media_port_pairs_in_use": "Media port pairs allocated.",
    "media_port_pairs_total": "Media port pairs in --media-ports.",
    "media_packets_in": "Media packets received from this half's side.",
    "media_packets_out": "Media packets sent to this half's side.",
    "media_dropped_source": "Media packets from an address the SDP did not negotiate.",
    "paths_media_on": "Live sessions by what carries their media now (key: tcp, quic, tcp+quic).",
    "paths_media_switches": "Times the media of the live sessions moved between paths (TCP, QUIC).",
    "paths_quic_paths": "QUIC paths attached to the live sessions.",
    "paths_path_stalls": "Times a path of the live sessions stalled (overdue past its stall bound while the peer was heard on another path, or its kernel retransmitting after a timeout): its media and SIP moved off it.",
    "paths_stalls_held": "Times a path of the live sessions was overdue past its stall bound while nothing came on its other paths either (the peer busy, or the network quiet): held up, not stalled; nothing moved.",
    "paths_sip_order": "SIP numbered across the paths of the live sessions (sip-seq): sip_kept not acknowledged yet, sip_resent sent again after the carrier moved, sip_copies received twice and dropped, sip_given_up forgotten unacknowledged, sip_skipped never received (key).",
    "paths_ciphering": "Per-user ciphering of the live sessions with paths: frames sealed, opened, refused (bad tag, replay, unsealed after sealed), unknown (sealed for a flow or channel without a key) (key).",
    "paths_connections_wanted": "Agent, --tunnel-connections auto: connections it keeps attached to its session now.",
    "paths_media_stalls": "Agent, --tunnel-connections auto: pauses in the received media ended by a burst (every connection held it back).",
    "paths_connections_spare": "Agent, --tunnel-connections auto: spare connections kept beside the most the media stalls ask for (the copies take them in turn; a cut leaves the copies whole).",
    "paths_connections_for_load": "Agent, --tunnel-connections auto: connections the media load asks for now or asked for within the last 60 s (many calls on a lossy link; 0: none).",
    "sip_waiting": "SIP messages waiting for a later reactor turn now (the SIP work of a turn is cut at 0.5 ms).",
    "sip_overloaded": "1 while the oldest SIP message waiting for its turn has waited 0.2 s or more and messages have been handled that late for 0.05 s: new requests that waited as long are answered 503 (counted under events, key 'overloaded').",
    "sip_deferred_messages": "SIP messages that waited for a later reactor turn.",
    "sip_deferred_turns": "Reactor turns whose SIP work ran over its 0.5 ms slice (the rest waited).",
    "loop_lag_ms_p50": "How late the reactor ran its timers, median of the last 10 s window (ms).",
    "loop_lag_ms_p90": "How late the reactor ran its timers, 90th percentile of the last 10 s window (ms): a process short of CPU.",
    "loop_lag_ms_max": "How late the reactor ran its latest timer, at most, in the last 10 s window (ms).",
    "loop_lag_ms_max_1m": "How late the reactor ran a timer, at most, in the last minute (ms).",
    "loop_late_windows": "10 s windows whose 90th percentile of timer lateness was 5 ms or more.",
    "gc_full_collections": "Full garbage collections made (on a timer: spwm.gcpolicy); the process does nothing else meanwhile.",
    "gc_last_full_ms": "How long the last full garbage collection stopped the process (ms).",
    "gc_last_full_freed": "Objects the last full garbage collection freed (held in reference cycles).",
    "gc_longest_full_ms": "The longest full garbage collection since the start (ms).",
    "gc_full_every_s": "Seconds between two full garbage collections now (shorter while they free much).",
    "gc_frozen": "Objects of start-up frozen: no garbage collection looks at them.",
    "gc_full_for_growth": "Full garbage collections made because the process grew by half and 64 MB since the last one.",
    "certificate_not_after": "The certificate in use (contact point: --cert; agent: --sip-tls-cert): when it expires (seconds since the epoch); alert on it minus time().",
    "certificate_expires_in": "Seconds until the certificate in use (contact point: --cert; agent: --sip-tls-cert) expires (negative: expired).",
    "certificate_loaded_at": "When the certificate in use (contact point: --cert; agent: --sip-tls-cert) was loaded (seconds since the epoch).",
    "certificate_reloads": "Times changed certificate files were loaded and put in use since the start.",
    "certificate_reload_failures": "Times changed certificate files did not load (the one in use stayed).",
    "client_certificate_not_after": "Agent, --client-cert: when the certificate it presents to the contact point expires (seconds since the epoch); a contact point with --client-ca refuses it after.",
    "client_certificate_expires_in": "Agent, --client-cert: seconds until the certificate it presents to the contact point expires (negative: expired).",
    "client_certificate_loaded_at": "Agent, --client-cert: when the certificate files in use were loaded (seconds since the epoch).",
    "client_certificate_reloads": "Agent: times changed --client-cert or --ca files were loaded and put in use since the start.",
    "client_certificate_reload_failures": "Agent: times changed --client-cert or --ca files did not load (the ones in use stayed).",
    "cdr_file_written": "--cdr-file: call detail records written to the file since the start.",
    "cdr_file_failures": "--cdr-file: call detail records lost: more waited than memory keeps for a file that cannot be written (a full disk), or some still waited at the stop.",
    "cdr_file_waiting": "--cdr-file: call detail records that wait in memory for the file to take them (a full disk).",
    "cdr_file_write_errors": "--cdr-file: writes to the file that failed (each record that waits is tried again).",
    "cdr_file_reopened": "--cdr-file: times the file was reopened (SIGHUP).",
    "state_file_writes": "--state-file: writes of the state file that worked since the start (at start, every --state-interval, at stop).",
    "state_file_failures": "--state-file: writes of the state file that failed since the start (a crash then loses more; see the log).",
    "state_file_written_at": "--state-file: when the state file was last written (seconds since the epoch); alert on time() minus it well past --state-interval.",
    "state_file_failing": "--state-file: 1 while the writes of the state file fail.",
    "paths_late_losses": "Agent, --tunnel-connections auto: kernel retransmissions seen on a connection whose round trip is 100 ms or more (each can add connections).",
}

#: The keys of C{sip.events} that C{/metrics} has from the start, at 0
#: until they happen, per side (a fixed few of the common ones, as
#: C{spwm_calls_ended_total} has every reason): a dashboard's rate of
#: them is 0, not "no data", on a half that dropped nothing yet.  The
#: other keys appear when first counted.
SIP_EVENT_KEYS: dict[str, tuple[str, ...]] = {
    "contact": (
        "403", "404", "430", "480", "ACK dropped", CONGESTED_COUNTER, OVERLOADED_COUNTER, UNACKNOWLEDGED, BYE_SENT,
        BYE_ANSWERED, CANCEL_SENT, CANCEL_ANSWERED, FINAL_SENT,
    ),
    "agent": (
        "ACK refused", CONGESTED_COUNTER, OVERLOADED_COUNTER, UNACKNOWLEDGED, BYE_SENT, BYE_ANSWERED, CANCEL_SENT,
        CANCEL_ANSWERED, FINAL_SENT,
    ),
}

#: The number that ends the name of a section of the second contact point.
_NTH = re.compile(r"_([0-9]+)$")


def base_section(section: str) -> tuple[str, str | None]:
    """
    The section a status document's section repeats for another contact
    point (C{--contact} given twice), and that contact point's number:
    C{("sessions", "2")} for C{sessions_2}, C{("sessions", None)} for
    C{sessions}.
    """
    found = _NTH.search(section)
    if found is None:
        return section, None
    return section[: found.start()], found.group(1)


#: Legs the per-leg histograms are labelled with (a bounded set).
LEGS = ("lan", "tunnel", "operator")


def reason_label(reason: str) -> str:
    """
    A call detail record's end reason as the C{reason} label of
    C{spwm_calls_ended_total}: C{media inactivity} is C{media_inactivity}.
    """
    return reason.replace(" ", "_")


#: The families L{Metrics} makes itself: a number of the document that
#: would be named alike is left out of C{/metrics} (one family per name).
OWN_FAMILIES = frozenset(
    {
        "spwm_uptime_seconds",
        "spwm_call_setup_seconds",
        "spwm_tunnel_rtt_seconds",
        "spwm_media_jitter_seconds",
        "spwm_media_transit_seconds",
        "spwm_calls_ended",
        "spwm_media_lost_packets",
    }
)


class _DocumentCollector:
    """
    The status document's numbers as metric families, read at each scrape:
    C{spwm_<section>_<name>{side}}; a section's C{{key: number}} entries
    get a C{key} label.  Booleans are 0 or 1; text is left out.
    """

    def __init__(self, status: Status) -> None:
        self.status = status

    def collect(self) -> Iterable[Metric]:
        doc = self.status.document()
        side = str(doc.get("side", ""))
        uptime = GaugeMetricFamily("spwm_uptime_seconds", "Seconds since this half started.", labels=["side"])
        uptime.add_metric([side], float(doc.get("uptime", 0)))
        yield uptime
        for section, values in doc.items():
            if not isinstance(values, dict):
                continue
            base, nth = base_section(section)
            counters = COUNTERS.get(base, frozenset())
            for name, value in values.items():
                metric = _NAME.sub("_", f"spwm_{section}_{name}")
                if metric in OWN_FAMILIES:
                    continue
                help_text = HELP.get(_NAME.sub("_", f"{base}_{name}"), f"The status document's {section}.{name}.")
                if nth is not None:
                    help_text = f"Contact point {nth} (--contact given more than once): {help_text}"
                kind = CounterMetricFamily if name in counters else GaugeMetricFamily
                if isinstance(value, dict):
                    if (base, name) == ("sip", "events"):
                        value = {**dict.fromkeys(SIP_EVENT_KEYS.get(side, ()), 0), **value}
                    family = kind(metric, help_text, labels=["side", "key"])
                    for key, number in sorted(value.items()):
                        if _is_number(number):
                            family.add_metric([side, str(key)], float(number))
                    yield family
                elif _is_number(value):
                    family = kind(metric, help_text, labels=["side"])
                    family.add_metric([side], float(value))
                    yield family


class Metrics:
    """
    The Prometheus side of a L{Status}: its own C{CollectorRegistry} (two
    halves in one process do not clash), the document's numbers, and
    histograms fed by events (a call's answer and end) and by each scrape
    (the tunnels' round trip).

    @ivar registry: the registry C{/metrics} exposes.
    """

    def __init__(self, status: Status) -> None:
        self.status = status
        self.side = status.side
        #: the round trips (seconds, or C{None}) to sample at a scrape:
        #: those of the C{tunnels} listing, or a sampler of them
        #: (L{rtt_sampler})
        self.rtts: Callable[[], Iterable[float | None]] = self._listed_rtts
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_DocumentCollector(status))
        registry = self.registry
        self.setup = Histogram(
            "spwm_call_setup_seconds",
            "Call set-up time: the call's first SDP (the INVITE's offer) to the 2xx that answered it.",
            ["side"],
            registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
        )
        self.rtt = Histogram(
            "spwm_tunnel_rtt_seconds",
            "Tunnel round-trip time (the kernel's TCP estimate), one sample per tunnel at each scrape (at most 1,000 per scrape, in turn).",
            ["side"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.jitter = Histogram(
            "spwm_media_jitter_seconds",
            "Interarrival jitter (RFC 3550) per stream and leg, one sample per stream at the call's end.",
            ["side", "leg"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5),
        )
        self.transit = Histogram(
            "spwm_media_transit_seconds",
            "Transit delay per stream and leg, one sample per stream at the call's end.",
            ["side", "leg"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1),
        )
        self.calls = Counter(
            "spwm_calls_ended",
            "Calls (legs with media) ended, answered or not, by why they ended (the call detail record's reason).",
            ["side", "answered", "reason"],
            registry=registry,
        )
        self.lost = Counter(
            "spwm_media_lost_packets",
            "Packets lost per leg (RTP sequence numbers), counted at the calls' end.",
            ["side", "leg"],
            registry=registry,
        )
        # the labelled series, looked up once (not per call)
        self._setup = self.setup.labels(self.side)
        self.rtt.labels(self.side)
        self._legs = {
            leg: (self.jitter.labels(self.side, leg), self.transit.labels(self.side, leg), self.lost.labels(self.side, leg))
            for leg in LEGS
        }
        self._calls = {
            (answered, reason): self.calls.labels(self.side, answered, reason_label(reason))
            for answered in ("yes", "no")
            for reason in END_REASONS
        }

    def call_event(self, event: str, record: dict[str, Any]) -> None:
        """
        A media manager's call observer: the set-up time at the answer
        (C{setup_s}), and at the end the per-leg figures of the call detail
        record (L{spwm.media.manager.call_detail_record}: C{answered_s},
        and per stream its C{legs}).
        """
        if event == "answered":
            setup = record.get("setup_s")
            if isinstance(setup, (int, float)) and setup >= 0:
                self._setup.observe(setup)
            return
        if event != "ended":
            return
        answered = "yes" if record.get("answered_s") is not None else "no"
        reason = str(record.get("reason") or "")
        counter = self._calls.get((answered, reason))
        if counter is None:
            counter = self.calls.labels(self.side, answered, reason_label(reason or "unknown"))
        counter.inc()
        for stream in record.get("streams") or ():
            legs = stream.get("legs") or {}
            for leg in LEGS:
                figures = legs.get(leg)
                if not figures or not figures.get("packets"):
                    # a leg that carried nothing (a challenged or
                    # refused INVITE's stream) has no jitter or delay
                    continue
                jitter = figures.get("jitter_ms")
                transit = figures.get("transit_ms")
                lost = figures.get("lost")
                jitters, transits, losses = self._legs[leg]
                if isinstance(jitter, (int, float)) and jitter >= 0:
                    jitters.observe(jitter / 1000)
                if isinstance(transit, (int, float)) and transit >= 0:
                    transits.observe(transit / 1000)
                if isinstance(lost, (int, float)) and lost > 0:
                    losses.inc(lost)

    def sample(self) -> None:
        """
        At each scrape: the round trip of every tunnel listed.
        """
        # the child looked up once, not once per tunnel (labels() takes a
        # lock and builds its key each time: 10,000 tunnels at a scrape)
        observe = self.rtt.labels(self.side).observe
        for seconds in self.rtts():
            if seconds is not None:
                observe(seconds)

    def _listed_rtts(self) -> Iterable[float | None]:
        """
        The round trips of the C{tunnels} listing, seconds.
        """
        for tunnel in self.status.listing("tunnels"):
            rtt = tunnel.get("rtt_ms")
            yield rtt / 1000 if isinstance(rtt, (int, float)) else None

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """
        @return: the registry in the format C{accept} asks for (the
            Prometheus text format by default) and its content type.
        """
        self.sample()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def proxies_line(doc: dict[str, Any]) -> str | None:
    """
    For the page and C{spwm status}: a contact point's operator proxies
    (C{--sip-proxy} more than once), which answer and which is in use;
    C{None} without several.
    """
    sip = doc.get("sip")
    if not isinstance(sip, dict):
        return None
    proxies = sip.get("proxies")
    if not isinstance(proxies, dict) or not proxies:
        return None
    using = sip.get("proxy")
    parts = [
        f"{name} {'answers' if up else 'DOES NOT ANSWER'}" + (" (in use)" if name == using else "")
        for name, up in proxies.items()
    ]
    line = "Operator proxies: " + ", ".join(parts)
    if not any(proxies.values()):
        line += "; NONE ANSWERS: new SIP requests from phones get 503"
    return line


def tunnel_lines(doc: dict[str, Any]) -> list[str]:
    """
    For the page and C{spwm status}: an agent's tunnel to each contact
    point that is not up, and why, in words (the last failed attempt's
    reason); nothing while every tunnel is up.  While another contact
    point's tunnel is up, new requests go through it, and the line says so
    rather than that they get 503.
    """
    if doc.get("side") != "agent":
        return []
    tunnels = [
        doc[k] for k in sorted(k for k in doc if k == "tunnel" or k.startswith("tunnel_")) if isinstance(doc[k], dict)
    ]
    up = [t.get("contact") or "the other contact point" for t in tunnels if t.get("up", True)]
    lines = []
    for tunnel in tunnels:
        if tunnel.get("up", True):
            continue
        contact = tunnel.get("contact") or "the contact point"
        if tunnel.get("mode") == "on-demand" and not tunnel.get("wanted"):
            lines.append(f"Tunnel to {contact}: idle (on demand: it connects at the next SIP from a phone)")
            continue
        failures = tunnel.get("failures") or 0
        line = f"Tunnel to {contact}: DOWN"
        if failures:
            line += f" after {failures} failed attempt" + ("s" if failures != 1 else "")
        if tunnel.get("last_failure"):
            # (Twisted's reasons end in a full stop: "111: Connection refused.")
            line += f": {str(tunnel['last_failure']).rstrip('. ')}"
        if up:
            lines.append(line + f"; new SIP requests from phones go through {', '.join(up)}")
        else:
            lines.append(line + "; new SIP requests from phones get 503 until it is up")
    return lines


def connections_line(doc: dict[str, Any]) -> str | None:
    """
    For the page and C{spwm status}: an agent whose C{--tunnel-connections
    auto} keeps more connections than it starts with, how many and why (in
    the words of its log); C{None} otherwise.
    """
    paths = doc.get("paths") if doc.get("side") == "agent" else None
    if not isinstance(paths, dict):
        return None
    wanted, floor = paths.get("connections_wanted"), paths.get("connections_floor")
    if not isinstance(wanted, int) or not isinstance(floor, int) or wanted <= floor:
        return None
    why = paths.get("connections_why") or "more were wanted"
    return f"Tunnel connections: {wanted} (auto starts with {floor}): {why}"


def cdr_line(doc: dict[str, Any]) -> str | None:
    """
    For the page and C{spwm status}: C{--cdr-file} records that wait for
    a file that takes no writes (a full disk), or were lost; C{None} while
    every record was written.
    """
    cdr = doc.get("cdr_file")
    if not isinstance(cdr, dict) or not (cdr.get("failures") or cdr.get("waiting")):
        return None
    parts = []
    if cdr.get("waiting"):
        parts.append(f"{cdr['waiting']} RECORDS WAIT (the file takes no writes, see the log)")
    if cdr.get("failures"):
        parts.append(f"{cdr['failures']} RECORDS LOST")
    return f"CDR file {cdr.get('path', '?')}: {'; '.join(parts)}; {cdr.get('written', 0)} written"


def state_line(doc: dict[str, Any]) -> str | None:
    """
    For the page and C{spwm status}: a C{--state-file} whose writes fail
    (a crash would lose what it should keep); C{None} while they work.
    """
    state = doc.get("state_file")
    if not isinstance(state, dict) or not state.get("failing"):
        return None
    return (
        f"State file {state.get('path', '?')}: NOT WRITTEN ({state.get('failures', 0)} writes failed,"
        f" see the log); {state.get('writes', 0)} written"
    )


def certificate_lines(doc: dict[str, Any]) -> list[str]:
    """
    For the page and C{spwm status}: a line for each certificate in use
    (the contact point's C{--cert}; the agent's C{--sip-tls-cert} and
    C{--client-cert}), when it expires, and a renewal that did not load.
    """
    lines = []
    for section, label, refused in (
        (
            "certificate",
            "Certificate",
            "agents refuse this contact point"
            if doc.get("side") == "contact"
            else "phones that check it refuse SIP over TLS",
        ),
        ("client_certificate", "Client certificate", "a contact point with --client-ca refuses this agent"),
    ):
        line = _certificate_line(doc.get(section), label, refused)
        if line is not None:
            lines.append(line)
    return lines


def _certificate_line(cert: Any, label: str, refused: str) -> str | None:
    if not isinstance(cert, dict) or not _is_number(cert.get("not_after")):
        return None
    left = cert.get("expires_in")
    days = float(left) / 86400 if isinstance(left, (int, float)) else None
    day = time.strftime("%Y-%m-%d", time.gmtime(cert["not_after"]))
    if days is None:
        when = f"expires {day}"
    elif days <= 0:
        when = f"EXPIRED {day}: {refused}"
    elif days <= 14:
        when = f"expires {day}, in {days:.0f} days: RENEW IT"
    else:
        when = f"expires {day} (in {days:.0f} days)"
    line = f"{label}: {cert.get('subject', '?')}, {when}"
    if cert.get("reloads"):
        times = "once" if cert["reloads"] == 1 else f"{cert['reloads']} times"
        line += f"; loaded again {times} since the start"
    if cert.get("error"):
        line += f"; THE CHANGED FILES DO NOT LOAD ({cert['error']}): still the one above"
    return line


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


#: The share of a half's time an open status page may take by reloading
#: itself (L{StatusResource}).
PAGE_SHARE = 0.02


class StatusResource(Resource):
    """
    C{/} (the web page), C{/status} (JSON, with C{?limit=&offset=} and the
    L{FILTERS}) and C{/metrics} (Prometheus) of a L{Status}; anything else
    is C{404}.
    """

    isLeaf = True

    def __init__(self, status: Status) -> None:
        super().__init__()
        self.status = status
        # spwm.statusweb imports this module, so this module cannot import
        # it at its top; it is imported here, at start-up, not at each
        # request: a package upgraded under the running process (whose
        # modules then no longer match) does not break the page.
        from spwm.statusweb import CONTENT_SECURITY_POLICY, REFRESH, render_page

        self._render_page = render_page
        self._page_policy = CONTENT_SECURITY_POLICY
        self._refresh = REFRESH
        #: seconds the last page took to render (the event loop waited)
        self._page_seconds = 0.0
        self._timer = time.perf_counter

    def render_GET(self, request: Request) -> bytes:
        path = b"/" + b"/".join(s for s in request.postpath or () if s)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        if path == b"/status":
            request.setHeader(b"content-type", b"application/json")
            doc = self.status.full(Query.from_args(request.args or {}))
            # Compact: json's C encoder, which an indent would turn off
            # (the pure Python one took 3-4 times as long, and the relay
            # waits while a request renders: 174 against 45 ms for 1,000
            # calls listed).  spwm status --json indents it again.
            return json.dumps(doc, sort_keys=True, default=str, separators=(",", ":")).encode() + b"\n"
        if path == b"/metrics":
            accept = request.getHeader(b"accept")
            body, content_type = self.status.metrics.exposition(accept.decode("latin-1") if accept else None)
            request.setHeader(b"content-type", content_type.encode())
            return body
        if path == b"/":
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            # The page runs no script: even text that escaped escaping could not.
            request.setHeader(b"content-security-policy", self._page_policy)
            # The page reloads itself, and the half's event loop (its
            # tunnels, SIP and media) waits while it renders: at 10,000
            # tunnels that takes a few tenths of a second.  It reloads no
            # more often than keeps that under PAGE_SHARE of the time.
            refresh = max(self._refresh, math.ceil(self._page_seconds / PAGE_SHARE))
            start = self._timer()
            page = self._render_page(self.status, Query.from_args(request.args or {}), refresh)
            self._page_seconds = self._timer() - start
            return page
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain")
        return b"not found: try /, /status or /metrics\n"


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


# -- the listings of each half, from the parts' accessors ---------------------


def _registrations(sip: Any, clock: Any, agents: Callable[[], dict[str, str]] | None, agent: str = "") -> Listing:
    now = clock.seconds()
    by_session = agents() if agents is not None else {}
    out = []
    for item in sip.registration_list():
        item = dict(item)
        item["expires_in"] = max(0, round(item.pop("expires") - now))
        item.setdefault("agent", by_session.get(item.get("session", ""), agent))
        out.append(item)
    out.sort(key=lambda r: (str(r.get("aor")), str(r.get("contact"))))
    return out


def _tunnels(protocols: Iterable[Any], clock: Any) -> Listing:
    # described when read: a page of them, or their round trips for the
    # metrics (TunnelItem), not every tunnel at every request
    now = clock.seconds()
    return sorted((TunnelItem(t, now) for t in list(protocols)), key=_by_key)


#: A L{TunnelItem}'s sort key (agent, source).
_by_key = operator.attrgetter("key")


#: Tunnels whose round trip a scrape samples at most: beyond, the next
#: ones at the next scrape, in turn (each costs a system call, and the
#: event loop waits for the scrape).
RTT_SAMPLE = 1000


def rtt_sampler(protocols: Iterable[Any], most: int = RTT_SAMPLE) -> Callable[[], list[float | None]]:
    """
    For L{Metrics.rtts}: at each call the round trips of at most C{most}
    of the connected C{protocols}, the next ones at the next call.
    """
    start = 0

    def rtts() -> list[float | None]:
        nonlocal start
        current = list(protocols)
        if len(current) > most:
            start %= len(current)
            chosen = current[start : start + most]
            chosen += current[: most - len(chosen)]
            start += most
            current = chosen
        return [tunnel_rtt(t) for t in current]

    return rtts


def add_media_lists(status: Status, media: Any) -> None:
    """
    The calls in progress and the last ended ones, from a
    L{spwm.media.manager.MediaManager}, whose answers and ends also feed
    the metrics' histograms; and a C{calls} section (C{in_progress}, and
    the C{--max-calls} C{limit} or C{None}).
    """
    status.add("calls", lambda: {"in_progress": media.calls, "limit": media.max_calls})
    status.add_list("calls", lambda: sorted(media.call_list(), key=lambda c: c["started"]))
    status.add_list("ended_calls", media.ended_calls)
    media.call_observers.append(status.metrics.call_event)


def add_contact_lists(status: Status, tunnels: Iterable[Any], sessions: Any, sip: Any, media: Any) -> None:
    """
    The contact point's listings: C{tunnels} (the connected tunnel
    protocols), C{sessions} (a L{spwm.session.manager.SessionManager}),
    C{registrations} (the SIP core's), C{calls}, C{ended_calls}.
    """
    clock = status.clock

    def agents() -> dict[str, str]:
        return {s["session"]: s["agent"] for s in sessions.session_list()}

    def session_list() -> Listing:
        # every connection of a session: the session logic knows the one
        # it was made or resumed on, the paths layer attaches the others
        peers: dict[str, list[str]] = {}
        for t in list(tunnels):
            sid = getattr(t, "session_id", None)
            if sid:
                peers.setdefault(str(sid), []).append(str(getattr(t, "peer", "?")))
        listed = sessions.session_list()
        for entry in listed:
            more = [p for p in peers.get(entry["session"], ()) if p not in entry["connections"]]
            entry["connections"] = entry["connections"] + more
        return sorted(listed, key=lambda s: (s["agent"], s["session"]))

    status.add_list("tunnels", lambda: _tunnels(tunnels, clock))
    status.metrics.rtts = rtt_sampler(tunnels)
    status.add_list("sessions", session_list)
    status.add_list("registrations", lambda: _registrations(sip, clock, agents))
    add_media_lists(status, media)


def add_agent_lists(status: Status, agent_id: str, tunnel: Callable[[], Any], sip: Any, media: Any) -> None:
    """
    The agent's listings: C{tunnels} (C{tunnel()}: the tunnel protocol
    while up, else C{None}; or a list of them, one per contact point),
    its phones' C{registrations}, C{calls}, C{ended_calls}.
    """
    clock = status.clock

    def tunnels() -> Listing:
        current = tunnel()
        if current is None:
            return []
        up = [t for t in current if t is not None] if isinstance(current, (list, tuple)) else [current]
        return _tunnels(up, clock)

    status.add_list("tunnels", tunnels)
    status.add_list("registrations", lambda: _registrations(sip, clock, None, agent_id))
    add_media_lists(status, media)
