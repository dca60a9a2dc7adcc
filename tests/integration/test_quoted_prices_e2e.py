"""Quoted Prices end to end, checked against what the venues sent: three Binance simulators
-> `mmengine run` (`min_venues: 1`, `fair_value: mid`) -> IPC, Kafka (tansu) and Postgres.

One run serves the whole module. Each Price's consolidated best bid/ask, sizes, fair value
and venue mids must equal what the last LIVE BookTops on the engine's `books` stream imply
at its `priced_ts_ns` (tests/integration/books_oracle.py); the same Prices, with their
non-empty ladders, must come back from Kafka (decoded by the official `avro` package) and
from Postgres, field for field.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mmengine.dev.pgserver import PgServer, copy_cluster
from mmengine.dev.simulator import start_simulator
from tests.conftest import free_port
from tests.integration.books_oracle import match_prices
from tests.integration.conftest import Subscriber, official_decode, start_engine
from tests.integration.kafka_support import Broker, OfficialDecoder, consume_all
from tests.integration.pg_support import pg_root  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

VENUES = ["v0", "v1", "v2"]
INSTRUMENTS = ["BTC-USDT", "ETH-USDT"]
TOPIC = "prices.quoted"
RUN_S = 4.0


class Collector(threading.Thread):
    """The test's own SUB on one IPC stream, decoding with the official `avro` package."""

    def __init__(self, endpoint: str, schema: str) -> None:
        super().__init__(daemon=True)
        self.sub = Subscriber(endpoint)
        self.schema = schema
        self.got: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        sock = self.sub.sock
        while True:
            if sock.poll(100):
                self.got.append(official_decode(self.schema, sock.recv_multipart()[1]))
            elif self.halt.is_set():
                return

    def finish(self) -> None:
        self.halt.set()
        self.join(timeout=10)
        self.sub.close()


@dataclass
class Run:
    prices: list[dict[str, Any]]
    tops: list[dict[str, Any]]
    broker: Broker
    pg: PgServer
    output: str


@pytest.fixture(scope="module")
def run(
    pg_root: tuple[Path, str | None],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("quoted")
    root, user = pg_root
    with ExitStack() as stack:
        datadir = Path(tempfile.mkdtemp(prefix="d", dir=root))
        copy_cluster(root / "template", datadir, user)
        pg = PgServer(datadir, free_port(), user, root / f"{datadir.name}.log")
        pg.start()
        stack.callback(shutil.rmtree, datadir, True)
        stack.callback(pg.stop)
        pg.upgrade()
        broker = Broker(free_port(), tmp / "tansu.log")
        broker.start()
        stack.callback(broker.kill)
        ports = [free_port() for _ in VENUES]
        config = {
            "engine": {"pricing_workers": 2, "top_levels": 3},
            "venues": [
                {
                    "name": name,
                    "protocol": "binance",
                    "url": f"ws://127.0.0.1:{port}/stream",
                    "rest_url": f"http://127.0.0.1:{port}",
                    "instruments": INSTRUMENTS,
                    "depth": 50,
                }
                for name, port in zip(VENUES, ports, strict=True)
            ],
            "instruments": [
                {
                    "name": inst,
                    "sources": [{"venue": v} for v in VENUES],
                    "min_venues": 1,
                    "fair_value": {"method": "mid"},
                    # the three simulated markets wander apart a little: no outlier here
                    "outlier_bps": 5000,
                    "quote": {"levels": 3, "min_spread_bps": 4, "size": 1, "size_step": 0.5},
                }
                for inst in INSTRUMENTS
            ],
            "outputs": {
                "ipc": {"books": True},
                "kafka": {"bootstrap_servers": broker.bootstrap, "topic": TOPIC, "partitions": 2},
                "postgres": {"dsn": pg.dsn, "batch_max_wait_ms": 20},
            },
            "limits": {"reconnect_max_s": 0.5},
        }
        engine = start_engine(config, tmp)
        stack.callback(engine.stop)
        endpoints = engine.run_dir
        prices = Collector(f"ipc://{endpoints / 'prices'}", "price.avsc")
        books = Collector(f"ipc://{endpoints / 'books'}", "book_top.avsc")
        prices.start()
        books.start()
        time.sleep(0.3)  # the SUBs' subscriptions reach the engine before any venue is up
        # The engine stops before the simulators, so no venue leaves LIVE during the run.
        sims = ExitStack()
        for seed, port in enumerate(ports, start=71):
            sims.enter_context(
                start_simulator("binance", port=port, instruments=INSTRUMENTS, rate=40, seed=seed)
            )
        with sims:
            time.sleep(RUN_S)
            assert engine.stop() == 0, engine.output
        prices.finish()
        books.finish()
        yield Run(prices.got, books.got, broker, pg, engine.output)


def test_every_price_is_quoted_from_the_live_tops_it_had(run: Run) -> None:
    assert len(run.prices) > 200, len(run.prices)
    # Several venues really fed each instrument.
    for inst in INSTRUMENTS:
        used = {u["venue"] for p in run.prices if p["instrument"] == inst for u in p["venues_used"]}
        assert used == set(VENUES), (inst, used)
    last_seq = {}
    for p in run.prices:
        last_seq[p["instrument"]] = max(last_seq.get(p["instrument"], 0), p["seq"])
    # The engine stops its venue threads first: their books leave LIVE, and the last Price
    # of an instrument may say so (halted, every venue `not_live`). No other is halted.
    for p in run.prices:
        if p["halted"]:
            assert p["seq"] == last_seq[p["instrument"]] and not p["venues_used"], p
            assert {x["reason"] for x in p["venues_excluded"]} == {"not_live"}, p
    quoted = [p for p in run.prices if not p["halted"]]
    assert len(quoted) >= len(run.prices) - len(INSTRUMENTS)
    for p in quoted:
        assert p["bids"] and p["asks"], p
        assert p["method"] == "mid"
        assert all(b["price"] < p["fair_value"] < a["price"] for b in p["bids"] for a in p["asks"])
    reports = match_prices(run.prices, run.tops, VENUES)
    for inst, report in reports.items():
        print(
            f"{inst}: {report.matched} Prices match the books stream "
            f"({report.at_latest} at the last top of every venue), "
            f"{len(report.unmatched)} do not"
        )
        assert not report.unmatched, report.unmatched[:2]
        # The oracle is not lenient by construction: most Prices use the very last tops.
        assert report.at_latest >= 0.5 * report.matched, inst


def test_kafka_round_trips_the_quoted_prices(run: Run) -> None:
    decode = OfficialDecoder()
    records = consume_all(run.broker.bootstrap, TOPIC, expect=len(run.prices))
    on_topic = {}
    for r in records:
        price = decode(r.value)
        on_topic[(price["instrument"], price["seq"])] = price
    assert len(on_topic) == len(run.prices)
    for p in run.prices:
        assert on_topic[(p["instrument"], p["seq"])] == p
    quoted = [p for p in on_topic.values() if not p["halted"]]
    assert len(quoted) >= len(run.prices) - len(INSTRUMENTS)
    assert all(p["bids"] and p["asks"] for p in quoted)


def test_postgres_stores_the_quoted_ladders(run: Run) -> None:
    with run.pg.connect() as conn:
        rows = conn.execute(
            "SELECT instrument, seq, fair_value, best_bid, best_ask, venues, halted, detail"
            " FROM price_history"
        ).fetchall()
    stored = {(r[0], r[1]): r[2:] for r in rows}
    assert len(stored) == len(run.prices)
    for p in run.prices:
        fair, bid, ask, venues, halted, detail = stored[(p["instrument"], p["seq"])]
        assert (fair, bid, ask, venues, halted) == (
            p["fair_value"],
            p["best_bid"],
            p["best_ask"],
            p["venues"],
            p["halted"],
        )
        assert detail["bids"] == p["bids"] and detail["asks"] == p["asks"]
        assert p["halted"] or (detail["bids"] and detail["asks"])
        assert detail["venues_used"] == p["venues_used"]
