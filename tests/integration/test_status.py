"""
The status page of a running pair on loopback: what it says during a call
and after it, over real HTTP.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.internet import defer, reactor
from twisted.web.client import Agent, readBody

from spwm.status import HELP
from tests.integration.test_resumption import _LoopbackPair
from tests.integration.test_tunnel_loopback import wait_until


class _WithStatus(_LoopbackPair):
    """
    Both halves serve C{/status} and C{/metrics} on C{--status-listen}.
    """

    extra = ["--status-listen", "tcp:0:interface=127.0.0.1"]

    @defer.inlineCallbacks
    def get(self, service: Any, path: str) -> Any:
        port = service.status_http.port.getHost().port
        response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
        body = yield readBody(response)
        return response.code, body


class StatusPageTests(_WithStatus):
    """
    What the status listener says during a call and after it.
    """

    @defer.inlineCallbacks
    def test_during_and_after_a_call(self) -> Any:
        """
        During a call the contact point's page shows two tunnels, two
        registrations, the call's dialogs, streams and relayed packets, and
        the agent's its tunnel up and one stream; after the hang-up the
        streams are gone and the packet counts stay; C{/metrics} has the
        same numbers.
        """
        alice, bob, a_call, b_call = yield self.call()
        yield wait_until(lambda: self.contact.media.status()["packets_out"] > 10)
        code, body = yield self.get(self.contact, "/status")
        self.assertEqual(code, 200)
        doc = json.loads(body)
        self.assertEqual(doc["side"], "contact")
        self.assertEqual(doc["tunnels"]["open"], 2)
        self.assertEqual(doc["sessions"]["live"], 2)
        self.assertEqual(doc["sip"]["registrations"], 2)
        self.assertEqual(doc["sip"]["dialogs"], 2)
        self.assertEqual(doc["media"]["streams"], 2)
        self.assertGreater(doc["media"]["packets_out"], 10)
        code, body = yield self.get(self.agents[0], "/status")
        agent = json.loads(body)
        self.assertEqual((agent["side"], agent["tunnel"]["up"], agent["media"]["streams"]), ("agent", True, 1))
        self.assertEqual(agent["sessions"]["users"], 1)
        yield self.check_lists(doc, agent)
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
        yield wait_until(lambda: self.contact.media.streams == 0)
        code, body = yield self.get(self.contact, "/status")
        after = json.loads(body)["media"]
        self.assertEqual((after["streams"], after["relay_sockets"]), (0, 0))
        # the call's relay sockets, kept bound for a later call on their ports
        self.assertEqual(after["relay_sockets_kept"], doc["media"]["relay_sockets"])
        self.assertGreater(after["relay_sockets_kept"], 0)
        self.assertGreaterEqual(after["packets_out"], doc["media"]["packets_out"])
        code, body = yield self.get(self.contact, "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'spwm_sip_registrations{side="contact"} 2.0\n', body)
        self.assertIn(b'spwm_media_streams{side="contact"} 0.0\n', body)
        self.assertIn(b'spwm_media_relay_sockets_kept{side="contact"} %d.0\n' % after["relay_sockets_kept"], body)
        self.assertIn(b'spwm_media_relay_sockets_reused_total{side="contact"} 0.0\n', body)
        self.assertIn(b'spwm_calls_ended_total{answered="yes",reason="dialog_ended",side="contact"} 2.0\n', body)
        self.assertIn(b'spwm_call_setup_seconds_count{side="contact"} 2.0\n', body)
        code, body = yield self.get(self.contact, "/status")
        ended = json.loads(body)["lists"]["ended_calls"]["items"]
        self.assertEqual(len(ended), 2)
        self.assertEqual(json.loads(body)["lists"]["calls"]["total"], 0)
        code, _ = yield self.get(self.contact, "/nothing")
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def check_lists(self, doc: dict[str, Any], agent: dict[str, Any]) -> Any:
        """
        During the call: the contact point lists both tunnels (TLS, a
        round trip), both live sessions, both registrations and the call's
        two legs; the agent its tunnel, its phone's registration and its
        leg; the filters and the page agree.
        """
        lists = doc["lists"]
        tunnels = lists["tunnels"]["items"]
        self.assertEqual(len(tunnels), 2)
        agent_ids = sorted(t["agent"] for t in tunnels)
        for tunnel in tunnels:
            self.assertTrue(tunnel["source"].startswith("127.0.0.1:"))
            self.assertTrue(tunnel["tls"].startswith("TLSv1."), tunnel["tls"])
            self.assertTrue(tunnel["cipher"])
            self.assertTrue(tunnel["established"])
            self.assertGreaterEqual(tunnel["uptime"], 0)
        self.assertEqual(sorted(s["state"] for s in lists["sessions"]["items"]), ["live", "live"])
        regs = lists["registrations"]["items"]
        self.assertEqual(len(regs), 2)
        self.assertEqual(sorted(r["agent"] for r in regs), agent_ids)
        for reg in regs:
            self.assertTrue(reg["aor"].startswith("sip:"))
            self.assertGreater(reg["expires_in"], 0)
        calls = lists["calls"]["items"]
        self.assertEqual(len(calls), 2)
        self.assertEqual(len({c["call_id"] for c in calls}), 1)
        for call in calls:
            self.assertEqual(call["state"], "answered")
            self.assertTrue(call["from"].startswith("sip:") and call["to"].startswith("sip:"))
            self.assertGreater(call["streams"][0]["packets_in"] + call["streams"][0]["packets_out"], 0)
        self.assertEqual(len(agent["lists"]["tunnels"]["items"]), 1)
        self.assertEqual(len(agent["lists"]["registrations"]["items"]), 1)
        self.assertEqual(agent["lists"]["calls"]["items"][0]["call_id"], calls[0]["call_id"])
        code, body = yield self.get(self.contact, "/status?agent=" + agent_ids[0])
        filtered = json.loads(body)["lists"]
        self.assertEqual([t["agent"] for t in filtered["tunnels"]["items"]], [agent_ids[0]])
        self.assertEqual(filtered["registrations"]["total"], 1)
        self.assertEqual(filtered["calls"]["total"], 1)
        code, body = yield self.get(self.contact, "/status?limit=1&offset=1")
        self.assertEqual(len(json.loads(body)["lists"]["tunnels"]["items"]), 1)
        code, body = yield self.get(self.contact, "/")
        self.assertEqual(code, 200)
        self.assertIn(calls[0]["call_id"].encode(), body)
        self.assertIn(agent_ids[0].encode(), body)


DASHBOARD = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "examples",
    "deploy",
    "grafana-spwm.json",
)


def exposed_names(text: str) -> set[str]:
    """
    The metric names of a Prometheus text exposition: its families (TYPE
    lines, so a counter with no sample yet counts) and its samples'.
    """
    names = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    names.update(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M))
    return names


class DashboardTests(_WithStatus):
    """
    The Grafana dashboard of C{examples/deploy/} queries only metrics that
    a running contact point and agent expose.
    """

    @defer.inlineCallbacks
    def test_dashboard_metrics_exist(self) -> Any:
        """
        Every C{spwm_...} name in the dashboard's queries is in C{/metrics}
        of the contact point or of the agent, and each half's own ones
        are in its own.
        """
        with open(DASHBOARD) as f:
            dashboard = json.load(f)
        exprs = [
            target["expr"]
            for panel in dashboard["panels"]
            for target in panel.get("targets", ())
        ]
        self.assertGreater(len(exprs), 15)
        wanted = {name for expr in exprs for name in re.findall(r"\bspwm_[a-zA-Z0-9_]+", expr)}
        code, contact = yield self.get(self.contact, "/metrics")
        self.assertEqual(code, 200)
        code, agent = yield self.get(self.agents[0], "/metrics")
        self.assertEqual(code, 200)
        on_contact = exposed_names(contact.decode())
        on_agent = exposed_names(agent.decode())
        self.assertEqual(sorted(wanted - (on_contact | on_agent)), [])
        for name in ("spwm_tunnels_open", "spwm_tunnels_refused_total", "spwm_sessions_live"):
            self.assertIn(name, wanted & on_contact)
        for name in ("spwm_tunnel_up", "spwm_tunnel_failures"):
            self.assertIn(name, wanted & on_agent)
        for name in ("spwm_call_setup_seconds_bucket", "spwm_media_jitter_seconds_bucket", "spwm_calls_in_progress"):
            self.assertIn(name, wanted & on_contact & on_agent)


ALERTS = os.path.join(os.path.dirname(DASHBOARD), "prometheus-alerts.yml")

#: a series selector of the rules: a name and its label matchers
_SELECTOR = re.compile(r"\b(spwm_[a-zA-Z0-9_]+)(?:\{([^}]*)\})?")


def exposed_series(text: str) -> list[tuple[str, dict[str, str]]]:
    """
    The samples of a Prometheus text exposition: each name and its labels.
    """
    series = []
    for name, labels in re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", text, re.M):
        series.append((name, dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or ""))))
    return series


class AlertRulesTests(_WithStatus):
    """
    The alerting rules of C{examples/deploy/} select series that a
    running contact point and agent expose from the start, before any
    event (C{tests/test_alerts.py} runs C{promtool} over them).
    """

    #: series only a half started with the option exposes (not the pair
    #: of this test): their names as C{spwm/status.py} documents them
    OPTIONAL = {
        "spwm_state_file_failing": "--state-file",
        "spwm_client_certificate_expires_in": "--client-cert",
    }

    @defer.inlineCallbacks
    def test_alert_series_exist(self) -> Any:
        """
        Every selector in the rules' expressions (a name and its label
        matchers, all C{=}) matches a series of the contact point's or
        the agent's C{/metrics}.
        """
        with open(ALERTS) as f:
            rules = "".join(line for line in f if not line.lstrip().startswith("#"))
        selectors = _SELECTOR.findall(rules)
        self.assertGreater(len(selectors), 10)
        code, contact = yield self.get(self.contact, "/metrics")
        self.assertEqual(code, 200)
        code, agent = yield self.get(self.agents[0], "/metrics")
        self.assertEqual(code, 200)
        series = exposed_series(contact.decode()) + exposed_series(agent.decode())
        missing = []
        for name, matchers in selectors:
            wanted = dict(re.findall(r'(\w+)="([^"]*)"', matchers))
            self.assertNotRegex(matchers, r"!=|=~|!~", "only = matchers are checked here")
            if name in self.OPTIONAL:
                continue
            if not any(n == name and all(labels.get(k) == v for k, v in wanted.items()) for n, labels in series):
                missing.append(f"{name}{{{matchers}}}")
        self.assertEqual(missing, [])
        for name in self.OPTIONAL:
            self.assertIn(name.removeprefix("spwm_"), HELP)
