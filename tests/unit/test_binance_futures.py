"""Binance USDⓈ-M and COIN-M futures (issue 20): the parser on the frames Binance documents,
the futures integrity rule where it differs from spot's, the COIN-M contract sizes, symbols.

Sample frames are Binance's own ("Diff. Book Depth Streams", "Individual Symbol Book Ticker
Streams", "Order Book", "Exchange Information" of the USDⓈ-M and COIN-M documentation).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from mmengine.book.events import AuditTop, BookUpdate
from mmengine.model import BookState
from mmengine.venues.base import VenueSpec
from mmengine.venues.binance_futures import BinanceCoinm, BinanceUsdm, snapshot_weight
from tests.venue_session import RecordingSession, venue

USDM_EVENT = (
    '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":123456789,"T":123456788,'
    '"s":"BTCUSDT","U":157,"u":160,"pu":149,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}}'
)
COINM_EVENT = (
    '{"stream":"btcusd_200626@depth@100ms","data":{"e":"depthUpdate","E":1591270260907,'
    '"T":1591270260891,"s":"BTCUSD_200626","ps":"BTCUSD","U":17285681,"u":17285702,'
    '"pu":17285675,"b":[["9517.6","10"]],"a":[["9518.5","45"]]}}'
)
USDM_TICKER = (
    '{"stream":"bnbusdt@bookTicker","data":{"e":"bookTicker","u":400900217,"E":1568014460893,'
    '"T":1568014460891,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000",'
    '"A":"40.66000000"}}'
)
COINM_SNAPSHOT = (
    '{"lastUpdateId":16769853,"symbol":"BTCUSD_PERP","pair":"BTCUSD","E":1591250106370,'
    '"T":1591250106368,"bids":[["9638.0","431"]],"asks":[["9638.2","12"]]}'
)


def test_the_documented_frames_parse() -> None:
    # The reference core: its decoded levels are plain (price, size) lists to compare.
    spec = VenueSpec("u", "binance-usdm", ("BTC-USDT-PERP", "BNB-USDT-PERP"), book_core="python")
    usdm = BinanceUsdm(spec)
    ev = usdm.parse(USDM_EVENT)
    assert isinstance(ev, BookUpdate) and ev.instrument == "BTC-USDT-PERP"
    assert (ev.first_id, ev.last_id, ev.prev_id, ev.ts_ns) == (157, 160, 149, 123456789000000)
    assert (ev.bids, ev.asks) == ([(0.0024, 10.0)], [(0.0026, 100.0)])
    (top,) = usdm.parse(USDM_TICKER)  # type: ignore[misc]
    assert isinstance(top, AuditTop) and top.instrument == "BNB-USDT-PERP"
    assert (top.venue_seq, top.bid, top.bid_size, top.ask, top.ask_size) == (
        400900217,
        25.3519,
        31.21,
        25.3652,
        40.66,
    )
    coinm = BinanceCoinm(
        VenueSpec("c", "binance-coinm", ("BTC-USD-20200626", "BTC-USD-PERP"), book_core="python")
    )
    ev = coinm.parse(COINM_EVENT)
    assert isinstance(ev, BookUpdate) and ev.instrument == "BTC-USD-20200626"
    assert (ev.first_id, ev.last_id, ev.prev_id) == (17285681, 17285702, 17285675)
    assert coinm.parse_snapshot(COINM_SNAPSHOT) == (16769853, [(9638.0, 431.0)], [(9638.2, 12.0)])


def test_symbols_urls_and_weights() -> None:
    usdm = BinanceUsdm(
        VenueSpec("u", "binance-usdm", ("BTC-USDT-PERP", "ETH-USDT-20260327"), depth=200)
    )
    assert [usdm.venue_symbol(i) for i in usdm.spec.instruments] == ["BTCUSDT", "ETHUSDT_260327"]
    assert usdm.connect_url() == (
        "wss://fstream.binance.com/public/stream?streams=btcusdt@depth@100ms/"
        "ethusdt_260327@depth@100ms"
    )
    assert usdm.snapshot_request("BTC-USDT-PERP") == (
        "https://fapi.binance.com/fapi/v1/depth?symbol=BTCUSDT&limit=500",
        10,
    )
    coinm = BinanceCoinm(VenueSpec("c", "binance-coinm", ("BTC-USD-PERP",), audit=True))
    assert coinm.connect_url() == (
        "wss://dstream.binance.com/stream?streams=btcusd_perp@depth@100ms/btcusd_perp@bookTicker"
    )
    assert coinm.contract_sizes_requests() == [("https://dapi.binance.com/dapi/v1/exchangeInfo", 1)]
    assert [snapshot_weight(n) for n in (5, 50, 100, 500, 1000)] == [2, 2, 5, 10, 20]
    assert orjson.loads(coinm.keepalive_frame()) == {"method": "LIST_SUBSCRIPTIONS", "id": 1}


@pytest.mark.parametrize(
    ("cls", "instrument", "problem"),
    [
        (BinanceUsdm, "BTC-USDT-PERP", None),
        (BinanceUsdm, "BTC-USDC-PERP", None),
        (BinanceUsdm, "BTC-USDT-20261225", None),
        (BinanceUsdm, "BTC-USDT", "BASE-QUOTE-PERP"),
        (BinanceUsdm, "BTC-USD-PERP", "COIN-M: binance-coinm"),
        (BinanceUsdm, "BTC-USDT-20260231", "day is out of range"),
        (BinanceUsdm, "BTC-USDT-SWAP", "neither PERP nor a date"),
        (BinanceCoinm, "BTC-USD-PERP", None),
        (BinanceCoinm, "ETH-USD-20260626", None),
        (BinanceCoinm, "BTC-USDT-PERP", "BASE-USD contracts only"),
    ],
)
def test_config_is_told_what_the_venue_lists(cls: Any, instrument: str, problem: Any) -> None:
    got = cls.instrument_problem(instrument)
    assert got is None if problem is None else problem in got


# --- the rule: where futures differ from spot ------------------------------------------------


def event(symbol: str, first: int, last: int, prev: int, bids: Any = (), asks: Any = ()) -> str:
    data = {
        "e": "depthUpdate",
        "E": 1,
        "T": 1,
        "s": symbol,
        "U": first,
        "u": last,
        "pu": prev,
        "b": [list(b) for b in bids],
        "a": [list(a) for a in asks],
    }
    return orjson.dumps({"stream": f"{symbol.lower()}@depth@100ms", "data": data}).decode()


def snapshot(last_id: int) -> str:
    book = {"bids": [["100.0", "1"], ["99.0", "2"]], "asks": [["101.0", "1"], ["102.0", "2"]]}
    return orjson.dumps({"lastUpdateId": last_id, "E": 1, "T": 1, **book}).decode()


def usdm(last_id: int, hold: bool = False) -> tuple[Any, RecordingSession]:
    rest = {f"symbol={s}&": snapshot(last_id) for s in ("BTCUSDT", "ETHUSDT")}
    session = RecordingSession(rest, hold=hold)
    return venue("binance-usdm", ("BTC-USDT-PERP", "ETH-USDT-PERP"), session, depth=100)


def test_an_event_ending_at_the_snapshot_bridges_it() -> None:
    """Step 4 drops `u < L` only (spot drops `u <= L`): the event 157..160 holds L = 160."""
    driver, _ = usdm(160)
    driver.receive(event("BTCUSDT", 150, 156, 140), 1)  # u < L: dropped
    driver.receive(event("BTCUSDT", 157, 160, 156, bids=[("100.0", "5")]), 2)
    book = driver.books["BTC-USDT-PERP"]
    assert book.state is BookState.LIVE and book.venue_seq == 160
    assert book.bids.sizes[100.0] == 5.0  # applied, not dropped
    stats = driver.stats["BTC-USDT-PERP"]
    assert (stats.dropped_stale, stats.updates, stats.sequence_gaps) == (1, 1, 0)


def test_ids_jump_between_events_and_only_a_broken_pu_chain_is_a_gap() -> None:
    driver, session = usdm(160)
    driver.receive(event("BTCUSDT", 157, 160, 156), 1)
    driver.receive(event("ETHUSDT", 157, 160, 156), 1)
    # U = 171 is far past 160 + 1 (spot's gap); pu = 160 chains it: applied.
    driver.receive(event("BTCUSDT", 171, 175, 160, asks=[("101.0", "0")]), 2)
    btc = driver.books["BTC-USDT-PERP"]
    assert btc.state is BookState.LIVE and btc.venue_seq == 175 and btc.asks.best() == 102.0
    # An event whose pu names one we never had: that symbol resyncs, the other stays LIVE.
    driver.receive(event("BTCUSDT", 190, 191, 180), 3)
    assert btc.state is BookState.RESYNCING
    assert driver.books["ETH-USDT-PERP"].state is BookState.LIVE
    assert driver.stats["BTC-USDT-PERP"].sequence_gaps == 1
    assert session.sent == []  # REST: no resubscribe, the WebSocket stays as it is


def test_a_snapshot_the_buffered_events_cannot_bridge_is_fetched_again() -> None:
    """Step 5: the first event kept must hold L (U <= L <= u); 170..175 does not hold 160."""
    driver, session = usdm(160, hold=True)
    driver.receive(event("BTCUSDT", 170, 175, 150), 1)
    session.answer_all()
    driver.poll_fetches(2)
    assert driver.books["BTC-USDT-PERP"].state is BookState.SYNCING


def test_a_snapshot_newer_than_every_event_is_live_and_the_next_event_must_bridge_it() -> None:
    driver, session = usdm(160, hold=True)
    driver.receive(event("BTCUSDT", 150, 152, 149), 1)
    session.answer_all()
    driver.poll_fetches(2)
    book = driver.books["BTC-USDT-PERP"]
    assert book.state is BookState.LIVE and book.venue_seq == 160  # the book at L
    driver.receive(event("BTCUSDT", 153, 155, 152), 3)  # u < L: dropped, still LIVE
    assert book.state is BookState.LIVE and book.venue_seq == 160
    driver.receive(event("BTCUSDT", 156, 163, 155), 4)  # holds L: bridges (its pu is not L)
    assert book.state is BookState.LIVE and book.venue_seq == 163
    driver.receive(event("BTCUSDT", 164, 165, 163), 5)  # the chain from here on
    assert book.state is BookState.LIVE and book.venue_seq == 165
    assert driver.stats["BTC-USDT-PERP"].sequence_gaps == 0


def test_an_event_after_a_live_snapshot_that_skips_past_it_is_a_gap() -> None:
    driver, session = usdm(160, hold=True)
    driver.receive(event("BTCUSDT", 150, 152, 149), 1)
    session.answer_all()
    driver.poll_fetches(2)
    driver.receive(event("BTCUSDT", 161, 163, 158), 3)  # U > L: the update at L is missing
    assert driver.books["BTC-USDT-PERP"].state is BookState.RESYNCING


# --- COIN-M contract sizes ------------------------------------------------------------------

INFO = orjson.dumps(
    {
        "symbols": [
            {"symbol": "BTCUSD_PERP", "pair": "BTCUSD", "contractSize": 100},
            {"symbol": "ETHUSD_PERP", "pair": "ETHUSD", "contractSize": 10},
            {"symbol": "LTCUSD_PERP", "pair": "LTCUSD", "contractSize": 10},
        ]
    }
).decode()


def coinm(info: str | None, hold: bool = False) -> tuple[Any, RecordingSession]:
    rest = {"symbol=BTCUSD_PERP&": snapshot(160), "symbol=ETHUSD_PERP&": snapshot(160)}
    if info is not None:
        rest["/exchangeInfo"] = info
    session = RecordingSession(rest, hold=hold)
    return venue("binance-coinm", ("BTC-USD-PERP", "ETH-USD-PERP"), session, depth=100)


def test_coinm_books_keep_contracts_and_pricing_gets_base_units() -> None:
    """100 contracts of 100 USD at 100.0 is 100 BTC; 1 contract at 101.0 is 0.990099 BTC."""
    driver, session = coinm(INFO)
    driver.receive(event("BTCUSD_PERP", 157, 160, 156), 1)
    driver.receive(event("ETHUSD_PERP", 157, 160, 156, bids=[("100.0", "100")]), 1)
    btc, eth = driver.books["BTC-USD-PERP"], driver.books["ETH-USD-PERP"]
    assert btc.state is BookState.LIVE and eth.state is BookState.LIVE
    assert btc.bids.sizes == {100.0: 1.0, 99.0: 2.0}  # the venue's contracts
    top = next(t for t in reversed(session.tops) if t.instrument == "BTC-USD-PERP")
    assert top.bid_prices == [100.0, 99.0] and top.ask_prices == [101.0, 102.0]
    assert top.bid_sizes == [1 * 100 / 100.0, 2 * 100 / 99.0]
    assert top.ask_sizes == [1 * 100 / 101.0, 2 * 100 / 102.0]
    top = next(t for t in reversed(session.tops) if t.instrument == "ETH-USD-PERP")
    assert top.bid_sizes[0] == 100 * 10 / 100.0  # ETH contracts are 10 USD


def test_coinm_asks_for_no_snapshot_before_it_knows_the_contract_sizes() -> None:
    driver, session = coinm(INFO, hold=True)
    assert [url for _, url in session.requested] == [
        "https://dapi.binance.com/dapi/v1/exchangeInfo"
    ]
    driver.receive(event("BTCUSD_PERP", 157, 160, 156), 1)
    assert len(session.requested) == 1  # the depth snapshot waits
    session.answer_all()
    driver.poll_fetches(2)  # sizes known: the waiting book's snapshot is asked for at once
    assert session.requested[-1][1].endswith("/dapi/v1/depth?symbol=BTCUSD_PERP&limit=100")
    session.answer_all()
    driver.poll_fetches(3)
    assert driver.books["BTC-USD-PERP"].state is BookState.LIVE


def test_coinm_without_usable_sizes_publishes_nothing_and_counts_why() -> None:
    driver, session = coinm('{"symbols":[{"symbol":"BTCUSD_PERP","contractSize":"100"}]}')
    driver.receive(event("BTCUSD_PERP", 157, 160, 156), 1)
    assert driver.books["BTC-USD-PERP"].state is BookState.SYNCING
    assert driver.venue_stats.skipped["contract_sizes_failed"] == 1
    assert not any(t.state == "LIVE" for t in session.tops)
    # An instrument the venue does not list stays SYNCING; the others go on.
    only_btc = '{"symbols":[{"symbol":"BTCUSD_PERP","contractSize":100}]}'
    driver, session = coinm(only_btc)
    driver.receive(event("BTCUSD_PERP", 157, 160, 156), 1)
    driver.receive(event("ETHUSD_PERP", 157, 160, 156), 1)
    assert driver.books["BTC-USD-PERP"].state is BookState.LIVE
    assert driver.books["ETH-USD-PERP"].state is BookState.SYNCING
    assert driver.venue_stats.skipped["unknown_symbol"] == 1


# --- the recorded capture (mmengine record against both simulators) -------------------------


@pytest.mark.parametrize(
    ("name", "tickers"), [("binance-usdm", "bookTicker"), ("binance-coinm", "bookTicker")]
)
def test_the_capture_replays_with_no_gap_and_every_ticker_at_an_equal_u_agrees(
    data_dir: Any, name: str, tickers: str
) -> None:
    from mmengine.capture import read_capture
    from mmengine.replay import replay_capture

    path = data_dir / "BINANCE_FUTURES.jsonl.gz"
    result = replay_capture(path, audit=True, venue_name=name)
    driver = result.venue
    assert result.protocol == name
    _, events = read_capture(path)
    conn = f"venue-{name}"
    snapshots = {
        orjson.loads(e.data)["lastUpdateId"]
        for e in events
        if e.kind == "http" and e.conn == conn and "/depth" in e.url
    }
    # Every ticker the books could meet (its u at or after the symbol's snapshot) equals
    # an event's u in this capture, so each one was compared with the book, exactly.
    frames = [orjson.loads(e.data) for e in events if e.kind == "recv" and e.conn == conn]
    quotes = [f["data"] for f in frames if f.get("data", {}).get("e") == tickers]
    due = [q for q in quotes if q["u"] >= min(snapshots)]
    for instrument, stats in driver.stats.items():
        symbol = driver.venue_symbol(instrument)
        mine = [q for q in due if q["s"] == symbol]
        assert stats.sequence_gaps == 0 and stats.sequence_checked == stats.updates > 100
        assert stats.audit_disagree == 0 and stats.audit_agree == len(mine) > 50, instrument
        assert driver.books[instrument].state is BookState.LIVE
    assert not driver.venue_stats.skipped and not driver.venue_stats.resyncs


@pytest.mark.parametrize(("name", "agree"), [("binance-usdm", 137), ("binance-coinm", 170)])
def test_the_readme_replay_rows_are_the_tools_output(data_dir: Any, name: str, agree: int) -> None:
    from click.testing import CliRunner

    from mmengine.cli import main

    capture = str(data_dir / "BINANCE_FUTURES.jsonl.gz")
    args = ["--log-level", "WARNING", "replay", capture, "--venue", name]
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    assert "0 gaps in 321 sequence checks" in run.stdout
    assert f"exact audit {agree} of {agree} agree" in run.stdout


def test_contract_sizes_of_either_kind_convert_sizes_and_leave_the_rest() -> None:
    from mmengine.book.events import ContractSize
    from mmengine.model import BookTop

    top = BookTop("v", "i", "LIVE", 7, -1, 1, 2, [100.0, 99.0], [3.0, 1.0], [101.0], [2.0])
    inverse = ContractSize(100.0, in_quote=True).to_base(top)  # 100 USD a contract
    assert inverse == top._replace(bid_sizes=[3.0, 100.0 / 99.0], ask_sizes=[200.0 / 101.0])
    linear = ContractSize(0.01, in_quote=False).to_base(top)  # 0.01 BTC a contract
    assert linear == top._replace(bid_sizes=[0.03, 0.01], ask_sizes=[0.02])
    assert type(linear) is BookTop and top.bid_sizes == [3.0, 1.0]  # the input is untouched
