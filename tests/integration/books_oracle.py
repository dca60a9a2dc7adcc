"""An oracle for Prices taken from outside the pricing worker: the engine's own `books` IPC
stream (every BookTop a venue thread published), decoded with the official `avro` package.

A Price is priced from the latest BookTop of each venue book the worker had drained when it
priced. The stream shows when each top was received (`recv_ts_ns`), so the tops a Price can
have used are, per venue, the last one received before its `priced_ts_ns` or one shortly
before that (a top stamped just before pricing may still have been on its way to the
worker). The worker's latest top per venue only moves forward, so successive Prices of an
instrument use non-decreasing positions in each venue's stream; `match_prices` walks the
Prices in seq order and keeps, per venue, the earliest position that explains the last one.
Not every top on the stream reaches the worker: a venue thread sends the latest top per
book once per socket read, so a top superseded within one read is skipped.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

Top = dict[str, Any]
CANDIDATES = 4  # tops per venue considered for one Price: the last before it and 3 earlier


@dataclass
class Implied:
    """What a set of venue tops implies for a Price priced by `mid` (same quote currency,
    no outlier filter in play): the consolidated top and fair value, venues used and not."""

    best_bid: float
    best_bid_size: float
    best_ask: float
    best_ask_size: float
    fair_value: float | None  # None: nothing LIVE, a halted Price keeps its last value
    used: dict[str, float]  # venue -> mid
    not_live: set[str]
    recv_ts: set[int] = field(default_factory=set)
    stale: set[str] = field(default_factory=set)  # of not_live: marked STALE (silent)


def implied(tops: dict[str, Top]) -> Implied | None:
    """The consolidated view of `tops` (venue -> BookTop); None without any top."""
    if not tops:
        return None
    live = {v: t for v, t in tops.items() if t["state"] == "LIVE" and t["bid_prices"]}
    stale = {v for v, t in tops.items() if t["state"] == "STALE"}
    if not live:
        stamps = {t["recv_ts_ns"] for t in tops.values()}
        return Implied(0.0, 0.0, 0.0, 0.0, None, {}, set(tops), stamps, stale)
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    for t in live.values():
        bids[t["bid_prices"][0]] = bids.get(t["bid_prices"][0], 0.0) + t["bid_sizes"][0]
        asks[t["ask_prices"][0]] = asks.get(t["ask_prices"][0], 0.0) + t["ask_sizes"][0]
    best_bid, best_ask = max(bids), min(asks)
    return Implied(
        best_bid,
        bids[best_bid],
        best_ask,
        asks[best_ask],
        (best_bid + best_ask) / 2,
        {v: (t["bid_prices"][0] + t["ask_prices"][0]) / 2 for v, t in live.items()},
        set(tops) - set(live),
        {t["recv_ts_ns"] for t in tops.values()},
        stale,
    )


def agrees(price: dict[str, Any], want: Implied) -> bool:
    """Exact equality: the engine does the same float operations on the same inputs."""
    return (
        price["best_bid"] == want.best_bid
        and price["best_ask"] == want.best_ask
        and price["best_bid_size"] == want.best_bid_size
        and price["best_ask_size"] == want.best_ask_size
        and (price["fair_value"] == want.fair_value if want.fair_value is not None else True)
        and price["halted"] == (want.fair_value is None)
        and {u["venue"]: u["mid"] for u in price["venues_used"]} == want.used
        and {x["venue"] for x in price["venues_excluded"]} == want.not_live
        and all(
            x["reason"] == ("stale" if x["venue"] in want.stale else "not_live")
            for x in price["venues_excluded"]
        )
        and price["recv_ts_ns"] in want.recv_ts  # the top that triggered it is among them
    )


@dataclass
class MatchReport:
    matched: int = 0
    at_latest: int = 0  # matched by the last top of every venue before priced_ts_ns
    unmatched: list[dict[str, Any]] = field(default_factory=list)


def match_prices(
    prices: list[dict[str, Any]], tops: list[Top], venues: list[str]
) -> dict[str, MatchReport]:
    """instrument -> how its Prices compare with the tops on the books stream."""
    streams: dict[tuple[str, str], list[Top]] = {}
    for t in tops:
        streams.setdefault((t["venue"], t["instrument"]), []).append(t)
    reports: dict[str, MatchReport] = {}
    by_inst: dict[str, list[dict[str, Any]]] = {}
    for p in prices:
        by_inst.setdefault(p["instrument"], []).append(p)
    for inst, rows in by_inst.items():
        report = reports.setdefault(inst, MatchReport())
        # earliest position each venue may still be at; -1: before its first top
        lo = dict.fromkeys(venues, -1)
        for p in sorted(rows, key=lambda r: r["seq"]):
            options: dict[str, list[int]] = {}
            for v in venues:
                stream = streams.get((v, inst), [])
                hi = -1
                for i, t in enumerate(stream):
                    if t["recv_ts_ns"] > p["priced_ts_ns"]:
                        break
                    hi = i
                # -1 stands for "nothing from this venue had reached the worker yet"
                start = max(lo[v], hi - CANDIDATES + 1)
                options[v] = list(range(hi, start - 1, -1))
                # A loaded machine can keep a worker further behind than CANDIDATES tops: the
                # top the Price names (its receive time) is tried too, if it is on the stream,
                # received before pricing and not behind a top an earlier Price used. It must
                # still explain the Price exactly, with every other venue's top.
                named = {u["recv_ts_ns"] for u in p["venues_used"] if u["venue"] == v}
                options[v] += [
                    i for i in range(lo[v], start) if i >= 0 and stream[i]["recv_ts_ns"] in named
                ]
            found = []
            for combo in itertools.product(*(options[v] for v in venues)):
                chosen = {
                    v: streams[(v, inst)][i] for v, i in zip(venues, combo, strict=True) if i >= 0
                }
                want = implied(chosen)
                if want is not None and agrees(p, want):
                    found.append(combo)
            if not found:
                report.unmatched.append(p)
                continue
            report.matched += 1
            if any(all(i == options[v][0] for v, i in zip(venues, c, strict=True)) for c in found):
                report.at_latest += 1
            # Two tops of a venue can explain a Price alike (a change away from the best);
            # the worker had at least the earliest of them. Keeping the latest instead would
            # refuse a later Price priced, rightly, from the earlier one: a top the venue
            # thread superseded before sending it never reached the worker.
            for k, v in enumerate(venues):
                lo[v] = max(lo[v], min(c[k] for c in found))
    return reports


def tops_before(
    tops: list[Top], venue: str, instrument: str, ts_ns: int, n: int = CANDIDATES
) -> list[Top]:
    """The last `n` tops of one venue book received up to `ts_ns`, latest first: the ones a
    Price priced at `ts_ns` can have used."""
    out = [
        t
        for t in tops
        if t["venue"] == venue and t["instrument"] == instrument and t["recv_ts_ns"] <= ts_ns
    ]
    return out[::-1][:n]
