"""The pricing model in a running engine: several simulated venues, one of them misbehaving.

Venues here are Binance-protocol simulators under different names; what is tested is the
pricing worker's view of them (stale, outlier, FX, positions), decoded from the IPC stream
with the official avro package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any

import pytest

from mmengine.dev.simulator import start_simulator
from tests.integration.books_oracle import tops_before
from tests.integration.conftest import Subscriber

pytestmark = pytest.mark.integration


def venue(name: str, sim: Any, instruments: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": "binance",
        "url": sim.ws_url,
        "rest_url": sim.rest_url,
        "instruments": instruments,
        "depth": 50,
    }


def prices_of(engine: Any, seconds: float, topic: bytes = b"price.") -> list[dict[str, Any]]:
    endpoints = json.loads((engine.run_dir / "endpoints.json").read_text())
    sub = Subscriber(endpoints["ipc"]["prices"]["endpoint"], topic)
    try:
        return [p for _, p in sub.collect("price.avsc", seconds=seconds)]
    finally:
        sub.close()


def reasons(price: dict[str, Any]) -> dict[str, str]:
    return {x["venue"]: x["reason"] for x in price["venues_excluded"]}


def test_stalled_venue_is_excluded_as_stale_and_comes_back(engine_factory: Any) -> None:
    """Five venues; one stalls for about 3 s with its connection open."""
    with ExitStack() as stack:
        sims = [
            stack.enter_context(
                start_simulator("binance", instruments=["BTC-USDT"], rate=150, seed=s)
            )
            for s in (11, 12, 13, 14, 15)
        ]
        engine = engine_factory(
            {
                "venues": [venue(f"v{i}", sim, ["BTC-USDT"]) for i, sim in enumerate(sims)],
                "instruments": [
                    {
                        "name": "BTC-USDT",
                        "sources": [{"venue": f"v{i}"} for i in range(5)],
                        "max_age_ms": 800,
                        "outlier_bps": 1000,
                    }
                ],
            }
        )
        time.sleep(2)
        sims[2].inject("stall")  # about 3 s without a frame, connection open
        got = prices_of(engine, seconds=6)
        assert engine.stop() == 0, engine.output
    stale = [p for p in got if reasons(p).get("v2") == "stale"]
    assert stale, "v2 never excluded as stale during its stall"
    assert all("v2" not in p["venues"] for p in stale)
    after = got[got.index(stale[-1]) + 1 :]
    assert any("v2" in p["venues"] for p in after), "v2 never used again after the stall"
    assert all(not p["halted"] for p in got if len(p["venues"]) >= 2)


def collect_prices_and_books(
    engine: Any, seconds: float, topic: bytes = b"price."
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Prices (topic prefix) and every BookTop, collected side by side for `seconds`."""
    endpoints = json.loads((engine.run_dir / "endpoints.json").read_text())
    books = Subscriber(endpoints["ipc"]["books"]["endpoint"])
    tops: list[dict[str, Any]] = []
    t = threading.Thread(
        target=lambda: tops.extend(p for _, p in books.collect("book_top.avsc", seconds=seconds))
    )
    t.start()
    try:
        got = prices_of(engine, seconds, topic)
    finally:
        t.join()
        books.close()
    return got, tops


def test_shifted_venue_is_an_outlier(engine_factory: Any) -> None:
    with ExitStack() as stack:
        sims = [
            stack.enter_context(
                start_simulator(
                    "binance", instruments=["BTC-USDT"], rate=150, seed=s, shift_bps=shift
                )
            )
            for s, shift in ((21, 0), (22, 0), (23, 200))
        ]
        engine = engine_factory(
            {
                "venues": [venue(f"v{i}", sim, ["BTC-USDT"]) for i, sim in enumerate(sims)],
                "instruments": [
                    {
                        "name": "BTC-USDT",
                        "sources": [{"venue": f"v{i}"} for i in range(3)],
                        "outlier_bps": 50,
                    }
                ],
            }
        )
        time.sleep(1.5)
        got, tops = collect_prices_and_books(engine, seconds=3)
        assert engine.stop() == 0, engine.output
    three = [p for p in got if len(p["venues"]) + len(p["venues_excluded"]) == 3]
    assert len(three) > 20
    checked = 0
    for p in three:
        assert reasons(p) == {"v2": "outlier"}
        assert sorted(p["venues"]) == ["v0", "v1"]
        assert not p["halted"] and p["bids"] and p["asks"]
        # Fair value stays within the honest venues' range, from their own tops on the
        # books stream (the tops this Price can have used); the shifted venue sits 200 bps
        # up, so a pull of a third of that would leave the range.
        honest = [
            t for v in ("v0", "v1") for t in tops_before(tops, v, "BTC-USDT", p["priced_ts_ns"])
        ]
        shifted = tops_before(tops, "v2", "BTC-USDT", p["priced_ts_ns"], 1)
        if len(honest) < 2 or not shifted:
            continue  # the books SUB joined after these tops
        low = min(t["bid_prices"][0] for t in honest)
        high = max(t["ask_prices"][0] for t in honest)
        assert low <= p["fair_value"] <= high, (low, p["fair_value"], high)
        assert shifted[0]["bid_prices"][0] > high * 1.01  # it really was far away
        checked += 1
    assert checked > 20


def test_stopped_fx_venue_excludes_the_venues_that_need_its_rate(engine_factory: Any) -> None:
    with ExitStack() as stack:
        usd = stack.enter_context(
            start_simulator("binance", instruments=["BTC-USD"], rate=150, seed=31)
        )
        usdt = stack.enter_context(
            start_simulator("binance", instruments=["BTC-USDT"], rate=150, seed=32)
        )
        fx = start_simulator("binance", instruments=["USDT-USD"], rate=100, seed=33)
        stack.callback(fx.stop)
        engine = engine_factory(
            {
                "engine": {"pricing_workers": 3},
                "venues": [
                    venue("usdvenue", usd, ["BTC-USD"]),
                    venue("usdtvenue", usdt, ["BTC-USDT"]),
                    venue("fxvenue", fx, ["USDT-USD"]),
                ],
                "instruments": [
                    {
                        "name": "BTC-USD",
                        "sources": [
                            {"venue": "usdvenue"},
                            {"venue": "usdtvenue", "instrument": "BTC-USDT"},
                        ],
                        "min_venues": 1,
                        "outlier_bps": 100_000,
                    },
                    {"name": "USDT-USD", "sources": [{"venue": "fxvenue"}], "min_venues": 1},
                ],
                "fx": [{"pair": "USDT-USD", "instrument": "USDT-USD", "max_age_ms": 1000}],
            }
        )
        time.sleep(2)
        before, tops = collect_prices_and_books(engine, seconds=2.5)
        fx.stop()
        time.sleep(1.5)
        after = prices_of(engine, seconds=2, topic=b"price.BTC-USD")
        assert engine.stop() == 0, engine.output
    # The rate a USDT venue is converted at is the USDT-USD fair value of a book the FX venue
    # announced: one the USDT-USD Price published, or, since the worker pricing BTC-USD
    # computes USDT-USD itself from the FX tops it received, the mid of an FX book on the
    # books stream that the publishing worker conflated away under load (a one-venue
    # instrument's fair value is its mid). And its mid in the BTC-USD Price is its raw mid
    # on the books stream times that rate.
    published = {p["fair_value"] for p in before if p["instrument"] == "USDT-USD"}
    assert published
    published |= {
        (t["bid_prices"][0] + t["ask_prices"][0]) / 2
        for t in tops
        if t["venue"] == "fxvenue" and t["state"] == "LIVE" and t["bid_prices"]
    }
    converted = [
        (p, u)
        for p in before
        if p["instrument"] == "BTC-USD"
        for u in p["venues_used"]
        if u["venue"] == "usdtvenue"
    ]
    assert len(converted) > 20
    checked = 0
    for p, u in converted:
        assert u["fx_rate"] > 1.0  # the simulated USDT-USD market sits near 100
        assert u["fx_rate"] in published, u
        # The venue book the Price names (its receive time) on the books stream: its raw mid
        # times the rate is the converted mid, exactly, however far behind a loaded
        # machine kept the worker.
        named = [
            t
            for t in tops
            if t["venue"] == "usdtvenue"
            and t["instrument"] == "BTC-USDT"
            and t["recv_ts_ns"] == u["recv_ts_ns"]
            and t["recv_ts_ns"] <= p["priced_ts_ns"]
        ]
        if not named:
            continue  # the books SUB joined after this top
        top = named[-1]
        raw_mid = (top["bid_prices"][0] + top["ask_prices"][0]) / 2
        assert u["mid"] == raw_mid * u["fx_rate"], (u, top)
        checked += 1
    assert checked > len(converted) / 2
    assert after and all(reasons(p).get("usdtvenue") == "no_fx" for p in after)
    assert all(p["venues"] == ["usdvenue"] for p in after)


def test_set_position_skews_the_next_price(engine_factory: Any) -> None:
    with start_simulator("binance", instruments=["BTC-USDT"], rate=100, seed=41) as sim:
        engine = engine_factory(
            {
                "venues": [venue("v0", sim, ["BTC-USDT"])],
                "instruments": [
                    {
                        "name": "BTC-USDT",
                        "sources": [{"venue": "v0"}],
                        "min_venues": 1,
                        "quote": {
                            "skew_bps_at_max": 4.0,
                            "max_position": 10.0,
                            "levels": 2,
                            "min_spread_bps": 10.0,
                        },
                    }
                ],
            }
        )
        time.sleep(1.5)
        flat = prices_of(engine, seconds=1)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmengine.cli",
                "set-position",
                "BTC-USDT",
                "5",
                "--run-dir",
                str(engine.run_dir),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode == 0, run.stderr
        bad = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmengine.cli",
                "set-position",
                "DOGE-USDT",
                "1",
                "--run-dir",
                str(engine.run_dir),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        long = prices_of(engine, seconds=1)
        assert engine.stop() == 0, engine.output
    assert bad.returncode != 0 and "not priced by this engine" in bad.stderr
    assert flat and all(p["position"] == 0.0 and p["skew_bps"] == 0.0 for p in flat)
    assert long and all(p["position"] == 5.0 for p in long)
    for p in long:
        assert p["skew_bps"] == pytest.approx(-2.0)
        # Skewed down: the asks sit closer to fair than the bids.
        assert p["asks"][0]["price"] - p["fair_value"] < p["fair_value"] - p["bids"][0]["price"]
