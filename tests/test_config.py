"""
Tests for L{spwm.config} and the two services' options.
"""

from __future__ import annotations

import os
import re

from twisted.application.service import IServiceMaker
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from spwm.config import (
    MAX_INT,
    ConfigExit,
    host_port,
    listen_description,
    non_negative_float,
    optional_listen_description,
    port_range,
    positive_float,
    positive_int,
    show_default,
    udp_forward,
)
from spwm.tap import agent, contact


class ParseTests(SynchronousTestCase):
    """
    Value parsers.
    """

    def test_host_port(self) -> None:
        """
        Names, IPv4 and bracketed IPv6 with ports parse; missing ports do not.
        """
        self.assertEqual(host_port("contact.example.test:443"), ("contact.example.test", 443))
        self.assertEqual(host_port("[2001:db8::1]:443"), ("2001:db8::1", 443))
        self.assertEqual(host_port("2001:db8::1", 443), ("2001:db8::1", 443))
        for bad in ["host", "host:0", "host:70000", "[::1", ":5"]:
            self.assertRaises(ValueError, host_port, bad)

    def test_udp_forward(self) -> None:
        """
        Forwards name a local port (address optional) and an IP target.
        """
        self.assertEqual(udp_forward("5000=192.0.2.1:6000"), ("127.0.0.1", 5000, "192.0.2.1", 6000))
        self.assertEqual(udp_forward("192.0.2.9:5000=192.0.2.1:6000"), ("192.0.2.9", 5000, "192.0.2.1", 6000))
        self.assertRaises(ValueError, udp_forward, "5000")
        self.assertRaises(ValueError, udp_forward, "5000=name.example:6000")

    def test_port_range(self) -> None:
        """
        Ranges are LOW-HIGH with at least one pair of an even port and the
        next.
        """
        self.assertEqual(port_range("20000-20099"), (20000, 20099))
        self.assertEqual(port_range("20001-20003"), (20001, 20003))
        self.assertRaises(ValueError, port_range, "20000")
        self.assertRaises(ValueError, port_range, "5-5")
        with self.assertRaises(ValueError) as cm:
            port_range("40001-40002")
        self.assertEqual(str(cm.exception), "range '40001-40002' holds no port pair (an even port and the next)")


    def test_numbers_finite(self) -> None:
        """
        A number option takes no C{inf} or C{nan} (they would reach the
        reactor's timers and the kernel's socket options, and end as a
        traceback), nor a number too large for an C{int} socket option,
        nor a fraction where a count is asked for.
        """
        for coerce in (positive_float, non_negative_float):
            for value in ("inf", "-inf", "nan", "1e400", float("inf")):
                with self.assertRaises(ValueError) as cm:
                    coerce(value)
                self.assertEqual(str(cm.exception), f"must be a finite number, not {value!r}")
            self.assertEqual(coerce("1e6"), 1e6)
        self.assertEqual(non_negative_float("0"), 0.0)
        self.assertEqual(positive_int(MAX_INT), MAX_INT)
        self.assertEqual(positive_int(2.0), 2)
        with self.assertRaises(ValueError) as cm:
            positive_int("99999999999999999999")
        self.assertEqual(str(cm.exception), "must be at most 2147483647, not '99999999999999999999'")
        for value in (1.5, "1.5", float("inf"), "inf", True):
            with self.assertRaises(ValueError) as cm:
                positive_int(value)
            self.assertEqual(str(cm.exception), f"must be an integer, not {value!r}")


class OptionsTests(SynchronousTestCase):
    """
    Command line, TOML file and their merge.
    """

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_agent_defaults(self) -> None:
        """
        The agent's options have documented defaults.
        """
        options = agent.Options()
        options.parseOptions([])
        self.assertEqual(options["contact"], ["localhost:443"])
        self.assertEqual(options["forward-udp"], [])
        self.assertEqual(options["plaintext"], 0)
        self.assertEqual(options["keepalive-interval"], 15.0)

    def test_file_and_command_line(self) -> None:
        """
        The TOML file's keys are the long option names; the command line wins,
        also for repeatable options.
        """
        path = self.write(
            'contact = "contact.example.test:8443"\n'
            "plaintext = true\n"
            'forward-udp = ["5000=192.0.2.1:6000", "5001=192.0.2.1:6001"]\n'
            "keepalive-interval = 5\n"
        )
        options = agent.Options()
        options.parseOptions(["--config", path, "--keepalive-interval", "7"])
        self.assertEqual(options["contact"], ["contact.example.test:8443"])
        self.assertEqual(options["plaintext"], 1)
        self.assertEqual(options["keepalive-interval"], 7.0)
        self.assertEqual(len(options["forward-udp"]), 2)
        options = agent.Options()
        options.parseOptions(["--config", path, "--forward-udp", "6000=192.0.2.2:1"])
        self.assertEqual(options["forward-udp"], [("127.0.0.1", 6000, "192.0.2.2", 1)])

    def assertRefused(self, options: object, argv: list[str], *words: str) -> None:
        with self.assertRaises(ConfigExit) as cm:
            options.parseOptions(argv)
        text = str(cm.exception.code)
        self.assertEqual(text.count("\n"), 0)
        for word in words:
            self.assertIn(word, text)

    def test_bad_file_values(self) -> None:
        """
        A bad value in the file is refused with one line naming the key.
        """
        self.assertRefused(agent.Options(), ["--config", self.write('contact = "nohost"\n')], "contact", "needs a port")
        self.assertRefused(agent.Options(), ["--config", self.write("keepalive-interval = -1\n")], "keepalive-interval")
        self.assertRefused(agent.Options(), ["--config", self.write("bogus = 1\n")], "bogus", "unknown option")
        self.assertRefused(agent.Options(), ["--config", self.write("contact = \n")], "not valid TOML")
        self.assertRefused(agent.Options(), ["--config", "/nonexistent/spwm.toml"], "cannot read")

    def test_wrong_toml_types(self) -> None:
        """
        A TOML value of the wrong type (a flag given C{"yes"} or C{1}, a
        list for a number, a number for an address) is refused with one line
        naming the file, the key and the value, never a traceback.
        """
        cases = [
            ('plaintext = "yes"\n', "plaintext: must be true or false, not 'yes'"),
            ("plaintext = 1\n", "plaintext: must be true or false, not 1"),
            ("reconnect-max = [1]\n", "reconnect-max: must be a number, not [1]"),
            ("reconnect-max = true\n", "reconnect-max: must be a number, not True"),
            ("contact = 5\n", "contact: '5' needs a port (HOST:PORT)"),
            ("sip-listen = {a = 1}\n", "sip-listen: must be a non-empty string"),
            ("keepalive-interval = inf\n", "keepalive-interval: must be a finite number, not inf"),
            ("udp-buffer = 1e30\n", "udp-buffer: must be at most 2147483647, not 1e+30"),
            ("max-channels = 1.5\n", "max-channels: must be an integer, not 1.5"),
            ("status-interval = 0.001\n", "status-interval: must be 0 (no status lines) or at least 1, not 0.001"),
        ]
        for text, words in cases:
            path = self.write(text)
            self.assertRefused(agent.Options(), ["--config", path], f"spwm-agent: invalid configuration: {path}: {words}")

    def test_missing_files(self) -> None:
        """
        A file option naming no readable file is refused with one line
        naming the option and the path, without usage's own prefix.
        """
        with self.assertRaises(ConfigExit) as cm:
            agent.Options().parseOptions(["--ca", "/nonexistent/ca.pem"])
        self.assertEqual(
            cm.exception.code,
            "spwm-agent: invalid configuration: --ca: cannot read '/nonexistent/ca.pem': No such file or directory",
        )
        self.assertRefused(
            contact.Options(), ["--cert", "/nonexistent/c.pem", "--key", "/nonexistent/c.key"], "--cert: cannot read"
        )

    def test_config_abbreviated(self) -> None:
        """
        C{--config} abbreviated (C{--conf F}, which C{usage.Options} takes)
        or as C{--config=F} reads the file: its values are used and checked
        (the file was silently left out when abbreviated).
        """
        good = self.write('sip-listen = ["127.0.0.1:5068"]\nplaintext = true\n')
        for argv in (["--conf", good], [f"--config={good}"], ["--confi", good]):
            options = agent.Options()
            options.parseOptions(argv)
            self.assertEqual(options.sip_addresses(), [("127.0.0.1", 5068)], argv)
        bad = self.write("keepalive-interval = -1\n")
        self.assertRefused(agent.Options(), ["--conf", bad], f"{bad}: keepalive-interval: must be greater than 0")

    def test_command_line_wins_over_a_bad_file_value(self) -> None:
        """
        A file key that the command line also gives is not checked: a
        certificate path in the file that cannot be read, or a bad contact
        list, is replaced from the command line (also abbreviated or as
        C{--name=value}); a repeatable option's list is replaced, not added
        to.  Keys the command line does not give are still checked.
        """
        cert = self.write("certificate")
        key = self.write("key")
        path = self.write('cert = "/nonexistent/contact.pem"\nkey = "/nonexistent/contact.key"\n')
        options = contact.Options()
        options.parseOptions(["--config", path, "--cert", cert, f"--key={key}"])
        self.assertEqual((options["cert"], options["key"]), (cert, key))
        options = contact.Options()
        options.parseOptions(["--config", path, "--cer", cert, "--key", key])
        self.assertEqual((options["cert"], options["key"]), (cert, key))
        self.assertRefused(
            contact.Options(),
            ["--config", path, "--cert", cert],
            f"spwm-contact: invalid configuration: {path}: key: cannot read '/nonexistent/contact.key'",
        )
        path = self.write('contact = ["nohost", "a.example.test:443", "b.example.test:443"]\n')
        options = agent.Options()
        options.parseOptions(["--config", path, "--contact", "c.example.test:443"])
        self.assertEqual(options["contact"], ["c.example.test:443"])

    def test_listen_short_forms(self) -> None:
        """
        C{--listen} and C{--status-listen} take C{PORT}, C{IP:PORT} and
        C{[IPV6]:PORT} as the other addresses are written, as the TCP
        endpoints they stand for (which C{--workers} can offset); Twisted
        descriptions pass as they are.
        """
        for given, meant in [
            ("443", "tcp:443"),
            ("127.0.0.1:9090", "tcp:9090:interface=127.0.0.1"),
            ("0.0.0.0:443", "tcp:443:interface=0.0.0.0"),
            ("[::1]:9090", "tcp6:9090:interface=\\:\\:1"),
            ("[2001:db8::1]:443", "tcp6:443:interface=2001\\:db8\\:\\:1"),
            ("tcp:443:interface=127.0.0.1", "tcp:443:interface=127.0.0.1"),
            ("unix:/run/spwm.sock", "unix:/run/spwm.sock"),
            ("bogus:1", "bogus:1"),
        ]:
            self.assertEqual(listen_description(given), meant, given)
            options = contact.Options()
            options.parseOptions(["--plaintext", "--listen", given, "--status-listen", given])
            self.assertEqual((options.config.listen, options.config.status.listen), (meant, meant))
        self.assertIsNone(optional_listen_description(""))
        endpoint = serverFromString(MemoryReactorClock(), listen_description("[::1]:9090"))
        self.assertEqual((endpoint._interface, endpoint._port), ("::1", 9090))
        with self.assertRaises(ValueError):
            listen_description("70000")

    def test_bad_listen_endpoint(self) -> None:
        """
        A C{--listen} that is no endpoint description stops the assembly
        with one line naming the option.
        """
        options = contact.Options()
        options.parseOptions(["--plaintext", "--listen", "bogus:1"])
        with self.assertRaises(SystemExit) as cm:
            contact.makeService(options, MemoryReactorClock())
        self.assertEqual(
            cm.exception.code,
            "spwm-contact: invalid configuration: listen: 'bogus:1': Unknown endpoint type: 'bogus'"
            " (give IP:PORT, PORT or a Twisted endpoint such as tcp:9090:interface=127.0.0.1)",
        )

    def test_endpoint_files_missing(self) -> None:
        """
        An endpoint whose files Twisted cannot read (C{ssl:} without its
        key and certificate, or with a file that is no PEM) stops the
        assembly with one line naming the option and the file, also with
        C{--workers}; it was a traceback.
        """
        missing = os.path.abspath(self.mktemp())
        garbage = self.write("not a key")
        for argv, line in (
            (
                ["--listen", f"ssl:4451:privateKey={missing}"],
                f"spwm-contact: invalid configuration: listen: 'ssl:4451:privateKey={missing}':"
                f" [Errno 2] No such file or directory: '{missing}'",
            ),
            (
                ["--listen", f"ssl:4451:privateKey={missing}", "--workers", "2"],
                f"spwm-contact: invalid configuration: listen: 'ssl:4451:privateKey={missing}':"
                f" [Errno 2] No such file or directory: '{missing}'",
            ),
            (
                ["--listen", "tcp:4451", "--status-listen", f"ssl:9095:privateKey={garbage}"],
                f"spwm-contact: invalid configuration: status-listen: 'ssl:9095:privateKey={garbage}':",
            ),
        ):
            options = contact.Options()
            options.parseOptions(["--plaintext", *argv])
            with self.assertRaises(SystemExit) as cm:
                contact.makeService(options, MemoryReactorClock())
            self.assertIsInstance(cm.exception.code, str)
            self.assertTrue(cm.exception.code.startswith(line), cm.exception.code)

    def test_bad_command_line(self) -> None:
        """
        A bad command-line value is refused with one line naming the option.
        """
        self.assertRefused(agent.Options(), ["--forward-udp", "x"], "forward-udp")
        self.assertRefused(agent.Options(), ["--keepalive-timeout", "zero"], "keepalive-timeout")

    def test_drain_time_zero(self) -> None:
        """
        C{--drain-time 0} stops without a drain; a negative drain time, or
        one that is not a number (C{nan} among them), is refused.
        """
        options = contact.Options()
        options.parseOptions(["--plaintext", "--drain-time", "0"])
        self.assertEqual(options.config.limits.tunnel.drain_time, 0.0)
        self.assertRefused(
            contact.Options(),
            ["--plaintext", "--drain-time", "-1"],
            "spwm-contact: invalid configuration: --drain-time: must be 0 or more, not '-1'",
        )
        self.assertRefused(
            contact.Options(),
            ["--plaintext", "--drain-time", "nan"],
            "spwm-contact: invalid configuration: --drain-time: must be a finite number, not 'nan'",
        )
        self.assertRefused(
            contact.Options(), ["--plaintext", "--config", self.write("drain-time = -0.5\n")], "drain-time: must be 0 or more"
        )

    def test_contact_needs_tls_material(self) -> None:
        """
        The contact point refuses to start without a certificate unless
        plaintext is asked for by name.
        """
        self.assertRefused(contact.Options(), [], "cert", "--plaintext")
        options = contact.Options()
        options.parseOptions(["--plaintext"])
        self.assertEqual(options["listen"], "tcp:443")
        self.assertEqual(options["allow-forward"], [])

    def test_every_option_is_documented(self) -> None:
        """
        --help documents every option of both services.
        """
        for module in (agent, contact):
            text = str(module.Options())
            for option in module.OPTIONS:
                self.assertIn("--" + option.name, text)
                self.assertIn(option.doc.split()[0], text)


class PluginTests(SynchronousTestCase):
    """
    The twistd plugins.
    """

    def test_plugins_found(self) -> None:
        """
        twistd finds spwm-agent and spwm-contact.
        """
        names = {p.tapname for p in getPlugins(IServiceMaker)}
        self.assertTrue({"spwm-agent", "spwm-contact"} <= names)

    def test_no_init_in_plugins(self) -> None:
        """
        twisted/plugins has no __init__.py (it would shadow Twisted's own).
        """
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.assertFalse(os.path.exists(os.path.join(here, "twisted", "plugins", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(here, "twisted", "__init__.py")))


class DocsTests(SynchronousTestCase):
    """
    The configuration reference stays true to the code.
    """

    def test_every_option_in_configuration_md(self) -> None:
        """
        docs/configuration.md names every option of both services.
        """
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(here, "docs", "configuration.md")) as f:
            text = f.read()
        for module in (agent, contact):
            for option in module.OPTIONS:
                self.assertIn(f"`--{option.name}`", text)

    def test_configuration_md_tables(self) -> None:
        """
        Each service's table in docs/configuration.md has one row per
        option, no row for an option that does not exist, and in each row
        the option's kind (a flag, repeatable) and its default as C{--help}
        writes it (C{60}, C{40000-40999}; C{off} for a flag, C{none} for a
        repeatable option without one, C{-} for none).
        """
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(here, "docs", "configuration.md")) as f:
            text = f.read()
        tables = {
            agent: text.split("### `spwm-agent`")[1].split("### `spwm-contact`")[0],
            contact: text.split("### `spwm-contact`")[1].split("\n## ")[0],
        }
        row = re.compile(r"^\| `--([a-z0-9-]+)`(?: \((flag|repeatable)\))? \| `([^`]*)` \|", re.M)
        for module, table in tables.items():
            rows = {m.group(1): (m.group(2), m.group(3)) for m in row.finditer(table)}
            self.assertEqual(sorted(rows), sorted(o.name for o in module.OPTIONS), module.__name__)
            for option in module.OPTIONS:
                shown = show_default(option.default)
                if option.flag:
                    expected = ("flag", "off")
                elif option.repeat:
                    expected = ("repeatable", shown or "none")
                else:
                    expected = (None, shown or "-")
                self.assertEqual(rows[option.name], expected, option.name)

    def test_help_shows_defaults(self) -> None:
        """
        C{--help} shows the default of every option that has one, a
        repeatable one's too (C{--contact}'s C{localhost:443}).
        """
        for module in (agent, contact):
            text = " ".join(str(module.Options()).split())
            for option in module.OPTIONS:
                shown = show_default(option.default)
                if shown is not None:
                    self.assertIn(f"[default: {shown}]", text, option.name)


class DeployExamplesTests(SynchronousTestCase):
    """
    The deployment examples in C{examples/deploy/} stay valid: every key of
    the TOML files is an option with a valid value, and the systemd units
    start twistd with those files.
    """

    def setUp(self) -> None:
        self.deploy = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "deploy")

    def _load(self, module, name: str):
        """
        Parse C{examples/deploy/NAME} with its C{/etc/spwm/} files made in a
        temporary directory.
        """
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        with open(os.path.join(self.deploy, name)) as f:
            text = f.read()
        for needed in ("contact.pem", "contact.key"):
            open(os.path.join(tmp, needed), "w").close()
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            f.write(text.replace("/etc/spwm/", tmp + "/"))
        options = module.Options()
        options.parseOptions(["--config", path])
        return options

    def test_contact(self) -> None:
        """
        C{contact.toml} parses, with its port range, state file and status page.
        """
        options = self._load(contact, "contact.toml")
        self.assertEqual(options["media-ports"], (50000, 59999))
        self.assertEqual(options["state-file"], "/var/lib/spwm/contact.state")
        self.assertEqual(options["status-listen"], "tcp:9090:interface=127.0.0.1")
        self.assertEqual(options["max-calls"], 300)
        # the comment says what it counts: call legs, not calls
        with open(os.path.join(self.deploy, "contact.toml")) as f:
            before = f.read().split("\nmax-calls = ")[0].splitlines()
        comment = []
        while before and before[-1].startswith("#"):
            comment.insert(0, before.pop())
        self.assertTrue(comment[0].startswith("# Call legs with media at once"), comment)

    def test_agent(self) -> None:
        """
        C{agent.toml} parses, with its SIP address.
        """
        options = self._load(agent, "agent.toml")
        self.assertEqual(options.sip_addresses(), [("192.0.2.10", 5060)])

    def test_install_steps(self) -> None:
        """
        docs/operations.md makes the venv whose C{twistd} the units run,
        with the system's Python (one under C{/root} is not the service's
        to run).
        """
        with open(os.path.join(os.path.dirname(os.path.dirname(self.deploy)), "docs", "operations.md")) as f:
            text = f.read()
        self.assertIn("\n/usr/bin/python3 -m venv /opt/spwm/venv\n", text)
        self.assertIn("\n/opt/spwm/venv/bin/pip install .", text)
        # the plugin cache, which the services cannot write, made by root
        self.assertIn(
            '\n/opt/spwm/venv/bin/python3 -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"\n',
            text,
        )
        # the user the contact point's unit runs as is made there, and
        # owns the key
        with open(os.path.join(self.deploy, "spwm-contact.service")) as f:
            [user] = re.findall(r"(?m)^User=(\S+)$", f.read())
        self.assertIn(f"\nuseradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {user}\n", text)
        self.assertIn(f" -o {user} -g {user} contact.key /etc/spwm/", text)

    def test_agent_unit_user(self) -> None:
        """
        The agent's unit runs as a fixed user, which a mode 0640 file of
        its group can be readable by (C{DynamicUser} has none), and a
        C{cdr-file} of C{agent.toml} lies in its C{LogsDirectory}.
        """
        with open(os.path.join(self.deploy, "spwm-agent.service")) as f:
            unit = f.read()
        self.assertNotRegex(unit, r"(?m)^DynamicUser=")
        self.assertIn("\nUser=spwm\nGroup=spwm\n", unit)
        [logs] = re.findall(r"(?m)^LogsDirectory=(\S+)$", unit)
        with open(os.path.join(self.deploy, "agent.toml")) as f:
            [path] = re.findall(r'(?m)^# cdr-file = "(.+)"$', f.read())
        self.assertEqual(os.path.dirname(path), f"/var/log/{logs}")

    def test_units(self) -> None:
        """
        Each unit runs its half in the foreground with its TOML file.
        """
        for half in ("contact", "agent"):
            with open(os.path.join(self.deploy, f"spwm-{half}.service")) as f:
                unit = f.read()
            self.assertIn(f"twistd -n --pidfile= spwm-{half} --config /etc/spwm/{half}.toml", unit)
            # The venv of docs/operations.md, by its full path: systemd's
            # PATH holds no venv.
            self.assertIn(f"\nExecStart=/opt/spwm/venv/bin/twistd -n --pidfile= spwm-{half} ", unit)
            # A start-up error exits 1: the unit starts it again, spaced
            # out so that systemd's start limit does not end the retries.
            self.assertRegex(unit, r"(?m)^Restart=(on-failure|always)$")
            self.assertIn("\nRestartSec=5\n", unit)


class LogFileTests(SynchronousTestCase):
    """
    What docs/operations.md, "Logs", says of twistd's C{--logfile} holds for
    the Twisted installed.
    """

    def test_twistd_rotation(self) -> None:
        """
        twistd's log file rotates at 1,000,000 bytes and keeps every old
        file, as the docs say; C{SIGUSR1}, not C{SIGHUP}, rotates it.
        """
        from twisted.python.logfile import LogFile

        log = LogFile.fromFullPath(os.path.abspath(self.mktemp()))
        self.addCleanup(log.close)
        self.assertEqual((log.rotateLength, log.maxRotatedFiles), (1_000_000, None))
        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "operations.md")) as f:
            text = " ".join(f.read().split())
        self.assertIn("when it reaches 1,000,000 bytes, and on `SIGUSR1`", text)
        self.assertIn("It deletes none of them", text)
        self.assertIn("`SIGHUP` does not reopen it", text)


class ReadmeTests(SynchronousTestCase):
    """
    The README's by-hand commands parse as written.
    """

    def test_by_hand_commands(self) -> None:
        """
        Each C{twistd} line of the README names a pid file (two twistd
        processes in one directory would share C{twistd.pid}) and its
        options parse; the contact point allows media to loopback, where
        the phones of a one-machine test are.
        """
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(here, "README.md")) as f:
            text = f.read().replace("\\\n", " ")
        commands = [line.split() for line in text.splitlines() if line.startswith("twistd ")]
        self.assertEqual(sorted(c[3] for c in commands), ["spwm-agent", "spwm-contact"])
        for command in commands:
            self.assertEqual(command[:3], ["twistd", "-n", "--pidfile="])
            options = {"spwm-agent": agent, "spwm-contact": contact}[command[3]].Options()
            options.parseOptions(command[4:])
            if command[3] == "spwm-contact":
                self.assertEqual(options["media-allow"], ["127.0.0.0/8"])
                self.assertEqual(options["allow-forward"], [("127.0.0.1", 7000)])
            else:
                self.assertEqual(options["forward-udp"], [("127.0.0.1", 6000, "127.0.0.1", 7000)])
