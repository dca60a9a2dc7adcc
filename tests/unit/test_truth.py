"""The simulators' record of the truth (`mmengine.dev.simulator.truth`): every book version they
announced, which venue id names it, and whether it reached the client intact."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from mmengine.dev.simulator import start_simulator
from tests.venue_session import wait_for


def test_ids_name_versions_and_faults_are_marked(tmp_path: Path) -> None:
    journal = tmp_path / "okx.truth"
    with start_simulator(
        "okx-v5", instruments=["BTC-USDT"], rate=200, seed=3, truth_path=journal
    ) as sim:
        truth = sim.truth
        wait_for(lambda: len(truth.marks("BTC-USDT")) >= 5)
        sim.inject("gap")
        wait_for(lambda: any(not m.delivered for m in truth.marks("BTC-USDT")))
        sim.inject("badchecksum")
        wait_for(lambda: any(not m.clean for m in truth.marks("BTC-USDT")))
        time.sleep(0.1)
        bids, asks = sim.book("BTC-USDT", 5)
        marks = truth.marks("BTC-USDT")
    # Exactly the faulted updates are flagged, each on one mark.
    assert sum(not m.delivered for m in marks) == 1 and sum(not m.clean for m in marks) == 1
    # Each update names the version the market was at; ids increase with versions.
    assert [m.version for m in marks] == sorted(m.version for m in marks)
    assert all(m.first is not None and m.first < m.id for m in marks)
    # After stop, the last id names the simulator's own current book.
    last = sim.book_at("BTC-USDT", marks[-1].id)
    assert last is not None
    assert last.bids == [(str(p), str(q)) for p, q in bids]
    assert last.asks == [(str(p), str(q)) for p, q in asks]
    assert sim.book_at("BTC-USDT", -5) is None
    # The journal holds the same, for a checker in another process.
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert lines[0]["k"] == "head" and lines[0]["rule"] == "chain"
    journal_marks = [x for x in lines if x["k"] == "mark"]
    assert [(x["id"], x["v"], x["d"], x["ok"]) for x in journal_marks] == [
        (m.id, m.version, int(m.delivered), int(m.clean)) for m in marks
    ]
    assert {x["kind"] for x in lines if x["k"] == "fault"} == {"gap", "badchecksum"}
    books = {x["v"]: x for x in lines if x["k"] == "book"}
    assert books[marks[-1].version]["b"] == [list(x) for x in last.bids]


def test_a_rest_snapshot_is_marked_with_the_book_it_served() -> None:
    with start_simulator("binance", instruments=["BTC-USDT"], rate=100, seed=4, truth=True) as sim:
        wait_for(lambda: len(sim.truth.marks("BTC-USDT")) >= 3)
        with urllib.request.urlopen(f"{sim.rest_url}/api/v3/depth?symbol=BTCUSDT&limit=5") as r:
            body = json.loads(r.read())
        snap = [m for m in sim.truth.marks("BTC-USDT") if m.snapshot]
    assert len(snap) == 1 and snap[0].id == body["lastUpdateId"] and snap[0].delivered
    book = sim.book_at("BTC-USDT", body["lastUpdateId"])
    assert book is not None
    assert [float(p) for p, _ in book.bids] == [float(p) for p, _ in body["bids"]]
    assert [float(q) for _, q in book.asks] == [float(q) for _, q in body["asks"]]


def test_no_truth_is_kept_unless_asked() -> None:
    with start_simulator("okx-v5", instruments=["BTC-USDT"], rate=100, seed=5) as sim:
        time.sleep(0.1)
        assert not sim.truth.enabled and sim.book_at("BTC-USDT", 1) is None
