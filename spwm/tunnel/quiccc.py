# -*- test-case-name: tests.test_quiccc -*-
"""
The QUIC path's congestion control (issue 13): NewReno (aioquic's) whose
window never falls below a floor.

Media is application-limited: calls send what they send, 50 packets a
second each, and cannot slow down.  Plain RTP over UDP has no congestion
control at all, so a lossy link costs it exactly its loss.  aioquic's
congestion control counts every DATAGRAM frame and takes each random loss
for congestion: on a link that loses 5 % of its packets with a 160 ms
round trip its window stays at its minimum of two packets (about 15 kB/s
at that round trip), so more than a call's worth of datagrams wait for it
-- late, then dropped -- and a loss becomes a long gap.  With the floor
the window still grows and shrinks as NewReno says above it, but media
up to C{floor} bytes per round trip is never held back by random loss;
with a loss-based controller the floor is what stands for "the media we
must send anyway".

The floor is L{spwm.limits.QuicLimits.window_floor}; the algorithm is
registered with aioquic under L{algorithm_name}C{(floor)} at first use.
"""

from __future__ import annotations

from typing import Iterable

from aioquic.quic.congestion import base
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.packet_builder import QuicSentPacket

__all__ = ["FlooredRenoCongestionControl", "algorithm_name"]


class FlooredRenoCongestionControl(RenoCongestionControl):
    """
    aioquic's NewReno with a congestion window of at least C{floor} bytes.

    @ivar floor: the smallest congestion window, in bytes.
    @ivar floored: how often a loss (or persistent congestion) would have
        taken the window below the floor.
    """

    def __init__(self, *, max_datagram_size: int, floor: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.floor = floor
        self.floored = 0
        self.congestion_window = max(self.congestion_window, floor)

    def _raise_to_floor(self) -> None:
        if self.congestion_window < self.floor:
            self.floored += 1
            self.congestion_window = self.floor
            if self.ssthresh is not None and self.ssthresh < self.floor:
                self.ssthresh = self.floor

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        super().on_packets_lost(now=now, packets=packets)
        self._raise_to_floor()

    def on_persistent_congestion(self) -> None:
        super().on_persistent_congestion()
        self._raise_to_floor()


def algorithm_name(floor: int) -> str:
    """
    The name of NewReno with C{floor} in aioquic's registry (for
    C{QuicConfiguration.congestion_control_algorithm}); registered on the
    first call for each floor.  0: aioquic's own C{reno}.
    """
    if floor <= 0:
        return "reno"
    name = f"spwm-reno-floor-{floor}"

    def factory(*, max_datagram_size: int) -> FlooredRenoCongestionControl:
        return FlooredRenoCongestionControl(max_datagram_size=max_datagram_size, floor=floor)

    base.register_congestion_control(name, factory)
    return name
