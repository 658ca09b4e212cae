# -*- test-case-name: tests.test_config -*-
"""
Command-line options and TOML configuration of both services.

Each service declares its options once, as a tuple of L{Option}; the same
table builds the C{twistd} options class, reads the C{--config} TOML file
(whose keys are the long option names) and validates values.  Command-line
options override the file.
"""

from __future__ import annotations

import getopt
import ipaddress
import math
import sys
import tomllib
import types
from typing import Any, Callable, Collection, Mapping, Sequence

from attrs import frozen
from twisted.python import usage

from spwm.errors import ConfigError


@frozen
class Option:
    """
    One option.

    @ivar name: the long name, also the TOML key.
    @ivar default: the default value (for repeatable options, a tuple).
    @ivar coerce: turns a string (command line) or a TOML value into the
        value, raising L{ValueError} with the problem.
    @ivar doc: one line of help.
    @ivar flag: a switch without a value.
    @ivar repeat: may be given several times (a list in TOML).
    """

    name: str
    default: Any
    coerce: Callable[[Any], Any]
    doc: str
    flag: bool = False
    repeat: bool = False


# -- coercions ------------------------------------------------------------


def string(value: Any) -> str:
    """
    A non-empty string.
    """
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def optional_string(value: Any) -> str | None:
    """
    A string or nothing.
    """
    if value is None or value == "":
        return None
    return string(value)


#: the largest integer an option takes: the kernel's socket options (the
#: receive buffers) are C{int}s, and no count or size needs more
MAX_INT = 2**31 - 1


def _number(value: Any) -> float:
    """
    C{value} as a finite number (C{inf} and C{nan} would reach the
    reactor's timers and the kernel's socket options, which take neither).
    """
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, not {value!r}")
    return number


def positive_float(value: Any) -> float:
    """
    A finite number greater than zero.
    """
    number = _number(value)
    if not number > 0:
        raise ValueError(f"must be greater than 0, not {value!r}")
    return number


def non_negative_float(value: Any) -> float:
    """
    A finite number, zero or more.
    """
    number = _number(value)
    if not number >= 0:
        raise ValueError(f"must be 0 or more, not {value!r}")
    return number


def zero_or_at_least(minimum: float, zero: str) -> Callable[[Any], float]:
    """
    The check of an interval that is 0 (C{zero} says what that means) or
    at least C{minimum} seconds: a smaller one would run its work without
    pause (status lines, OPTIONS pings, DNS queries).
    """

    def check(value: Any) -> float:
        number = non_negative_float(value)
        if 0 < number < minimum:
            raise ValueError(f"must be 0 ({zero}) or at least {minimum:g}, not {value!r}")
        return number

    return check


#: C{--state-interval} (both halves): 0, the state file written at stop
#: only, or at least a second.
state_interval = zero_or_at_least(1.0, "written at stop only")


def positive_int(value: Any) -> int:
    """
    An integer greater than zero, at most L{MAX_INT}.
    """
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"must be an integer, not {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"must be an integer, not {value!r}") from None
    if number <= 0:
        raise ValueError(f"must be greater than 0, not {value!r}")
    if number > MAX_INT:
        raise ValueError(f"must be at most {MAX_INT}, not {value!r}")
    return number


def boolean(value: Any) -> bool:
    """
    A TOML boolean.
    """
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def parse_port(text: str) -> int:
    """
    A port number, 1-65535.
    """
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"bad port {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    return port


def host_port(value: Any, default_port: int | None = None) -> tuple[str, int]:
    """
    C{HOST:PORT}, C{[IPV6]:PORT} or (with a default port) C{HOST}.
    """
    text = string(value).strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"bad address {text!r}")
        if rest.startswith(":"):
            return host, parse_port(rest[1:])
        if rest or default_port is None:
            raise ValueError(f"{text!r} needs a port")
        return host, default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if not host:
            raise ValueError(f"bad address {text!r}")
        return host, parse_port(port)
    if ":" in text:
        # A bare IPv6 address.
        ipaddress.IPv6Address(text)
        if default_port is None:
            raise ValueError(f"{text!r} needs a port (write [ADDRESS]:PORT)")
        return text, default_port
    if default_port is None:
        raise ValueError(f"{text!r} needs a port (HOST:PORT)")
    return text, default_port


def host_port_pair(value: Any) -> tuple[str, int]:
    """
    C{HOST:PORT} (DNS name, IPv4 or C{[IPv6]}) as C{(host, port)}.
    """
    return host_port(value)


def host_port_string(value: Any) -> str:
    """
    Validate C{HOST:PORT} and keep it as text.
    """
    host_port(value)
    return str(value)


def udp_forward(value: Any) -> tuple[str, int, str, int]:
    """
    C{[LOCAL_ADDR:]LOCAL_PORT=HOST:PORT}; the local address defaults to
    127.0.0.1.
    """
    text = string(value)
    local, sep, remote = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r} is not LOCAL_PORT=HOST:PORT")
    if local.isdigit():
        local_host, local_port = "127.0.0.1", parse_port(local)
    else:
        local_host, local_port = host_port(local)
    host, port = host_port(remote)
    ipaddress.ip_address(host)
    return local_host, local_port, host, port


def listen_description(value: Any) -> str:
    """
    Where to listen for TCP connections: a Twisted server endpoint
    description (C{tcp:9090:interface=127.0.0.1}, C{unix:/run/x.sock}), or
    the short forms C{PORT}, C{IP:PORT} and C{[IPV6]:PORT} (the way the
    other addresses are written), returned as the description they stand
    for (C{tcp:PORT}, C{tcp:PORT:interface=IP}, C{tcp6:PORT:interface=IPV6}).
    """
    text = string(value).strip()
    if text.isdigit():
        return f"tcp:{parse_port(text)}"
    try:
        host, port = host_port(text)
        address = ipaddress.ip_address(host)
    except ValueError:
        # not a short form: Twisted reads it (and says what is wrong)
        return text
    if address.version == 6:
        escaped = host.replace(":", "\\:")
        return f"tcp6:{port}:interface={escaped}"
    return f"tcp:{port}:interface={host}"


def optional_listen_description(value: Any) -> str | None:
    """
    L{listen_description}, or nothing.
    """
    if value is None or value == "":
        return None
    return listen_description(value)


def ip_literal_port(value: Any) -> tuple[str, int]:
    """
    C{IP:PORT} with an IP address literal.
    """
    host, port = host_port(value)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    return host, port


def port_range(value: Any) -> tuple[int, int]:
    """
    C{LOW-HIGH}, an inclusive range of even-sized UDP ports.
    """
    text = string(value)
    low, sep, high = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r} is not LOW-HIGH")
    lo, hi = parse_port(low), parse_port(high)
    if hi - lo < 1:
        raise ValueError(f"range {text!r} holds fewer than two ports")
    if lo + (lo & 1) + 1 > hi:
        raise ValueError(f"range {text!r} holds no port pair (an even port and the next)")
    return lo, hi


def network(value: Any) -> str:
    """
    A CIDR network.
    """
    text = string(value)
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a network (ADDRESS/PREFIX)") from None
    return text


def ip_address(value: Any) -> str:
    """
    An IP address literal.
    """
    text = string(value)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    return text


def readable_file(value: Any) -> str:
    """
    The path of a file that can be read now.
    """
    path = string(value)
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror}") from None
    return path


# -- the Options class builder ------------------------------------------


def _usage_coerce(option: Option) -> Callable[[str], Any]:
    def coerce(text: str) -> Any:
        try:
            return option.coerce(text)
        except ValueError as e:
            raise ValueError(f"--{option.name}: {e}") from None

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


class SpwmOptions(usage.Options):
    """
    The base of both services' options: built from C{options}, with
    C{--config FILE}.
    """

    options: Sequence[Option] = ()
    #: the typed configuration, built by L{postOptions}
    config: Any = None
    #: what C{usage.Options} reads, made from L{options}
    optParameters: list[list[Any]] = []
    optFlags: list[list[Any]] = []
    synopsis = ""
    #: printed before the option list by --help
    synopsis_name = ""

    def __init__(self) -> None:
        self._lists: dict[str, list[Any]] = {}
        self._cli_lists: set[str] = set()
        self._from_file: set[str] = set()
        super().__init__()
        for option in self.options:
            if option.repeat:
                self[option.name] = list(option.default)

    def __init_subclass__(cls, name: str = "", options: Sequence[Option] = (), **kwargs: Any) -> None:
        """
        C{class Options(SpwmOptions, name="spwm-agent", options=OPTIONS)}
        declares the options class of one service from its table.
        """
        super().__init_subclass__(**kwargs)
        if not name:
            return
        params: list[list[Any]] = []
        flags: list[list[Any]] = []
        cls.options = tuple(options)
        cls.synopsis_name = name
        for option in options:
            if option.flag:
                flags.append([option.name, None, option.doc])
            elif option.repeat:
                setattr(cls, "opt_" + option.name.replace("-", "_"), cls._repeat_handler(option))
            else:
                params.append([option.name, None, option.default, option.doc, _usage_coerce(option)])
        params.append(["config", None, None, "TOML configuration file; its keys are these options' long names."])
        cls.optParameters = params
        cls.optFlags = flags
        cls.synopsis = f"[{name} options]"

    @classmethod
    def build(cls, name: str, options: Sequence[Option]) -> type[SpwmOptions]:
        """
        Make the options class of one service.
        """
        return types.new_class(
            name.title().replace("-", "") + "Options", (cls,), {"name": name, "options": options}
        )

    def opt_version(self) -> None:
        """
        Print the version of SPWM and exit.
        """
        import platform

        import twisted
        import spwm

        print(
            f"{self.synopsis_name} {spwm.__version__} "
            f"(Twisted {twisted.__version__}, Python {platform.python_version()})"
        )
        sys.exit(0)

    def getUsage(self, width: int | None = None) -> str:
        """
        The help text, with each default as it would be written on the
        command line (C{40000-40999}, C{5}), and none for options without one.
        """
        saved = self.defaults
        self.defaults = {key: show_default(value) for key, value in saved.items()}
        try:
            return super().getUsage(width)
        finally:
            self.defaults = saved

    @staticmethod
    def _repeat_handler(option: Option) -> Callable[[SpwmOptions, str], None]:
        def handler(self: SpwmOptions, value: str) -> None:
            try:
                coerced = option.coerce(value)
            except ValueError as e:
                raise usage.UsageError(f"--{option.name}: {e}") from None
            if option.name not in self._cli_lists:
                self._cli_lists.add(option.name)
                self[option.name] = []
            self[option.name].append(coerced)

        handler.__doc__ = option.doc + " (repeatable)" + (f" [default: {show_default(option.default)}]" if option.default else "")
        return handler

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse the command line (after the file named by C{--config}).

        @raise ConfigExit: with one line naming the option and the problem;
            twistd then exits with status 1 and that line, not its whole help.
        """
        if options is None:
            options = sys.argv[1:]
        try:
            given = self._command_line(options)
            # the last --config, however written (--config=F, or --conf F:
            # usage.Options takes an abbreviation of a long name)
            paths = [value for name, value in given if name == "config"]
            if paths:
                self.load_file(paths[-1], given={name for name, _ in given})
            super().parseOptions(options)
        except usage.UsageError as e:
            # usage.Options wraps our coercions' errors in this prefix; the
            # rest already names the option.
            text = str(e).replace("Parameter type enforcement failed: ", "")
            raise ConfigExit(f"{self.synopsis_name}: invalid configuration: {text}") from None

    def _command_line(self, argv: Sequence[str]) -> list[tuple[str, str]]:
        """
        The options that C{argv} gives, in order, as (long name, value),
        read the way C{usage.Options} reads them (abbreviations of long
        names included: C{--conf} is C{--config}).

        @raise usage.UsageError: C{argv} cannot be read (an unknown option,
            a value missing).
        """
        try:
            opts, _ = getopt.getopt(list(argv), self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        given = []
        for opt, value in opts:
            name = opt.lstrip("-")
            name = self.synonyms.get(name) or self.synonyms.get(name.replace("-", "_"), name)
            given.append((name.replace("_", "-"), value))
        return given

    def _given(self, argv: Sequence[str]) -> set[str]:
        """
        The long names of the options that C{argv} gives (L{_command_line}).

        @raise usage.UsageError: C{argv} cannot be read.
        """
        return {name for name, _ in self._command_line(argv)}

    def load_file(self, path: str, given: Collection[str] = ()) -> None:
        """
        Read a TOML file into the options.  A key that the command line
        also gives (C{given}) is neither checked nor used: the command line
        wins, and a repeatable option's list from the command line replaces
        the file's.

        @param given: the long names of the options on the command line.
        @raise usage.UsageError: naming the key and the problem.
        """
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise usage.UsageError(f"config: cannot read {path!r}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise usage.UsageError(f"config: {path!r} is not valid TOML: {e}") from None
        known = {o.name: o for o in self.options}
        for key, value in data.items():
            option = known.get(key)
            try:
                if option is None:
                    raise ConfigError(key, "unknown option")
                if key in given:
                    continue
                if option.flag:
                    self[key] = 1 if _coerce(Option(key, False, boolean, ""), value) else 0
                elif option.repeat:
                    if not isinstance(value, list):
                        value = [value]
                    self[key] = [_coerce(option, v) for v in value]
                else:
                    self[key] = _coerce(option, value)
            except ConfigError as e:
                raise usage.UsageError(f"{path}: {e}") from None
            self._from_file.add(key)

    def postOptions(self) -> None:
        """
        Check the options and build the typed configuration, L{config}.
        """
        try:
            self.validate()
            self.config = self.build_config()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def build_config(self) -> Any:
        """
        The typed configuration of these options (see L{spwm.tap.options}).

        @raise ConfigError: naming the key and the problem.
        """
        return None

    def validate(self) -> None:
        """
        Check options against each other.

        @raise ConfigError: naming the key and the problem.
        """


def show_default(value: Any) -> str | None:
    """
    A default value as a user would type it: C{(40000, 40999)} as
    C{40000-40999}, C{5.0} as C{5}; C{None}, empty and C{False} as nothing.
    """
    if value is None or value is False or value == () or value == [] or value == "":
        return None
    if isinstance(value, tuple) and value and all(isinstance(v, (str, tuple)) for v in value):
        # a repeatable option's values (--contact's localhost:443,
        # --sip-listen's 127.0.0.1:5060)
        return ", ".join(v if isinstance(v, str) else str(show_default(v)) for v in value)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}-{value[1]}"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
        from spwm.addr import hostport

        return hostport(value[0], value[1])
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _coerce(option: Option, value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and option.coerce is not boolean:
        value = str(value) if option.coerce in (host_port_string, host_port_pair, port_range) else value
    try:
        return option.coerce(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(option.name, _type_problem(value) if isinstance(e, TypeError) else str(e)) from None


def coerce_values(options: Sequence[Option], values: Mapping[str, Any]) -> dict[str, Any]:
    """
    C{values} written as in the TOML file (keys are the long option names)
    coerced by their options, as C{--config} reads them; a flag becomes a
    C{bool}, a repeatable option a list.

    @raise ConfigError: an unknown key or a bad value.
    """
    known = {o.name: o for o in options}
    coerced: dict[str, Any] = {}
    for key, value in values.items():
        option = known.get(key)
        if option is None:
            raise ConfigError(key, "unknown option")
        if option.flag:
            coerced[key] = _coerce(Option(key, False, boolean, ""), value)
        elif option.repeat:
            coerced[key] = [_coerce(option, v) for v in (value if isinstance(value, list) else [value])]
        else:
            coerced[key] = _coerce(option, value)
    return coerced


def _type_problem(value: Any) -> str:
    kind = {bool: "a boolean", list: "a list", dict: "a table", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
    return f"must not be {kind} ({value!r})"


class ConfigExit(SystemExit):
    """
    The configuration is invalid: exit with this one line.
    """
