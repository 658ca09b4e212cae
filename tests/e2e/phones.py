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

import ipaddress
import os
import shutil
import sys
import time
from pathlib import Path

from attrs import define, field
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from spwm.testing.certs import CertFiles, TestCA

from .netbed import (
    AGENT,
    REPO_ROOT,
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
    # without a port (5060, or 5061 for TLS, by default)
    text = text.replace(f"{DOC_AGENT};transport=udp", f"{DOC_AGENT};{param}")
    text = text.replace(DOC_AGENT, AGENT)
    text = text.replace(DOC_CA, ca_file)
    text = text.replace(DOC_PASSWORD, USERS[user])
    text = text.replace(f"{DOC_USER}@", f"{user}@")
    text = text.replace(f"username={DOC_USER}", f"username={user}")
    return text


def agent_certificate(ca: TestCA, address: str) -> CertFiles:
    """
    A server certificate for the agent's C{address} from the test CA,
    naming it both as an IP address and as a DNS name in subjectAltName:
    Linphone (mbedTLS) compares only DNS names, baresip and PJSIP
    (OpenSSL) the IP address.
    """
    files = ca.issue([address], "agent")
    key = serialization.load_pem_private_key(Path(files.key).read_bytes(), None)
    old = x509.load_pem_x509_certificate(Path(files.cert).read_bytes())
    alt = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(address)), x509.DNSName(address)]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(old.not_valid_before_utc)
        .not_valid_after(old.not_valid_after_utc)
        .add_extension(alt, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    cert = builder.sign(ca._key, hashes.SHA256())
    Path(files.cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def missing_clients() -> dict[str, str]:
    """
    The clients this machine lacks, each with what would install it.
    """
    missing = {}
    if shutil.which("baresip") is None:
        missing["baresip"] = "baresip (Debian package baresip-core)"
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

    @ivar name: process name (log files C{<name>.*}, rendered files in
        the directory C{<name>/}, commands sent in C{<name>.commands}).
    @ivar user: its user at Kamailio (password from L{USERS}).
    @ivar transport: C{udp}, C{tcp} or C{tls} from the phone to the agent.
    @ivar ca_file: the CA of the agent's SIP TLS certificate.
    """

    topology: Topology
    logdir: Path
    name: str
    user: str
    transport: str
    ca_file: str
    process: ManagedProcess | None = field(default=None)

    def start(self) -> None:
        """Render the client's files and start it in the namespace C{ph}."""
        raise NotImplementedError

    def command(self, *words: str) -> None:
        """Send the client one command of its own language."""
        raise NotImplementedError

    def dial(self, uri: str) -> None:
        """Call C{uri}."""
        raise NotImplementedError

    def hold(self) -> None:
        """Put the current call on hold (a re-INVITE)."""
        raise NotImplementedError

    def resume(self) -> None:
        """Take the current call off hold (a re-INVITE)."""
        raise NotImplementedError

    def hangup(self) -> None:
        """End the current call (BYE)."""
        raise NotImplementedError

    def stop(self) -> None:
        """End the client (SIGTERM to its process group, then SIGKILL)."""
        if self.process is not None:
            self.process.stop(grace=2.0)

    def log(self) -> str:
        """The end of its standard output and error, for messages."""
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
    #: answer incoming calls by itself; else they ring (180) until the
    #: caller gives up or a CANCEL comes
    auto_answer: bool = field(default=True)

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
            config = config.replace("0.0.0.0:5080", f"{PHONE_HOST}:5080")
            config += f"net_interface   {self.net_interface}\n"
        (directory / "config").write_text(config)
        accounts = render((CLIENTS / "baresip" / "accounts").read_text(), self.user, self.transport, self.ca_file)
        if self.auto_answer:
            accounts = accounts.replace("answermode=manual", "answermode=auto")
        (directory / "accounts").write_text(accounts)
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


def tone_wav(path: Path, seconds: float = 40.0) -> Path:
    """A 440 Hz tone, 8 kHz 16-bit mono WAV (the clients' "microphone")."""
    import math
    import struct
    import wave

    if not path.exists():
        frames = b"".join(
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * n / 8000)))
            for n in range(int(8000 * seconds))
        )
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(frames)
    return path


@define
class FifoPhone(Phone):
    """A client that reads its commands from standard input (a FIFO)."""

    _fifo: int | None = field(default=None)

    def spawn(self, argv: list[str], directory: Path) -> None:
        fifo = directory / "commands"
        os.mkfifo(fifo)
        # read and write: opening never blocks and the reader never sees EOF
        self._fifo = os.open(fifo, os.O_RDWR)
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
        self.process = self.topology.spawn(
            "ph", self.name, ["sh", "-c", f"exec {quoted} < {fifo}"],
            env={"HOME": str(directory)}, cwd=directory,
        )

    def command(self, *words: str) -> None:
        line = " ".join(words)
        with (self.logdir / f"{self.name}.commands").open("a") as log:
            log.write(f"> {line}\n")
        if self.process is None or self.process.returncode is not None:
            raise NetbedError(f"{self.name} is not running: {self.log()}")
        os.write(self._fifo, line.encode() + b"\n")

    def stop(self) -> None:
        try:
            if self.process is not None and self.process.returncode is None:
                self.command("quit")
                try:
                    self.process.wait(3.0)
                except NetbedError:
                    pass
            super().stop()
        finally:
            if self._fifo is not None:
                os.close(self._fifo)
                self._fifo = None


@define
class Linphone(FifoPhone):
    """
    C{linphonec} with C{examples/clients/linphone/linphonerc-outbound} or
    C{linphonerc-registrar}, answering calls by itself (C{-a}), a WAV tone
    as microphone (C{soundcard use files}, C{play}).
    """

    configuration: str = field(default="outbound")

    def start(self) -> None:
        directory = self.logdir / self.name
        directory.mkdir()
        rc = render((CLIENTS / "linphone" / f"linphonerc-{self.configuration}").read_text(),
                    self.user, self.transport, self.ca_file)
        (directory / "linphonerc").write_text(rc)
        # liblinphone 5.1 never starts its SIP transports when it cannot
        # open its database (~/.local/share/linphone/linphone.db)
        (directory / ".local" / "share" / "linphone").mkdir(parents=True)
        self.spawn(["linphonec", "-c", str(directory / "linphonerc"), "-a", "-d", "4",
                    "-l", str(self.logdir / f"{self.name}.log")], directory)
        self.command("soundcard", "use", "files")
        self.command("play", str(tone_wav(self.logdir / "tone.wav")))

    def dial(self, uri: str) -> None:
        self.command("call", uri)

    def hold(self) -> None:
        self.command("pause")

    def resume(self) -> None:
        self.command("resume")

    def hangup(self) -> None:
        self.command("terminate")


@define
class Pjsip(FifoPhone):
    """
    C{examples/clients/pjsip/phone.py} (pjsua2) with its configuration
    block filled in for the bed; its null sound device sends silence
    (no VAD), which is RTP all the same.
    """

    outbound: bool = field(default=True)
    sdp_address: str | None = field(default=None)

    def start(self) -> None:
        directory = self.logdir / self.name
        directory.mkdir()
        text = (CLIENTS / "pjsip" / "phone.py").read_text()
        agent = f"sip:{DOC_AGENT}:5060;transport=udp"
        text = text.replace(f'AGENT = "{agent}"', f'AGENT = "{render(agent, self.user, self.transport, self.ca_file)}"')
        text = text.replace('ADDRESS_OF_RECORD = "sip:alice@', f'ADDRESS_OF_RECORD = "sip:{self.user}@')
        text = text.replace(f'USERNAME = "{DOC_USER}"', f'USERNAME = "{self.user}"')
        text = text.replace(f'PASSWORD = "{DOC_PASSWORD}"', f'PASSWORD = "{USERS[self.user]}"')
        text = text.replace(f'CA_FILE = "{DOC_CA}"', f'CA_FILE = "{self.ca_file}"')
        if not self.outbound:
            text = text.replace("OUTBOUND_PROXY = True", "OUTBOUND_PROXY = False")
        if self.sdp_address:
            # a phone with a second interface: its SDP names that one
            line = "    account_config.idUri = ADDRESS_OF_RECORD\n"
            text = text.replace(line, line + f"    account_config.mediaConfig.transportConfig.publicAddress = {self.sdp_address!r}\n")
        (directory / "phone.py").write_text(text)
        self.spawn([sys.executable, "-u", str(directory / "phone.py")], directory)

    def dial(self, uri: str) -> None:
        self.command("call", uri)

    def hold(self) -> None:
        self.command("hold")

    def resume(self) -> None:
        self.command("resume")

    def hangup(self) -> None:
        self.command("hangup")
