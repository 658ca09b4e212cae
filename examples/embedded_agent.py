# -*- test-case-name: tests.integration.test_embedding -*-
"""
A Twisted SIP application that carries its SPWM agent in-process: no
separate C{twistd spwm-agent}, the application's own service tree holds the
agent (C{docs/embedding.md}).

The application is the test phone of C{examples/phone.py}; the agent
listens for its SIP on a loopback port only the application uses, and the
phone sends everything there.  One process, one outbound tunnel.

Against a contact point on this machine (the embedded registrar)::

    twistd -n spwm-contact --plaintext --listen tcp:8443:interface=127.0.0.1 \\
        --sip-address 127.0.0.1:5070 --media-address 127.0.0.1 --allow-unregistered
    python examples/embedded_agent.py --contact 127.0.0.1:8443 --plaintext --name alice

It registers C{alice@example.test} through its agent, prints the answer and
stops (with C{--stay}, it stays registered and answers calls).
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, task

from spwm.embed import Agent, AgentConfig, build_agent
from spwm.testing.phone import Phone


class PhoneService(Service):
    """
    The SIP application as a Twisted service: its socket opens and closes
    with the service.

    @ivar phone: the user agent.
    """

    def __init__(self, phone: Phone) -> None:
        self.phone = phone

    def startService(self) -> None:
        super().startService()
        self.phone.start()

    def stopService(self) -> Any:
        super().stopService()
        return self.phone.stop()


def free_loopback_port() -> int:
    """
    A port free for UDP and TCP on 127.0.0.1 now (for the agent's SIP).
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return int(port)


def agent_config(
    contact: str, name: str, *, plaintext: bool = False, ca: str | None = None, **more: Any
) -> AgentConfig:
    """
    The in-process agent's configuration: the same keys as the agent's TOML
    file.  It listens for the application on a free loopback port and
    relays media on loopback.
    """
    values: dict[str, Any] = {
        "contact": contact,
        "agent-id": f"embedded-{name}",
        "sip-listen": [f"127.0.0.1:{free_loopback_port()}"],
        "plaintext": plaintext,
        "status-interval": 0,
        **more,
    }
    if ca is not None:
        values["ca"] = ca
    return AgentConfig.from_options(values)


def application(
    reactor: Any, config: AgentConfig, name: str, domain: str = "example.test"
) -> tuple[MultiService, Agent, Phone]:
    """
    The application's service tree: the agent first (so its SIP socket is
    bound before the phone sends), then the phone, which uses the agent as
    its outbound proxy.

    @return: the tree to start, the agent's parts and the phone.
    """
    top = MultiService()
    agent = build_agent(config, reactor)
    agent.service.setServiceParent(top)
    phone = Phone(reactor, name, domain, config.sip_listen[0])
    PhoneService(phone).setServiceParent(top)
    return top, agent, phone


@defer.inlineCallbacks
def tunnel_up(reactor: Any, agent: Agent, timeout: float = 10.0) -> Any:
    """
    Wait until the agent's tunnel has completed its handshake (until then
    the agent answers new requests with C{503}).

    @raise TimeoutError: not within C{timeout} seconds.
    """
    waited = 0.0
    while agent.handle.current is None:
        if waited >= timeout:
            raise TimeoutError(f"no tunnel to {agent.config.contact_name} after {timeout:.0f} s")
        yield task.deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--contact", required=True, help="the contact point, HOST:PORT")
    parser.add_argument("--plaintext", action="store_true", help="plain TCP to the contact point")
    parser.add_argument("--ca", help="PEM file of the CA of the contact point's certificate")
    parser.add_argument("--name", default="alice", help="user part of the AOR")
    parser.add_argument("--domain", default="example.test", help="domain of the AOR")
    parser.add_argument("--stay", action="store_true", help="stay registered and answer calls")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    config = agent_config(args.contact, args.name, plaintext=args.plaintext, ca=args.ca)
    top, agent, phone = application(reactor, config, args.name, args.domain)
    result = {"code": 1}

    @defer.inlineCallbacks
    def run() -> Any:
        try:
            top.startService()
            yield tunnel_up(reactor, agent)
            response = yield phone.register()
            print(f"{args.name}: REGISTER through the in-process agent -> {response.status} {response.reason}")
            result["code"] = 0 if response.status == 200 else 1
            if args.stay and response.status == 200:
                phone.on_incoming = lambda call: call.established.addCallback(lambda c: c.start_media())
                reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
                return
        except Exception as e:
            print(f"{args.name}: {e}", file=sys.stderr)
        yield top.stopService()
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()
    return result["code"]


if __name__ == "__main__":
    raise SystemExit(main())
