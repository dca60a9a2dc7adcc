"""The Binance spot simulator over real loopback sockets, read with the engine's client library.

Every check here is made from the wire: websocket-client for the stream, urllib for REST, and
a small independent book built with the venue's documented sync procedure.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import websocket

from mmengine.capture import read_capture
from mmengine.dev.simulator import SimulatorHandle, start_simulator

pytestmark = pytest.mark.integration

CAPTURE = Path(__file__).parent.parent / "data" / "BINANCE.jsonl.gz"
BTC_DEPTH = "btcusdt@depth@100ms"
BTC_TICKER = "btcusdt@bookTicker"


# --- helpers ---------------------------------------------------------------------------------


def connect(sim: SimulatorHandle, streams: list[str]) -> websocket.WebSocket:
    url = sim.ws_url + ("?streams=" + "/".join(streams) if streams else "")
    return websocket.create_connection(url, timeout=5, skip_utf8_validation=True)


def get(url: str) -> tuple[int, Any]:
    """(status, decoded JSON body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode()


def read_for(ws: websocket.WebSocket, seconds: float) -> list[tuple[float, str]]:
    """Every text frame received in the next `seconds`, with its arrival time."""
    out: list[tuple[float, str]] = []
    deadline = time.monotonic() + seconds
    ws.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            out.append((time.monotonic(), ws.recv()))
        except websocket.WebSocketTimeoutException:
            continue
    ws.settimeout(5)
    return out


def diffs_of(frames: list[str], stream: str = BTC_DEPTH) -> list[dict[str, Any]]:
    out = []
    for text in frames:
        msg = json.loads(text)
        if msg.get("stream") == stream:
            out.append(msg["data"])
    return out


def assert_contiguous(diffs: list[dict[str, Any]]) -> None:
    assert diffs, "no diffs"
    for prev, cur in pairwise(diffs):
        assert cur["U"] <= cur["u"], cur
        assert cur["U"] == prev["u"] + 1, f"U={cur['U']} after u={prev['u']}"


class Book:
    """An independent L2 book keyed by Decimal price, from a REST snapshot plus diffs."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.last = int(snapshot["lastUpdateId"])
        self.sides: dict[str, dict[Decimal, Decimal]] = {"b": {}, "a": {}}
        self._set("b", snapshot["bids"])
        self._set("a", snapshot["asks"])

    def _set(self, side: str, levels: list[list[str]]) -> None:
        book = self.sides[side]
        for price, qty in levels:
            if Decimal(qty) == 0:
                book.pop(Decimal(price), None)
            else:
                book[Decimal(price)] = Decimal(qty)

    def apply(self, diff: dict[str, Any]) -> None:
        assert diff["U"] == self.last + 1, f"gap: U={diff['U']} after {self.last}"
        self._set("b", diff["b"])
        self._set("a", diff["a"])
        self.last = diff["u"]

    def top(self) -> tuple[tuple[Decimal, Decimal], tuple[Decimal, Decimal]]:
        bids, asks = self.levels()
        return bids[0], asks[0]

    def levels(self) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        bids = sorted(self.sides["b"].items(), reverse=True)
        asks = sorted(self.sides["a"].items())
        return bids, asks


def sync(ws: websocket.WebSocket, sim: SimulatorHandle, symbol: str, stream: str) -> Book:
    """Binance's documented procedure (venue-protocols.md 1.4), numbered as there."""
    # 1. Buffer diffs from the open stream.
    buffered = diffs_of([t for _, t in read_for(ws, 0.2)], stream)
    assert buffered
    # 2. The REST snapshot.
    status, snap = get(f"{sim.rest_url}/api/v3/depth?symbol={symbol}&limit=1000")
    assert status == 200
    last_id = snap["lastUpdateId"]
    # 3. The snapshot is not older than the first buffered diff.
    assert last_id >= buffered[0]["U"]
    # 4. Drop what the snapshot already holds; read on until a diff is newer than it.
    pending = [d for d in buffered if d["u"] > last_id]
    while not pending:
        pending = [d for d in diffs_of([ws.recv()], stream) if d["u"] > last_id]
    # 5. The first remaining diff bridges the snapshot.
    assert pending[0]["U"] <= last_id + 1 <= pending[0]["u"]
    # 6. Apply the bridging diff and everything after it.
    book = Book(snap)
    first = dict(pending[0], U=last_id + 1)  # its ids up to L are already in the snapshot
    book.apply(first)
    for diff in pending[1:]:
        book.apply(diff)
    return book


# --- synthetic mode --------------------------------------------------------------------------


def test_diffs_are_contiguous_per_symbol_and_shaped_like_the_venue() -> None:
    with start_simulator("binance", rate=400, seed=1) as sim:
        ws = connect(sim, [BTC_DEPTH, "ethusdt@depth@100ms", "dogeusdt@depth@100ms"])
        frames = [t for _, t in read_for(ws, 0.6)]
        ws.close()
    streams = {json.loads(t)["stream"] for t in frames}
    assert streams == {BTC_DEPTH, "ethusdt@depth@100ms"}  # an unknown symbol is never sent
    for stream, symbol in ((BTC_DEPTH, "BTCUSDT"), ("ethusdt@depth@100ms", "ETHUSDT")):
        diffs = diffs_of(frames, stream)
        assert len(diffs) > 50
        assert_contiguous(diffs)
        for d in diffs:
            assert list(d) == ["e", "E", "s", "U", "u", "b", "a"]
            assert d["e"] == "depthUpdate" and d["s"] == symbol
            assert abs(d["E"] - time.time() * 1000) < 60_000
            for price, qty in d["b"] + d["a"]:
                assert len(price.split(".")[1]) == 8 and len(qty.split(".")[1]) == 8
    # ETH books sit near 3000 and BTC near 65000 on a 0.01 grid.
    eth = diffs_of(frames, "ethusdt@depth@100ms")
    assert all(2900 < float(p) < 3100 for d in eth for p, _ in d["b"] + d["a"])


def test_snapshot_plus_diffs_rebuild_the_book_and_agree_with_bookticker() -> None:
    sim = start_simulator("binance", instruments=["BTC-USDT", "ETH-USDT"], rate=400, seed=11)
    try:
        ws = connect(sim, [BTC_DEPTH, BTC_TICKER])
        book = sync(ws, sim, "BTCUSDT", BTC_DEPTH)
        agreed = 0
        applied = 0
        ticker_due = False
        top = book.top()
        for _, text in read_for(ws, 1.0):
            msg = json.loads(text)
            if msg["stream"] == BTC_DEPTH:
                assert not ticker_due, "the best levels changed but no bookTicker followed"
                book.apply(msg["data"])
                applied += 1
                ticker_due = book.top() != top
                top = book.top()
                continue
            ticker = msg["data"]
            if not applied:
                assert ticker["u"] <= book.last
                continue  # it follows a diff applied during the sync
            # A bookTicker comes right after a diff that changed the best levels, and only
            # then, so at an equal id the best levels must match exactly.
            assert ticker_due and ticker["u"] == book.last, ticker
            ticker_due = False
            bid, ask = top
            assert (Decimal(ticker["b"]), Decimal(ticker["B"])) == bid, ticker
            assert (Decimal(ticker["a"]), Decimal(ticker["A"])) == ask, ticker
            agreed += 1
        assert agreed >= 20
        # A fresh snapshot equals the rebuilt book at the snapshot's id.
        status, snap = get(f"{sim.rest_url}/api/v3/depth?symbol=BTCUSDT&limit=1000")
        assert status == 200
        while book.last < snap["lastUpdateId"]:
            for diff in diffs_of([ws.recv()]):
                book.apply(diff)
        assert book.last == snap["lastUpdateId"]
        assert book.levels() == Book(snap).levels()
        # After stop every diff sent has been received: the book equals the simulator's own.
        stopper = threading.Thread(target=sim.stop)
        stopper.start()
        while True:
            text = ws.recv()
            if not text:
                break  # the close frame
            for diff in diffs_of([text]):
                book.apply(diff)
        ws.shutdown()  # close() returns at once once the close frames were exchanged
        stopper.join()
        assert book.levels() == sim.book("BTC-USDT")
        assert len(book.levels()[0]) >= 20
    finally:
        sim.stop()


def test_rest_snapshot_limits_and_errors() -> None:
    with start_simulator("binance", instruments=["BTC-USDT"], rate=100, seed=2) as sim:
        status, snap = get(f"{sim.rest_url}/api/v3/depth?symbol=BTCUSDT&limit=5")
        assert status == 200 and list(snap) == ["lastUpdateId", "bids", "asks"]
        assert len(snap["bids"]) == 5 and len(snap["asks"]) == 5
        bids = [Decimal(p) for p, _ in snap["bids"]]
        asks = [Decimal(p) for p, _ in snap["asks"]]
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
        assert bids[0] < asks[0]
        assert get(f"{sim.rest_url}/api/v3/depth?symbol=ETHUSDT") == (
            400,
            {"code": -1121, "msg": "Invalid symbol."},
        )
        status, body = get(f"{sim.rest_url}/api/v3/depth")
        assert status == 400 and body["code"] == -1102
        assert get(f"{sim.rest_url}/api/v3/nothing")[0] == 404
        with pytest.raises(websocket.WebSocketBadStatusException):
            websocket.create_connection(f"ws://127.0.0.1:{sim.port}/ws/btcusdt@depth", timeout=5)
        stats = sim.stats
    assert stats["snapshots_served"] == 1 and stats["http_errors"] == 4


def test_subscribe_on_an_open_connection() -> None:
    with start_simulator("binance", instruments=["BTC-USDT"], rate=200, seed=3) as sim:
        ws = connect(sim, [])
        assert read_for(ws, 0.2) == []  # nothing subscribed, nothing sent
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": [BTC_DEPTH], "id": 1}))
        assert json.loads(ws.recv()) == {"result": None, "id": 1}
        ws.send(json.dumps({"method": "FLY", "params": [], "id": 2}))
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
        ws.send("not json")
        replies = []
        diffs = []
        while len(replies) < 3:
            msg = json.loads(ws.recv())
            (diffs if "stream" in msg else replies).append(msg)
        assert replies[0]["code"] == 2 and replies[0]["id"] == 2
        assert replies[0]["msg"].startswith("Invalid request: ")
        assert replies[1] == {"result": [BTC_DEPTH], "id": 3}
        assert replies[2]["code"] == 3
        diffs += [json.loads(t) for _, t in read_for(ws, 0.2)]
        assert diffs and all(d["stream"] == BTC_DEPTH for d in diffs)
        assert_contiguous([d["data"] for d in diffs])
        ws.close()


# --- faults ----------------------------------------------------------------------------------


def test_gap_fault_skips_exactly_one_diff() -> None:
    with start_simulator(
        "binance", instruments=["BTC-USDT"], rate=300, seed=4, faults=["gap"], fault_interval_s=0.3
    ) as sim:
        ws = connect(sim, [BTC_DEPTH])
        diffs = diffs_of([t for _, t in read_for(ws, 1.5)])
        ws.close()
        injected = sim.stats["faults"]["gap"]
    jumps = [cur["U"] - prev["u"] - 1 for prev, cur in pairwise(diffs)]
    gaps = [j for j in jumps if j != 0]
    assert 2 <= len(gaps) <= injected
    # Never a repeat or an overlap; each gap is one whole diff (it covers 1 to 3 ids).
    assert all(1 <= g <= 3 for g in gaps), gaps


def test_malformed_fault_sends_a_frame_that_does_not_parse() -> None:
    with start_simulator(
        "binance",
        instruments=["BTC-USDT"],
        rate=300,
        seed=5,
        faults=["malformed"],
        fault_interval_s=0.3,
    ) as sim:
        ws = connect(sim, [BTC_DEPTH])
        frames = [t for _, t in read_for(ws, 1.0)]
        ws.close()
    bad = []
    good = []
    for text in frames:
        try:
            good.append(json.loads(text)["data"])
        except ValueError:
            bad.append(text)
    assert bad and all(t.startswith('{"stream":"btcusdt@depth@100ms"') for t in bad)
    assert_contiguous(good)  # a malformed frame uses up no update id


def test_drop_fault_cuts_the_connection_and_a_new_one_is_served() -> None:
    with start_simulator(
        "binance", instruments=["BTC-USDT"], rate=200, seed=6, faults=["drop"], fault_interval_s=0.4
    ) as sim:
        ws = connect(sim, [BTC_DEPTH])
        received = 0
        deadline = time.monotonic() + 3
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            while time.monotonic() < deadline:
                text = ws.recv()
                assert text, "a close frame: the drop should be abrupt"
                received += 1
        assert received > 0
        assert sim.stats["faults"]["drop"] >= 1
        ws2 = connect(sim, [BTC_DEPTH])
        assert json.loads(ws2.recv())["stream"] == BTC_DEPTH
        ws2.close()


def test_stall_fault_pauses_frames_and_keeps_the_connection() -> None:
    with start_simulator(
        "binance",
        instruments=["BTC-USDT"],
        rate=200,
        seed=7,
        faults=["stall"],
        fault_interval_s=0.3,
    ) as sim:
        ws = connect(sim, [BTC_DEPTH])
        frames = read_for(ws, 4.2)
        ws.close()
        stalls = sim.stats["faults"]["stall"]
    assert stalls >= 1
    pauses = [b[0] - a[0] for a, b in pairwise(frames)]
    longest = max(pauses)
    assert 2.7 <= longest <= 3.5, longest
    after = frames[pauses.index(longest) + 1 :]
    assert len(after) > 10  # frames flow again on the same connection
    assert_contiguous(diffs_of([t for _, t in frames]))  # silence, not a gap


# --- replay ----------------------------------------------------------------------------------


def recorded() -> tuple[list[str], list[str], dict[str, str]]:
    """(streams the capture subscribed, recorded frames in order, depth body per symbol)."""
    _, events = read_capture(CAPTURE)
    url = next(e.url for e in events if e.kind == "connect")
    streams = parse_qs(urlsplit(url).query)["streams"][0].split("/")
    frames = [e.data for e in events if e.kind == "recv"]
    bodies: dict[str, str] = {}
    for e in events:
        if e.kind == "http" and "/api/v3/depth" in e.url:
            bodies.setdefault(parse_qs(urlsplit(e.url).query)["symbol"][0], e.data)
    return streams, frames, bodies


def test_replay_serves_the_capture_in_order_and_the_recorded_snapshot() -> None:
    streams, frames, bodies = recorded()
    with start_simulator("binance", replay=CAPTURE, rate=1000) as sim:
        assert sim.instruments == ("NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR")
        ws = connect(sim, streams)
        got = [ws.recv() for _ in frames]
        assert got == frames
        # Over: the connection stays open and idle.
        ws.settimeout(0.3)
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv()
        # A later client gets the recording from its start, filtered to its streams.
        ws2 = connect(sim, ["nknusdt@depth@100ms"])
        nkn = [f for f in frames if f.startswith('{"stream":"nknusdt@depth@100ms"')]
        assert [ws2.recv() for _ in nkn] == nkn
        for symbol, body in bodies.items():
            with urllib.request.urlopen(
                f"{sim.rest_url}/api/v3/depth?symbol={symbol}&limit=5", timeout=5
            ) as resp:
                assert resp.read().decode() == body  # `limit` is ignored: the recording wins
        assert get(f"{sim.rest_url}/api/v3/depth?symbol=BTCUSDT")[0] == 400
        ws.close()
        ws2.close()


def test_replay_gap_fault_skips_one_recorded_diff() -> None:
    _, frames, _ = recorded()
    nkn = [json.loads(f)["data"] for f in frames if f.startswith('{"stream":"nknusdt@depth@100')]
    with start_simulator("binance", replay=CAPTURE, rate=300) as sim:
        ws = connect(sim, ["nknusdt@depth@100ms"])
        got = [json.loads(ws.recv())["data"]]
        sim.inject("gap")
        while got[-1]["u"] != nkn[-1]["u"]:
            got.append(json.loads(ws.recv())["data"])
        ws.close()
    assert len(got) == len(nkn) - 1
    jumps = [cur["U"] - prev["u"] - 1 for prev, cur in pairwise(got)]
    assert len([j for j in jumps if j]) == 1


# --- lifecycle -------------------------------------------------------------------------------


def test_stop_closes_clients_and_leaves_no_thread_running() -> None:
    before = set(threading.enumerate())
    sim = start_simulator("binance", instruments=["BTC-USDT"], rate=200, seed=8)
    ws = connect(sim, [BTC_DEPTH])
    assert get(f"{sim.rest_url}/api/v3/depth?symbol=BTCUSDT")[0] == 200
    ws.recv()
    stopper = threading.Thread(target=sim.stop)
    stopper.start()
    ws.settimeout(5)
    last = ""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        last = data.decode()
    ws.shutdown()  # close() returns at once once the close frames were exchanged
    stopper.join()
    assert json.loads(last) == {
        "stream": "!serverShutdown",
        "data": {"e": "serverShutdown", "E": json.loads(last)["data"]["E"]},
    }
    assert int.from_bytes(data[:2], "big") == 1001  # going away
    sim.stop()  # idempotent
    assert set(threading.enumerate()) - before == set()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{sim.rest_url}/api/v3/depth?symbol=BTCUSDT", timeout=2)
