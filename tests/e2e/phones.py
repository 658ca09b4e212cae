"""
Real SIP clients in the end-to-end bed: baresip, Linphone's C{linphonec}
and PJSIP (the C{pjsua2} Python module), each configured from the files
of C{examples/clients/} that C{docs/quickstart.md} shows, changing only
the values those files name (addresses, ports, credentials, CA path).

A phone runs in the namespace C{ph} (L{netbed.Topology.add_phone_host}),
a host of its own whose only route leads to the agent.  Each driver
offers the same few actions (L{Phone.dial}, L{Phone.hold},
L{Phone.resume}, L{Phone.hangup}) and answers incoming calls by itself;
the verdicts come from Kamailio, SIPp and kernel counters, not from the
phone.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Mapping

from attrs import define, field

from .netbed import (
    AGENT,
    REPO_ROOT,
    SIP_DOMAIN,
    USERS,
    ManagedProcess,
    NetbedError,
    PHONE_HOST,
    Topology,
)

CLIENTS = REPO_ROOT / "examples" / "clients"
"""The configuration files the quick start shows and the tests use."""

DOC_AGENT = "192.168.1.10"
"""The agent's address in the example files (replaced by L{AGENT})."""

DOC_USER = "alice"
DOC_PASSWORD = "secret-alice"
DOC_CA = "/etc/spwm/agent-ca.pem"

PHONECTL = Path(__file__).resolve().parent / "phonectl.py"

TRANSPORTS = {
    # transport: (port, URI parameter)
    "udp": (5060, "transport=udp"),
    "tcp": (5060, "transport=tcp"),
    "tls": (5061, "transport=tls"),
}


def render(text: str, user: str, transport: str, ca_file: str) -> str:
    """
    The example file C{text} for C{user} (password from L{USERS}) over
    C{transport} with the bed's agent and CA: only the documented values
    change.
    """
    port, param = TRANSPORTS[transport]
    text = text.replace(f"{DOC_AGENT}:5060;transport=udp", f"{DOC_AGENT}:{port};{param}")
    text = text.replace(DOC_AGENT, AGENT)
    text = text.replace(DOC_CA, ca_file)
    text = text.replace(DOC_PASSWORD, USERS[user])
    text = text.replace(f"{DOC_USER}@", f"{user}@")
    text = text.replace(f"username={DOC_USER}", f"username={user}")
    return text


def missing_clients() -> dict[str, str]:
    """
    The clients this machine lacks, each with what would install it.
    """
    missing = {}
    if shutil.which("baresip") is None:
        missing["baresip"] = "baresip (Debian package baresip)"
    if shutil.which("linphonec") is None:
        missing["linphone"] = "linphonec (Debian package linphone-cli)"
    try:
        import pjsua2  # noqa: F401
    except ImportError as e:
        missing["pjsip"] = f"the pjsua2 module (pip install pjsua2-python): {e}"
    return missing


@define
class Phone:
    """
    One running SIP client.

    @ivar name: process name (log files C{<name>.*}).
    @ivar user: its user at Kamailio.
    """

    topology: Topology
    logdir: Path
    name: str
    user: str
    transport: str
    ca_file: str
    process: ManagedProcess | None = field(default=None)

    def start(self) -> None:
        raise NotImplementedError

    def command(self, *words: str) -> None:
        raise NotImplementedError

    def dial(self, uri: str) -> None:
        raise NotImplementedError

    def hold(self) -> None:
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError

    def hangup(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=2.0)

    def log(self) -> str:
        if self.process is None:
            return ""
        return (self.process.stdout() + self.process.stderr())[-4000:]


@define
class Baresip(Phone):
    """
    baresip with C{examples/clients/baresip/config} and C{accounts};
    controlled through its C{ctrl_tcp} module on 127.0.0.1:4444 of the
    phone's namespace.
    """

    net_interface: str | None = field(default=None)

    CONTROL_PORT = 4444

    def start(self) -> None:
        directory = self.logdir / self.name
        directory.mkdir()
        config = render((CLIENTS / "baresip" / "config").read_text(), self.user, self.transport, self.ca_file)
        config += (
            "\n# --- added by tests/e2e/phones.py: a tone as microphone, a control socket\n"
            "module          ausine.so\n"
            "module          ctrl_tcp.so\n"
            f"ctrl_tcp_listen 127.0.0.1:{self.CONTROL_PORT}\n"
            "audio_source    ausine,440\n"
            "ausrc_srate     48000\n"
            "ausrc_channels  2\n"
        )
        if self.net_interface:
            # SIP from the first interface, SDP naming the second one
            config = config.replace("0.0.0.0:5060", f"{PHONE_HOST}:5060")
            config += f"net_interface   {self.net_interface}\n"
        (directory / "config").write_text(config)
        accounts = render((CLIENTS / "baresip" / "accounts").read_text(), self.user, self.transport, self.ca_file)
        (directory / "accounts").write_text(accounts.replace("answermode=manual", "answermode=auto"))
        self.process = self.topology.spawn("ph", self.name, ["baresip", "-f", str(directory)], cwd=directory)
        deadline = time.monotonic() + 10.0
        while True:
            done = self.topology.exec("ph", ["ss", "-ltnH"], check=False)
            if f"127.0.0.1:{self.CONTROL_PORT}" in done.stdout.decode():
                return
            if self.process.returncode is not None or time.monotonic() > deadline:
                raise NetbedError(f"{self.name} did not start: {self.log()}")
            time.sleep(0.1)

    def command(self, *words: str) -> None:
        done = self.topology.exec(
            "ph", [sys.executable, str(PHONECTL), str(self.CONTROL_PORT), *words], check=False,
        )
        with (self.logdir / f"{self.name}.commands").open("ab") as log:
            log.write(f"> {' '.join(words)}\n".encode() + done.stdout + done.stderr)
        if done.returncode != 0:
            raise NetbedError(f"{self.name}: {' '.join(words)} failed: {done.stdout!r} {done.stderr!r}")

    def dial(self, uri: str) -> None:
        self.command("dial", uri)

    def hold(self) -> None:
        self.command("hold")

    def resume(self) -> None:
        self.command("resume")

    def hangup(self) -> None:
        self.command("hangup")
