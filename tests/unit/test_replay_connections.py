"""`mmengine replay` on captures recorded by another tool (issue 18): the protocol is decided
per connection from its connect address, the scorecard shows each connection, frames of
channels no venue module uses are `ignored` (not errors), `--protocol` reads connections
from hosts the registry does not know, and the exit code is non-zero only for a failed
check or a frame of our channels that could not be used.

The two-connection capture is tests/data/BYBIT.jsonl.gz (recorded by `mmengine record` from
the Bybit spot and linear simulators) rewritten as a cryptofeed-style capture would hold it:
a header with only `exchange` and `l2_book`, the connections to the venue's own hosts, and
the kline and trade frames such a recording also subscribes to.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from mmengine.cli import main

SPOT = "wss://stream.bybit.com/v5/public/spot"
LINEAR = "wss://stream.bybit.com/v5/public/linear"
CONNS = {"venue-bybit-spot": "BYBIT.ws.1", "venue-bybit-linear": "BYBIT.ws.2"}
EVERY = 10  # one kline and one trade frame after every EVERY-th recorded frame


def _lines(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as fh:
        return [orjson.loads(line) for line in fh]


def _kline(symbol: str, ts: float) -> str:
    ms = int(ts * 1000)
    return json.dumps(
        {
            "topic": f"kline.1.{symbol}",
            "type": "snapshot",
            "ts": ms,
            "data": [
                {
                    "start": ms - ms % 60_000,
                    "end": ms - ms % 60_000 + 59_999,
                    "interval": "1",
                    "open": "65000.1",
                    "close": "65001.2",
                    "high": "65002",
                    "low": "64999.5",
                    "volume": "1.234",
                    "turnover": "80210.5",
                    "confirm": False,
                    "timestamp": ms,
                }
            ],
        }
    )


def _trade(symbol: str, ts: float) -> str:
    ms = int(ts * 1000)
    trade = {"T": ms, "s": symbol, "S": "Buy", "v": "0.001", "p": "65000.5", "L": "PlusTick"}
    return json.dumps(
        {"topic": f"publicTrade.{symbol}", "type": "snapshot", "ts": ms, "data": [trade]}
    )


def foreign_capture(
    data_dir: Path,
    out: Path,
    addresses: dict[str, str],
    other_channels: bool = True,
    edit: Any = None,
) -> dict[str, int]:
    """BYBIT.jsonl.gz as another tool records it; returns the extra frames per connection.
    `edit(conn, frame)` may replace a recorded frame (None drops it)."""
    lines = _lines(data_dir / "BYBIT.jsonl.gz")
    header = lines[0]
    out_lines = [
        {
            "t": "header",
            "format": 2,
            "exchange": "BYBIT",
            "config": {"l2_book": header["config"]["l2_book"]},
        }
    ]
    seen: dict[str, int] = {}
    extra: dict[str, int] = {}
    for line in lines[1:]:
        conn = CONNS[line["conn"]]
        line = {**line, "conn": conn}
        if line["t"] == "connect":
            line["addr"] = addresses[conn]
        if line["t"] == "send":
            msg = orjson.loads(line["data"])
            if msg.get("op") == "subscribe" and other_channels:
                symbols = [a.rsplit(".", 1)[1] for a in msg["args"]]
                msg["args"] += [f"kline.1.{s}" for s in symbols]
                msg["args"] += [f"publicTrade.{s}" for s in symbols]
                line["data"] = json.dumps(msg)
        if line["t"] == "recv" and edit is not None:
            line["data"] = edit(conn, line["data"])
            if line["data"] is None:
                continue
        out_lines.append(line)
        if line["t"] != "recv":
            continue
        seen[conn] = seen.get(conn, 0) + 1
        if other_channels and seen[conn] % EVERY == 0:
            for frame in (_kline("BTCUSDT", line["ts"]), _trade("ETHUSDT", line["ts"])):
                out_lines.append({"t": "recv", "conn": conn, "ts": line["ts"], "data": frame})
                extra[conn] = extra.get(conn, 0) + 1
    with gzip.open(out, "wt") as fh:
        for line in out_lines:
            fh.write(json.dumps(line) + "\n")
    return extra


def replay(path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    runner = CliRunner()
    cmd = ["--log-level", "WARNING", "replay", str(path), *args]
    as_json = runner.invoke(main, [*cmd, "--json"])
    as_text = runner.invoke(main, cmd)
    assert as_json.exit_code == as_text.exit_code, (as_json.output, as_text.output)
    return as_json.exit_code, json.loads(as_json.stdout), as_text.stdout


def test_a_two_connection_capture_replays_each_connection_with_its_own_protocol(
    data_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "bybit.jsonl.gz"
    extra = foreign_capture(data_dir, path, {"BYBIT.ws.1": SPOT, "BYBIT.ws.2": LINEAR})
    code, card, text = replay(path)
    assert code == 0, text
    assert card["errors"] == [] and card["protocol"] == "bybit-v5-spot+bybit-v5-linear"
    conns = {c["conn"]: c for c in card["connections"]}
    assert [(c["protocol"], c["protocol_from"]) for c in conns.values()] == [
        ("bybit-v5-spot", "address"),
        ("bybit-v5-linear", "address"),
    ]
    # Each connection's frames went to its own books: spot BTCUSDT never lands on the perp.
    spot, linear = conns["BYBIT.ws.1"], conns["BYBIT.ws.2"]
    assert spot["ignored"] == extra["BYBIT.ws.1"] and linear["ignored"] == extra["BYBIT.ws.2"]
    assert spot["skipped"] == linear["skipped"] == 0
    assert spot["book_frames"] == 452 and linear["book_frames"] == 453
    insts = card["instruments"]
    assert set(insts) == {"BTC-USDT", "ETH-USDT", "BTC-USDT-PERP", "ETH-USDT-PERP"}
    assert all(i["state"] == "LIVE" for i in insts.values()), insts
    assert insts["BTC-USDT"]["venue"] == "bybit-v5-spot"
    assert insts["BTC-USDT-PERP"]["venue"] == "bybit-v5-linear"
    assert card["totals"]["sequence"] == {"checked": 901, "gaps": 0}
    assert card["totals"]["audit"]["exact"] == {"agree": 228, "disagree": 0}
    # The same books as the capture replayed with the header `mmengine record` wrote.
    _, recorded, _ = replay(data_dir / "BYBIT.jsonl.gz")
    assert {k: v["top"] for k, v in insts.items()} == {
        k: v["top"] for k, v in recorded["instruments"].items()
    }
    # Frames of channels not used: counted by channel, not errors.
    assert card["ignored"] == {"kline.1": sum(extra.values()) // 2, "publicTrade": 45 + 68}
    assert "frames of channels not used ignored (kline.1 113, publicTrade 113)" in text
    for name in ("BYBIT.ws.1", "BYBIT.ws.2", "stream.bybit.com/v5/public/spot"):
        assert name in text
    # `--json` keeps its shape (tests/unit/test_kraken_okx_protocol.py) and adds these.
    assert [c["conn"] for c in card["connections"]] == ["BYBIT.ws.1", "BYBIT.ws.2"]


def test_one_venue_of_a_capture_is_picked_by_name(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "bybit.jsonl.gz"
    foreign_capture(data_dir, path, {"BYBIT.ws.1": SPOT, "BYBIT.ws.2": LINEAR})
    code, card, _ = replay(path, "--venue", "bybit-v5-linear")
    assert code == 0 and set(card["instruments"]) == {"BTC-USDT-PERP", "ETH-USDT-PERP"}
    assert [c["conn"] for c in card["connections"]] == ["BYBIT.ws.2"]


def test_connections_from_hosts_the_registry_does_not_know_need_protocol(
    data_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "bybit.jsonl.gz"
    mirror = "wss://bybit-mirror.example.net/v5/public/"
    foreign_capture(data_dir, path, {"BYBIT.ws.1": mirror + "spot", "BYBIT.ws.2": mirror + "lin"})
    code, card, text = replay(path)
    assert code == 2 and card["protocol"] is None and card["instruments"] == {}
    assert [c["protocol"] for c in card["connections"]] == [None, None]
    assert "UNREAD" in text and "--protocol BYBIT.ws.1=NAME" in text
    code, card, text = replay(
        path, "--protocol", "BYBIT.ws.1=bybit-v5-spot", "--protocol", "BYBIT.ws.2=bybit-v5-linear"
    )
    assert code == 0, text
    assert [(c["protocol"], c["protocol_from"]) for c in card["connections"]] == [
        ("bybit-v5-spot", "forced"),
        ("bybit-v5-linear", "forced"),
    ]
    assert all(i["state"] == "LIVE" for i in card["instruments"].values())
    assert card["totals"]["sequence"]["gaps"] == 0
    # One known host, one unknown: the known one replays, the other is named, exit 2.
    foreign_capture(data_dir, path, {"BYBIT.ws.1": SPOT, "BYBIT.ws.2": mirror + "lin"})
    code, card, _ = replay(path)
    assert code == 2 and set(card["instruments"]) == {"BTC-USDT", "ETH-USDT"}
    assert any("BYBIT.ws.2" in e and "--protocol" in e for e in card["errors"])


def test_protocol_reads_a_binance_capture_from_another_host(data_dir: Path, tmp_path: Path) -> None:
    """The issue's third case: Binance's spot protocol from another host of the family."""
    lines = _lines(data_dir / "BINANCE.jsonl.gz")
    lines[0]["exchange"] = "BINANCE_US"
    for line in lines:
        if line.get("t") == "connect":
            line["addr"] = line["addr"].replace("stream.binance.com:9443", "stream.binance.us:9443")
    path = tmp_path / "binance_us.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines)
    code, card, text = replay(path)
    assert code == 2 and "no venue module" in card["errors"][0] and "--protocol" in text
    code, card, text = replay(path, "--protocol", "binance")
    assert code == 0, text
    _, original, _ = replay(data_dir / "BINANCE.jsonl.gz")
    assert card["totals"] == original["totals"] and card["instruments"] == original["instruments"]
    assert card["ignored"] == {"aggTrade": 2, "kline": 2}
    bad = CliRunner().invoke(main, ["replay", str(path), "--protocol", "binanse"])
    assert bad.exit_code == 2 and "'binanse' is not a protocol" in bad.output


def _nth_delta(topic: str, n: int, change: Any) -> Any:
    """An edit that changes the `n`-th delta of a spot `topic` (and no other frame)."""
    seen = 0

    def edit(conn: str, frame: str) -> str | None:
        nonlocal seen
        msg = orjson.loads(frame)
        if conn == "BYBIT.ws.1" and msg.get("topic") == topic and msg["type"] == "delta":
            seen += 1
            if seen == n:
                return change(frame)  # type: ignore[no-any-return]
        return frame

    return edit


def _gap() -> Any:
    """Drops one delta of the spot BTCUSDT book: its next delta shows the gap."""
    return _nth_delta("orderbook.200.BTCUSDT", 100, lambda frame: None)


def _truncated() -> Any:
    """Cuts one spot ETHUSDT book frame short: a malformed frame of our book channel."""
    return _nth_delta("orderbook.200.ETHUSDT", 50, lambda frame: frame[: len(frame) // 2])


@pytest.mark.parametrize(
    ("edit", "errors"),
    [
        (_gap, ["1 resync(s): gap"]),
        # JSON cut short names no book: counted, and the next delta shows the hole.
        (_truncated, ["skipped 1 frame(s): bad_json", "1 resync(s): gap"]),
    ],
)
def test_a_gap_or_a_malformed_book_frame_exits_1(
    data_dir: Path, tmp_path: Path, edit: Any, errors: list[str]
) -> None:
    path = tmp_path / "bybit.jsonl.gz"
    foreign_capture(data_dir, path, {"BYBIT.ws.1": SPOT, "BYBIT.ws.2": LINEAR}, edit=edit())
    code, card, text = replay(path)
    assert code == 1, text
    assert card["errors"] == [f"bybit-v5-spot: {e}" for e in errors], card["errors"]
    assert f"error: bybit-v5-spot: {errors[0]}" in text
    # Only the spot connection's counts moved; the linear books are untouched.
    conns = {c["conn"]: c for c in card["connections"]}
    assert conns["BYBIT.ws.2"]["skipped"] == 0
    assert conns["BYBIT.ws.1"]["skipped"] == len(errors) - 1
    assert all(card["instruments"][i]["resyncs"] == 0 for i in ("BTC-USDT-PERP", "ETH-USDT-PERP"))
