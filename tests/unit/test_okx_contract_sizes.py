"""OKX swap and future books count contracts; what reaches pricing is base units.

Truth from outside: OKX's documented answer of "Get instruments" (Public Data > REST API of
the v5 docs: its response example is the spot BTC-USDT), the answers OKX gave in the real
capture (tests/data/OKX.jsonl.gz: `instType=SWAP` and `FUTURES`, 2022-05), and the docs'
"Unit convert" example (0.888 BTC at 35000 is 311 BTC-USD-SWAP contracts of 100 USD).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from mmengine.book.events import ContractSize
from mmengine.capture import read_capture
from mmengine.errors import FrameError
from mmengine.model import BookState, BookTop
from mmengine.venues.base import VenueSpec
from mmengine.venues.okx import OkxV5
from tests.venue_session import RecordingSession, venue

# The documented response example of Get instruments (`instType=SPOT`), as OKX prints it.
DOCUMENTED_SPOT = """{"code":"0","msg":"","data":[{"alias":"","auctionEndTime":"","baseCcy":"BTC",
"category":"1","ctMult":"","ctType":"","ctVal":"","ctValCcy":"","expTime":"",
"futureSettlement":false,"instFamily":"","instId":"BTC-USDT","instType":"SPOT","lever":"10",
"listTime":"1606468572000","lotSz":"0.00000001","maxIcebergSz":"9999999999.0000000000000000",
"maxLmtAmt":"1000000","maxLmtSz":"9999999999","maxMktAmt":"1000000","maxMktSz":"",
"maxStopSz":"","maxTriggerSz":"9999999999.0000000000000000",
"maxTwapSz":"9999999999.0000000000000000","minSz":"0.00001","optType":"","quoteCcy":"USDT",
"settleCcy":"","state":"live","ruleType":"normal","stk":"","tickSz":"0.1","uly":""}]}"""

SWAPS = ("BTC-USDT-PERP", "ETH-USDT-PERP", "BTC-USD-PERP", "UNI-USD-PERP")


def recorded(data_dir: Any, inst_type: str) -> str:
    """OKX's own answer to `instruments?instType=...` in the real capture."""
    _, events = read_capture(data_dir / "OKX.jsonl.gz")
    return next(e.data for e in events if e.kind == "http" and e.url.endswith(inst_type))


def okx(*instruments: str, **spec: Any) -> OkxV5:
    return OkxV5(VenueSpec("okx", "okx-v5", instruments, depth=400, **spec))


def test_spot_needs_no_request_and_the_documented_spot_answer_sizes_nothing() -> None:
    spot = okx("BTC-USDT", "ETH-USDT")
    assert spot.contract_sizes_requests() == []
    assert not spot.contract_sized("BTC-USDT")
    mixed = okx("BTC-USDT", "BTC-USDT-PERP")
    assert mixed.parse_contract_sizes(DOCUMENTED_SPOT) == {}  # spot is base units already


def test_one_request_per_instrument_type_of_the_derivatives() -> None:
    venue_ = okx("BTC-USDT", "BTC-USDT-PERP", "BTC-USD-20220527", "ETH-USD-PERP")
    assert venue_.contract_sizes_requests() == [
        ("https://www.okx.com/api/v5/public/instruments?instType=SWAP", 1),
        ("https://www.okx.com/api/v5/public/instruments?instType=FUTURES", 1),
    ]
    assert [venue_.contract_sized(i) for i in venue_.spec.instruments] == [
        False,
        True,
        True,
        True,
    ]
    local = okx("BTC-USDT-PERP", rest_url="http://127.0.0.1:9103")
    assert local.contract_sizes_requests() == [
        ("http://127.0.0.1:9103/api/v5/public/instruments?instType=SWAP", 1)
    ]


def test_the_recorded_answers_give_linear_contracts_in_coin_and_inverse_in_usd(
    data_dir: Any,
) -> None:
    venue_ = okx("BTC-USDT", *SWAPS, "BTC-USD-20220527")
    swaps = venue_.parse_contract_sizes(recorded(data_dir, "instType=SWAP"))
    assert {i: (s.value, s.in_quote) for i, s in swaps.items()} == {
        "BTC-USDT-PERP": (0.01, False),  # 0.01 BTC a contract
        "ETH-USDT-PERP": (0.1, False),
        "BTC-USD-PERP": (100.0, True),  # 100 USD a contract
        "UNI-USD-PERP": (10.0, True),
    }
    futures = venue_.parse_contract_sizes(recorded(data_dir, "instType=FUTURES"))
    assert {i: (s.value, s.in_quote) for i, s in futures.items()} == {
        "BTC-USD-20220527": (100.0, True)
    }


def test_the_documented_unit_conversion_holds_for_inverse_contracts() -> None:
    """Unit convert: 0.888 BTC at 35000 is 311 BTC-USD-SWAP contracts (rounded)."""
    top = BookTop("okx", "BTC-USD-PERP", "LIVE", 1, -1, 1, 2, [35000.0], [311.0], [], [])
    (btc,) = ContractSize(100.0, in_quote=True).to_base(top).bid_sizes
    assert round(0.888 * 35000 / 100) == 311 and abs(btc - 0.888) < 100 / 35000 / 2


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ('{"code":"51000","msg":"Parameter instType error","data":[]}', "instruments answer"),
        ('{"code":"0","data":{}}', "instruments answer"),
        (
            '{"code":"0","data":[{"instId":"BTC-USDT-SWAP","ctVal":"0.01","ctValCcy":"USDT",'
            '"ctType":"linear"}]}',
            "contract of BTC-USDT-PERP",
        ),  # value in the wrong coin
        (
            '{"code":"0","data":[{"instId":"BTC-USDT-SWAP","ctVal":"-1","ctValCcy":"BTC",'
            '"ctType":"linear"}]}',
            "contract of BTC-USDT-PERP",
        ),
        (
            '{"code":"0","data":[{"instId":"BTC-USDT-SWAP","ctVal":"nan","ctValCcy":"BTC",'
            '"ctType":"linear"}]}',
            "contract of BTC-USDT-PERP",
        ),
    ],
)
def test_an_unusable_answer_is_a_clear_error(body: str, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        okx("BTC-USDT-PERP").parse_contract_sizes(body)


# --- the driver: spot goes on, contracts wait for their sizes -------------------------------


def snapshot(inst_id: str, bids: list[list[str]], asks: list[list[str]]) -> str:
    entry = {"asks": asks, "bids": bids, "ts": "1597026383085", "checksum": 0}
    entry.update(prevSeqId=-1, seqId=10)
    return orjson.dumps(
        {"arg": {"channel": "books", "instId": inst_id}, "action": "snapshot", "data": [entry]}
    ).decode()


def level(price: str, size: str) -> list[str]:
    return [price, size, "0", "1"]


def test_spot_publishes_at_once_and_contracts_only_in_base_units_once_sized(
    data_dir: Any,
) -> None:
    rest = {"instType=SWAP": recorded(data_dir, "instType=SWAP")}
    rest["instType=FUTURES"] = recorded(data_dir, "instType=FUTURES")
    session = RecordingSession(rest, hold=True)  # a slow REST: nothing answered yet
    insts = ("BTC-USDT", "BTC-USDT-PERP", "BTC-USD-20220527")
    driver, session = venue("okx-v5", insts, session, depth=400)
    assert sorted(url for _, url in session.requested) == [
        "https://www.okx.com/api/v5/public/instruments?instType=FUTURES",
        "https://www.okx.com/api/v5/public/instruments?instType=SWAP",
    ]
    driver.receive(snapshot("BTC-USDT", [level("30000", "1.5")], [level("30001", "2")]), 1)
    driver.receive(snapshot("BTC-USDT-SWAP", [level("30000", "150")], [level("30001", "7")]), 2)
    driver.receive(snapshot("BTC-USD-220527", [level("25000", "300")], [level("40000", "4")]), 3)
    assert [t.instrument for t in session.tops] == ["BTC-USDT"]  # spot waits for nothing
    assert session.tops[0].bid_sizes == [1.5]
    # The contract books are synced and checked, in contracts, but nothing is priced yet.
    assert driver.books["BTC-USDT-PERP"].state is BookState.LIVE
    assert driver.books["BTC-USDT-PERP"].bids.sizes == {30000.0: 150.0}
    session.answer_all()
    driver.on_tick(4_000_000_000)
    tops = {t.instrument: t for t in session.tops}
    assert tops["BTC-USDT-PERP"].bid_sizes == [150 * 0.01]  # 1.5 BTC
    assert tops["BTC-USDT-PERP"].ask_sizes == [7 * 0.01]
    assert tops["BTC-USD-20220527"].bid_sizes == [300 * 100 / 25000]  # 1.2 BTC
    assert tops["BTC-USD-20220527"].ask_sizes == [4 * 100 / 40000]
    assert tops["BTC-USD-20220527"].bid_prices == [25000.0]  # prices unchanged
    assert driver.books["BTC-USDT-PERP"].bids.sizes == {30000.0: 150.0}  # still contracts
    assert not driver.venue_stats.resyncs and not driver.venue_stats.skipped


def test_without_sizes_contracts_are_never_published_and_the_failure_is_counted() -> None:
    session = RecordingSession({"instType=SWAP": '{"code":"50001","msg":"busy","data":[]}'})
    driver, session = venue("okx-v5", ("BTC-USDT-PERP",), session, depth=400)
    driver.receive(snapshot("BTC-USDT-SWAP", [level("30000", "150")], [level("30001", "7")]), 1)
    assert driver.venue_stats.skipped["contract_sizes_failed"] == 1
    assert session.tops == []
    # An instrument the answer does not list (or lists before its values are set) waits.
    listing = '{"code":"0","data":[{"instId":"BTC-USDT-SWAP","ctVal":"","ctValCcy":""}]}'
    session = RecordingSession({"instType=SWAP": listing})
    driver, session = venue("okx-v5", ("BTC-USDT-PERP",), session, depth=400)
    driver.receive(snapshot("BTC-USDT-SWAP", [level("30000", "150")], [level("30001", "7")]), 1)
    assert driver.venue_stats.skipped["unknown_symbol"] == 1
    assert session.tops == []


def test_the_real_capture_replays_with_every_checksum_and_publishes_base_units(
    data_dir: Any,
) -> None:
    """The replay answers the instruments requests from the capture's recorded responses:
    every top of the future and the swap is the book's contracts * 100 USD (10 for UNI)
    / price; the spot book's tops are its sizes; the checksums stay 290 of 290."""
    from mmengine.replay import replay_capture, scorecard

    result = replay_capture(data_dir / "OKX.jsonl.gz", keep_tops=True)
    card = scorecard(result)
    assert card["totals"]["checksums"] == {"checked": 290, "failed": 0}
    assert card["errors"] == []
    usd_per_contract = {"BTC-USD-20220527": 100.0, "UNI-USD-PERP": 10.0, "BTC-USDT": None}
    last = {t.instrument: t for t in result.session.tops if t.state == "LIVE"}
    assert set(last) == set(usd_per_contract)
    for instrument, usd in usd_per_contract.items():
        top, book = last[instrument], result.venue.books[instrument]
        for prices, sizes, side in (
            (top.bid_prices, top.bid_sizes, book.bids),
            (top.ask_prices, top.ask_sizes, book.asks),
        ):
            held = [side.sizes[p] for p in prices]
            want = held if usd is None else [q * usd / p for p, q in zip(prices, held, strict=True)]
            assert sizes == pytest.approx(want, rel=1e-12), instrument
    assert last["BTC-USD-20220527"].bid_sizes[0] < 1.0  # BTC, not a count of contracts
