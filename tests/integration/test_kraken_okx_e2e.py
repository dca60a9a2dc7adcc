"""End to end with real parts: Kraken v1/v2 and OKX v5 simulators -> the engine -> the test's
own ZeroMQ SUB on `<run_dir>/prices` and `<run_dir>/books`, decoded with the official `avro`
package. Faults (`badchecksum`, `gap`, `drop`) are injected on demand; the faulted
instrument resyncs alone, no Price comes from a non-LIVE book, the others keep publishing.
Then `mmengine record` on a simulator session, replayed, ends in the books the engine had.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmengine.book.sync import BookDriver as Venue
from mmengine.book.sync import InstrumentStats
from mmengine.config import parse_config
from mmengine.dev.simulator import start_simulator
from mmengine.engine import Engine
from mmengine.model import BookState
from mmengine.replay import replay_capture
from tests.integration.conftest import Subscriber, frozen_live_tops, official_decode
from tests.venue_session import wait_for

pytestmark = pytest.mark.integration

INSTRUMENTS = {
    "kraken-v1": ["BTC-USD", "ETH-USD"],
    "kraken-v2": ["BTC-USD", "ETH-USD"],
    "okx-v5": ["BTC-USDT", "ETH-USDT-PERP"],
}
# What one OKX contract is worth ("Get instruments" ctVal, as OKX lists them): in the coin
# for USDT-margined (linear) swaps, in USD for USD-margined (inverse) ones.
OKX_COIN_PER_CONTRACT = {"BTC-USDT-PERP": 0.01, "ETH-USDT-PERP": 0.1}
OKX_USD_PER_CONTRACT = {"BTC-USD-PERP": 100.0}


def config(
    protocol: str, url: str, run_dir: Path, depth: int = 10, rest_url: str | None = None
) -> dict[str, Any]:
    insts = INSTRUMENTS[protocol]
    venue = {"name": "v", "protocol": protocol, "url": url, "instruments": insts, "depth": depth}
    if rest_url is not None:
        venue["rest_url"] = rest_url  # OKX: its swaps' contract sizes
    return {
        "engine": {"pricing_workers": 2, "run_dir": str(run_dir), "top_levels": 10},
        "venues": [venue],
        # One venue: quoting from it must be asked for (else every Price is halted, empty).
        "instruments": [{"name": i, "sources": [{"venue": "v"}], "min_venues": 1} for i in insts],
        "limits": {"reconnect_max_s": 0.5},
    }


def snapshot(venue: Venue) -> dict[str, tuple[int, int, int]]:
    """(resyncs, checksum failures, sequence gaps) per instrument (read across threads:
    plain ints, good enough for a test)."""
    out = {}
    for inst, st in list(venue.stats.items()):
        assert isinstance(st, InstrumentStats)
        out[inst] = (st.resyncs, st.checksums_failed, st.sequence_gaps)
    return out


def collect_until(sub: Subscriber, schema: str, done: threading.Event, into: list) -> None:
    """Decode (official avro) everything `sub` receives until `done` is set and it is idle."""
    while True:
        if sub.sock.poll(100):
            _topic, payload = sub.sock.recv_multipart()
            into.append(official_decode(schema, payload))
        elif done.is_set():
            return


def last_live_of(tops: list[dict[str, Any]], instrument: str) -> dict[str, Any]:
    return [t for t in tops if t["instrument"] == instrument and t["state"] == "LIVE"][-1]


def priced_live(prices: list[dict[str, Any]], insts: list[str], since_ns: int) -> bool:
    """Whether each instrument has a Price built from a LIVE book, received after `since_ns`."""
    seen = {p["instrument"] for p in list(prices) if not p["halted"] and p["recv_ts_ns"] > since_ns}
    return seen >= set(insts)


def all_live(venue: Venue) -> bool:
    return all(b.state is BookState.LIVE for b in list(venue.books.values()))


@pytest.mark.parametrize("protocol", ["kraken-v2", "kraken-v1", "okx-v5"])
def test_faults_resync_only_the_faulted_instrument(protocol: str, tmp_path: Path) -> None:
    insts = INSTRUMENTS[protocol]
    with start_simulator(protocol, instruments=insts, rate=300, seed=11) as sim:
        doc = config(protocol, sim.ws_url, tmp_path / "run", rest_url=sim.rest_url)
        engine = Engine(parse_config(doc))
        engine.start()
        prices = Subscriber(engine.endpoint("prices"))
        books = Subscriber(engine.endpoint("books"))
        got: dict[str, list[dict[str, Any]]] = {"prices": [], "tops": []}
        done = threading.Event()
        collectors = [
            threading.Thread(
                target=collect_until, args=(prices, "price.avsc", done, got["prices"])
            ),
            threading.Thread(
                target=collect_until, args=(books, "book_top.avsc", done, got["tops"])
            ),
        ]
        try:
            for t in collectors:
                t.start()
            venue = engine.connections[0].venue
            wait_for(lambda: all_live(venue))
            # The subscriber must have joined (a SUB misses what was published before its
            # subscription reached the PUB): every instrument priced live, seen here.
            wait_for(lambda: priced_live(got["prices"], insts, since_ns=0), 20)
            faulted: dict[str, set[str]] = {}
            for kind in ("badchecksum", "gap"):
                before = snapshot(venue)
                # A gap on Kraken is seen by the next checksum, if the lost step changed the
                # subscribed window at all: inject until one is caught.
                for _ in range(10):
                    sim.inject(kind)
                    try:
                        # resyncs is counted last, after the failed check that caused it
                        wait_for(
                            lambda b=before: any(snapshot(venue)[i][0] != b[i][0] for i in insts),
                            1.0,
                        )
                        break
                    except AssertionError:
                        continue
                after = snapshot(venue)
                changed = {i for i in insts if after[i] != before[i]}
                assert len(changed) == 1, (kind, before, after)
                (inst,) = changed
                resyncs, crc_failed, gaps = (
                    a - b for a, b in zip(after[inst], before[inst], strict=True)
                )
                assert resyncs == 1
                if kind == "badchecksum" or protocol.startswith("kraken"):
                    assert crc_failed == 1  # Kraken has no sequence: its checksum sees gaps
                else:
                    assert gaps == 1  # OKX: the seqId chain
                faulted[kind] = changed
                wait_for(lambda: all_live(venue))
            fault_ns = time.time_ns()
            reconnects = venue.venue_stats.reconnects
            sim.inject("drop")
            wait_for(lambda: venue.venue_stats.reconnects > reconnects)
            wait_for(lambda: all_live(venue))
            recovered_ns = time.time_ns()
            wait_for(lambda: priced_live(got["prices"], insts, since_ns=recovered_ns), 20)
        finally:
            engine.stop()
            done.set()
            for t in collectors:
                t.join()
            prices.close()
            books.close()
    # No Price from a non-LIVE book: windows in which a book was not LIVE, from its own
    # state changes on the books stream.
    windows: dict[str, list[tuple[int, int]]] = defaultdict(list)
    down_since: dict[str, int] = {}
    for top in got["tops"]:
        inst = top["instrument"]
        if top["state"] != "LIVE":
            down_since.setdefault(inst, top["recv_ts_ns"])
        elif inst in down_since:
            windows[inst].append((down_since.pop(inst), top["recv_ts_ns"]))
    for inst in faulted["badchecksum"] | faulted["gap"]:
        assert windows[inst], f"{inst}: no resync seen on the books stream"
    for price in got["prices"]:
        for start, end in windows[price["instrument"]]:
            if start <= price["recv_ts_ns"] < end:
                # A Price may still go out (halted), but built from no venue book.
                assert not price["venues"], f"priced from a non-LIVE book: {price}"
                assert price["halted"] and not price["bids"] and not price["asks"], price
    by_inst = defaultdict(list)
    for price in got["prices"]:
        if price["halted"]:
            assert not price["venues"], price  # halted only for want of a LIVE book
            continue
        assert price["bids"] and price["asks"] and price["venues"] == ["v"], price
        by_inst[price["instrument"]].append(price["recv_ts_ns"])
    # Every instrument kept being priced, through the faults and after the reconnect.
    for inst in insts:
        assert any(ts < fault_ns for ts in by_inst[inst]), inst
        assert any(ts > recovered_ns for ts in by_inst[inst]), inst


@pytest.mark.parametrize("protocol", ["kraken-v2", "okx-v5"])
def test_record_then_replay_ends_in_the_books_the_engine_had(protocol: str, tmp_path: Path) -> None:
    insts = INSTRUMENTS[protocol]
    out = tmp_path / "session.jsonl.gz"
    run_dir = tmp_path / "run"
    with start_simulator(protocol, instruments=insts, rate=200, seed=12) as sim:
        cfg = tmp_path / "engine.yaml"
        cfg.write_text(yaml.safe_dump(config(protocol, sim.ws_url, run_dir, rest_url=sim.rest_url)))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mmengine.cli",
                "--log-level",
                "WARNING",
                "record",
                "--config",
                str(cfg),
                "--out",
                str(out),
                "--duration",
                "3",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for(lambda: (run_dir / "endpoints.json").exists() or proc.poll() is not None, 20)
            endpoints = json.loads((run_dir / "endpoints.json").read_text())
            books = Subscriber(endpoints["ipc"]["books"]["endpoint"])
            tops: list[dict[str, Any]] = []
            done = threading.Event()
            collector = threading.Thread(
                target=collect_until, args=(books, "book_top.avsc", done, tops)
            )
            collector.start()
            output, _ = proc.communicate(timeout=20)
            done.set()
            collector.join()
            books.close()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, output
    last_live: dict[str, dict[str, Any]] = {}
    for top in tops:
        if top["state"] == "LIVE":
            last_live[top["instrument"]] = top
    assert set(last_live) == set(insts)
    result = replay_capture(out, keep_tops=True)
    assert result.protocol == protocol
    venue = result.venue
    # The replay answers the recorded REST requests (OKX: Get instruments) and publishes
    # what the live engine published.
    replayed = {t.instrument: t for t in result.session.tops if t.state == "LIVE"}
    for inst in insts:
        n = len(replayed[inst].bid_sizes)
        assert replayed[inst].bid_sizes == last_live_of(tops, inst)["bid_sizes"][:n], inst
    assert sum(s.checksums_checked for s in venue.stats.values()) > 100
    assert sum(s.checksums_failed for s in venue.stats.values()) == 0
    assert sum(s.sequence_gaps for s in venue.stats.values()) == 0
    for inst in insts:
        book = venue.books[inst]
        top = last_live[inst]
        assert book.state is BookState.LIVE
        n = len(top["bid_prices"])
        assert book.bids.prices(n) == top["bid_prices"], inst
        assert book.asks.prices(len(top["ask_prices"])) == top["ask_prices"], inst
        # The replayed book holds the venue's sizes (OKX swaps: contracts); the engine's
        # books stream carried base units, converted with the recorded contract sizes.
        per_contract = OKX_COIN_PER_CONTRACT.get(inst, 1.0)
        for side, prices, sizes in (
            (book.bids, top["bid_prices"], top["bid_sizes"]),
            (book.asks, top["ask_prices"], top["ask_sizes"]),
        ):
            assert [side.sizes[p] * per_contract for p in prices] == sizes, inst


def test_okx_simulator_replays_the_capture_with_every_checksum(tmp_path: Path) -> None:
    insts = ["BTC-USD-20220527", "UNI-USD-PERP", "BTC-USDT"]
    with start_simulator(
        "okx-v5", replay=Path(__file__).parent.parent / "data" / "OKX.jsonl.gz", rate=2000
    ) as sim:
        doc = config("okx-v5", sim.ws_url, tmp_path / "run", depth=400, rest_url=sim.rest_url)
        doc["venues"][0]["instruments"] = insts
        doc["instruments"] = [{"name": i, "sources": [{"venue": "v"}]} for i in insts]
        engine = Engine(parse_config(doc))
        engine.start()
        try:
            venue = engine.connections[0].venue
            wait_for(lambda: venue.venue_stats.book_frames == 290)
            wait_for(lambda: all_live(venue))
            stats = list(venue.stats.values())
            assert sum(s.checksums_checked for s in stats) == 290
            assert sum(s.checksums_failed for s in stats) == 0
            # The recorded Get instruments answers, served back: the future and the swap
            # are priced in BTC and UNI (100 and 10 USD a contract), spot as it is.
            wait_for(lambda: all(s.size is not None for s in venue.syncs.values() if s.sized))
            sizes = {i: (s.size.value, s.size.in_quote) for i, s in venue.syncs.items() if s.size}
            assert sizes == {"BTC-USD-20220527": (100.0, True), "UNI-USD-PERP": (10.0, True)}
            assert not venue.venue_stats.skipped
        finally:
            engine.stop()


def test_kraken_simulator_replays_the_capture_with_every_checksum(tmp_path: Path) -> None:
    """The capture's book connection (cryptofeed recorded one connection per channel)."""
    insts = ["KSM-BTC", "XMR-USD", "ETH-CHF", "OMG-USD", "GRT-ETH"]
    insts += ["WAVES-EUR", "ADA-BTC", "BTC-CHF", "SC-EUR", "OCEAN-BTC"]
    capture = Path(__file__).parent.parent / "data" / "KRAKEN.jsonl.gz"
    with start_simulator("kraken-v1", replay=capture, rate=20000) as sim:
        doc = config("kraken-v1", sim.ws_url, tmp_path / "run", depth=1000)
        doc["venues"][0]["instruments"] = insts
        doc["instruments"] = [{"name": i, "sources": [{"venue": "v"}]} for i in insts]
        engine = Engine(parse_config(doc))
        engine.start()
        try:
            venue = engine.connections[0].venue
            wait_for(lambda: venue.venue_stats.book_frames == 4279, 20)
            stats = list(venue.stats.values())
            assert sum(s.checksums_checked for s in stats) == 4269
            assert sum(s.checksums_failed for s in stats) == 0
            assert all_live(venue)
            assert not venue.venue_stats.skipped
        finally:
            engine.stop()


def test_okx_swap_books_reach_the_books_stream_in_base_units(engine_factory: Any) -> None:
    """OKX books count contracts for swaps: the engine (a child process) asks the
    simulator's Get instruments for their ctVal and publishes base units. Truth: the
    simulator's own books, in contracts, times OKX's listed contract values: 0.01 BTC
    (BTC-USDT-SWAP, linear), 100 USD / price (BTC-USD-SWAP, inverse); spot unchanged."""
    insts = ["BTC-USDT", "BTC-USDT-PERP", "BTC-USD-PERP"]
    with start_simulator("okx-v5", instruments=insts, rate=150, seed=303) as sim:
        venue = {"name": "okx", "protocol": "okx-v5", "url": sim.ws_url}
        venue.update(rest_url=sim.rest_url, instruments=insts, depth=400)
        engine = engine_factory(
            {
                "engine": {"top_levels": 5},
                "venues": [venue],
                "instruments": [
                    {"name": i, "sources": [{"venue": "okx"}], "min_venues": 1} for i in insts
                ],
            }
        )
        latest = frozen_live_tops(engine, [sim], len(insts))
        for inst in insts:
            bids, asks = sim.book(inst, 5)
            top = latest[inst]
            assert top["bid_prices"] == [float(p) for p, _ in bids], inst
            assert top["ask_prices"] == [float(p) for p, _ in asks], inst
            for side, levels in (("bid_sizes", bids), ("ask_sizes", asks)):
                if inst in OKX_COIN_PER_CONTRACT:
                    want = [float(q) * OKX_COIN_PER_CONTRACT[inst] for _, q in levels]
                elif inst in OKX_USD_PER_CONTRACT:
                    usd = OKX_USD_PER_CONTRACT[inst]
                    want = [float(q) * usd / float(p) for p, q in levels]
                else:
                    want = [float(q) for _, q in levels]
                if inst != "BTC-USDT":
                    assert all(q == q.to_integral() for _, q in levels)  # contracts
                assert top[side] == want, (inst, side)
        assert latest["BTC-USDT-PERP"]["bid_sizes"][0] < 5.0  # BTC, not ~50 contracts
        assert engine.stop() == 0, engine.output
