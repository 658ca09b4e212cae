"""
Tests for the benchmarks' shared load helpers (C{bench/_load.py}): the ramp
with bisection, the loss figure, the microsecond format, the receive loop;
and their media port ranges (C{bench/_common.py}).
"""

from __future__ import annotations

import io
import os
import socket
import time
from contextlib import redirect_stderr
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench._common import MEDIA_HIGH, MEDIA_LOW, max_media_ports, media_ranges
from bench._load import bisect_ramp, fmt_us, loss, receive_until


def _threshold(limit: float, stop_at: float | None = None) -> tuple[Any, list[float]]:
    """
    A step that passes up to C{limit} (and cannot tell at C{stop_at}).
    """
    asked: list[float] = []

    def step(rate: float) -> tuple[bool | None, float]:
        asked.append(rate)
        if rate == stop_at:
            return None, rate
        return rate <= limit, rate

    return step, asked


class BisectRampTests(SynchronousTestCase):
    def test_ramp_then_bisect(self) -> None:
        """
        The rate grows by C{factor} until a step fails, then halves the
        interval C{bisect} times.
        """
        step, asked = _threshold(700)
        found = bisect_ramp(step, 100, 10_000, 2, 3)
        self.assertEqual(asked, [100, 200, 400, 800, 600, 700, 750])
        self.assertEqual((found.good, found.bad, found.stopped), (700, 750, False))
        self.assertEqual(found.results, asked)

    def test_cap(self) -> None:
        """
        Nothing fails up to C{cap}: no bisection, no failed rate.
        """
        step, asked = _threshold(10_000)
        found = bisect_ramp(step, 100, 500, 2, 3)
        self.assertEqual(asked, [100, 200, 400])
        self.assertEqual((found.good, found.bad), (400, None))

    def test_max_steps(self) -> None:
        step, asked = _threshold(10_000)
        found = bisect_ramp(step, 100, 1e9, 1, 3, max_steps=5)
        self.assertEqual(len(asked), 5)
        self.assertEqual(found.good, 100)

    def test_stopped_is_a_lower_bound(self) -> None:
        """
        A step that cannot tell (the generator could not send that fast)
        ends the search, in the ramp or while bisecting, without an
        exception.
        """
        step, asked = _threshold(10_000, stop_at=400)
        found = bisect_ramp(step, 100, 10_000, 2, 3)
        self.assertEqual(asked, [100, 200, 400])
        self.assertEqual((found.good, found.bad, found.stopped), (200, None, True))
        step, asked = _threshold(650, stop_at=700)
        found = bisect_ramp(step, 100, 10_000, 2, 3)
        self.assertEqual(asked, [100, 200, 400, 800, 600, 700])
        self.assertEqual((found.good, found.bad, found.stopped), (600, 800, True))

    def test_integer(self) -> None:
        """
        Whole rates, stopping when the middle is an end.
        """
        step, asked = _threshold(52)
        found = bisect_ramp(step, 50, 1000, 1.5, 10, integer=True)
        self.assertEqual(asked, [50, 75, 62, 56, 53, 52])
        self.assertEqual((found.good, found.bad), (52, 53))

    def test_below_start(self) -> None:
        """
        The first step failing: bisection below C{start}, or none.
        """
        step, asked = _threshold(30)
        self.assertEqual(bisect_ramp(step, 100, 1000, 2, 2).good, 25)
        self.assertEqual(asked, [100, 50, 25])
        step, asked = _threshold(30)
        found = bisect_ramp(step, 100, 1000, 2, 2, below_start=False)
        self.assertEqual((found.good, found.bad, asked), (0.0, 100, [100]))


class FiguresTests(SynchronousTestCase):
    def test_loss(self) -> None:
        self.assertEqual(loss(0, 0), 0.0)
        self.assertAlmostEqual(loss(100, 90), 0.1)
        self.assertEqual(loss(100, 120), 0.0)  # duplicates

    def test_fmt_us(self) -> None:
        self.assertEqual(fmt_us(0.0012346), "   1235")
        self.assertEqual(fmt_us(0.0012346, 8), "    1235")


class ReceiveTests(SynchronousTestCase):
    def test_receive_until(self) -> None:
        """
        Every datagram reaching the sockets before the deadline is handed
        over with its length; the loop ends at the deadline.
        """
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (a, b, sender):
            self.addCleanup(s.close)
            s.bind(("127.0.0.1", 0))
        sender.sendto(b"one", a.getsockname())
        sender.sendto(b"three", b.getsockname())
        sender.sendto(b"two", a.getsockname())
        got: list[bytes] = []
        start = time.monotonic()
        receive_until([a, b], start + 0.3, lambda buf, n, now: got.append(bytes(buf[:n])))
        self.assertGreaterEqual(time.monotonic() - start, 0.29)
        self.assertEqual(sorted(got), [b"one", b"three", b"two"])


class MediaRangesTests(SynchronousTestCase):
    """
    The halves' media port ranges of the benchmarks (C{bench/_common.py}),
    and the options that size them.
    """

    def test_fit(self) -> None:
        """
        Ranges up to L{max_media_ports} are disjoint, even-aligned and between
        L{MEDIA_LOW} and L{MEDIA_HIGH}; a larger size is a ValueError, not
        an error of C{random}.
        """
        for count in (1, 2, 3):
            largest = max_media_ports(count)
            for size in (2, 1000, largest):
                ranges = media_ranges(count, size)
                self.assertEqual(len(ranges), count)
                for low, high in ranges:
                    self.assertEqual((low % 2, high - low + 1), (0, size))
                    self.assertTrue(MEDIA_LOW <= low and high < MEDIA_HIGH)
                for (_, high), (low, _) in zip(ranges, ranges[1:]):
                    self.assertLess(high, low)
            self.assertRaises(ValueError, media_ranges, count, largest + 2)

    def test_options(self) -> None:
        """
        C{sip_calls.py --media-ports} and C{media.py --calls} that would not
        fit are refused with a usage error before anything starts.
        """
        from bench import media, sip_calls

        err = io.StringIO()
        with redirect_stderr(err):
            with self.assertRaises(SystemExit) as e:
                sip_calls.main(["--media-ports", str(max_media_ports(2) + 2)])
            self.assertEqual(e.exception.code, 2)
            with self.assertRaises(SystemExit) as e:
                media.main(["--calls", "100,3000"])
            self.assertEqual(e.exception.code, 2)
        self.assertIn("--media-ports: from 2 to 5998", err.getvalue())
        self.assertIn("--calls: at most 1449", err.getvalue())

    def test_instructions_options(self) -> None:
        """
        C{sip_calls.py --instructions} is refused with a usage error, before
        anything starts, beside C{--cprofile} and without Valgrind.
        """
        from bench import sip_calls

        directory = self.mktemp()
        err = io.StringIO()
        with redirect_stderr(err):
            with self.assertRaises(SystemExit) as e:
                sip_calls.main(["--instructions", directory, "--cprofile", directory])
            self.assertEqual(e.exception.code, 2)
            self.patch(os, "environ", dict(os.environ, PATH=self.mktemp()))
            with self.assertRaises(SystemExit) as e:
                sip_calls.main(["--instructions", directory])
            self.assertEqual(e.exception.code, 2)
        self.assertIn("--instructions and --cprofile: one at a time", err.getvalue())
        self.assertIn("--instructions needs Valgrind (valgrind, callgrind_control not found", err.getvalue())
        self.assertFalse(os.path.exists(directory))

    def test_syscalls_options(self) -> None:
        """
        C{sip_calls.py --syscalls} is refused with a usage error, before
        anything starts, beside C{--instructions} and without strace.
        """
        from bench import sip_calls

        directory = self.mktemp()
        err = io.StringIO()
        with redirect_stderr(err):
            with self.assertRaises(SystemExit) as e:
                sip_calls.main(["--syscalls", directory, "--instructions", directory])
            self.assertEqual(e.exception.code, 2)
            self.patch(os, "environ", dict(os.environ, PATH=self.mktemp()))
            with self.assertRaises(SystemExit) as e:
                sip_calls.main(["--syscalls", directory])
            self.assertEqual(e.exception.code, 2)
        self.assertIn("--syscalls and --instructions: one at a time", err.getvalue())
        self.assertIn("--syscalls needs strace (not found", err.getvalue())
        self.assertFalse(os.path.exists(directory))

    def test_strace_table(self) -> None:
        """
        The table of C{strace -c} is read by system call, with its total;
        a file without a total is unread (C{None}).
        """
        from bench._common import Processes

        class Stopped:
            def send_signal(self, sig: int) -> None:
                pass

            def wait(self, timeout: float) -> int:
                return 0

        out = self.mktemp()
        with open(out, "w") as f:
            f.write(
                "% time     seconds  usecs/call     calls    errors syscall\n"
                "------ ----------- ----------- --------- --------- ----------------\n"
                " 36.07    0.033404          10      3328           sendto\n"
                " 18.30    0.016941           3      4829      1467 recvfrom\n"
                "------ ----------- ----------- --------- --------- ----------------\n"
                "100.00    0.092596           4      8157      1467 total\n"
            )
        self.assertEqual(
            Processes.strace_table(Stopped(), out),  # type: ignore[arg-type]
            {"sendto": 3328, "recvfrom": 4829, "total": 8157},
        )
        with open(out, "w") as f:
            f.write("strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted\n")
        self.assertIsNone(Processes.strace_table(Stopped(), out))  # type: ignore[arg-type]


class RefusalTests(SynchronousTestCase):
    def test_refusals_by_reason(self) -> None:
        """
        The calls SIPp aborted on an error response to their INVITE are
        counted by that response's status line (each call once: the
        "Dead call" lines of its retransmissions' answers are not), and
        a step's line names them by code and reason, most first.
        """
        from bench.sip_calls import _refusals, refusal_text

        directory = self.mktemp()
        os.mkdir(directory)
        aborted = (
            "2026-12-07\t14:19:57.593168\t1796653197.593168: Aborting call on unexpected message for"
            " Call-Id '{}-28944@127.0.0.1': while expecting '100' (index 1), received"
            " 'SIP/2.0 503 Service Unavailable ({})\n"
        )
        with open(os.path.join(directory, "uac_28944_errors.log"), "w") as f:
            for i in range(3):
                f.write(aborted.format(i, "tunnel congested"))
            f.write(aborted.format(3, "overloaded"))
            f.write(
                "2026-12-07\t14:19:58.000000\t1796653198.000000: Dead call 3-28944@127.0.0.1"
                " (successful), received 'SIP/2.0 503 Service Unavailable (overloaded)\n"
            )
        with open(os.path.join(directory, "uac_28944_rtt.csv"), "w") as f:
            f.write("received 'SIP/2.0 503 Service Unavailable (overloaded)\n")
        refused = _refusals(directory)
        self.assertEqual(
            refused,
            {"503 Service Unavailable (tunnel congested)": 3, "503 Service Unavailable (overloaded)": 1},
        )
        self.assertEqual(refusal_text(refused), "3 503 (tunnel congested), 1 503 (overloaded)")
        self.assertEqual(refusal_text({"480 Temporarily Unavailable": 2}), "2 480 Temporarily Unavailable")
