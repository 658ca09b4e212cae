"""
The SPWM demo: a whole call through both halves, on loopback, in one process.

One contact point with the embedded registrar (TLS, with a throw-away CA and
certificate made at start in a temporary directory), two agents that trust
that CA, and two built-in phones: alice behind agent 1 and bob behind
agent 2. Both register, alice calls bob, bob answers, audio-sized RTP flows
both ways for a few seconds through both tunnels, alice hangs up. Then the
demo prints what crossed each half and exits 0 only if all of it worked:
registration, call set-up, RTP both ways with loss under 1 %, BYE answered,
no media socket or channel left open on any half.

    python examples/demo.py [--seconds 5] [--timeout 60] [--verbose]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    formatEvent,
    textFileLogObserver,
)

_HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import spwm  # noqa: F401  (installed with pip install .)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(_HERE))

from spwm.tap import agent, contact  # noqa: E402
from spwm.tap.assembly import build_agent, build_contact  # noqa: E402
from spwm.testing.certs import TestCA  # noqa: E402
from spwm.testing.phone import Call, Phone  # noqa: E402
from spwm.testing.ports import free_port  # noqa: E402

#: The SIP domain of the embedded registrar in the demo.
DOMAIN = "demo.spwm.test"

#: The name in the contact point's certificate (agents check it).
SERVER_NAME = "contact.spwm.test"

#: Highest loss (fraction) that still counts as working audio.
MAX_LOSS = 0.01


class DemoFailed(Exception):
    """
    One step of the demo did not work; the message says which and why.
    """


class SipTap:
    """
    Counts the SIP messages of one half that cross the tunnel, both ways,
    by method or status code: the half's C{sip_observer}
    (L{spwm.embed.build_agent}), told of every message as it is on the
    wire.

    @ivar into_tunnel: messages this half sent into a tunnel.
    @ivar out_of_tunnel: messages that came out of a tunnel to this half.
    """

    def __init__(self) -> None:
        self.into_tunnel: dict[str, int] = {}
        self.out_of_tunnel: dict[str, int] = {}

    @staticmethod
    def _summary(data: bytes) -> str:
        first = data.split(b"\r\n", 1)[0].decode("utf-8", "replace").split(" ")
        if first[0] == "SIP/2.0" and len(first) > 1:
            return first[1]
        return first[0] if first else "?"

    def __call__(self, direction: str, peer: str, data: bytes) -> None:
        if not peer.startswith("tunnel"):
            return
        table = self.into_tunnel if direction == "sent to" else self.out_of_tunnel
        key = self._summary(data)
        table[key] = table.get(key, 0) + 1


def media_ranges(count: int, size: int = 64) -> list[tuple[int, int]]:
    """
    C{count} disjoint even-aligned port ranges of C{size} ports, at a random
    place between 20000 and 32000 (below Linux's ephemeral range, so the
    phones' and the kernel's own ports rarely land inside). A taken port is
    skipped by the media manager.
    """
    base = random.randrange(20000, 32000 - count * size, 2)
    return [(base + i * size, base + (i + 1) * size - 1) for i in range(count)]


def fmt_counts(counts: dict[str, int]) -> str:
    """
    C{REGISTER 1, INVITE 1, 100 1, ...} in a stable order (requests first).
    """
    order = ["REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS"]
    keys = sorted(counts, key=lambda k: (k.isdigit(), order.index(k) if k in order else 99, k))
    return ", ".join(f"{k} {counts[k]}" for k in keys) or "-"


def table(rows: list[list[str]], header: list[str]) -> str:
    """
    A plain text table with left-aligned columns.
    """
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f} ms"


class Demo:
    """
    The demo's state: services, phones, checks and the report.
    """

    def __init__(self, reactor: Any, seconds: float, verbose: bool, one_agent: bool = False) -> None:
        self.reactor = reactor
        self.one_agent = one_agent
        self.seconds = seconds
        self.verbose = verbose
        self.step = "starting"
        self.checks: list[tuple[str, bool, str]] = []
        self.warnings: list[str] = []
        self.directory = tempfile.mkdtemp(prefix="spwm-demo-")
        self.contact: Any = None
        self.agents: list[Any] = []
        self.taps: dict[str, SipTap] = {}
        self.phones: list[Phone] = []
        self.calls: dict[str, Call] = {}
        self.stopped: list[str] = []
        self.tunnel_rows: list[list[str]] = []
        self.relay_rows: list[list[str]] = []

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        """
        Record one check; a failed check stops the demo.
        """
        self.checks.append((name, ok, detail))
        if not ok:
            raise DemoFailed(f"{name}: {detail}")

    def log_observer(self, event: dict) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.warn:
            text = formatEvent(event)
            if event.get("log_failure") is not None:
                text += "\n" + event["log_failure"].getTraceback()
            self.warnings.append(f"[{event.get('log_namespace', '?')}] {text}")

    @defer.inlineCallbacks
    def wait_until(self, what: str, predicate: Any, timeout: float) -> Any:
        """
        Poll C{predicate} every 20 ms; fail with C{what} after C{timeout} s.
        """
        deadline = self.reactor.seconds() + timeout
        while not predicate():
            if self.reactor.seconds() > deadline:
                raise DemoFailed(f"{what}: not within {timeout:g} s")
            yield task.deferLater(self.reactor, 0.02, lambda: None)

    def within(self, d: defer.Deferred, seconds: float, what: str) -> defer.Deferred:
        """
        C{d}, failing with L{DemoFailed} if it has no result after C{seconds}.
        """
        def timed_out(d: defer.Deferred, timeout: float) -> None:
            raise DemoFailed(f"{what}: no answer within {timeout:g} s")

        d.addTimeout(seconds, self.reactor)
        d.addErrback(lambda f: f.trap(defer.TimeoutError) and timed_out(d, seconds))
        return d

    # --- assembling the halves -----------------------------------------------

    @defer.inlineCallbacks
    def start_halves(self) -> Any:
        self.step = "making a throw-away CA and certificate"
        ca = TestCA(os.path.join(self.directory, "ca"), "SPWM demo CA (throw-away)")
        cert = ca.issue([SERVER_NAME, "127.0.0.1"], "contact")
        contact_media, media1, media2 = media_ranges(3)

        self.step = "starting the contact point"
        options = contact.Options()
        options.parseOptions(
            [
                "--listen", "tcp:0:interface=127.0.0.1",
                "--cert", cert.cert,
                "--key", cert.key,
                "--sip-address", f"127.0.0.1:{free_port()}",
                "--media-ports", f"{contact_media[0]}-{contact_media[1]}",
                # both agents' calls meet at this contact point on loopback;
                # loopback media is refused unless allowed by name
                "--media-allow", "127.0.0.0/8",
                "--drain-time", "0.5",
            ]
        )
        self.taps["contact"] = tap = SipTap()
        self.contact = build_contact(options.config, self.reactor, sip_observer=tap)
        self.contact.service.startService()
        listening = yield self.within(self.contact.listener.listening, 10, "the contact point's tunnel listener")
        tunnel_port = listening.getHost().port

        self.step = "starting the agents"
        for name, media in (("agent1", media1), ("agent2", media2)):
            options = agent.Options()
            options.parseOptions(
                [
                    "--contact", f"127.0.0.1:{tunnel_port}",
                    "--server-name", SERVER_NAME,
                    "--ca", ca.ca_file,
                    "--agent-id", f"demo-{name}",
                    "--sip-listen", f"127.0.0.1:{free_port()}",
                    "--media-ports", f"{media[0]}-{media[1]}",
                    "--reconnect-max", "1",
                ]
            )
            self.taps[name] = tap = SipTap()
            service = build_agent(options.config, self.reactor, sip_observer=tap)
            service.service.startService()
            self.agents.append(service)

        self.step = "waiting for both tunnels (TLS, checked against the throw-away CA)"
        yield self.wait_until(
            "both agents' tunnels to the contact point",
            # each agent keeps --tunnel-connections of them (two by default)
            lambda: all(a.tunnel_service.tunnel is not None for a in self.agents)
            and len(self.contact.factory.tunnels) == sum(a.config.paths_wanted for a in self.agents),
            10,
        )
        tls = [a.tunnel_service.tunnel.transport.negotiatedProtocol for a in self.agents]
        self.check("tunnels up over TLS", all(p == b"spwm/1" for p in tls), f"ALPN {tls}")

    # --- the call ---------------------------------------------------------------

    @defer.inlineCallbacks
    def run_call(self) -> Any:
        alice = Phone(self.reactor, "alice", DOMAIN, self.agents[0].config.sip_listen[0])
        bob_agent = self.agents[0] if self.one_agent else self.agents[1]
        bob = Phone(self.reactor, "bob", DOMAIN, bob_agent.config.sip_listen[0])
        self.phones = [alice, bob]
        answered: defer.Deferred[Call] = defer.Deferred()
        bob.on_incoming = lambda call: answered.called or answered.callback(call)
        for phone in self.phones:
            phone.start()

        for phone in self.phones:
            self.step = f"{phone.name} registers through her agent" if phone is alice else "bob registers through his agent"
            response = yield self.within(phone.register(), 10, f"REGISTER of {phone.name}")
            self.check(f"{phone.name} registered", response.status == 200, f"REGISTER answered {response.status} {response.reason}")

        self.step = "alice calls bob"
        call = yield self.within(alice.call("bob"), 10, "INVITE from alice to bob")
        self.calls["alice"] = call
        self.check("call set up", call.remote_media is not None, "no SDP answer")
        bob_call = yield self.within(answered, 5, "bob's phone getting the INVITE")
        self.calls["bob"] = bob_call
        self.step = "bob waits for alice's ACK"
        yield self.within(bob_call.established, 5, "ACK from alice reaching bob")
        self.check("ACK reached bob", True)
        self.check(
            "SDP rewritten by the relay",
            call.remote_media[1] != bob_call.local_port and bob_call.remote_media[1] != call.local_port,
            f"alice sends to {call.remote_media}, bob's RTP port is {bob_call.local_port}: media would bypass SPWM",
        )

        self.step = f"RTP both ways for {self.seconds:g} s"
        call.start_media()
        bob_call.start_media()
        yield task.deferLater(self.reactor, self.seconds, lambda: None)
        call.stop_media()
        bob_call.stop_media()
        self.step = "letting the last RTP packets arrive"
        yield task.deferLater(self.reactor, 0.3, lambda: None)

        self.snapshot_relays(call.call_id)
        self.snapshot_tunnels()
        for half, phone_call in ((self.agents[0], call), (bob_agent, bob_call)):
            if self.one_agent and phone_call is bob_call:
                continue
            stats = half.tunnel_service.tunnel.connection.stats
            self.check(
                f"RTP through the tunnel of {half.config.agent_id.removeprefix('demo-')}",
                stats.datagrams_out >= phone_call.sent and stats.datagrams_in >= phone_call.rx.unique,
                f"the tunnel carried {stats.datagrams_out} datagrams out and {stats.datagrams_in} in,"
                f" the phone sent {phone_call.sent} and received {phone_call.rx.unique}",
            )

        self.step = "alice hangs up"
        response = yield self.within(alice.hang_up(call), 10, "BYE from alice")
        self.check("BYE answered", response.status == 200, f"BYE answered {response.status} {response.reason}")
        yield self.within(bob_call.ended, 2, "bob seeing the BYE")

        self.step = "checking the RTP each phone received"

        for name, sender, receiver in (("alice -> bob", call, bob_call), ("bob -> alice", bob_call, call)):
            self.check(
                f"RTP {name}: no echo",
                receiver.rx.echoed == 0,
                f"the receiver got {receiver.rx.echoed} of its own packets back (its own SSRC): the relay"
                " crossed the two legs of the call",
            )
            received = receiver.rx.unique
            sent = sender.sent
            loss = 1 - received / sent if sent else 1.0
            self.check(
                f"RTP {name}",
                sent > 0 and received > 0 and loss < MAX_LOSS,
                f"sent {sent}, received {received} ({loss:.1%} lost, at most {MAX_LOSS:.0%} allowed)",
            )

        self.step = "waiting for every half to release its media"
        halves = [("contact point", self.contact), *[(a.config.agent_id.removeprefix("demo-"), a) for a in self.agents]]
        try:
            yield self.wait_until(
                "media released",
                lambda: all(h.media.open_sockets == 0 and h.media.open_channels == 0 for _, h in halves),
                3,
            )
        except DemoFailed:
            pass
        for name, half in halves:
            self.check(
                f"{name}: no media left",
                half.media.open_sockets == 0 and half.media.open_channels == 0 and half.media.ports_in_use == 0,
                f"{half.media.open_sockets} sockets, {half.media.open_channels} channels,"
                f" {half.media.ports_in_use} port pairs still open 3 s after the BYE",
            )

    def halves(self) -> list[tuple[str, Any, list[Any]]]:
        """
        C{(name, service, tunnels)} for agent 1, the contact point, agent 2.
        """
        out = []
        for name, half in (("agent 1", self.agents[0] if self.agents else None), ("contact point", self.contact),
                           ("agent 2", self.agents[1] if len(self.agents) > 1 else None)):
            if half is None:
                continue
            if half is self.contact:
                tunnels = sorted(half.factory.tunnels, key=lambda t: str(getattr(t, "agent_id", "")))
            else:
                front = half.paths.front if half.paths is not None else None
                tunnel = half.tunnel_service.tunnel
                tunnels = front.paths if front is not None else [] if tunnel is None else [tunnel]
            out.append((name, half, tunnels))
        return out

    def snapshot_tunnels(self) -> None:
        """
        Keep each tunnel end's counters for the report (tunnels close on stop).
        """
        self.tunnel_rows = []
        for name, half, tunnels in self.halves():
            for tunnel in tunnels:
                stats = tunnel.connection.stats
                label = name if half is not self.contact else f"{name} (from {tunnel.agent_id})"
                self.tunnel_rows.append(self._stats_row(label, stats))

    def snapshot_relays(self, call_id: str) -> None:
        """
        Keep the counters of the call's relay sockets on every half (they are
        released at the BYE).
        """
        self.relay_rows = []
        for name, half, tunnels in self.halves():
            # one row per session (an agent's connections share theirs)
            sessions = {t.session_id: t for t in reversed(tunnels)}
            for tunnel, key in [
                (t, k) for t in sessions.values() for k in half.media.dialog_keys(t.session_id) if k.endswith("/" + call_id)
            ]:
                rtp, _ = half.media.stream_endpoints(tunnel.session_id, key, 0)
                if rtp is None:
                    continue
                label = name if half is not self.contact else f"{name} (leg of {tunnel.agent_id}, flow {key.split('/')[0]})"
                c = rtp.counters()
                self.relay_rows.append(
                    [label, str(rtp.port.getHost().port if rtp.port else "-"), str(c.get("packets_in")), str(c.get("packets_out")),
                     str(c.get("dropped_source")), str(c.get("dropped_no_channel")), str(c.get("dropped_no_target")),
                     str(c.get("latches"))]
                )

    # --- the report ---------------------------------------------------------------

    def report(self) -> str:
        out: list[str] = []
        out.append("SIP messages that crossed each half (by method or status):")
        rows = []
        labels = {
            "agent1": ("agent 1 (alice)", "phone -> tunnel", "tunnel -> phone"),
            "contact": ("contact point", "-> tunnels", "tunnels ->"),
            "agent2": ("agent 2 (bob)", "phone -> tunnel", "tunnel -> phone"),
        }
        for key in ("agent1", "contact", "agent2"):
            tap = self.taps.get(key)
            if tap is None:
                continue
            name, into, outof = labels[key]
            if key == "agent2" and self.one_agent:
                name = "agent 2 (idle)"
            if key == "agent1" and self.one_agent:
                name = "agent 1 (alice, bob)"
            rows.append([name, into, str(sum(tap.into_tunnel.values())), fmt_counts(tap.into_tunnel)])
            rows.append(["", outof, str(sum(tap.out_of_tunnel.values())), fmt_counts(tap.out_of_tunnel)])
        out.append(table(rows, ["half", "direction", "total", "messages"]))

        if self.calls:
            out.append("")
            out.append("RTP per phone (172-byte packets, 50 per second):")
            rows = []
            peers = {"alice": "bob", "bob": "alice"}
            for name in ("alice", "bob"):
                call = self.calls.get(name)
                peer = self.calls.get(peers[name])
                if call is None:
                    continue
                sent_by_peer = peer.sent if peer is not None else 0
                lost = sent_by_peer - call.rx.unique
                loss = f"{lost} ({lost / sent_by_peer:.2%})" if sent_by_peer else "-"
                rows.append(
                    [name, str(call.sent), str(call.rx.unique), str(call.rx.duplicates), str(call.rx.echoed), loss,
                     ms(call.rx.percentile(0.5)), ms(call.rx.percentile(0.99)), ms(max(call.rx.latencies, default=None))]
                )
            out.append(table(rows, ["phone", "sent", "received", "dup", "echoed", "lost", "p50", "p99", "max"]))

        if self.tunnel_rows:
            out.append("")
            out.append("Tunnels, just before the BYE (each end's own counters; 'in' is what arrived at that end):")
            out.append(table(self.tunnel_rows, ["end", "frames in", "frames out", "bytes in", "bytes out",
                                                "datagrams in", "datagrams out", "media dropped"]))
        if self.relay_rows:
            out.append("")
            out.append("Media relay sockets of the call, just before the BYE (RTP, towards each half's own side):")
            out.append(table(self.relay_rows, ["half", "port", "packets in", "packets out", "dropped source",
                                               "dropped no channel", "dropped no target", "latches"]))

        rows = []
        for name, half in [("agent 1", self.agents[0] if self.agents else None), ("contact point", self.contact),
                           ("agent 2", self.agents[1] if len(self.agents) > 1 else None)]:
            if half is None:
                continue
            media = half.media
            rows.append([name, str(media.open_sockets), str(media.open_channels), str(media.streams), str(media.ports_in_use),
                         str(media.dropped_unknown_channel), str(media.refused_channels), str(media.rejected_streams)])
        if rows:
            out.append("")
            out.append("Media manager of each half, at the end:")
            out.append(table(rows, ["half", "sockets", "channels", "streams", "port pairs", "unknown channel", "refused", "rejected"]))

        if self.checks:
            out.append("")
            out.append("Checks:")
            for name, ok, detail in self.checks:
                out.append(f"  [{'ok' if ok else 'FAILED'}] {name}" + ("" if ok or not detail else f": {detail}"))
        return "\n".join(out)

    @staticmethod
    def _stats_row(name: str, stats: Any) -> list[str]:
        return [name, str(stats.frames_in), str(stats.frames_out), str(stats.bytes_in), str(stats.bytes_out),
                str(stats.datagrams_in), str(stats.datagrams_out), str(stats.media_dropped_stale + stats.media_dropped_overflow)]

    # --- tearing down -------------------------------------------------------------

    @defer.inlineCallbacks
    def stop(self) -> Any:
        for phone in self.phones:
            try:
                yield phone.stop()
            except Exception as e:  # pragma: no cover - best effort
                self.stopped.append(f"{phone.name}: {e}")
        for service in [*self.agents, self.contact]:
            if service is not None and service.service.running:
                try:
                    yield self.within(defer.maybeDeferred(service.service.stopService), 5, "stopping a service")
                except Exception as e:
                    self.stopped.append(str(e))
        shutil.rmtree(self.directory, ignore_errors=True)


@defer.inlineCallbacks
def run(reactor: Any, argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description="SPWM demo: two phones, two agents and a contact point on loopback.")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long RTP flows (default 5)")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds in all (default 60)")
    parser.add_argument("--verbose", action="store_true", help="print SPWM's log on stderr")
    parser.add_argument("--one-agent", action="store_true",
                        help="put bob behind agent 1 too (a call that hairpins through one tunnel)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.timeout <= args.seconds:
        parser.error("--seconds must be > 0 and --timeout greater than --seconds")

    demo = Demo(reactor, args.seconds, args.verbose, one_agent=args.one_agent)
    observers = [demo.log_observer]
    if args.verbose:
        observers.append(FilteringLogObserver(textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.info)]))
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)

    print(f"SPWM demo: contact point + 2 agents + 2 phones on loopback, {args.seconds:g} s of audio each way")
    started = time.monotonic()
    failure: str | None = None
    work = defer.maybeDeferred(lambda: _work(demo))
    work.addTimeout(args.timeout, reactor)
    try:
        yield work
    except defer.TimeoutError:
        failure = f"global timeout: the demo did not finish within {args.timeout:g} s (stuck at: {demo.step})"
    except DemoFailed as e:
        failure = f"{e} (at: {demo.step})"
    except Exception as e:
        failure = f"unexpected {type(e).__name__}: {e} (at: {demo.step})"
    try:
        yield defer.maybeDeferred(demo.stop).addTimeout(10, reactor)
    except Exception as e:
        demo.stopped.append(f"stopping took too long: {e}")

    print()
    print(demo.report())
    for phone in demo.phones:
        for error in phone.errors:
            print(f"  {phone.name}: {error}")
    print()
    if demo.warnings:
        print(f"Warnings logged by SPWM ({len(demo.warnings)}):")
        for text in demo.warnings[:20]:
            print("  " + text.replace("\n", "\n    "))
        print()
    if demo.stopped:
        print("While stopping: " + "; ".join(demo.stopped))
    took = time.monotonic() - started
    if failure is None:
        print(f"DEMO OK in {took:.1f} s: registration, call set-up, RTP both ways, BYE and clean release all worked.")
        return 0
    print(f"DEMO FAILED after {took:.1f} s: {failure}")
    return 1


@defer.inlineCallbacks
def _work(demo: Demo) -> Any:
    yield demo.start_halves()
    yield demo.run_call()


def main(argv: list[str] | None = None) -> None:
    """
    Run the demo under the global reactor and exit with its status.
    """

    def go(reactor: Any) -> defer.Deferred:
        return run(reactor, argv).addCallback(_exit_code)

    task.react(go)




def _exit_code(code: int) -> None:
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
