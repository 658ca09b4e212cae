# -*- test-case-name: tests.test_cli -*-
"""
C{python3 -m spwm status [URL]} (also the C{spwm} script): the tunnels,
registrations and calls of a running half as tables in the terminal, from
the C{/status} JSON of its C{--status-listen}; C{spwm cdr}: call detail
records summed up; C{spwm compile}: the SIP parser built with mypyc
(L{spwm.compiled}).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Sequence, TextIO

__all__ = ["DEFAULT_URL", "main", "render", "table"]

#: Where the status listener of the examples and docs is
#: (C{--status-listen tcp:9090:interface=127.0.0.1}).
DEFAULT_URL = "http://127.0.0.1:9090/status"

#: The width a cell is cut to (the rest is "...").
MAX_CELL = 48


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.1f}"
    else:
        text = str(value)
    # one line per row, whatever the network put in the value
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 3] + "..."


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """
    Aligned columns: a header line, a rule, one line per row; numbers
    right-aligned.
    """
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))
        ).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _legs(call: dict[str, Any]) -> str:
    """
    A call's per-leg figures in a few words: C{lan 250p 3lost j4.5ms}.
    """
    parts = []
    for stream in call.get("streams") or ():
        quality = stream.get("quality") or {}
        for leg, figures in (quality.get("legs") or {}).items():
            if figures:
                text = f"{leg} {figures.get('packets', 0)}p {figures.get('lost', 0)}lost"
                if figures.get("jitter_ms") is not None:
                    text += f" j{figures['jitter_ms']:.1f}ms"
                if figures.get("transit_ms") is not None:
                    text += f" d{figures['transit_ms']:.1f}ms"
                parts.append(text)
        mos = quality.get("mos") or {}
        if mos.get("up") is not None or mos.get("down") is not None:
            parts.append(f"MOS {_cell(mos.get('up'))}/{_cell(mos.get('down'))}")
        if not quality:
            parts.append(f"{stream.get('packets_in', 0)} in {stream.get('packets_out', 0)} out")
    return "; ".join(parts) or "-"


def _switches(tunnel: dict[str, Any]) -> str | None:
    """
    A path's session's moves, C{media/carrier} (C{None}: not a path).
    """
    if tunnel.get("media_on") is None and tunnel.get("carrier_on") is None:
        return None
    return f"{tunnel.get('media_switches') or 0}/{tunnel.get('carrier_switches') or 0}"


_VIEWS: list[tuple[str, str, list[str], Callable[[dict[str, Any]], list[Any]]]] = [
    (
        "tunnels",
        "Tunnels",
        ["agent", "source", "tls", "cipher", "rtt ms", "queue", "uptime s", "media on", "switches"],
        lambda t: [
            t.get("agent"),
            t.get("source"),
            t.get("tls") or "plaintext",
            t.get("cipher"),
            t.get("rtt_ms"),
            (t.get("queue_signalling") or 0) + (t.get("queue_stream") or 0),
            t.get("uptime"),
            t.get("media_on"),
            _switches(t),
        ],
    ),
    (
        "sessions",
        "Sessions",
        ["session", "agent", "state", "connections", "users"],
        lambda s: [
            s.get("session"),
            s.get("agent"),
            s.get("state"),
            len(s.get("connections") or ()),
            s.get("users"),
        ],
    ),
    (
        "registrations",
        "Registrations",
        ["address-of-record", "contact", "agent", "expires s"],
        lambda r: [r.get("aor"), r.get("contact"), r.get("agent"), r.get("expires_in")],
    ),
    (
        "calls",
        "Calls",
        ["call-id", "from", "to", "agent", "state", "dur s", "codec", "quality"],
        lambda c: [
            c.get("call_id"),
            c.get("from"),
            c.get("to"),
            c.get("agent"),
            c.get("state"),
            c.get("duration"),
            c.get("codec"),
            _legs(c),
        ],
    ),
]


#: A C{loop.lag_ms_p90} this high is shown as a process short of CPU: the
#: contact point's own warning, L{spwm.looplag.WARN_LAG} (a copy: this
#: command reads a remote status document and imports no Twisted).
LATE_MS = 5.0


def render(doc: dict[str, Any]) -> str:
    """
    The terminal view of a C{/status} document.
    """
    side = "contact point" if doc.get("side") == "contact" else str(doc.get("side", "?"))
    out = [f"SPWM {side} {doc.get('version', '?')}, up {_cell(doc.get('uptime'))} s"]
    loop = doc.get("loop")
    if isinstance(loop, dict):
        p90 = loop.get("lag_ms_p90")
        late = isinstance(p90, (int, float)) and p90 >= LATE_MS
        out.append(
            f"Event loop: timers late p50 {_cell(loop.get('lag_ms_p50'))}, p90 {_cell(p90)},"
            f" max {_cell(loop.get('lag_ms_max'))} ms over the last 10 s"
            + ("; SHORT OF CPU: media and SIP wait as long (docs/operations.md, \"Capacity\")" if late else "")
        )
    from spwm.status import cdr_line, certificate_lines, connections_line, proxies_line, state_line, tunnel_lines

    out.extend(tunnel_lines(doc))
    connections = connections_line(doc)
    if connections is not None:
        out.append(connections)
    proxies = proxies_line(doc)
    if proxies is not None:
        out.append(proxies)
    out.extend(certificate_lines(doc))
    cdr = cdr_line(doc)
    if cdr is not None:
        out.append(cdr)
    state = state_line(doc)
    if state is not None:
        out.append(state)
    lists = doc.get("lists") or {}
    for name, title, headers, row in _VIEWS:
        page = lists.get(name)
        if page is None:
            continue
        items = page.get("items") or []
        shown = f" (first {len(items)} of {page.get('total')})" if len(items) < (page.get("total") or 0) else ""
        out.append("")
        out.append(f"{title}: {page.get('total', len(items))}{shown}")
        if items:
            out.append(table(headers, [row(i) for i in items]))
    return "\n".join(out) + "\n"


def _status_url(url: str) -> str:
    """
    A listener's URL with C{/status} when it names no path.
    """
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/status")
    return urllib.parse.urlunsplit(parts)


def _seconds(text: str) -> float:
    """
    C{--timeout}: a finite number of seconds greater than 0 (0 or less
    was a misleading 'does not answer' line).

    @raise argparse.ArgumentTypeError: naming the problem.
    """
    from spwm.config import positive_float

    try:
        return positive_float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count(text: str) -> int:
    """
    C{--limit}: a whole number of items, 0 or more.

    @raise argparse.ArgumentTypeError: naming the problem.
    """
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text!r}")
    return number


def fetch(url: str, timeout: float) -> dict[str, Any]:
    """
    @raise OSError: the URL does not answer, or not with a status document
        (the message says which, in one line).
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(64 * 1024 * 1024)
    except urllib.error.HTTPError as e:
        raise OSError(f"{url} answered {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise OSError(f"{url} does not answer: {getattr(e.reason, 'strerror', None) or e.reason}") from None
    except (OSError, ValueError) as e:
        raise OSError(f"{url} does not answer: {e}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise OSError(f"{url} did not answer with a status document (JSON)") from None
    if not isinstance(doc, dict) or "side" not in doc:
        raise OSError(f"{url} did not answer with a status document (no 'side')")
    return doc


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """
    The command line.

    @return: the exit status: 0, 1 when the URL does not answer (or the
        reader of the output went away: C{spwm status | head}), 2 for a
        usage error.
    """
    try:
        code = _main(argv, out, err)
        if out is None:
            # (what is buffered goes now, while a closed pipe is still ours
            # to catch)
            sys.stdout.flush()
        return code
    except BrokenPipeError:
        # no traceback, and none at exit either, when Python flushes
        # what is left for the closed pipe
        if out is None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv: Sequence[str] | None, out: TextIO | None, err: TextIO | None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = argparse.ArgumentParser(prog="spwm", description="SPWM tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser(
        "status", help="tunnels, registrations and calls of a running half (from its --status-listen)"
    )
    status.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"its /status URL (default {DEFAULT_URL})")
    status.add_argument("--timeout", type=_seconds, default=5.0, help="seconds to wait for the answer (default 5)")
    status.add_argument("--limit", type=_count, default=None, help="items per table (the listener's default 100)")
    status.add_argument("--json", action="store_true", help="print the JSON as received")
    cdr = commands.add_parser(
        "cdr", help="the call detail records of --cdr-file files summed up per agent, day or half"
    )
    cdr.add_argument("files", nargs="+", metavar="FILE", help="--cdr-file files (rotated .gz ones too)")
    cdr.add_argument("--by", choices=("agent", "day", "side"), default="agent", help="one row per (default agent)")
    cdr.add_argument("--since", default=None, help="only the legs that started this long ago or later: 3600, 30m, 24h, 7d")
    compile_ = commands.add_parser(
        "compile",
        help="build the modules of a call's work with mypyc (C) where spwm is installed, or --remove them",
    )
    what = compile_.add_mutually_exclusive_group()
    what.add_argument("--remove", action="store_true", help="remove the built modules (the source runs again)")
    what.add_argument("--check", action="store_true", help="say, for each module, whether it runs compiled")
    args, extra = parser.parse_known_args(argv)
    command = {"status": status, "cdr": cdr, "compile": compile_}[args.command]
    if extra:
        # (the command's own usage, not the top level's)
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "cdr":
        return _cdr(args, out, err)
    if args.command == "compile":
        return _compile(args, out, err)
    url = _status_url(args.url)
    try:
        urllib.parse.urlsplit(url).port
    except ValueError as e:
        status.error(f"{args.url}: {e}")
    if args.limit is not None:
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"limit": args.limit})
    try:
        doc = fetch(url, args.timeout)
    except OSError as e:
        print(f"spwm status: {e}", file=err)
        return 1
    out.write(json.dumps(doc, indent=1, sort_keys=True) + "\n" if args.json else render(doc))
    return 0


def _compile(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    C{spwm compile}: build, check or remove the compiled modules
    (L{spwm.compiled}).
    """
    from spwm import compiled

    where = compiled._package_dir()
    if args.check:
        for module, runs in compiled.status():
            print(f"{module}: {runs}", file=out)
        return 0
    if args.remove:
        try:
            removed = compiled.remove()
        except OSError as e:
            print(f"spwm compile: {e}", file=err)
            return 1
        print(f"removed {len(removed)} built files from {where}" if removed else f"nothing built in {where}", file=out)
        return 0
    try:
        compiled.check_tools()
        print(f"building {', '.join(compiled.MODULES)} in {where} (mypyc; about a minute and a half)", file=out)
        out.flush()
        made = compiled.build()
    except (compiled.BuildError, OSError) as e:
        print(f"spwm compile: {e}", file=err)
        return 1
    print(f"built {len(made)} files; each half runs them from its next start", file=out)
    return 0


def _cdr(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    C{spwm cdr}: the summary table of the files.
    """
    from spwm.cdrsummary import HEADERS, UnreadableFileError, parse_duration, read_records, summarize

    since = None
    if args.since is not None:
        try:
            since = time.time() - parse_duration(args.since)
        except ValueError as e:
            print(f"spwm cdr: --since: {e}", file=err)
            return 2
    skipped = [0]
    try:
        rows = summarize(read_records(args.files, skipped), args.by, since)
    except UnreadableFileError as e:
        print(f"spwm cdr: {e}", file=err)
        return 1
    headers = [h.format(by=args.by) for h in HEADERS]
    if rows:
        out.write(table(headers, rows) + "\n")
    else:
        out.write("no call legs" + (" in that time" if since is not None else "") + "\n")
    if skipped[0]:
        one = skipped[0] == 1
        out.write(f"({skipped[0]} {'line that is not a record' if one else 'lines that are not records'} skipped)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
