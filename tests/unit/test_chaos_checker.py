"""The chaos campaign's checker (scripts/chaos_check.py) sees a wrong, unverified or lost
Price: it is judged here on small journals and Prices written by hand."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chaos_check.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos_check"] = module
    spec.loader.exec_module(module)
    return module


cc = _load()

CONFIG = """
venues: []
fx:
  - {pair: USDT-USD, fixed: 0.5}
instruments:
  - name: BTC-USD
    sources:
      - {venue: okx, instrument: BTC-USDT}
      - {venue: coinbase}
      - {venue: kraken}
    min_venues: 2
    outlier_bps: 100
    fair_value: {method: microprice, levels: 2}
"""
T0 = 1_000_000  # journal times (ns): a client received everything at T0 + 1000


def journal(path: Path, rule: str, books: dict[int, tuple[Any, Any]], marks: list[dict]) -> Path:
    lines = [{"k": "head", "venue": path.stem, "rule": rule, "instruments": ["X"]}]
    for version, (bids, asks) in books.items():
        lines.append({"k": "book", "i": marks[0]["i"], "v": version, "t": T0, "b": bids, "a": asks})
    for m in marks:
        lines.append({"k": "mark", "f": "*", "s": 0, "ok": 1, "d": 1, "p": None, **m})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def book(bid: str, ask: str) -> tuple[list[list[str]], list[list[str]]]:
    """Two levels a side: `bid` and `ask` with size 1, then one tick out with size 2."""
    b, a = float(bid), float(ask)
    return [[bid, "1"], [str(b - 1), "2"]], [[ask, "1"], [str(a + 1), "2"]]


@pytest.fixture
def world(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[Any, float]]:
    (tmp_path / "engine.yaml").write_text(CONFIG)
    specs, fx = cc.read_config(tmp_path / "engine.yaml")
    okx = journal(
        tmp_path / "okx.truth",
        "chain",
        {
            0: book("200", "202"),
            1: book("204", "206"),
            2: book("210", "212"),
            3: book("214", "216"),
        },
        [
            {"i": "BTC-USDT", "v": 0, "id": 100, "s": 1, "t": T0},
            {"i": "BTC-USDT", "v": 1, "id": 101, "t": T0 + 1},
            {"i": "BTC-USDT", "v": 2, "id": 103, "d": 0, "t": T0 + 2},  # a gap hid it
            {"i": "BTC-USDT", "v": 3, "id": 104, "t": T0 + 3},
        ],
    )
    # Coinbase: two connections both number from 0; the receive time tells them apart.
    coinbase = journal(
        tmp_path / "coinbase.truth",
        "connection",
        {0: book("100", "101"), 1: book("100.5", "101"), 5: book("99", "100")},
        [
            {"i": "BTC-USD", "v": 0, "id": 0, "s": 1, "f": "1", "t": T0},
            {"i": "BTC-USD", "v": 1, "id": 1, "f": "1", "t": T0 + 1},
            {"i": "BTC-USD", "v": 5, "id": 0, "s": 1, "f": "2", "t": T0 + 500},
            {"i": "BTC-USD", "v": 5, "id": 1, "f": "2", "t": T0 + 501},
        ],
    )
    kraken = journal(
        tmp_path / "kraken.truth",
        "checksum",
        {0: book("100.2", "101.2"), 1: book("100.4", "101.4")},
        [
            {"i": "BTC-USD", "v": 0, "id": 7777, "s": 1, "t": T0},
            {"i": "BTC-USD", "v": 1, "id": 8888, "ok": 0, "t": T0 + 1},  # sent with a bad checksum
        ],
    )
    truth = {p.stem: cc.VenueTruth(p) for p in (okx, coinbase, kraken)}
    return truth, specs, fx


def used(venue: str, inst: str, seq: int, mid: float, rate: float = 1.0, recv: int = T0 + 1000):
    return {
        "venue": venue,
        "instrument": inst,
        "mid": mid,
        "weight": 0.5,
        "fx_rate": rate,
        "venue_seq": seq,
        "recv_ts_ns": recv,
    }


def price(venues: list[dict], **kw: Any) -> dict[str, Any]:
    """A Price whose consolidated numbers are recomputed the engine's way from `books`."""
    p = {
        "instrument": "BTC-USD",
        "epoch": 1,
        "seq": 1,
        "fair_value": 0.0,
        "best_bid": 0.0,
        "best_bid_size": 0.0,
        "best_ask": 0.0,
        "best_ask_size": 0.0,
        "halted": False,
        "bids": [],
        "asks": [],
        "venues_used": venues,
        "priced_ts_ns": T0 + 2000,
    }
    p.update(kw)
    return p


OKX_101 = used("okx", "BTC-USDT", 101, (204 + 206) / 2 * 0.5, 0.5)
COINBASE_1 = used("coinbase", "BTC-USD", 1, (100.5 + 101) / 2, recv=T0 + 100)  # connection 1
# Those two books, consolidated by hand: bids 102 (okx 204 x 0.5) x1, 101.5 x2, 100.5 x1,
# 99.5 x2; asks 101 (coinbase) x1, 102 x2, 103 x1, 103.5 x2. Microprice over 2 levels:
# sizes 3 and 3, fair (102 * 3 + 101 * 3) / 6.
GOOD = {"best_bid": 102.0, "best_bid_size": 1.0, "best_ask": 101.0, "best_ask_size": 1.0}


def test_a_price_explained_by_the_true_books_passes(world) -> None:
    truth, specs, fx = world
    p = price([OKX_101, COINBASE_1], fair_value=101.5, **GOOD)
    assert cc.judge(p, truth, specs, fx) == {"wrong": [], "unverified": [], "rule": []}


def test_a_wrong_mid_an_unknown_id_and_a_wrong_fair_value_are_wrong(world) -> None:
    truth, specs, fx = world
    off = dict(OKX_101, mid=OKX_101["mid"] + 0.01)  # one cent off
    wrong = cc.judge(price([off, COINBASE_1], fair_value=101.5, **GOOD), truth, specs, fx)
    assert len(wrong["wrong"]) == 1 and "okx BTC-USDT at 101: mid" in wrong["wrong"][0]
    unknown = dict(COINBASE_1, venue_seq=77)
    got = cc.judge(price([OKX_101, unknown], fair_value=101.5, **GOOD), truth, specs, fx)
    assert "was ever named 77" in got["wrong"][0]
    got = cc.judge(price([OKX_101, COINBASE_1], fair_value=101.52, **GOOD), truth, specs, fx)
    assert got["wrong"] == ["fair_value 101.52, the true books give 101.5"]
    got = cc.judge(
        price([OKX_101, COINBASE_1], fair_value=101.5, **{**GOOD, "best_bid": 102.5}),
        truth,
        specs,
        fx,
    )
    assert got["wrong"] == ["best_bid 102.5, the true books give 102.0"]
    unconverted = used("okx", "BTC-USDT", 101, (204 + 206) / 2, 1.0)
    got = cc.judge(price([unconverted, COINBASE_1], fair_value=101.5, **GOOD), truth, specs, fx)
    assert "fx_rate 1.0, the config says 0.5" in got["wrong"][0]


def test_where_ids_restart_per_connection_the_receive_time_names_the_book(world) -> None:
    truth = world[0]
    first = truth["coinbase"].lookup("BTC-USD", 1, T0 + 100)
    second = truth["coinbase"].lookup("BTC-USD", 1, T0 + 1000)
    assert first.bids[0] == (100.5, 1.0) and second.bids[0] == (99.0, 1.0)
    assert not first.unverified and not second.unverified


def test_a_book_the_venue_rule_could_not_have_verified_is_flagged(world) -> None:
    truth, specs, fx = world
    # okx at 104: its book is known, but update 103 before it never reached the client.
    okx_104 = used("okx", "BTC-USDT", 104, (214 + 216) / 2 * 0.5, 0.5)
    numbers = {"best_bid": 107.0, "best_bid_size": 1.0, "best_ask": 101.0, "best_ask_size": 1.0}
    got = cc.judge(price([okx_104, COINBASE_1], fair_value=104.0, **numbers), truth, specs, fx)
    assert got["wrong"] == [] and len(got["unverified"]) == 1
    assert "1 update(s) after the snapshot at 100 up to 104 were lost" in got["unverified"][0]
    # kraken 8888 names a book only ever sent with a corrupt checksum.
    kraken = used("kraken", "BTC-USD", 8888, (100.4 + 101.4) / 2)
    numbers = {"best_bid": 100.5, "best_bid_size": 1.0, "best_ask": 101.0, "best_ask_size": 1.0}
    got = cc.judge(price([kraken, COINBASE_1], fair_value=100.75, **numbers), truth, specs, fx)
    assert got["wrong"] == [] and "never sent honestly" in got["unverified"][0]


def test_too_few_venues_must_be_halted(world) -> None:
    truth, specs, fx = world
    numbers = {"best_bid": 100.5, "best_bid_size": 1.0, "best_ask": 101.0, "best_ask_size": 1.0}
    p = price([COINBASE_1], fair_value=100.75, **numbers)
    assert cc.judge(p, truth, specs, fx) == {
        "wrong": [],
        "unverified": [],
        "rule": ["1 venue(s) used, min_venues 2, not halted"],
    }
    p["halted"] = True
    assert cc.judge(p, truth, specs, fx)["rule"] == []


def test_losses_allowed_only_as_the_tail_of_a_killed_run() -> None:
    universe = {("X", 1): 10, ("X", 2): 5}
    present = {("X", 1, s) for s in range(1, 8)} | {("X", 2, s) for s in (1, 2, 4, 5)}
    causes, examples = cc.classify_missing(present, universe, {1}, {})
    assert causes["engine SIGKILL (the tail of the killed run)"] == 3
    assert causes["unexplained"] == 1 and "seq [3] of 1..5" in examples[0]
    # The same tail in a run stopped cleanly is a loss.
    causes, _ = cc.classify_missing(present, universe, set(), {})
    assert causes["unexplained"] == 4


def test_records_a_killed_broker_had_acknowledged_are_counted_as_its_loss() -> None:
    universe = {("X", 1): 10}
    present = {("X", 1, s) for s in (1, 2, 3, 7, 8, 9, 10)}
    priced = {("X", 1, s): 100 + s for s in range(1, 11)}
    # The consumer had read up to seq 3 when the broker died at t=105 (seqs 4 and 5 were
    # priced before; 6 after, so it cannot be the broker's).
    causes, examples = cc.classify_missing(present, universe, set(), priced, [(105, {("X", 1): 3})])
    assert causes["broker SIGKILL (acknowledged, then lost with its memory storage)"] == 2
    assert causes["unexplained"] == 1 and "seq [6]" in examples[0]


def test_kafka_order_is_judged_on_first_occurrences() -> None:
    ok = [(0, 0, i, "X", 1, s) for i, s in enumerate([1, 2, 3, 2, 3, 4])]  # resent: fine
    assert cc.kafka_order(ok) == []
    bad = [(0, 0, i, "X", 1, s) for i, s in enumerate([1, 3, 2])]
    assert cc.kafka_order(bad) == ["X: epoch 1 seq 2 after (1, 3)"]
    # A new broker starts over: its records follow the old one's.
    across = [
        (0, 0, 0, "X", 1, 1),
        (0, 0, 1, "X", 1, 2),
        (1, 0, 0, "X", 1, 2),
        (1, 0, 1, "X", 2, 1),
    ]
    assert cc.kafka_order(across) == []


def test_recovery_is_timed_from_the_end_of_the_fault_to_live_again() -> None:
    line = [(0, True), (10, True), (15, False), (40, True), (50, True)]
    assert cc.book_recovery(line, 12, 12, 2.0) * 1e9 == pytest.approx(28)
    assert cc.book_recovery([(0, True), (30, True)], 12, 12, 2.0) * 1e9 == pytest.approx(18)
    assert cc.book_recovery([(0, True), (15, False)], 12, 12, 2.0) is None


def test_the_checker_imports_nothing_from_the_engine() -> None:
    code = (
        "import runpy, sys; sys.argv = ['x', '--help'];\n"
        "try:\n"
        f"    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "import kafka, psycopg, zmq, avro.io, yaml\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mmengine'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_stale_book_used_and_a_silence_are_rule_violations(world) -> None:
    truth, specs, fx = world
    old = dict(OKX_101, recv_ts_ns=T0 + 2000 - 1_700_000_000)  # 1.7 s before it was priced
    p = price([old, COINBASE_1], fair_value=101.5, **GOOD)
    assert cc.judge(p, truth, specs, fx)["rule"] == []  # the config's max_age_ms: the default 5 s
    specs["BTC-USD"].max_age_ms = 1500
    assert cc.judge(p, truth, specs, fx)["rule"] == ["okx used 1700 ms old (max_age_ms 1500)"]
    s = 1_000_000_000
    prices = {
        ("BTC-USD", 1, i): {"priced_ts_ns": t * s // 10} for i, t in enumerate([0, 10, 36, 40])
    }
    # max_age_ms 1.5 s + 1 s of slack: the 2.6 s between 1.0 and 3.6 is a silence ...
    got = cc.silences(prices, [], specs)
    assert [o.message for o in got] == ["BTC-USD: no Price for 2.60 s after 1000000000"]
    assert got[0].excess_s == pytest.approx(0.1)
    # ... unless the engine was killed in it (a restart).
    assert cc.silences(prices, [2 * s], specs) == []


# --- the host-stall witness: what it may excuse, and what never ---------------------------------

S = 1_000_000_000


def test_an_overrun_is_excused_only_by_a_host_stall_inside_it_as_long_as_its_excess() -> None:
    # A silence of 2.6 s against a limit of 2.5 s: 0.1 s over.
    silence = cc.Overrun("X: no Price for 2.60 s", 10 * S, 10 * S + 26 * S // 10, 2.5)
    inside = cc.HostStalls([(11 * S, 11 * S + 15 * S // 100)])  # 0.15 s within it
    assert cc.excuse([silence], inside)[0] == []
    [why] = cc.excuse([silence], inside)[1]
    assert why.startswith("X: no Price for 2.60 s: 0.100 s over, the host stalled 0.150 s")
    short = cc.HostStalls([(11 * S, 11 * S + 5 * S // 100)])  # 0.05 s: shorter than the excess
    assert cc.excuse([silence], short) == ([silence], [])
    elsewhere = cc.HostStalls([(20 * S, 25 * S)])  # long, but after it
    assert cc.excuse([silence], elsewhere) == ([silence], [])
    # A stall straddling its start counts only for the part inside: 0.05 of its 1.05 s.
    straddling = cc.HostStalls([(9 * S, 10 * S + 5 * S // 100)])
    assert cc.excuse([silence], straddling) == ([silence], [])
    # The same moment recorded twice counts once.
    twice = cc.HostStalls([(11 * S, 11 * S + 6 * S // 100), (11 * S, 11 * S + 6 * S // 100)])
    assert twice.overlap_s(10 * S, 13 * S) == pytest.approx(0.06)
    assert cc.excuse([silence], twice) == ([silence], [])
    # No witness file: nothing is excused.
    assert cc.excuse([silence], cc.HostStalls.read(None)) == ([silence], [])


def test_the_witness_file_is_read_from_its_head_stall_and_end_lines(tmp_path: Path) -> None:
    path = tmp_path / "host_stalls.jsonl"
    path.write_text(
        '{"k": "head", "t": 1, "pid": 7, "period_ms": 10.0, "late_ms": 100.0}\n'
        '{"k": "stall", "start": 100, "end": 300000100}\n'
        '{"k": "stall", "start": 500000000, "end": 600000000}\n'
        '{"k": "stall", "start": 700000000, "en'  # still being written: not counted
    )
    stalls = cc.HostStalls.read(path)
    assert stalls.summary() == {
        "watched": True,
        "late_ms": 100.0,
        "n": 2,
        "total_s": 0.4,
        "max_s": 0.3,
    }
    assert cc.HostStalls.read(tmp_path / "absent").summary()["watched"] is False


def _encode(schema_file: str, record: dict[str, Any]) -> bytes:
    """An Avro single-object payload, written with the official package."""
    import io

    import avro.io
    import avro.schema

    schema = avro.schema.parse((SCRIPT.parents[1] / "schemas" / schema_file).read_text())
    full = {f.name: f.default for f in schema.fields if f.has_default}
    full.update(record)
    buf = io.BytesIO()
    avro.io.DatumWriter(schema).write(full, avro.io.BinaryEncoder(buf))
    return b"\xc3\x01" + schema.fingerprint("CRC-64-AVRO") + buf.getvalue()


def _top(state: str, t: int) -> bytes:
    return _encode(
        "book_top.avsc",
        {
            "venue": "coinbase",
            "instrument": "X",
            "state": state,
            "venue_seq": 1,
            "cross_seq": -1,
            "exchange_ts_ns": 0,
            "recv_ts_ns": t,
            "bid_prices": [],
            "bid_sizes": [],
            "ask_prices": [],
            "ask_sizes": [],
        },
    )


SILENCE_FROM = T0 + 3000  # Prices stop for 6.4 s (limit: max_age_ms 5 s + 1 s): 0.4 s over
FAULT = T0 + 10 * S  # an oversized frame on coinbase; LIVE again 2.3 s later: 0.3 s over


def _verdict(tmp_path: Path, stalls: list[tuple[int, int]] | None) -> dict[str, Any]:
    """The whole verdict on hand-written Prices (one of them wrong), BookTops and journals,
    with a silence and a slow recovery, and the host stalls given (None: no witness file)."""
    import argparse

    with open(tmp_path / "coinbase.truth", "a") as f:
        fault = {"k": "fault", "kind": "oversized", "i": None, "t": FAULT, "until": None}
        f.write(json.dumps(fault) + "\n")
    (tmp_path / "events.jsonl").write_text("")
    witness = tmp_path / "host_stalls.jsonl"
    if stalls is not None:
        witness.write_text(
            '{"k": "head", "t": 0, "late_ms": 100.0}\n'
            + "".join(json.dumps({"k": "stall", "start": a, "end": b}) + "\n" for a, b in stalls)
        )
    args = argparse.Namespace(
        config=str(tmp_path / "engine.yaml"),
        schemas=str(SCRIPT.parents[1] / "schemas"),
        truth=str(tmp_path),
        events=str(tmp_path / "events.jsonl"),
        ipc="ipc://unused",
        ipc_books="ipc://unused-books",
        kafka="",
        topic="t",
        pg="",
        host_stalls=str(witness),
        out=str(tmp_path / "verdict.json"),
    )
    campaign = cc.Campaign(args)  # its collectors are not started: they are filled here
    off = dict(OKX_101, mid=OKX_101["mid"] + 0.01)
    halted = {"halted": True, "venues_used": []}
    prices = [
        price([OKX_101, COINBASE_1], fair_value=101.5, seq=1, **GOOD),
        price([off, COINBASE_1], fair_value=101.5, seq=2, priced_ts_ns=SILENCE_FROM, **GOOD),
        price([], seq=3, priced_ts_ns=SILENCE_FROM + 64 * S // 10, **halted),
        price([], seq=4, priced_ts_ns=SILENCE_FROM + 69 * S // 10, **halted),
    ]
    for p in prices:  # what the schema asks for beyond what the judge reads
        p.update(venues=[u["venue"] for u in p["venues_used"]], exchange_ts_ns=0, recv_ts_ns=0)
    campaign.ipc.got = [(p["priced_ts_ns"], b"price.", _encode("price.avsc", p)) for p in prices]
    tops = [("LIVE", FAULT - S // 2), ("STALE", FAULT + S // 10), ("LIVE", FAULT + 23 * S // 10)]
    campaign.books.got = [(t, b"book.", _top(state, t)) for state, t in tops]
    return campaign.verdict()


def test_a_silence_and_a_slow_recovery_fail_without_a_host_stall_in_them(world, tmp_path) -> None:
    for stalls in (
        None,  # no witness
        [(T0 + S, T0 + S + 3 * S // 10), (FAULT + S, FAULT + S + 2 * S // 10)],  # too short
        [(T0 + 7 * S, T0 + 95 * S // 10), (FAULT - S, FAULT + 2 * S // 10)],  # elsewhere
    ):
        for f in tmp_path.glob("*.truth"):  # a fresh journal for each case
            f.write_text("".join(x for x in f.open() if '"fault"' not in x))
        got = _verdict(tmp_path, stalls)
        assert got["excused_host_stall"]["n"] == 0, stalls
        assert got["examples"]["rules"] == [f"BTC-USD: no Price for 6.40 s after {SILENCE_FROM}"], (
            stalls
        )
        assert got["examples"]["slow_recovery"] == [
            f"oversized on coinbase at {FAULT}: 2.30 s (limit 2.0 s)"
        ], stalls
        assert "1 rule violation(s)" in got["failures"]
        assert "1 recovery(ies) over their limit" in got["failures"]
        assert got["host_stalls"]["watched"] is (stalls is not None)


def test_a_host_stall_excuses_the_silence_and_the_recovery_but_never_a_wrong_price(
    world, tmp_path
) -> None:
    # The first stall also covers the moment the wrong Price was priced (SILENCE_FROM).
    stalls = [(T0 + 2500, T0 + 2500 + S // 2), (FAULT + S, FAULT + S + 4 * S // 10)]
    got = _verdict(tmp_path, stalls)
    excused = got["excused_host_stall"]
    assert (excused["n"], excused["silences"], excused["recoveries"]) == (2, 1, 1)
    assert "0.400 s over, the host stalled 0.500 s in it" in excused["examples"][0]
    assert "0.300 s over, the host stalled 0.400 s in it" in excused["examples"][1]
    assert got["host_stalls"] == {
        "watched": True,
        "late_ms": 100.0,
        "n": 2,
        "total_s": 0.9,
        "max_s": 0.5,
    }
    assert got["rule_violations"] == 0 and got["examples"]["slow_recovery"] == []
    assert got["recovery_s"]["oversized"]["max"] == 2.3  # still reported as measured
    # The wrong Price (seq 2, priced while the host stalled) still fails the campaign,
    # and so do the Prices missing from Kafka (no broker here).
    assert got["wrong_prices"] == 1 and "okx BTC-USDT at 101: mid" in got["examples"]["wrong"][0]
    assert "1 wrong venue book(s) or number(s) in Prices" in got["failures"]
    assert any(f.startswith("unexplained losses: kafka 4") for f in got["failures"])
    assert not got["passed"]
