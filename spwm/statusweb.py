# -*- test-case-name: tests.test_status_lists -*-
"""
The status listener's web page (C{/}): tunnels, sessions, registrations,
calls in progress with their quality per leg, and the last ended calls,
as plain HTML that reloads itself (C{<meta http-equiv="refresh">}).

Built on the server from the same listings as C{/status}; every value is
escaped (agent ids and SIP URIs come from the network), and the page runs
no script: it is served with a content security policy that allows none.
"""

from __future__ import annotations

import datetime
import html
from typing import Any, Callable, Iterable
from urllib.parse import urlencode

from spwm.status import (
    Query,
    Status,
    cdr_line,
    certificate_lines,
    connections_line,
    proxies_line,
    state_line,
    summary,
    tunnel_lines,
)
from spwm.sip.ringing import told_text

__all__ = ["CONTENT_SECURITY_POLICY", "REFRESH", "render_page"]

#: Seconds between the page's reloads.
REFRESH = 5

#: No script, no outside resources: only the page's own style and forms.
CONTENT_SECURITY_POLICY = b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #eee; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.legs td, table.legs th { border: none; padding: 0 4px; }
.bad { color: #b00; font-weight: bold; } .muted { color: #777; }
"""

_LEGS = ("lan", "tunnel", "operator")


def _e(value: Any) -> str:
    """
    Text for the page: escaped, C{None} as a dash.
    """
    if value is None:
        return "\u2013"
    return html.escape(str(value), quote=True)


def _clock(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "\u2013"
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: Any, digits: int = 1) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _e(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(table_id: str, headers: Iterable[str], rows: list[list[str]], empty: str) -> str:
    """
    A table of cells (already HTML), or a line saying there is nothing.
    """
    if not rows:
        return f'<p id="{table_id}" class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _td(value: Any, numeric: bool = False) -> str:
    return f'<td class="n">{_num(value)}</td>' if numeric else f"<td>{_e(value)}</td>"


def _legs(streams: list[dict[str, Any]]) -> str:
    """
    Per stream and leg: packets, lost, jitter, transit delay, late drops;
    the E-model estimate per direction.
    """
    parts = []
    for stream in streams:
        quality = stream.get("quality")
        if not quality:
            parts.append(
                f'<div class="muted">stream {_e(stream.get("index"))} {_e(stream.get("media"))}: '
                f'{_num(stream.get("packets_in"))} in, {_num(stream.get("packets_out"))} out '
                "(no quality figures)</div>"
            )
            continue
        rows = []
        for leg in _LEGS:
            figures = (quality.get("legs") or {}).get(leg)
            if not figures:
                continue
            lost = figures.get("lost")
            lost_cell = f'<td class="n{" bad" if isinstance(lost, (int, float)) and lost > 0 else ""}">{_num(lost)}</td>'
            rows.append(
                f"<tr><th>{_e(leg)}</th><td class=\"n\">{_num(figures.get('packets'))}</td>{lost_cell}"
                f"<td class=\"n\">{_num(figures.get('jitter_ms'))}</td>"
                f"<td class=\"n\">{_num(figures.get('transit_ms'))}</td>"
                f"<td class=\"n\">{_num(figures.get('late_dropped'))}</td></tr>"
            )
        mos = quality.get("mos") or {}
        parts.append(
            f'<div class="stream">stream {_e(stream.get("index"))} {_e(stream.get("media"))}'
            f' {_e(quality.get("codec") or "")} MOS up {_num(mos.get("up"), 2)} down {_num(mos.get("down"), 2)}'
            '<table class="legs"><tr><th>leg</th><th>packets</th><th>lost</th><th>jitter ms</th>'
            f'<th>transit ms</th><th>late</th></tr>{"".join(rows)}</table></div>'
        )
    return "".join(parts) or '<span class="muted">no media</span>'


def _calls(items: list[dict[str, Any]], ended: bool) -> list[list[str]]:
    rows = []
    for call in items:
        cells = [
            f'<td class="call-id" data-call="{_e(call.get("call"))}">{_e(call.get("call_id"))}</td>',
            _td(call.get("from")),
            _td(call.get("to")),
            _td(call.get("agent")),
            _td(_clock(call.get("started"))),
            _td(call.get("duration"), numeric=True),
            _td(call.get("state")),
            _td(None if not isinstance(call.get("setup_s"), (int, float)) else round(call["setup_s"] * 1000), numeric=True),
            _td(call.get("codec")),
        ]
        if ended:
            told = call.get("bye_sent") or []
            reason = call.get("reason")
            if told and isinstance(told, list):
                reason = f"{reason}: {told_text(told)}"
            cells.append(_td(reason))
        cells.append(f"<td>{_legs(call.get('streams') or [])}</td>")
        rows.append(cells)
    return rows


_SECTIONS: list[tuple[str, str, list[str], Callable[[list[dict[str, Any]]], list[list[str]]]]] = [
    (
        "tunnels",
        "Tunnels",
        ["agent", "source", "TLS", "cipher", "RTT ms", "signalling queue", "stream queue", "uptime s", "media on"],
        lambda items: [
            [
                _td(t.get("agent")),
                _td(t.get("source")),
                _td(t.get("tls") or "plaintext"),
                _td(t.get("cipher")),
                _td(t.get("rtt_ms"), numeric=True),
                _td(t.get("queue_signalling"), numeric=True),
                _td(t.get("queue_stream"), numeric=True),
                _td(t.get("uptime"), numeric=True),
                _td(t.get("media_on") or "–"),
            ]
            for t in items
        ],
    ),
    (
        "sessions",
        "Sessions",
        ["session", "agent", "state", "connections", "users with keys"],
        lambda items: [
            [
                _td(s.get("session")),
                _td(s.get("agent")),
                _td(s.get("state")),
                _td(", ".join(str(c) for c in s.get("connections") or ())),
                _td(s.get("users"), numeric=True),
            ]
            for s in items
        ],
    ),
    (
        "registrations",
        "Registrations",
        ["address-of-record", "contact", "agent", "phone (agent) or session", "expires in s"],
        lambda items: [
            [
                _td(r.get("aor")),
                _td(r.get("contact")),
                _td(r.get("agent")),
                _td(r.get("phone") or r.get("session")),
                _td(r.get("expires_in"), numeric=True),
            ]
            for r in items
        ],
    ),
]

_CALL_HEADERS = ["Call-ID", "from", "to", "agent", "started (UTC)", "duration s", "state", "set-up ms", "codec"]


def _section(title: str, page: dict[str, Any], table: str, query: Query, name: str) -> str:
    total = page["total"]
    shown = len(page["items"])
    more = ""
    if shown < total:
        args = dict(query.filters)
        nav = []
        if query.offset > 0:
            args.update(offset=str(max(0, query.offset - query.limit)), limit=str(query.limit))
            nav.append(f'<a href="?{_e(urlencode(args))}">previous</a>')
        if query.offset + shown < total:
            args.update(offset=str(query.offset + query.limit), limit=str(query.limit))
            nav.append(f'<a href="?{_e(urlencode(args))}">next</a>')
        more = f' <span class="muted">{query.offset + 1}\u2013{query.offset + shown} of {total}</span> ' + " ".join(nav)
    return f'<h2 id="{name}-title">{_e(title)} ({total}){more}</h2>{table}'


def render_page(status: Status, query: Query, refresh: int = REFRESH) -> bytes:
    """
    The page of a half's status, filtered and paged by C{query} (each
    listing alike), reloading itself every C{refresh} seconds.
    """
    doc = status.document()
    lists = status.lists(query)
    side = "contact point" if status.side == "contact" else "agent"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{refresh}">',
        f"<title>SPWM {_e(side)}: status</title><style>{_STYLE}</style></head><body>",
        f"<h1>SPWM {_e(side)}</h1>",
        f'<p>version {_e(doc.get("version"))}, up {_num(doc.get("uptime"), 0)} s;'
        f' refreshes every {refresh} s. <span class="muted">{_e(summary(doc))}</span></p>',
    ]
    proxies = proxies_line(doc)
    if proxies is not None:
        parts.append(f'<p class="proxies">{_e(proxies)}</p>')
    for tunnel in tunnel_lines(doc):
        parts.append(f'<p class="tunnel">{_e(tunnel)}</p>')
    connections = connections_line(doc)
    if connections is not None:
        parts.append(f'<p class="tunnel">{_e(connections)}</p>')
    for certificate in certificate_lines(doc):
        parts.append(f'<p class="certificate">{_e(certificate)}</p>')
    cdr = cdr_line(doc)
    if cdr is not None:
        parts.append(f'<p class="cdr">{_e(cdr)}</p>')
    state = state_line(doc)
    if state is not None:
        parts.append(f'<p class="cdr">{_e(state)}</p>')
    parts += [
        '<form method="get" action="/">',
    ]
    for name in ("agent", "aor", "state"):
        value = dict(query.filters).get(name, "")
        parts.append(f'<label>{name} <input name="{name}" value="{_e(value)}" size="16"></label> ')
    parts.append(
        '<button type="submit">filter</button> <a href="/">all</a>'
        ' \u00b7 <a href="/status">JSON</a> \u00b7 <a href="/metrics">metrics</a></form>'
    )
    for name, title, headers, rows in _SECTIONS:
        page = lists.get(name)
        if page is None:
            continue
        table = _table(name, headers, rows(page["items"]), f"no {title.lower()}")
        parts.append(_section(title, page, table, query, name))
    for name, title, ended in (("calls", "Calls in progress", False), ("ended_calls", "Ended calls", True)):
        page = lists.get(name)
        if page is None:
            continue
        headers = _CALL_HEADERS + (["reason"] if ended else []) + ["streams: quality per leg"]
        table = _table(name.replace("_", "-"), headers, _calls(page["items"], ended), f"no {title.lower()}")
        parts.append(_section(title, page, table, query, name))
    parts.append("</body></html>\n")
    return "".join(parts).encode("utf-8")
