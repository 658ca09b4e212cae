# -*- test-case-name: tests.e2e.test_baseline -*-
"""
The end-to-end network test bed: Linux network namespaces that model a LAN
behind a NAT router with a stateful firewall, the public side, and an
operator network behind a gateway, with real Kamailio and SIPp in them.

Everything here runs external programs (C{ip}, C{nft}, C{kamailio},
C{sipp}, C{python3}) with bounded timeouts; nothing uses the reactor.  See
C{docs/testing.md} for the picture and the addresses.

Topology (one per test; creation and removal take well under a second)::

    lan  192.0.2.0/24      phones .20-.23, agent .10         gw .1 = rtr
    rtr  NAT + firewall    192.0.2.1 | 198.51.100.2
    gw   operator gateway  198.51.100.10 | 203.0.113.1
                           DNAT tcp/443, udp/443 -> contact point 203.0.113.10
                           (open_operator: routes udp+tcp/5060 to Kamailio
                            and udp to the UAS)
    op   203.0.113.0/24    contact .10, Kamailio .20, SIPp UAS .30, echo .40

With C{wan=PROFILE} a namespace C{wan} sits on the rtr-gw link and runs the
user-space WAN emulator (L{spwm.testing.impair}) between its two ends.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from attrs import Factory, define, field, frozen

from twisted.trial.unittest import SynchronousTestCase

from spwm.testing.required import unavailable
from spwm.testing.sipp import last_stats as _read_stats

DATA = Path(__file__).resolve().parent / "data"
"""The directory of the Kamailio configuration and the SIPp scenarios."""

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout's root: put on C{PYTHONPATH} so twistd finds our plugins."""

# -- addresses ---------------------------------------------------------------

LAN_NET = "192.0.2.0/24"
ROUTER_LAN = "192.0.2.1"
AGENT = "192.0.2.10"
PHONES = ("192.0.2.20", "192.0.2.21", "192.0.2.22", "192.0.2.23")
PHONE = PHONES[0]

PUBLIC_NET = "198.51.100.0/24"
ROUTER_PUBLIC = "198.51.100.2"
GATEWAY_PUBLIC = "198.51.100.10"

OPERATOR_NET = "203.0.113.0/24"
GATEWAY_OPERATOR = "203.0.113.1"
CONTACT = "203.0.113.10"
KAMAILIO = "203.0.113.20"
UAS = "203.0.113.30"
ECHO = "203.0.113.40"

SIP_DOMAIN = "example.test"
USERS = {
    name: "secret-" + name
    for name in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
}
"""The test users known to Kamailio, with their digest passwords."""

POLICIES = ("open", "normal", "strict")
"""The router's egress policies: C{open} lets out anything; C{normal} what
most managed networks let out: web and QUIC (TCP 80 and 443, UDP 443), DNS
(UDP and TCP 53) and NTP (UDP 123); C{strict} only new TCP connections to
port 443, and never UDP (also not the packets of a UDP flow let out before
the router turned C{strict}: a network change that blocks UDP mid-call)."""

NORMAL_TCP_PORTS = (53, 80, 443)
"""The TCP destination ports the C{normal} policy lets out."""

NORMAL_UDP_PORTS = (53, 123, 443)
"""The UDP destination ports the C{normal} policy lets out."""

# namespace roles and the addresses each one owns
_ROLE_ADDRESSES: Mapping[str, tuple[str, ...]] = {
    "lan": (AGENT, *PHONES),
    "rtr": (),
    "gw": (),
    "op": (CONTACT, KAMAILIO, UAS, ECHO),
}

PHONE_HOST = "192.0.2.130"
"""A phone on a host of its own (namespace role C{ph}, see
L{Topology.add_phone_host}): the real SIP clients run there, so that their
source address is theirs and not one of the agent's."""

PHONE_HOST_GATEWAY = "192.0.2.129"
"""The LAN namespace's address on the link to the phone host."""

PHONE_SECOND_ADDRESS = "198.51.100.99"
"""The phone host's second interface (C{wlan0}): nothing routes there, so a
phone that names it in its SDP can only be answered at its source address."""

COMMAND_TIMEOUT = 10.0
"""Upper bound in seconds for every short command (ip, nft, ...)."""


class NetbedError(Exception):
    """
    The test bed could not do what was asked (a command failed or a wait
    ran out).  The message names the command and quotes its output.
    """


# -- requirements ------------------------------------------------------------

_netns_probe_result: str | None = None


def _probe_netns() -> str | None:
    """
    Create and delete a throw-away namespace once per process.

    @return: C{None} when it works, else the reason it does not.
    """
    global _netns_probe_result
    if _netns_probe_result is None:
        name = "spwm-probe-" + secrets.token_hex(3)
        try:
            done = subprocess.run(
                ["ip", "netns", "add", name],
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
            )
            if done.returncode != 0:
                _netns_probe_result = "ip netns add failed: " + done.stderr.decode(
                    "utf-8", "replace"
                ).strip()
            else:
                subprocess.run(
                    ["ip", "netns", "del", name],
                    capture_output=True,
                    timeout=COMMAND_TIMEOUT,
                )
                _netns_probe_result = ""
        except (OSError, subprocess.TimeoutExpired) as e:
            _netns_probe_result = "ip netns add failed: " + str(e)
    return _netns_probe_result or None


def missing_requirements() -> list[str]:
    """
    Say what this machine lacks for the end-to-end tests.

    @return: human-readable items, empty when everything is there: root,
        C{ip} with working network namespaces, C{nft}, C{kamailio},
        C{kamcmd} and C{sipp}.
    """
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces need CAP_SYS_ADMIN)")
    for tool, package in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("kamailio", "kamailio"),
        ("kamcmd", "kamailio"),
        ("sipp", "sip-tester"),
    ]:
        if shutil.which(tool) is None:
            missing.append(f"{tool} (Debian package {package})")
    if not missing:
        problem = _probe_netns()
        if problem:
            missing.append(problem)
    return missing


def require_e2e(testcase: SynchronousTestCase) -> None:
    """
    Skip or fail C{testcase} when the machine cannot run end-to-end tests.

    With C{SPWM_REQUIRE_E2E=1} in the environment (CI), a missing capability
    fails the test; otherwise the test is skipped.  Either way the message
    names everything that is missing.

    @raise SkipTest: something is missing and E2E is not required.
    """
    missing = missing_requirements()
    if not missing:
        return
    unavailable("end-to-end test bed unavailable, missing: " + "; ".join(missing))


# -- processes ---------------------------------------------------------------


def run(
    argv: Sequence[str],
    timeout: float = COMMAND_TIMEOUT,
    check: bool = True,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """
    Run a short command to completion.

    @param timeout: seconds before the command is killed and L{NetbedError}
        raised.
    @param check: raise L{NetbedError} on a non-zero exit status.
    @param stdin: bytes fed to the command's standard input.
    """
    try:
        done = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            timeout=timeout,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise NetbedError(f"{' '.join(argv)}: no exit within {timeout}s") from e
    if check and done.returncode != 0:
        raise NetbedError(
            f"{' '.join(argv)}: exit status {done.returncode}: "
            + done.stderr.decode("utf-8", "replace").strip()
        )
    return done


@define
class ManagedProcess:
    """
    A background process started by the test bed, in its own process group
    (whose id is its pid), with standard output and error in files.

    @ivar name: short name, used for the log files C{<name>.stdout} and
        C{<name>.stderr}.
    @ivar argv: the command line as started (including C{ip netns exec}).
    """

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or C{None} while it runs."""
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        """
        Wait for the process to exit.

        @raise NetbedError: it still runs after C{timeout} seconds.
        """
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise NetbedError(f"{self.name} still running after {timeout}s") from e

    def stop(self, grace: float = 3.0) -> int:
        """
        End the process and its children: SIGTERM to its process group, then
        SIGKILL after C{grace} seconds.  Does nothing if it already exited
        (the group is signalled anyway in case children are left).

        @return: the exit status.
        """
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                return self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        raise NetbedError(f"{self.name} (pid {self.pid}) survived SIGKILL")

    def stdout(self) -> str:
        """The process's standard output so far."""
        return self.stdout_path.read_text("utf-8", "replace")

    def stderr(self) -> str:
        """The process's standard error so far."""
        return self.stderr_path.read_text("utf-8", "replace")


# -- topology ----------------------------------------------------------------


def _router_ruleset(policy: str) -> str:
    """
    The router's nftables ruleset: masquerade towards the public side,
    drop every unsolicited inbound packet, and the egress C{policy}.

    Whatever the policy, the counters C{udp_out} and C{udp_in} count every
    UDP packet the router forwarded (let through) from the LAN to the
    public side and back (what it drops is in C{egress_dropped} and
    C{inbound_dropped}), and C{udp_out_443} / C{udp_in_443} those to and
    from UDP port 443 (QUIC); they start from zero at each
    L{Topology.set_policy}.
    """
    block_udp = ""
    if policy == "open":
        egress = 'iifname "lan0" oifname "pub0" accept'
    elif policy == "normal":
        tcp = ", ".join(map(str, NORMAL_TCP_PORTS))
        udp = ", ".join(map(str, NORMAL_UDP_PORTS))
        egress = (
            f'iifname "lan0" oifname "pub0" ct state new tcp dport {{ {tcp} }} accept\n        '
            f'iifname "lan0" oifname "pub0" ct state new udp dport {{ {udp} }} accept'
        )
    elif policy == "strict":
        egress = 'iifname "lan0" oifname "pub0" meta l4proto tcp tcp dport 443 accept'
        # before the conntrack accept: a UDP flow let out under another
        # policy stops too
        block_udp = (
            'iifname "lan0" oifname "pub0" meta l4proto udp counter name egress_dropped drop\n        '
            'iifname "pub0" oifname "lan0" meta l4proto udp counter name inbound_dropped drop'
        )
    else:
        raise ValueError(f"unknown egress policy {policy!r}; use one of {POLICIES}")
    return f"""
flush ruleset
table inet spwm_router {{
    counter egress_dropped {{ }}
    counter inbound_dropped {{ }}
    counter udp_out {{ }}
    counter udp_in {{ }}
    counter udp_out_443 {{ }}
    counter udp_in_443 {{ }}
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        iifname "lan0" icmp type echo-request accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        {block_udp}
        ct state established,related accept
        ct state invalid drop
        {egress}
        iifname "lan0" counter name egress_dropped drop
        counter name inbound_dropped drop
    }}
    chain forwarded {{
        # only what the forward chain let through gets here
        type filter hook postrouting priority filter; policy accept;
        oifname "pub0" meta l4proto udp counter name udp_out
        oifname "lan0" meta l4proto udp counter name udp_in
        oifname "pub0" udp dport 443 counter name udp_out_443
        oifname "lan0" udp sport 443 counter name udp_in_443
    }}
}}
table ip spwm_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "pub0" masquerade
    }}
}}
"""


def _gateway_ruleset(open_operator: bool) -> str:
    """
    The operator gateway's nftables ruleset: DNAT of TCP 443 and UDP 443
    (the contact point's C{--quic-listen}, when it has one) on the public
    address to the contact point; with C{open_operator} also plain routing
    from the public side to Kamailio's SIP port (UDP and TCP 5060) and to
    any UDP port of the SIPp UAS (its media), as an operator with a public
    SIP edge has.  Nothing else from the public side gets in.
    """
    operator_accept = ""
    if open_operator:
        operator_accept = (
            f'iifname "pub0" ip daddr {KAMAILIO} meta l4proto {{ tcp, udp }} '
            "th dport 5060 accept\n        "
            f'iifname "pub0" ip daddr {UAS} meta l4proto udp accept'
        )
    return f"""
flush ruleset
table inet spwm_gateway {{
    counter inbound_dropped {{ }}
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct state invalid drop
        iifname "op0" oifname "pub0" accept
        iifname "pub0" ip daddr {CONTACT} tcp dport 443 ct status dnat accept
        iifname "pub0" ip daddr {CONTACT} udp dport 443 ct status dnat accept
        {operator_accept}
        counter name inbound_dropped drop
    }}
}}
table ip spwm_nat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "pub0" ip daddr {GATEWAY_PUBLIC} tcp dport 443 dnat to {CONTACT}:443
        iifname "pub0" ip daddr {GATEWAY_PUBLIC} udp dport 443 dnat to {CONTACT}:443
    }}
}}
"""


@define
class Topology:
    """
    The four namespaces of one test run and the processes started in them.

    Build it with L{Topology.create}; L{Topology.destroy} (registered with
    C{addCleanup} by L{E2ETestCase}) stops every process and deletes every
    namespace, which also removes the veth pairs and firewall rules.

    @ivar suffix: random per-run part of every namespace name.
    @ivar logdir: where process output and the final firewall state go.
    @ivar namespaces: role (C{lan}, C{rtr}, C{gw}, C{op}) to namespace name.
    """

    suffix: str
    logdir: Path
    policy: str
    open_operator: bool
    namespaces: dict[str, str]
    processes: list[ManagedProcess] = field(factory=list)
    wan: str | None = None
    wan_seed: int = 1
    wan_process: ManagedProcess | None = None
    _created: list[str] = field(factory=list)
    _names: set[str] = field(factory=set)

    @classmethod
    def create(
        cls, logdir: Path | str, policy: str = "strict", open_operator: bool = False,
        wan: str | None = None, wan_seed: int = 1,
    ) -> Topology:
        """
        Create the namespaces, links, addresses, routes and firewalls.

        @param logdir: an existing or new directory for logs.
        @param policy: the router's egress policy, one of L{POLICIES}.
        @param open_operator: also route the public side to Kamailio's SIP
            port 5060 (UDP and TCP) and to the UAS's UDP ports by their own
            operator addresses, as an operator with a public SIP edge has;
            the baseline tests use it to show what the router alone does.
        @param wan: a profile of L{spwm.testing.impair.PROFILES}: put the
            user-space WAN emulator between the router and the gateway
            (namespace C{wan}, see L{wan_stats}); C{None} (the default)
            links them directly, as before.
        @param wan_seed: the emulator's random seed.
        @raise NetbedError: a step failed; whatever was made is removed.
        """
        if wan is not None:
            from spwm.testing.impair import PROFILES

            if wan not in PROFILES:
                raise ValueError(f"unknown WAN profile {wan!r}; use one of {sorted(PROFILES)}")
        if policy not in POLICIES:
            raise ValueError(f"unknown egress policy {policy!r}; use one of {POLICIES}")
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        suffix = secrets.token_hex(3)
        topology = cls(
            suffix=suffix,
            logdir=logdir,
            policy=policy,
            open_operator=open_operator,
            namespaces={role: f"spwm-{suffix}-{role}" for role in _ROLE_ADDRESSES},
            wan=wan,
            wan_seed=wan_seed,
        )
        try:
            topology._build()
        except BaseException:
            topology.destroy()
            raise
        return topology

    def _build(self) -> None:
        ns = self.namespaces
        for role, name in ns.items():
            run(["ip", "netns", "add", name])
            self._created.append(name)
            run(["ip", "-n", name, "link", "set", "lo", "up"])
        links = [
            ("lan", "eth0", "rtr", "lan0"),
            ("rtr", "pub0", "gw", "pub0"),
            ("gw", "op0", "op", "eth0"),
        ]
        if self.wan is not None:
            ns["wan"] = f"spwm-{self.suffix}-wan"
            run(["ip", "netns", "add", ns["wan"]])
            self._created.append(ns["wan"])
            links[1:2] = [("rtr", "pub0", "wan", "rtr0"), ("wan", "gw0", "gw", "pub0")]
        for a_role, a_if, b_role, b_if in links:
            run(
                ["ip", "link", "add", a_if, "netns", ns[a_role], "type", "veth"]
                + ["peer", "name", b_if, "netns", ns[b_role]]
            )
        addresses = [
            ("lan", "eth0", [f"{a}/24" for a in _ROLE_ADDRESSES["lan"]]),
            ("rtr", "lan0", [f"{ROUTER_LAN}/24"]),
            ("rtr", "pub0", [f"{ROUTER_PUBLIC}/24"]),
            ("gw", "pub0", [f"{GATEWAY_PUBLIC}/24"]),
            ("gw", "op0", [f"{GATEWAY_OPERATOR}/24"]),
            ("op", "eth0", [f"{a}/24" for a in _ROLE_ADDRESSES["op"]]),
        ]
        for role, ifname, prefixes in addresses:
            for prefix in prefixes:
                run(
                    ["ip", "-n", ns[role], "addr", "add", prefix, "dev", ifname]
                    + ["nodad"]
                )
            run(["ip", "-n", ns[role], "link", "set", ifname, "up"])
        run(["ip", "-n", ns["lan"], "route", "add", "default", "via", ROUTER_LAN])
        # The router's "internet" is the gateway; the gateway knows only the
        # public and operator networks, so it cannot reach the LAN directly.
        run(["ip", "-n", ns["rtr"], "route", "add", "default", "via", GATEWAY_PUBLIC])
        run(["ip", "-n", ns["op"], "route", "add", "default", "via", GATEWAY_OPERATOR])
        for role in ("rtr", "gw"):
            run(
                ["ip", "netns", "exec", ns[role], "sysctl", "-q", "-w"]
                + ["net.ipv4.ip_forward=1"]
            )
        self.set_policy(self.policy)
        run(
            ["ip", "netns", "exec", ns["gw"], "nft", "-f", "-"],
            stdin=_gateway_ruleset(self.open_operator).encode(),
        )
        if self.wan is not None:
            self._start_wan()

    def _start_wan(self) -> None:
        """
        Start the WAN emulator (L{spwm.testing.impair}) in the C{wan}
        namespace between C{rtr0} and C{gw0}, with the offloads of the
        links' senders turned off; wait until it has written its counters.
        """
        ns = self.namespaces
        env = {"PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
        impair = [sys.executable, "-m", "spwm.testing.impair"]
        for role, ifnames in (("rtr", ["pub0"]), ("gw", ["pub0"]), ("wan", ["rtr0", "gw0"])):
            run(["ip", "netns", "exec", ns[role], "env", f"PYTHONPATH={REPO_ROOT}",
                 *impair, "offloads", *ifnames])
        for ifname in ("rtr0", "gw0"):
            run(["ip", "-n", ns["wan"], "link", "set", ifname, "promisc", "on", "up"])
        # Static neighbours: ARP would otherwise cross the emulated link
        # and delay (or lose) the first packets of every run.
        macs = {}
        for role in ("rtr", "gw"):
            done = run(["ip", "-j", "-n", ns[role], "link", "show", "pub0"])
            macs[role] = json.loads(done.stdout)[0]["address"]
        for role, peer, address in (("rtr", "gw", GATEWAY_PUBLIC), ("gw", "rtr", ROUTER_PUBLIC)):
            run(["ip", "-n", ns[role], "neigh", "replace", address, "lladdr", macs[peer],
                 "dev", "pub0", "nud", "permanent"])
        stats = self.logdir / f"wan-{self.suffix}.json"
        self.wan_process = self.spawn(
            "wan", "wan-emulator",
            [*impair, "run", "rtr0", "gw0", "--profile", str(self.wan),
             "--seed", str(self.wan_seed), "--stats", str(stats), "--realtime", "10"],
            env=env,
        )
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while not stats.exists():
            if self.wan_process.returncode is not None or time.monotonic() > deadline:
                raise NetbedError(
                    f"the WAN emulator did not start: {self.wan_process.stderr()[-2000:]}"
                )
            time.sleep(0.02)

    def wan_stats(self, settle: bool = True, timeout: float = 5.0, empty: bool = True) -> dict:
        """
        The WAN emulator's counters (see L{spwm.testing.impair}): C{up}
        (router to gateway) and C{down}, each a dict of C{in}, C{out},
        C{lost}, C{queue_dropped}, C{queued} and the same by kind
        (C{udp_in}, C{tcp_lost}, ...).

        @param settle: first wait until the file was written after this call
            with nothing queued (so what was sent before has crossed).
        @param empty: with C{settle}, wait for empty queues too; C{False}:
            only for a write after this call (a tunnel that keeps probing
            its connections, every 100 ms while it has channels, rarely
            leaves both queues empty at the moment of a write).
        @raise NetbedError: there is no emulator, or it did not settle.
        """
        if self.wan_process is None:
            raise NetbedError("this topology has no WAN emulator")
        path = self.logdir / f"wan-{self.suffix}.json"
        asked = time.monotonic()
        deadline = asked + timeout
        while True:
            document = json.loads(path.read_text())
            if not settle or (
                document["written_at"] > asked
                and (not empty or (document["up"]["queued"] == 0 and document["down"]["queued"] == 0))
            ):
                return document
            if self.wan_process.returncode is not None:
                raise NetbedError(f"the WAN emulator exited: {self.wan_process.stderr()[-2000:]}")
            if time.monotonic() > deadline:
                raise NetbedError(f"the WAN emulator did not settle within {timeout}s")
            time.sleep(0.05)

    def add_phone_host(self) -> str:
        """
        Add the namespace C{ph}: a phone's own host on a link of its own
        to the LAN namespace (C{ph0} there, C{192.0.2.129/25}; C{eth0}
        here, L{PHONE_HOST}C{/25}, default route via the LAN namespace),
        and a second interface C{wlan0} with L{PHONE_SECOND_ADDRESS}/32 to
        which nothing routes.  The phone reaches the agent's addresses
        only; the LAN namespace does not forward.

        @return: the namespace's name.
        """
        name = f"spwm-{self.suffix}-ph"
        run(["ip", "netns", "add", name])
        self._created.append(name)
        self.namespaces["ph"] = name
        lan = self.namespaces["lan"]
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        run(["ip", "link", "add", "ph0", "netns", lan, "type", "veth", "peer", "name", "eth0", "netns", name])
        run(["ip", "-n", lan, "addr", "add", f"{PHONE_HOST_GATEWAY}/25", "dev", "ph0", "nodad"])
        run(["ip", "-n", lan, "link", "set", "ph0", "up"])
        run(["ip", "-n", name, "addr", "add", f"{PHONE_HOST}/25", "dev", "eth0", "nodad"])
        run(["ip", "-n", name, "link", "set", "eth0", "up"])
        run(["ip", "-n", name, "route", "add", "default", "via", PHONE_HOST_GATEWAY])
        run(["ip", "-n", name, "link", "add", "wlan0", "type", "veth", "peer", "name", "wlan0p"])
        run(["ip", "-n", name, "addr", "add", f"{PHONE_SECOND_ADDRESS}/32", "dev", "wlan0", "nodad"])
        run(["ip", "-n", name, "link", "set", "wlan0p", "up"])
        run(["ip", "-n", name, "link", "set", "wlan0", "up"])
        return name

    def set_policy(self, policy: str) -> None:
        """
        Load the router's firewall with egress C{policy} (one of
        L{POLICIES}), replacing the previous rules; existing connections in
        the connection-tracking table stay.
        """
        run(
            ["ip", "netns", "exec", self.namespaces["rtr"], "nft", "-f", "-"],
            stdin=_router_ruleset(policy).encode(),
        )
        self.policy = policy

    def exec(
        self, role: str, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """
        Run a short command in the namespace of C{role} (see L{run}).
        """
        return run(
            ["ip", "netns", "exec", self.namespaces[role], *argv],
            timeout=timeout,
            check=check,
        )

    def spawn(
        self,
        role: str,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> ManagedProcess:
        """
        Start a background process in the namespace of C{role}.

        Its output goes to C{<logdir>/<name>.stdout} and C{.stderr}; a
        repeated C{name} gets a numeric suffix.  L{destroy} stops it.
        """
        unique = name
        n = 1
        while unique in self._names:
            n += 1
            unique = f"{name}-{n}"
        self._names.add(unique)
        full = ["ip", "netns", "exec", self.namespaces[role], *argv]
        stdout_path = self.logdir / f"{unique}.stdout"
        stderr_path = self.logdir / f"{unique}.stderr"
        (self.logdir / f"{unique}.cmdline").write_text(
            " ".join(full) + "\n", "utf-8"
        )
        process_env = dict(os.environ)
        if env:
            process_env.update(env)
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=process_env,
                cwd=cwd,
                start_new_session=True,
            )
        process = ManagedProcess(unique, full, popen, stdout_path, stderr_path)
        self.processes.append(process)
        return process

    def add_counter(self, role: str, name: str, match: str, hook: str = "input") -> None:
        """
        Count packets in the namespace of C{role} with an nftables counter,
        independently of every program under test.

        @param name: the counter's name (letters, digits, underscore).
        @param match: an nft match expression, e.g.
            C{"ip daddr 192.0.2.20 udp dport 6000"}.
        @param hook: C{input}, C{output} or C{forward}.
        """
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"bad counter name {name!r}")
        if hook not in ("input", "output", "forward"):
            raise ValueError(f"bad hook {hook!r}")
        script = f"""
table inet spwm_count {{
    counter {name} {{ }}
    chain {hook} {{
        type filter hook {hook} priority filter - 10; policy accept;
        {match} counter name {name}
    }}
}}
"""
        run(
            ["ip", "netns", "exec", self.namespaces[role], "nft", "-f", "-"],
            stdin=script.encode(),
        )

    def read_counter(self, role: str, name: str) -> int:
        """
        The number of packets counted so far by counter C{name} in the
        namespace of C{role} (see L{add_counter}; the router's own counters
        C{egress_dropped} and C{inbound_dropped} work too).
        """
        done = self.exec(role, ["nft", "-j", "list", "counters"])
        for item in json.loads(done.stdout).get("nftables", []):
            counter = item.get("counter")
            if counter and counter["name"] == name:
                return int(counter["packets"])
        raise NetbedError(f"no counter {name!r} in {role}")

    def counters(self) -> dict[str, int]:
        """
        The router's drop counters: C{egress_dropped} (LAN traffic the
        egress policy refused) and C{inbound_dropped} (unsolicited packets
        from the public side), in packets.
        """
        done = self.exec("rtr", ["nft", "-j", "list", "counters"])
        result = {}
        for item in json.loads(done.stdout).get("nftables", []):
            counter = item.get("counter")
            if counter:
                result[counter["name"]] = counter["packets"]
        return result

    def destroy(self) -> None:
        """
        Stop every process (newest first) and delete every namespace; save
        the firewalls' final rules and counters to the log directory first.
        Safe to call more than once and after a partial L{create}.
        """
        errors = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except NetbedError as e:
                errors.append(str(e))
        self.processes.clear()
        for role in ("rtr", "gw"):
            name = self.namespaces[role]
            if name in self._created:
                done = run(
                    ["ip", "netns", "exec", name, "nft", "list", "ruleset"],
                    check=False,
                )
                (self.logdir / f"nft-{role}.txt").write_bytes(done.stdout + done.stderr)
        for name in reversed(self._created):
            # anything still inside (children that escaped their group)
            done = run(["ip", "netns", "pids", name], check=False)
            for pid in done.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            done = run(["ip", "netns", "del", name], check=False)
            if done.returncode != 0:
                errors.append(f"ip netns del {name}: {done.stderr!r}")
        self._created.clear()
        if errors:
            raise NetbedError("; ".join(errors))


# -- Kamailio ----------------------------------------------------------------


@frozen
class Binding:
    """
    One contact of the location table.

    @ivar aor: the address of record, e.g. C{alice@example.test}.
    @ivar contact: the registered contact URI.
    @ivar path: the stored Path header value, or C{None}.
    @ivar received: the source the REGISTER came from (C{sip:IP:PORT}) when
        Kamailio stored one, else C{None}.
    @ivar expires: seconds left.
    @ivar raw: the whole record as Kamailio reported it.
    """

    aor: str
    contact: str
    path: str | None
    received: str | None
    expires: int | None
    raw: dict = field(eq=False, repr=False)


def _null(value: object) -> str | None:
    if value in (None, "", "[not set]"):
        return None
    return str(value)


@define
class Kamailio:
    """
    A running Kamailio in the operator namespace, with its private runtime
    directory (short, under /tmp, because of the 108-byte limit on UNIX
    socket paths).
    """

    process: ManagedProcess
    rundir: Path
    address: str

    @classmethod
    def start(
        cls, topology: Topology, address: str = KAMAILIO, trusted: str = UAS,
        ready_timeout: float = 10.0, config_name: str = "kamailio.cfg", name: str = "kamailio",
    ) -> Kamailio:
        """
        Render C{data/kamailio.cfg}, start C{kamailio -DD -E} in the C{op}
        namespace and wait until its RPC socket answers.

        @param trusted: the one operator address whose requests (other than
            REGISTER) are not challenged.
        @param config_name: the configuration in C{data/} (the outbound
            registrar: C{kamailio_outbound.cfg}).
        @param name: its process's name in the log directory (and of its
            rendered configuration there): a second Kamailio needs another.
        @raise NetbedError: it did not get ready within C{ready_timeout}.
        """
        rundir = Path(tempfile.mkdtemp(prefix="spwm-kam-"))
        config = (DATA / config_name).read_text("utf-8")
        for key, value in {
            "ADDRESS": address,
            "DOMAIN": SIP_DOMAIN,
            "RUNDIR": str(rundir),
            "TRUSTED": trusted,
        }.items():
            config = config.replace(f"@@{key}@@", value)
        cfg_path = topology.logdir / f"{name}.cfg"
        cfg_path.write_text(config, "utf-8")
        process = topology.spawn(
            "op",
            name,
            [
                "kamailio", "-DD", "-E", "-m", "32", "-M", "4",
                "-Y", str(rundir), "-P", str(rundir / "kamailio.pid"),
                "-f", str(cfg_path),
            ],
        )
        kamailio = cls(process, rundir, address)
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.returncode is not None:
                raise NetbedError(
                    f"kamailio exited with {process.returncode}: "
                    + process.stderr()[-2000:]
                )
            try:
                kamailio.rpc("core.version", timeout=0.5)
                break
            except (OSError, NetbedError):
                if time.monotonic() > deadline:
                    raise NetbedError(
                        f"kamailio not ready after {ready_timeout}s: "
                        + process.stderr()[-2000:]
                    )
                time.sleep(0.05)
        return kamailio

    def rpc(self, method: str, *params: object, timeout: float = 3.0) -> object:
        """
        Call a Kamailio RPC method over its JSON-RPC datagram socket.

        @return: the C{result} member of the answer.
        @raise NetbedError: an error answer or no answer in C{timeout}.
        @raise OSError: the socket is not there (yet).
        """
        client = self.rundir / f"cli-{secrets.token_hex(4)}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(client))
            sock.settimeout(timeout)
            request = {"jsonrpc": "2.0", "method": method, "id": 1}
            if params:
                request["params"] = list(params)
            sock.sendto(json.dumps(request).encode(), str(self.rundir / "rpc.sock"))
            try:
                data = sock.recv(1 << 20)
            except socket.timeout as e:
                raise NetbedError(f"kamailio rpc {method}: no answer") from e
        finally:
            sock.close()
            client.unlink(missing_ok=True)
        answer = json.loads(data)
        if "error" in answer:
            raise NetbedError(f"kamailio rpc {method}: {answer['error']}")
        return answer.get("result")

    def location_table(self) -> list[Binding]:
        """
        Read the in-memory location table (RPC C{ul.dump}).

        @return: one L{Binding} per registered contact.
        """
        result = self.rpc("ul.dump")
        bindings = []
        for domain in result.get("Domains", []):
            for aor_entry in domain.get("Domain", {}).get("AoRs", []):
                info = aor_entry.get("Info", aor_entry)
                aor = info.get("AoR")
                for contact_entry in info.get("Contacts", []):
                    contact = contact_entry.get("Contact", contact_entry)
                    expires = contact.get("Expires")
                    bindings.append(
                        Binding(
                            aor=str(aor),
                            contact=str(contact.get("Address")),
                            path=_null(contact.get("Path")),
                            received=_null(contact.get("Received")),
                            expires=expires if isinstance(expires, int) else None,
                            raw=contact,
                        )
                    )
        return bindings

    def stop(self) -> None:
        """Stop Kamailio and remove its runtime directory."""
        self.process.stop()
        shutil.rmtree(self.rundir, ignore_errors=True)


# -- SIPp --------------------------------------------------------------------


SIPP_TRACES: Mapping[str, str] = {
    "stat.csv": "-stf",
    "messages.log": "-message_file",
    "errors.log": "-error_file",
    "screen.log": "-screen_file",
}
"""SIPp's trace files: the suffix of each file L{sipp_argv} names, and the
SIPp option that names it."""

# every trace stem given out (logdir / stem): a few per test, and each test
# has a log directory of its own
_sipp_stems: set[Path] = set()


def _sipp_stem(logdir: Path, name: str) -> str:
    """
    The stem of one SIPp run's trace files in C{logdir}: C{name} for the
    first run of that name, then C{name-2}, C{name-3}, ...  A stem is taken
    once given out, or when C{logdir} holds files of it (a process of that
    name, or another SIPp's traces).  L{Topology.spawn} numbers repeated
    process names the same way, so a run spawned under the C{name} it was
    given here has every file under one stem.
    """
    suffixes = ("stdout", *SIPP_TRACES)
    stem, n = name, 1
    while True:
        path = (logdir / stem).resolve()
        if path not in _sipp_stems and not any(
            (logdir / f"{stem}.{suffix}").exists() for suffix in suffixes
        ):
            _sipp_stems.add(path)
            return stem
        n += 1
        stem = f"{name}-{n}"


def sipp_trace(argv: Sequence[str], suffix: str) -> Path | None:
    """
    The trace file that a SIPp command line writes.

    @param argv: the command line (from L{sipp_argv}, or a process's
        C{argv} with C{ip netns exec} in front).
    @param suffix: one of L{SIPP_TRACES}: C{stat.csv}, C{messages.log},
        C{errors.log} or C{screen.log}.
    @return: the file's path, or C{None} if the command line names none.
    """
    option = SIPP_TRACES[suffix]
    argv = list(argv)
    for i, arg in enumerate(argv[:-1]):
        if arg == option:
            return Path(argv[i + 1])
    return None


@frozen
class SippResult:
    """
    What a finished SIPp run reported.

    @ivar name: the run's process name (C{<name>.stdout}, C{.stderr}).
    @ivar returncode: SIPp's exit status: 0 all calls succeeded, 1 at least
        one failed, 97 internal exit, 99 no call processed, 255/254 fatal.
    @ivar stats: the last row of SIPp's statistics file (C{-trace_stat}),
        column name to value, e.g. C{SuccessfulCall(C)}, C{FailedCall(C)}.
    @ivar logdir: where its files are (C{<name>.stdout}, C{<stem>.stat.csv},
        C{<stem>.messages.log}, C{<stem>.errors.log}, C{<stem>.screen.log}).
    @ivar stem: the stem of this run's own trace files (see L{sipp_argv});
        the same as C{name} unless names were mixed up.
    """

    name: str
    returncode: int
    stats: dict[str, str]
    logdir: Path
    stem: str = field(default=Factory(lambda self: self.name, takes_self=True))

    def count(self, column: str) -> int:
        """One cumulative statistics column as an int (0 if absent)."""
        value = self.stats.get(column, "")
        try:
            return int(value)
        except ValueError:
            return 0

    @property
    def successful(self) -> int:
        """The number of successful calls (cumulative)."""
        return self.count("SuccessfulCall(C)")

    @property
    def failed(self) -> int:
        """The number of failed calls (cumulative)."""
        return self.count("FailedCall(C)")

    def messages(self) -> str:
        """The SIP messages SIPp sent and received (C{-trace_msg})."""
        path = self.logdir / f"{self.stem}.messages.log"
        return path.read_text("utf-8", "replace") if path.exists() else ""


def sipp_argv(
    scenario: str,
    remote: str | None,
    local_ip: str,
    local_port: int,
    name: str,
    logdir: Path,
    keys: Mapping[str, str] | None = None,
    extra: Iterable[str] = (),
    transport: str = "u1",
) -> list[str]:
    """
    The SIPp command line for one of our scenarios with all traces in
    C{logdir}.

    The traces are C{<stem>.stat.csv}, C{<stem>.messages.log},
    C{<stem>.errors.log} and C{<stem>.screen.log}, where C{stem} is C{name}
    for the first run of that name in C{logdir} and C{name-2}, C{name-3},
    ... for the next, so two runs of one name keep their own traces (the
    numbering is that of L{Topology.spawn}: spawn the run under the same
    C{name}).  L{sipp_trace} tells which files a command line writes;
    L{sipp_wait} reads the statistics from there.

    @param scenario: a file name in C{tests/e2e/data} or a path.
    @param remote: C{HOST:PORT} to send to (C{None} for a pure UAS).
    @param keys: scenario keywords (C{-key}), e.g. C{domain}.
    @param transport: SIPp's C{-t} (C{u1} UDP one socket, C{t1} TCP).
    """
    path = Path(scenario)
    if not path.is_absolute():
        path = DATA / scenario
    stem = _sipp_stem(Path(logdir), name)
    argv = [
        "sipp", "-sf", str(path), "-i", local_ip, "-p", str(local_port),
        "-t", transport, "-nostdin",
        "-trace_stat", "-stf", str(logdir / f"{stem}.stat.csv"),
        "-fd", "1",
        "-trace_msg", "-message_file", str(logdir / f"{stem}.messages.log"),
        "-trace_err", "-error_file", str(logdir / f"{stem}.errors.log"),
        "-trace_screen", "-screen_file", str(logdir / f"{stem}.screen.log"),
        "-key", "domain", SIP_DOMAIN,
    ]
    for key, value in (keys or {}).items():
        argv += ["-key", key, value]
    argv += list(extra)
    if remote is not None:
        argv.append(remote)
    return argv


def sipp_wait(process: ManagedProcess, logdir: Path, timeout: float) -> SippResult:
    """
    Wait (bounded) for a SIPp process and read its verdict from the
    statistics file its command line names (C{<logdir>/<name>.stat.csv} if
    it names none).

    @raise NetbedError: it did not exit within C{timeout} (it is then
        stopped).
    """
    try:
        returncode = process.wait(timeout)
    except NetbedError:
        process.stop()
        raise
    stats = sipp_trace(process.argv, "stat.csv")
    if stats is None:
        stats = Path(logdir) / f"{process.name}.stat.csv"
    return SippResult(
        name=process.name,
        returncode=returncode,
        stats=_read_stats(stats),
        logdir=stats.parent,
        stem=stats.name[: -len(".stat.csv")],
    )


def _stem_of(argv: Sequence[str], name: str) -> str:
    """The stem of the traces C{argv} writes, or C{name} if it writes none."""
    stats = sipp_trace(argv, "stat.csv")
    return name if stats is None else stats.name[: -len(".stat.csv")]


# -- small UDP tools run inside namespaces -----------------------------------

UDPTOOL = Path(__file__).resolve().parent / "udptool.py"


# -- the test case base ------------------------------------------------------


class E2ETestCase(SynchronousTestCase):
    """
    Base class of end-to-end tests: checks the requirements (L{require_e2e})
    and offers one topology per test with helpers for the programs in it.
    Everything started is stopped by cleanups, also when the test fails.

    @ivar topology: set by L{make_topology}.
    @ivar kamailio: set by L{start_kamailio}.
    """

    topology: Topology
    kamailio: Kamailio

    def setUp(self) -> None:
        require_e2e(self)
        self.logdir = Path(self.mktemp()).resolve()
        self.logdir.mkdir(parents=True)

    def make_topology(
        self, policy: str = "strict", open_operator: bool = False,
        wan: str | None = None, wan_seed: int = 1,
    ) -> Topology:
        """
        Create the topology for this test (see L{Topology.create}); it is
        destroyed by a cleanup.
        """
        self.topology = Topology.create(self.logdir, policy, open_operator, wan, wan_seed)
        self.addCleanup(self.topology.destroy)
        return self.topology

    def start_kamailio(self) -> Kamailio:
        """
        Start Kamailio on L{KAMAILIO} port 5060 (UDP and TCP) and wait until
        it answers RPC.
        """
        self.kamailio = Kamailio.start(self.topology)
        self.addCleanup(self.kamailio.stop)
        return self.kamailio

    def location_table(self) -> list[Binding]:
        """The current bindings in Kamailio's location table."""
        return self.kamailio.location_table()

    def _twistd(self, role: str, name: str, plugin: str, args: Sequence[str]) -> ManagedProcess:
        pythonpath = os.pathsep.join(
            [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        return self.topology.spawn(
            role,
            name,
            [
                sys.executable, "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", plugin, *args,
            ],
            env={"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"},
            cwd=self.logdir,
        )

    def start_contact(self, args: Sequence[str]) -> ManagedProcess:
        """
        Start C{twistd -n spwm-contact ARGS} in the operator namespace (with
        the checkout on C{PYTHONPATH}); wait until it listens on TCP 443 of
        L{CONTACT}.
        """
        process = self._twistd("op", "spwm-contact", "spwm-contact", args)
        self.wait_for_listener("op", "tcp", CONTACT, 443, process)
        return process

    def start_agent(self, args: Sequence[str]) -> ManagedProcess:
        """
        Start C{twistd -n spwm-agent ARGS} in the LAN namespace (with the
        checkout on C{PYTHONPATH}).  Readiness depends on the options: use
        L{wait_for_listener} or L{wait_for_log}.
        """
        return self._twistd("lan", "spwm-agent", "spwm-agent", args)

    def wait_for_listener(
        self, role: str, proto: str, address: str, port: int,
        process: ManagedProcess | None = None, timeout: float = 15.0,
    ) -> None:
        """
        Poll C{ss} in the namespace of C{role} until a C{proto} (C{tcp} or
        C{udp}) socket is bound to C{address:port}.

        @raise NetbedError: not within C{timeout}, or C{process} exited.
        """
        flag = "-ltnH" if proto == "tcp" else "-lunH"
        wanted = f"{address}:{port}"
        deadline = time.monotonic() + timeout
        while True:
            done = self.topology.exec(role, ["ss", flag], check=False)
            for line in done.stdout.decode().splitlines():
                columns = line.split()
                if len(columns) >= 4 and columns[3] in (wanted, f"0.0.0.0:{port}"):
                    return
            if process is not None and process.returncode is not None:
                raise NetbedError(
                    f"{process.name} exited with {process.returncode} before "
                    f"listening on {proto} {wanted}:\n{process.stdout()[-3000:]}"
                    f"\n{process.stderr()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise NetbedError(f"nothing listens on {proto} {wanted} after {timeout}s")
            time.sleep(0.1)

    def wait_for_log(
        self, process: ManagedProcess, pattern: str, timeout: float = 15.0
    ) -> re.Match[str]:
        """
        Poll a process's stdout and stderr until the regular expression
        C{pattern} matches.

        @raise NetbedError: not within C{timeout}, or the process exited.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for text in (process.stdout(), process.stderr()):
                match = regex.search(text)
                if match:
                    return match
            if process.returncode is not None:
                raise NetbedError(f"{process.name} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise NetbedError(f"{pattern!r} not seen in {process.name} after {timeout}s")
            time.sleep(0.1)

    def sipp_uac(
        self,
        scenario: str,
        remote: str,
        user: str = "alice",
        service: str | None = None,
        local_ip: str = PHONE,
        local_port: int = 5060,
        role: str = "lan",
        keys: Mapping[str, str] | None = None,
        extra: Sequence[str] = (),
        calls: int = 1,
        recv_timeout: float = 5.0,
        timeout: float = 20.0,
        name: str = "sipp-uac",
        transport: str = "u1",
    ) -> SippResult:
        """
        Run a SIPp UAC scenario to completion (bounded) and return its
        verdict.

        @param scenario: C{register.xml}, C{uac_call.xml}, C{uac_rtp.xml} or
            another file in C{tests/e2e/data}.
        @param remote: where SIPp sends (C{HOST:PORT}): Kamailio, the
            gateway's public address or the agent.
        @param user: the digest user (password from L{USERS}), also the
            From/To user of C{register.xml} unless C{service} is given.
        @param service: the request-URI user (C{-s}); defaults to C{user}.
        @param keys: more scenario keywords; C{user} defaults to C{user},
            C{contact} to C{local_ip:local_port}, C{expires} to 300.
        @param recv_timeout: seconds SIPp waits for each expected message
            (C{-recv_timeout}); when it runs out the call fails (counted in
            C{FailedTimeoutOnRecv(C)}, exit status 1).
        @param timeout: SIPp's own global timeout (C{-timeout} with
            C{-timeout_error}: exit status 255, a fatal error); the process
            gets 5 seconds more before it is killed.
        """
        all_keys = {
            "user": user,
            "contact": f"{local_ip}:{local_port}",
            "expires": "300",
        }
        all_keys.update(keys or {})
        argv = sipp_argv(
            scenario, remote, local_ip, local_port, name, self.logdir,
            keys=all_keys,
            extra=[
                "-s", service or user, "-au", user, "-ap", USERS.get(user, "none"),
                "-m", str(calls), "-recv_timeout", str(int(recv_timeout * 1000)),
                "-timeout", f"{timeout}s", "-timeout_error",
                *extra,
            ],
            transport=transport,
        )
        process = self.topology.spawn(role, _stem_of(argv, name), argv, cwd=self.logdir)
        return sipp_wait(process, self.logdir, timeout + 5.0)

    def sipp_uas(
        self,
        scenario: str = "uas_echo.xml",
        local_ip: str = UAS,
        local_port: int = 5060,
        media_port: int = 6000,
        role: str = "op",
        extra: Sequence[str] = (),
        name: str = "sipp-uas",
        transport: str = "u1",
    ) -> ManagedProcess:
        """
        Start a SIPp UAS in the background that answers calls with SDP and
        echoes RTP (C{-rtp_echo}) on C{local_ip:media_port}; wait until its
        SIP port is bound.  Stop it with L{sipp_finish} to get its verdict,
        or leave it to the cleanup.
        """
        argv = sipp_argv(
            scenario, None, local_ip, local_port, name, self.logdir,
            extra=["-mi", local_ip, "-mp", str(media_port), "-rtp_echo", *extra],
            transport=transport,
        )
        process = self.topology.spawn(role, _stem_of(argv, name), argv, cwd=self.logdir)
        self.wait_for_listener(
            role, "udp" if transport.startswith("u") else "tcp",
            local_ip, local_port, process,
        )
        return process

    def sipp_finish(self, process: ManagedProcess, timeout: float = 5.0) -> SippResult:
        """
        Stop a background SIPp (SIGUSR1 asks for a clean exit after the
        current calls) and return its verdict.
        """
        if process.returncode is None:
            try:
                os.kill(process.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
        return sipp_wait(process, self.logdir, timeout)

    def register_uas(self, user: str = "bob", contact: str = f"{UAS}:5060") -> SippResult:
        """
        Register C{user} at Kamailio with C{contact} from the operator
        network (for the operator-side UAS) and fail the test unless SIPp
        reports success.
        """
        result = self.sipp_uac(
            "register.xml", f"{KAMAILIO}:5060", user=user, local_ip=UAS,
            local_port=5070, role="op", keys={"contact": contact},
            name=f"register-{user}",
        )
        self.assertEqual(result.returncode, 0, f"registering {user} failed: {result}")
        return result

    def udp_echo_server(self, address: str = ECHO, port: int = 7000, role: str = "op") -> ManagedProcess:
        """
        Start a UDP echo server (C{udptool.py echo}) that answers every
        datagram with C{b"echo:" + datagram} and logs each one to its stdout.
        """
        process = self.topology.spawn(
            role, "udp-echo", [sys.executable, str(UDPTOOL), "echo", address, str(port)]
        )
        self.wait_for_listener(role, "udp", address, port, process)
        return process

    def udp_exchange(
        self, role: str, source: str, destination: str, payload: bytes,
        timeout: float = 3.0,
    ) -> bytes | None:
        """
        From C{source} (an address of C{role}'s namespace) send C{payload} to
        C{destination} (C{HOST:PORT}) once a second until an answer arrives
        or C{timeout} passes.

        @return: the first answer, or C{None}.
        """
        done = self.topology.exec(
            role,
            [sys.executable, str(UDPTOOL), "send", source, destination,
             payload.hex(), str(timeout)],
            timeout=timeout + 5.0,
            check=False,
        )
        (self.logdir / "udp-exchange.log").open("ab").write(done.stdout + done.stderr)
        if done.returncode != 0:
            return None
        return bytes.fromhex(done.stdout.decode().split()[-1])
