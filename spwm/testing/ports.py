# -*- test-case-name: tests.test_testing_ports -*-
"""
Free ports on a local address, for tests, benchmarks and the demo.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", following: int = 0) -> int:
    """
    A port free now on C{host} for both UDP and TCP, with the C{following}
    ports after it free for TCP too (SIP over TLS listens on port + 1).

    @raise RuntimeError: if none is found in 100 tries.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            held: list[socket.socket] = []
            try:
                for offset in range(following + 1):
                    t = socket.socket()
                    held.append(t)
                    t.bind((host, port + offset))
            except OSError:
                continue
            finally:
                for t in held:
                    t.close()
            return port
    raise RuntimeError(f"no free port on {host}")
