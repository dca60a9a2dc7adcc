"""Measurement harness for a peer library: cryptofeed 2.4.1's per-message L2 book handler cost.

Runs in its own virtualenv that holds cryptofeed 2.4.1 (the bench's `.venv-peers`), never in
mmengine's, and imports nothing from mmengine. It follows docs/peer-baseline.md:

1. Setup: builds the venue's real cryptofeed `Feed` subscribed to L2_BOOK only. Symbol tables
   come from the capture's recorded REST responses (`HTTPSync.read` is patched to serve the
   `http` records; Coinbase's authenticated `/products` is aliased to the recorded public
   `/market/products`, and it gets dummy API keys). Binance's in-handler REST depth snapshot is
   served from the recorded records too, each once per replay. `subscribe()` runs on stand-in
   connections laid out by `feed.connect()` before every replay, which resets the books.
2. Timed pass: `await feed.message_handler(frame, conn, ts)` over the recorded book frames only,
   one warm-up replay, then N timed replays with one `perf_counter` around each loop, with
   `checksum_validation=True` (only Kraken and OKX check). The book callback only counts calls.

Prints one JSON object: capture, exchange, book_frames, replays, us_per_msg_median,
us_per_msg_min, callbacks (per replay), errors.

    .venv-peers/bin/python scripts/peer_cryptofeed.py tests/data/KRAKEN.jsonl.gz [--replays 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptofeed.connection import HTTPSync
from cryptofeed.defines import L2_BOOK
from cryptofeed.exchanges import EXCHANGE_MAP
from cryptofeed.feed import Feed
from yapic import json as yapic_json


def _is_binance_book(m: Any) -> bool:
    return isinstance(m, dict) and "@depth" in m.get("stream", "")


def _is_coinbase_book(m: Any) -> bool:
    return isinstance(m, dict) and m.get("channel") == "l2_data"


def _is_kraken_book(m: Any) -> bool:
    return isinstance(m, list) and len(m) >= 4 and str(m[-2]).startswith("book")


def _is_okx_book(m: Any) -> bool:
    return isinstance(m, dict) and "data" in m and m.get("arg", {}).get("channel") == "books"


def _is_bybit_book(m: Any) -> bool:
    return isinstance(m, dict) and str(m.get("topic", "")).startswith("orderbook.")


# Which recorded frames are book frames, per venue (the same filter as peer-baseline.md).
BOOK_FRAME: dict[str, Callable[[Any], bool]] = {
    "BINANCE": _is_binance_book,
    "COINBASE": _is_coinbase_book,
    "KRAKEN": _is_kraken_book,
    "OKX": _is_okx_book,
    "BYBIT": _is_bybit_book,
}
# Coinbase signs every subscribe with HMAC; nothing is sent, so dummy keys do.
FEED_KWARGS: dict[str, dict[str, Any]] = {
    "COINBASE": {"config": {"coinbase": {"key_id": "dummy", "key_secret": "dummy"}}},
}
# cryptofeed 2.4.1 reads Coinbase symbols from the authenticated endpoint; the capture recorded
# the public one, with the same product fields.
URL_ALIASES = {
    "https://api.coinbase.com/api/v3/brokerage/products": (
        "https://api.coinbase.com/api/v3/brokerage/market/products"
    ),
}


UrlKey = tuple[str, str, tuple[tuple[str, str], ...]]


def _url_key(url: str) -> UrlKey:
    """A URL without empty or reordered query parameters (Bybit's routes start with `?&`)."""
    parts = urlsplit(URL_ALIASES.get(url, url))
    return parts.netloc, parts.path, tuple(sorted(parse_qsl(parts.query)))


class Recorded:
    """The capture: header, REST bodies by URL, and book frames as (conn, ts, text)."""

    def __init__(self, path: Path) -> None:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            self.header: dict[str, Any] = json.loads(fh.readline())
            events = [json.loads(line) for line in fh]
        self.exchange: str = self.header["exchange"]
        is_book = BOOK_FRAME.get(self.exchange, lambda m: False)
        self.http: dict[UrlKey, list[str]] = defaultdict(list)
        self.addresses: dict[str, str] = {}
        self.frames: list[tuple[str, float, str]] = []
        for ev in events:
            if ev["t"] == "http":
                self.http[_url_key(ev["url"])].append(ev["data"])
            elif ev["t"] == "connect":
                self.addresses[ev["conn"]] = ev["addr"]
            elif ev["t"] == "recv" and is_book(json.loads(ev["data"])):
                self.frames.append((ev["conn"], ev["ts"], ev["data"]))
        self.served: Counter[UrlKey] = Counter()

    def body(self, url: str, *, once: bool) -> str:
        """The recorded response to `url`; with `once`, each record is served once per replay."""
        key = _url_key(url)
        bodies = self.http.get(key)
        if not bodies:
            raise LookupError(f"no recorded http response for {url}")
        if not once:
            return bodies[0]
        if self.served[key] >= len(bodies):
            raise LookupError(f"recorded responses for {url} already served this replay")
        self.served[key] += 1
        return bodies[self.served[key] - 1]


class StandIn:
    """Stands in for a cryptofeed `WSAsyncConn`: same id, address and subscription; no socket."""

    def __init__(self, conn: Any) -> None:
        self.id: str = conn.id
        self.address: str = conn.address
        self.subscription: dict[str, list[str]] = conn.subscription
        self.sent: list[str] = []

    @property
    def uuid(self) -> str:
        return self.id

    async def write(self, data: str) -> None:
        self.sent.append(data)


def build_feed(rec: Recorded, on_book: Callable[..., Any]) -> Feed:
    """The venue's real Feed, L2_BOOK only, symbol tables and REST snapshots from the capture."""

    def sync_read(_self: HTTPSync, address: str, *args: Any, json: bool = False, **kw: Any) -> Any:
        text = rec.body(address, once=False)
        return yapic_json.loads(text, parse_float=Decimal) if json else text

    async def async_read(address: str, *args: Any, **kw: Any) -> str:
        return rec.body(address, once=True)

    HTTPSync.read = sync_read  # symbol tables: every Exchange shares one HTTPSync
    feed: Feed = EXCHANGE_MAP[rec.exchange](
        symbols=rec.header["config"]["l2_book"],
        channels=[L2_BOOK],
        callbacks={L2_BOOK: on_book},
        checksum_validation=True,
        **FEED_KWARGS.get(rec.exchange, {}),
    )
    feed.http_conn.read = async_read  # Binance fetches its depth snapshot inside the handler
    return feed


def stand_ins(rec: Recorded, feed: Feed) -> dict[str, StandIn]:
    """Maps each recorded connection to the stand-in for the feed's connection at that address."""
    conns = [StandIn(conn) for conn, *_ in feed.connect()]
    by_conn: dict[str, StandIn] = {}
    for name in {conn for conn, _, _ in rec.frames}:
        addr = rec.addresses.get(name, "")
        matches = [c for c in conns if c.address == addr] or [
            c for c in conns if c.address.split("?")[0] == addr.split("?")[0]
        ]
        if not matches and len(conns) == 1:
            matches = conns
        if not matches:
            raise LookupError(f"no {rec.exchange} feed connection for recorded {name} at {addr!r}")
        by_conn[name] = matches[0]
    return by_conn


async def measure(rec: Recorded, replays: int) -> dict[str, Any]:
    calls = 0

    async def on_book(book: Any, receipt_timestamp: float) -> None:
        nonlocal calls
        calls += 1

    feed = build_feed(rec, on_book)
    conns = stand_ins(rec, feed)
    frames = [(conns[name], ts, text) for name, ts, text in rec.frames]
    errors: Counter[str] = Counter()
    callbacks: list[int] = []
    figures: list[float] = []
    for replay in range(replays + 1):  # replay 0 is the warm-up
        for conn in dict.fromkeys(conns.values()):
            await feed.subscribe(conn)  # resets the venue's books for this connection
        rec.served.clear()
        calls = 0
        handler = feed.message_handler
        start = time.perf_counter()
        for conn, ts, text in frames:
            try:
                await handler(text, conn, ts)
            except Exception as exc:
                errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
        elapsed = time.perf_counter() - start
        callbacks.append(calls)
        if replay:
            figures.append(elapsed / len(frames) * 1e6)
    if len(set(callbacks)) > 1:
        errors[f"callbacks differ between replays: {callbacks}"] += 1
    return {
        "exchange": rec.exchange,
        "book_frames": len(frames),
        "replays": replays,
        "us_per_msg_median": round(statistics.median(figures), 2),
        "us_per_msg_min": round(min(figures), 2),
        "callbacks": callbacks[-1],
        "errors": [f"{msg} (x{n})" for msg, n in errors.items()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("capture", type=Path, help="format-2 capture (.jsonl.gz)")
    parser.add_argument("--replays", type=int, default=10, help="timed replays (default 10)")
    args = parser.parse_args(argv)
    rec = Recorded(args.capture)
    out: dict[str, Any] = {"capture": args.capture.name, "exchange": rec.exchange}
    if rec.frames:
        out |= asyncio.run(measure(rec, max(1, args.replays)))
    else:
        out |= {"book_frames": 0, "errors": ["no book frames, or a venue this driver lacks"]}
    print(json.dumps(out))
    return 0 if rec.frames else 2


if __name__ == "__main__":
    sys.exit(main())
