"""Local venue simulators: a venue's exact public market-data protocol on a loopback port.

Runs on the caller's thread (`start_simulator` starts the simulator's own threads and
returns). Tests, the offline demo and the benchmarks use it:

    with start_simulator("binance", instruments=["BTC-USDT"], rate=200, seed=1) as sim:
        ...  # point a client at sim.ws_url and sim.rest_url

A venue plugs in by subclassing `SimProtocol` (see `server.py`) in its own module; the
protocol registry (`mmengine.venues.registry`) names it, and `SIM_PROTOCOLS` is read from
there.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from mmengine.dev.simulator.server import FAULT_KINDS, SimProtocol, SimulatorHandle
from mmengine.venues.registry import simulators

SIM_PROTOCOLS: dict[str, type[SimProtocol]] = simulators()

DEFAULT_INSTRUMENTS = list(SimProtocol.default_instruments)  # a spot venue's

__all__ = [
    "DEFAULT_INSTRUMENTS",
    "FAULT_KINDS",
    "SIM_PROTOCOLS",
    "SimProtocol",
    "SimulatorHandle",
    "start_simulator",
]


def start_simulator(
    venue: str,
    host: str = "127.0.0.1",
    port: int = 0,
    instruments: list[str] | None = None,
    rate: float = 50.0,
    replay: str | Path | None = None,
    faults: list[str] | None = None,
    fault_interval_s: float = 5.0,
    seed: int | None = None,
    shift_bps: float = 0.0,
    ssl_context: ssl.SSLContext | None = None,
    market_seed: int = 0,
    truth: bool = False,
    truth_path: str | Path | None = None,
    truth_levels: int = 5,
) -> SimulatorHandle:
    """Start a simulator for `venue` and return its running handle.

    - `port=0` picks a free port (read `handle.port`, `handle.ws_url`, `handle.rest_url`).
    - `instruments`: our names (`BTC-USDT`, `BTC-USD-PERP`); default the simulator's own
      `default_instruments` (BTC-USDT and ETH-USDT for spot venues). Ignored in replay mode,
      where the capture header's `config.l2_book` decides.
    - `rate`: synthetic mode, book updates per second across all instruments (round robin);
      replay mode, recorded frames per second sent to each client.
    - `replay`: a format-2 capture; each client gets the recording from its start, REST
      snapshots come from the recorded responses.
    - `faults`: any of drop, gap, malformed, stall, badchecksum (venues with a checksum),
      badticker (venues whose best-bid/ask ticker is tied to the book: Binance);
      one of them, chosen at random, every `fault_interval_s` (+-20 %), skipped while no
      client is connected. `stats["faults"]` counts those injected; `handle.inject(kind)`
      injects one at once.
    - `seed`: the same seed gives the same books and update ids (a random one is drawn and
      kept in `handle.seed` when None).
    - `shift_bps`: show every synthetic market this many bps away from the others (an
      outlier venue).
    - `market_seed`: the seed of the fair prices every simulator's books follow (each
      venue in its own style: basis, noise, latency, spread). Simulators with the same
      market seed, in one process or several, show the same market; 0 by default.
    - `ssl_context`: a server context holding a certificate; the simulator then serves
      `wss://` and `https://` (SNI and certificate checks run as against a real venue).
    - `truth`: remember the top `truth_levels` of every book version it announced and the
      venue ids naming them, for a checker (`handle.book_at(instrument, seq)`, and with
      `truth_path` a JSON-lines journal; `mmengine.dev.simulator.truth`).
    """
    protocol = SIM_PROTOCOLS.get(venue)
    if protocol is None:
        raise ValueError(f"no simulator for venue {venue!r}; known: {', '.join(SIM_PROTOCOLS)}")
    handle = SimulatorHandle(
        protocol,
        host=host,
        port=port,
        instruments=instruments or list(protocol.default_instruments),
        rate=rate,
        replay=replay,
        faults=faults or (),
        fault_interval_s=fault_interval_s,
        seed=seed,
        shift_bps=shift_bps,
        ssl_context=ssl_context,
        market_seed=market_seed,
        truth=truth,
        truth_path=truth_path,
        truth_levels=truth_levels,
    )
    return handle.start()
