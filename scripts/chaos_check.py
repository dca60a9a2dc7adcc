"""The chaos campaign's independent checker: its own process, sharing no code with the engine.

It imports nothing from `mmengine`. It reads the engine's Avro schemas (`price.avsc`,
`book_top.avsc`) as files and decodes with the official `avro` package, reads the engine's
config file as YAML, and talks to ZeroMQ (pyzmq), Kafka (kafka-python) and Postgres
(psycopg) directly. Its truth is the simulators' journals (`mmengine.dev.simulator.truth`
writes them; the format is documented there and read here from scratch): every book version
a simulator announced, and which venue id names it on which feed, intact or not.

While the campaign runs (`run`), threads collect: every Price on the IPC prices stream and
every BookTop on the IPC books stream (with the time each arrived), every record of the
Kafka topic (consumed live: the test broker keeps records in memory and loses them when it
is killed; on each broker restart announced in the events file the consumer starts over on
the new broker), and a poll of Postgres' `price_latest` (when rows move again after an
outage). On "finish" (a line on stdin), it drains Kafka, reads `price_history`, the truth
journals and the events, and judges:

1. **Explained.** Every Price that names venues (from IPC; from Kafka or Postgres for those
   IPC did not deliver) is recomputed from the true books: each venue's mid at the
   `venue_seq` it names (and `recv_ts_ns`, where ids restart per connection), converted by
   the config's FX; the consolidated best bid/ask and their sizes; the fair value by the
   configured method. A venue book the truth does not know, or whose numbers differ, makes
   the Price *wrong*.
2. **Verified.** The book each Price used was one the venue's integrity rule could verify:
   `chain` (Binance, OKX, Bybit): a snapshot at or before that id was served and every
   update after it up to that id was delivered intact; `connection` (Coinbase): the same
   along the connection's own numbering; `checksum` (Kraken): the checksum naming it was
   sent honestly. Never a crossed book.
3. **Rules.** Fewer venues used than `min_venues` is halted; with three or more venues no
   used mid sits far from the others (an outlier); no non-finite number; a quoting ladder
   brackets the fair value, every level > 0.
4. **Nothing lost.** Every Price (every seq from 1 to the last seen, per instrument and
   epoch) is in Kafka and in Postgres, once after dedupe on (instrument, epoch, seq); on
   Kafka, first occurrences in (epoch, seq) order per instrument. A Price missing from a
   sink is allowed only as docs/operations.md says an engine SIGKILL may lose it: the tail
   of the killed run's Prices. Kafka records the test broker had acknowledged and then
   lost with its memory when it was killed are counted as such (a real broker keeps them).
   Everything else is *unexplained* and fails the campaign.
5. **Recovery.** After each fault the affected book is LIVE again (the IPC books stream)
   within its limit: 2 s for venue faults (every venue's resubscribe limit allows that at
   the campaign's fault rate), a drifted venue is priced again within 2 s of coming back,
   the sinks deliver again within 10 s of their service returning, and an engine restarted
   after SIGKILL has every book LIVE within 10 s.

A silence or a recovery over its limit is *excused* (counted and listed, not failed) only
when the host-stall witness (`--host-stalls`, written by scripts/chaos.py) saw the host
stalled, within that very stretch, for at least as long as the limit was overrun. Nothing
else is ever excused: a wrong, unverified, lost or duplicated Price fails whatever the host
did.

Usage (the orchestrator, scripts/chaos.py, runs it): `chaos_check.py run --config FILE
--schemas DIR --truth DIR --events FILE --ipc ENDPOINT --ipc-books ENDPOINT --kafka
HOST:PORT --topic NAME --pg DSN [--host-stalls FILE] --out FILE`; exit 0 when every check
passed.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import io
import itertools
import json
import math
import statistics
import struct
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REL_TOL = 1e-12  # the engine's arithmetic is repeated here operation for operation
FAIR_TOL = 1e-9  # sums of sizes may be added in another order
VENUE_LIMIT_S = 2.0
SINK_LIMIT_S = 10.0
ENGINE_LIMIT_S = 10.0
OVERLAP_S = 0.5  # a fault starting this close to another one's end is judged with it
# The engine judges age when it prices; the Price is stamped a moment later (its publish).
AGE_SLACK_MS = 100.0
# Prices of an instrument never stop for longer than max_age_ms plus this while the engine
# runs: stale sources halt it, and a halted Price repeats every max_age_ms.
SILENCE_SLACK_S = 1.0
BOOK_FAULTS = ("gap", "badchecksum", "drop", "stall", "crossed", "malformed", "oversized", "error")
ALL_BOOKS = ("drop", "stall", "oversized", "drift")  # faults that hit every book of a venue
MAX_EXAMPLES = 12

Key = tuple[str, int, int]  # (instrument, epoch, seq)


def close(a: float, b: float, tol: float = REL_TOL) -> bool:
    return a == b or abs(a - b) <= tol * max(abs(a), abs(b))


# --- the truth ------------------------------------------------------------------------------


@dataclass(slots=True)
class Mark:
    t: int
    version: int
    id: int
    feed: str
    snapshot: bool
    clean: bool
    delivered: bool
    instrument: str

    @property
    def bad(self) -> bool:
        return not (self.clean and self.delivered)


class Feed:
    """The marks of one chain of ids (by id): updates with a running count of bad ones,
    and snapshots."""

    def __init__(self, marks: list[Mark]) -> None:
        updates = sorted((m for m in marks if not m.snapshot), key=lambda m: (m.id, m.t))
        self.update_ids = [m.id for m in updates]
        self.bad_before = [0]
        for m in updates:
            self.bad_before.append(self.bad_before[-1] + m.bad)
        self.snapshots = sorted((m for m in marks if m.snapshot), key=lambda m: (m.id, m.t))
        self.snapshot_ids = [m.id for m in self.snapshots]

    def bad_between(self, after: int, upto: int) -> int:
        """Bad updates with after < id <= upto."""
        lo = bisect.bisect_right(self.update_ids, after)
        hi = bisect.bisect_right(self.update_ids, upto)
        return self.bad_before[hi] - self.bad_before[lo] if hi > lo else 0

    def snapshot_at_or_before(
        self, upto: int, by_ns: int, instrument: str | None = None
    ) -> Mark | None:
        """The latest snapshot with id <= upto sent by `by_ns` (of `instrument`, if given)."""
        i = bisect.bisect_right(self.snapshot_ids, upto)
        while i > 0:
            i -= 1
            m = self.snapshots[i]
            if m.t <= by_ns and (instrument is None or m.instrument == instrument):
                return m
        return None


@dataclass
class Lookup:
    """What the truth says about one venue book a Price names."""

    bids: list[tuple[float, float]] = field(default_factory=list)
    asks: list[tuple[float, float]] = field(default_factory=list)
    error: str = ""  # the book is unknown
    unverified: str = ""  # known, but the venue's rule could not have verified it


class VenueTruth:
    """One simulator's journal: book versions and the marks naming them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.books: dict[tuple[str, int], bytes] = {}  # raw journal lines, parsed on demand
        self.faults: list[dict[str, Any]] = []
        marks: list[Mark] = []
        head: dict[str, Any] = {}
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b'{"k":"book"'):
                    rec = json.loads(line)
                    self.books[(rec["i"], rec["v"])] = line
                    continue
                if not line.endswith(b"\n"):
                    break  # a line the simulator was still writing
                rec = json.loads(line)
                kind = rec["k"]
                if kind == "book":
                    self.books[(rec["i"], rec["v"])] = line
                elif kind == "mark":
                    marks.append(
                        Mark(
                            rec["t"],
                            rec["v"],
                            rec["id"],
                            rec["f"],
                            bool(rec["s"]),
                            bool(rec["ok"]),
                            bool(rec["d"]),
                            rec["i"],
                        )
                    )
                elif kind == "fault":
                    self.faults.append(rec)
                elif kind == "head":
                    head = rec
        self.venue = head.get("venue", path.stem)
        self.rule = head.get("rule", "chain")
        self.instruments: list[str] = list(head.get("instruments", []))
        self.marks = marks
        self.by_id: dict[tuple[str, int], list[Mark]] = defaultdict(list)
        by_feed: dict[tuple[str, str], list[Mark]] = defaultdict(list)
        by_conn: dict[str, list[Mark]] = defaultdict(list)
        for m in marks:
            self.by_id[(m.instrument, m.id)].append(m)
            by_feed[(m.instrument, m.feed)].append(m)
            by_conn[m.feed].append(m)
        for found in self.by_id.values():
            found.sort(key=lambda m: m.t)
        self.feeds = {k: Feed(v) for k, v in by_feed.items()}
        self.connections = (
            {k: Feed(v) for k, v in by_conn.items()} if self.rule == "connection" else {}
        )

    def book(self, instrument: str, version: int) -> tuple[list[Any], list[Any]] | None:
        line = self.books.get((instrument, version))
        if line is None:
            return None
        rec = json.loads(line)
        return (
            [(float(p), float(q)) for p, q in rec["b"]],
            [(float(p), float(q)) for p, q in rec["a"]],
        )

    def lookup(self, instrument: str, seq: int, recv_ns: int) -> Lookup:
        """The book `seq` names for a client that received it at `recv_ns`."""
        found = [m for m in self.by_id.get((instrument, seq), ()) if m.t <= recv_ns]
        if not found:
            return Lookup(error=f"no book of {self.venue} {instrument} was ever named {seq}")
        if self.rule == "checksum":
            honest = [m for m in found if not m.bad]
            mark = (honest or found)[-1]
        else:
            mark = found[-1]
        book = self.book(instrument, mark.version)
        if book is None:
            return Lookup(error=f"{self.venue} {instrument} version {mark.version} not recorded")
        out = Lookup(book[0], book[1])
        out.unverified = self._unverified(mark, recv_ns)
        return out

    def _unverified(self, mark: Mark, recv_ns: int) -> str:
        if self.rule == "checksum":
            return "its checksum was never sent honestly" if mark.bad else ""
        if self.rule == "connection":
            feed = self.connections[mark.feed]
            start = feed.snapshot_at_or_before(mark.id, recv_ns, mark.instrument)
        else:
            feed = self.feeds[(mark.instrument, mark.feed)]
            start = feed.snapshot_at_or_before(mark.id, recv_ns)
        if start is None:
            return f"no snapshot at or before id {mark.id} was served"
        if start.bad:
            return f"the snapshot at id {start.id} was never delivered"
        bad = feed.bad_between(start.id, mark.id)
        if bad:
            return (
                f"{bad} update(s) after the snapshot at {start.id} up to {mark.id} were lost or"
                " corrupt"
            )
        return ""


# --- the engine's config, read independently -------------------------------------------------


@dataclass
class Spec:
    name: str
    sources: list[tuple[str, str]]  # (venue, venue instrument), in config order
    min_venues: int
    outlier_bps: float
    method: str
    micro_levels: int
    weights: dict[tuple[str, str], float | None]
    max_age_ms: float = 5000.0


def read_config(path: Path) -> tuple[dict[str, Spec], dict[tuple[str, str], float]]:
    """Priced instruments and fixed FX rates (`BASE-QUOTE` -> rate) from the engine config,
    with the engine's documented defaults."""
    import yaml

    cfg = yaml.safe_load(path.read_text())
    fx = {}
    for entry in cfg.get("fx") or []:
        if entry.get("fixed") is not None:
            base, quote = entry["pair"].split("-")
            fx[(base, quote)] = float(entry["fixed"])
    specs = {}
    for inst in cfg.get("instruments") or []:
        fv = inst.get("fair_value") or {}
        sources = [(s["venue"], s.get("instrument") or inst["name"]) for s in inst["sources"]]
        specs[inst["name"]] = Spec(
            inst["name"],
            sources,
            int(inst.get("min_venues", 2)),
            float(inst.get("outlier_bps", 100)),
            fv.get("method", "mid"),
            int(fv.get("levels", 1)),
            {
                (s["venue"], s.get("instrument") or inst["name"]): s.get("weight")
                for s in inst["sources"]
            },
            float(inst.get("max_age_ms", 5000)),
        )
    return specs, fx


def fx_rate(priced: str, source: str, fx: dict[tuple[str, str], float]) -> float | None:
    """The rate that converts `source`'s quote currency into `priced`'s (None: not configured)."""
    want = priced.split("-")[1]
    have = source.split("-")[1]
    if want == have:
        return 1.0
    if (have, want) in fx:
        return fx[(have, want)]
    if (want, have) in fx:
        return 1.0 / fx[(want, have)]
    return None


# --- judging one Price ------------------------------------------------------------------------


def finite_numbers(price: dict[str, Any]) -> bool:
    for key in ("fair_value", "best_bid", "best_bid_size", "best_ask", "best_ask_size"):
        if not math.isfinite(price[key]):
            return False
    for side in ("bids", "asks"):
        for level in price[side]:
            if not (math.isfinite(level["price"]) and math.isfinite(level["size"])):
                return False
    return all(math.isfinite(u["mid"]) for u in price["venues_used"])


def judge(
    price: dict[str, Any],
    truth: dict[str, VenueTruth],
    specs: dict[str, Spec],
    fx: dict[tuple[str, str], float],
) -> dict[str, list[str]]:
    """Problems with one Price, by class: wrong, unverified, rule."""
    out: dict[str, list[str]] = {"wrong": [], "unverified": [], "rule": []}
    spec = specs.get(price["instrument"])
    if spec is None:
        out["rule"].append(f"{price['instrument']} is not a configured instrument")
        return out
    used = price["venues_used"]
    if not finite_numbers(price):
        out["rule"].append("a non-finite number")
        return out
    if len(used) < spec.min_venues and not price["halted"]:
        out["rule"].append(f"{len(used)} venue(s) used, min_venues {spec.min_venues}, not halted")
    if not price["halted"]:
        for u in used:
            age_ms = (price["priced_ts_ns"] - u["recv_ts_ns"]) / 1e6
            if age_ms > spec.max_age_ms + AGE_SLACK_MS:
                out["rule"].append(
                    f"{u['venue']} used {age_ms:.0f} ms old (max_age_ms {spec.max_age_ms:g})"
                )
        fair = price["fair_value"]
        for level in price["bids"]:
            if not 0 < level["price"] < fair:
                out["rule"].append(f"bid {level['price']} not in (0, fair {fair})")
        for level in price["asks"]:
            if not level["price"] > fair:
                out["rule"].append(f"ask {level['price']} not above fair {fair}")
    books = []
    for u in used:
        name = f"{u['venue']} {u['instrument']} at {u['venue_seq']}"
        venue = truth.get(u["venue"])
        if venue is None:
            out["wrong"].append(f"{name}: no simulator of that venue")
            continue
        if (u["venue"], u["instrument"]) not in spec.weights:
            out["wrong"].append(f"{name}: not a source of {spec.name}")
            continue
        found = venue.lookup(u["instrument"], u["venue_seq"], u["recv_ts_ns"])
        if found.error:
            out["wrong"].append(f"{name}: {found.error}")
            continue
        if found.unverified:
            out["unverified"].append(f"{name}: {found.unverified}")
        rate = fx_rate(spec.name, u["instrument"], fx)
        if rate is None or not close(rate, u["fx_rate"]):
            out["wrong"].append(f"{name}: fx_rate {u['fx_rate']}, the config says {rate}")
            continue
        bids, asks = found.bids, found.asks
        if bids[0][0] >= asks[0][0]:
            out["rule"].append(f"{name}: a crossed book used ({bids[0][0]} >= {asks[0][0]})")
        mid = (bids[0][0] + asks[0][0]) / 2 * rate
        if not close(mid, u["mid"]):
            out["wrong"].append(f"{name}: mid {u['mid']!r}, the true book's is {mid!r}")
        books.append((u, bids, asks, rate))
    if len(books) == len(used) and used:
        out["wrong"] += consolidated(price, books, spec)
    if len(used) >= 3 and not price["halted"]:
        mids = sorted(u["mid"] for u in used)
        center = statistics.median(mids)
        far = [u["venue"] for u in used if abs(u["mid"] / center - 1) * 1e4 > 2 * spec.outlier_bps]
        if far:
            out["rule"].append(f"outlier(s) used: {far} (median {center})")
    return out


def consolidated(
    price: dict[str, Any],
    books: list[tuple[dict[str, Any], list[Any], list[Any], float]],
    spec: Spec,
) -> list[str]:
    """The consolidated best bid/ask, their sizes and the fair value, from the true books."""
    order = {src: i for i, src in enumerate(spec.sources)}
    books = sorted(books, key=lambda b: order.get((b[0]["venue"], b[0]["instrument"]), 0))
    n = max(spec.micro_levels, 1)
    bid_levels: dict[float, float] = {}
    ask_levels: dict[float, float] = {}
    weights = []
    for u, bids, asks, rate in books:
        for p, s in bids[:n]:
            bid_levels[p * rate] = bid_levels.get(p * rate, 0.0) + s
        for p, s in asks[:n]:
            ask_levels[p * rate] = ask_levels.get(p * rate, 0.0) + s
        fixed = spec.weights.get((u["venue"], u["instrument"]))
        weights.append(fixed if fixed is not None else bids[0][1] + asks[0][1])
    problems = []
    best_bid = max(bid_levels)
    best_ask = min(ask_levels)
    for key, want in (
        ("best_bid", best_bid),
        ("best_ask", best_ask),
        ("best_bid_size", bid_levels[best_bid]),
        ("best_ask_size", ask_levels[best_ask]),
    ):
        if not close(price[key], want, FAIR_TOL):
            problems.append(f"{key} {price[key]!r}, the true books give {want!r}")
    if spec.method == "microprice":
        bid_size = sum(bid_levels[p] for p in sorted(bid_levels, reverse=True)[:n])
        ask_size = sum(ask_levels[p] for p in sorted(ask_levels)[:n])
        total = bid_size + ask_size
        fair = (
            (best_bid * ask_size + best_ask * bid_size) / total
            if total > 0
            else (best_bid + best_ask) / 2
        )
    elif spec.method == "weighted_mid":
        total = sum(weights) or 1.0
        fair = sum(
            (b[0][0] + a[0][0]) / 2 * r * w / total
            for (_, b, a, r), w in zip(books, weights, strict=True)
        )
    else:
        fair = (best_bid + best_ask) / 2
    if not close(price["fair_value"], fair, FAIR_TOL):
        problems.append(f"fair_value {price['fair_value']!r}, the true books give {fair!r}")
    return problems


# --- completeness -------------------------------------------------------------------------------


def classify_missing(
    present: set[Key],
    universe: dict[tuple[str, int], int],
    killed_epochs: set[int],
    priced_at: dict[Key, int],
    broker_losses: list[tuple[int, dict[tuple[str, int], int]]] | None = None,
) -> tuple[Counter[str], list[str]]:
    """Missing keys of one sink, by cause; `universe` maps (instrument, epoch) to the last
    seq seen anywhere (seqs count from 1 without gaps). `broker_losses`: for each broker
    kill, (its time, the last seq consumed per (instrument, epoch) from the killed broker)."""
    causes: Counter[str] = Counter()
    examples: list[str] = []
    for (inst, epoch), last in sorted(universe.items()):
        missing = [s for s in range(1, last + 1) if (inst, epoch, s) not in present]
        if not missing:
            continue
        explained: set[int] = set()
        if epoch in killed_epochs:
            # The tail of a killed run's Prices: what docs/operations.md says SIGKILL loses.
            s = last
            while s >= 1 and (inst, epoch, s) not in present:
                explained.add(s)
                s -= 1
            if explained:
                causes["engine SIGKILL (the tail of the killed run)"] += len(explained)
        for kill_ns, consumed in broker_losses or ():
            s = consumed.get((inst, epoch), 0) + 1
            run = 0
            while (
                (inst, epoch, s) not in present
                and s not in explained
                and priced_at.get((inst, epoch, s), kill_ns + 1) <= kill_ns
            ):
                explained.add(s)
                run += 1
                s += 1
            if run:
                causes["broker SIGKILL (acknowledged, then lost with its memory storage)"] += run
        rest = [s for s in missing if s not in explained]
        if rest:
            causes["unexplained"] += len(rest)
            if len(examples) < MAX_EXAMPLES:
                examples.append(f"{inst} epoch {epoch}: seq {rest[:10]} of 1..{last}")
    return causes, examples


def kafka_order(records: list[tuple[int, int, int, str, int, int]]) -> list[str]:
    """Records as (incarnation, partition, offset, instrument, epoch, seq): per instrument,
    the first occurrence of each key must come in (epoch, seq) order."""
    seen: set[Key] = set()
    last: dict[str, tuple[int, int]] = {}
    problems = []
    for _inc, _part, _off, inst, epoch, seq in sorted(records):
        key = (inst, epoch, seq)
        if key in seen:
            continue
        seen.add(key)
        if inst in last and (epoch, seq) < last[inst]:
            problems.append(f"{inst}: epoch {epoch} seq {seq} after {last[inst]}")
        last[inst] = max(last.get(inst, (epoch, seq)), (epoch, seq))
    return problems


# --- live collectors --------------------------------------------------------------------------


class IpcCollector(threading.Thread):
    """Every message of one IPC stream, with its arrival time (wall clock, ns)."""

    def __init__(self, endpoint: str, prefix: bytes, stop: threading.Event) -> None:
        super().__init__(name=f"ipc-{prefix.decode()}", daemon=True)
        self.endpoint = endpoint
        self.prefix = prefix
        self.stop_event = stop
        self.got: list[tuple[int, bytes, bytes]] = []

    def run(self) -> None:
        import zmq

        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 1_000_000)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, self.prefix)
        sub.connect(self.endpoint)
        got = self.got
        try:
            while not self.stop_event.is_set():
                if not sub.poll(100):
                    continue
                while True:
                    try:
                        topic, payload = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    got.append((time.time_ns(), topic, payload))
        finally:
            sub.close()
            ctx.term()


class KafkaCollector(threading.Thread):
    """Every record of the topic, consumed live; starts over on each new broker."""

    def __init__(self, bootstrap: str, topic: str, stop: threading.Event) -> None:
        super().__init__(name="kafka", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.stop_event = stop
        self.restart = threading.Event()  # a new broker came up
        self.draining = threading.Event()
        self.idle_since = time.monotonic()
        # (incarnation, partition, offset, key, headers, value, consumed ns)
        self.records: list[tuple[int, int, int, bytes, dict[str, bytes], bytes, int]] = []
        self.incarnation = 0
        self.restarts: list[int] = []  # ns when each new incarnation started

    def _consumer(self) -> Any:
        from kafka import KafkaConsumer, TopicPartition

        while not self.stop_event.is_set():
            try:
                consumer = KafkaConsumer(
                    bootstrap_servers=self.bootstrap,
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    allow_auto_create_topics=False,
                    fetch_max_wait_ms=100,
                    request_timeout_ms=5000,
                    reconnect_backoff_max_ms=500,
                    metadata_max_age_ms=1000,
                )
            except Exception as exc:
                print(f"checker: kafka consumer: {exc!r}", file=sys.stderr, flush=True)
                time.sleep(0.2)
                continue
            deadline = time.monotonic() + 60
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                try:
                    parts = consumer.partitions_for_topic(self.topic)
                except Exception:
                    parts = None
                if parts:
                    tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
                    consumer.assign(tps)
                    consumer.seek_to_beginning(*tps)
                    return consumer
                time.sleep(0.2)
            _close(consumer)
        return None

    def run(self) -> None:
        consumer = self._consumer()
        while not self.stop_event.is_set() and consumer is not None:
            if self.restart.is_set():
                self.restart.clear()
                _close(consumer)
                self.incarnation += 1
                self.restarts.append(time.time_ns())
                consumer = self._consumer()
                if consumer is None:
                    break
            try:
                batches = consumer.poll(timeout_ms=200, max_records=5000)
            except Exception:
                time.sleep(0.2)
                continue
            now = time.time_ns()
            n = 0
            for tp, recs in batches.items():
                for r in recs:
                    headers = {k: v for k, v in (r.headers or [])}
                    self.records.append(
                        (self.incarnation, tp.partition, r.offset, r.key, headers, r.value, now)
                    )
                    n += 1
            if n:
                self.idle_since = time.monotonic()
        if consumer is not None:
            _close(consumer)


def _close(consumer: Any) -> None:
    with contextlib.suppress(Exception):
        consumer.close(autocommit=False)


class PgWatcher(threading.Thread):
    """`max(priced_ts_ns)` of `price_latest` every quarter second: when rows move again."""

    def __init__(self, dsn: str, stop: threading.Event) -> None:
        super().__init__(name="pg-watch", daemon=True)
        self.dsn = dsn
        self.stop_event = stop
        self.seen: list[tuple[int, int]] = []  # (ns, max priced_ts_ns)

    def run(self) -> None:
        import psycopg

        while not self.stop_event.wait(0.25):
            try:
                with psycopg.connect(self.dsn, connect_timeout=1, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT coalesce(max(priced_ts_ns), 0) FROM price_latest"
                    ).fetchone()
                    self.seen.append((time.time_ns(), int(row[0]) if row else 0))
            except Exception:
                continue


class EventsTail(threading.Thread):
    """Follows the orchestrator's events file; tells the Kafka collector of a new broker."""

    def __init__(self, path: Path, kafka: KafkaCollector | None, stop: threading.Event) -> None:
        super().__init__(name="events", daemon=True)
        self.path = path
        self.kafka = kafka
        self.stop_event = stop

    def run(self) -> None:
        pos = 0
        while not self.stop_event.wait(0.05):
            if not self.path.exists():
                continue
            with open(self.path, "rb") as f:
                f.seek(pos)
                data = f.read()
            end = data.rfind(b"\n")
            if end < 0:
                continue
            pos += end + 1
            for line in data[: end + 1].splitlines():
                event = json.loads(line)
                new_broker = event.get("kind") == "broker_kill" and event.get("phase") == "end"
                if new_broker and self.kafka is not None:
                    self.kafka.restart.set()


# --- decoding ---------------------------------------------------------------------------------


class Decoder:
    """Avro single-object payloads with the official package, checked against the schema's
    own fingerprint."""

    def __init__(self, schema_path: Path) -> None:
        import avro.io
        import avro.schema

        self.schema = avro.schema.parse(schema_path.read_text())
        self.fingerprint = self.schema.fingerprint("CRC-64-AVRO")
        self.reader = avro.io.DatumReader(self.schema)
        self._decoder = avro.io.BinaryDecoder

    def __call__(self, payload: bytes) -> dict[str, Any]:
        if payload[:2] != b"\xc3\x01" or payload[2:10] != self.fingerprint:
            raise ValueError(f"not a payload of this schema: {payload[:10].hex()}")
        return self.reader.read(self._decoder(io.BytesIO(payload[10:])))  # type: ignore[no-any-return]


def header_long(headers: dict[str, bytes], name: str) -> int:
    return struct.unpack(">q", headers[name])[0]


# --- recovery ---------------------------------------------------------------------------------


def book_timelines(tops: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[int, bool]]]:
    lines: dict[tuple[str, str], list[tuple[int, bool]]] = defaultdict(list)
    for top in tops:
        lines[(top["venue"], top["instrument"])].append((top["recv_ts_ns"], top["state"] == "LIVE"))
    for line in lines.values():
        line.sort()
    return lines


def book_recovery(
    line: list[tuple[int, bool]], start_ns: int, end_ns: int, limit_s: float
) -> float | None:
    """Seconds after `end_ns` until the book is LIVE again: after the last non-LIVE state
    that began while the fault could still cause one (in [start, end + limit]), else the
    first LIVE top from `end_ns` on; None if there is none."""
    times = [t for t, _ in line]
    i = bisect.bisect_left(times, start_ns)
    j = bisect.bisect_right(times, end_ns + int(limit_s * 1e9))
    down = [k for k in range(i, j) if not line[k][1]]
    first = down[-1] + 1 if down else bisect.bisect_left(times, end_ns)
    for t, live in line[first:]:
        if live:
            return max(0.0, (t - end_ns) / 1e9)
    return None


# --- the host-stall witness ----------------------------------------------------------------


class HostStalls:
    """The host-stall witness's record: stretches (ns) when a process of its own that asks for
    almost no CPU woke up over its threshold late, i.e. the host ran nothing of ours. Read
    from scratch (JSON lines: `head`, `stall` with `start`/`end`, `end`); overlapping
    stretches are merged, so that no moment counts twice."""

    def __init__(self, spans: list[tuple[int, int]], watched: bool = True, late_ms: float = 0.0):
        merged: list[list[int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.spans = [(a, b) for a, b in merged]
        self.starts = [a for a, _ in self.spans]
        self.watched = watched  # the witness ran (no file: nothing is ever excused)
        self.late_ms = late_ms

    @classmethod
    def read(cls, path: Path | None) -> HostStalls:
        if path is None or not path.exists():
            return cls([], watched=False)
        spans = []
        late_ms = 0.0
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a line the witness was still writing
                rec = json.loads(line)
                if rec.get("k") == "stall":
                    spans.append((int(rec["start"]), int(rec["end"])))
                elif rec.get("k") == "head":
                    late_ms = float(rec.get("late_ms", 0.0))
        return cls(spans, watched=True, late_ms=late_ms)

    def overlap_s(self, start_ns: int, end_ns: int) -> float:
        """Seconds of host stall inside [start_ns, end_ns]."""
        total = 0
        i = max(bisect.bisect_right(self.starts, start_ns) - 1, 0)
        for a, b in self.spans[i:]:
            if a >= end_ns:
                break
            total += max(0, min(b, end_ns) - max(a, start_ns))
        return total / 1e9

    def summary(self) -> dict[str, Any]:
        lengths = [(b - a) / 1e9 for a, b in self.spans]
        return {
            "watched": self.watched,
            "late_ms": self.late_ms,
            "n": len(lengths),
            "total_s": round(sum(lengths), 3),
            "max_s": round(max(lengths), 3) if lengths else 0.0,
        }


@dataclass(frozen=True)
class Overrun:
    """A stretch judged too long (a silence, a recovery): `message` says what, over
    [start_ns, end_ns] against a limit of `limit_s`."""

    message: str
    start_ns: int
    end_ns: int
    limit_s: float

    @property
    def excess_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9 - self.limit_s


def excuse(overruns: list[Overrun], stalls: HostStalls) -> tuple[list[Overrun], list[str]]:
    """(the overruns that stand, the excused ones described). An overrun is excused only when
    the host stalled inside its own stretch for at least as long as it exceeds its limit: had
    the host run, the engine had that time back and met the limit. A stall elsewhere, or
    shorter than the excess, excuses nothing."""
    stand, excused = [], []
    for o in overruns:
        stalled = stalls.overlap_s(o.start_ns, o.end_ns)
        if o.excess_s > 0 and stalled >= o.excess_s:
            excused.append(
                f"{o.message}: {o.excess_s:.3f} s over, the host stalled {stalled:.3f} s in it"
            )
        else:
            stand.append(o)
    return stand, excused


# --- the verdict ------------------------------------------------------------------------------


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.specs, self.fx = read_config(Path(args.config))
        self.price_decoder = Decoder(Path(args.schemas) / "price.avsc")
        self.top_decoder = Decoder(Path(args.schemas) / "book_top.avsc")
        self.stop = threading.Event()
        self.ipc = IpcCollector(args.ipc, b"price.", self.stop)
        self.books = IpcCollector(args.ipc_books, b"book.", self.stop)
        self.kafka = KafkaCollector(args.kafka, args.topic, self.stop) if args.kafka else None
        self.pg = PgWatcher(args.pg, self.stop) if args.pg else None
        self.events = EventsTail(Path(args.events), self.kafka, self.stop)
        self.threads = [t for t in (self.ipc, self.books, self.kafka, self.pg, self.events) if t]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> dict[str, Any]:
        if self.kafka is not None:
            # Drain: until nothing new for 3 s (the engine has stopped and delivered).
            self.kafka.idle_since = time.monotonic()
            while time.monotonic() - self.kafka.idle_since < 3.0 and self.kafka.is_alive():
                time.sleep(0.2)
        time.sleep(0.3)
        self.stop.set()
        for t in self.threads:
            t.join(10)
        return self.verdict()

    def verdict(self) -> dict[str, Any]:
        args = self.args
        truth = {p.stem: VenueTruth(p) for p in sorted(Path(args.truth).glob("*.truth"))}
        events = [json.loads(x) for x in Path(args.events).read_text().splitlines() if x.strip()]
        failures: list[str] = []

        # Every Price seen, by key: IPC first, then Kafka, then Postgres.
        prices: dict[Key, dict[str, Any]] = {}
        ipc_payload: dict[Key, bytes] = {}
        bad_payloads = 0
        for _t, _topic, payload in self.ipc.got:
            try:
                p = self.price_decoder(payload)
            except Exception:
                bad_payloads += 1
                continue
            key = (p["instrument"], p["epoch"], p["seq"])
            prices.setdefault(key, p)
            ipc_payload.setdefault(key, payload)
        kafka_keys: Counter[Key] = Counter()
        kafka_rows = []
        payload_mismatch = 0
        dup_times: list[tuple[Key, int]] = []
        consumed_before_kill: dict[int, dict[tuple[str, int], int]] = defaultdict(dict)
        for inc, part, off, key_b, headers, value, t in self.kafka.records if self.kafka else []:
            inst = key_b.decode()
            key = (inst, header_long(headers, "epoch"), header_long(headers, "seq"))
            kafka_keys[key] += 1
            if kafka_keys[key] > 1:
                dup_times.append((key, t))
            kafka_rows.append((inc, part, off, *key))
            prev = consumed_before_kill[inc].get(key[:2], 0)
            consumed_before_kill[inc][key[:2]] = max(prev, key[2])
            if key in ipc_payload:
                payload_mismatch += ipc_payload[key] != value
            elif key not in prices:
                try:
                    p = self.price_decoder(value)
                except Exception:
                    bad_payloads += 1
                    continue
                if (p["instrument"], p["epoch"], p["seq"]) != key:
                    failures.append(
                        f"kafka record {key} carries Price"
                        f" {p['instrument']} {p['epoch']} {p['seq']}"
                    )
                prices[key] = p
        pg_keys, pg_dups, pg_mismatch = self.read_postgres(prices)

        # 1-3. Every Price against the truth and the rules.
        wrong: list[str] = []
        unverified: list[str] = []
        rules: list[str] = []
        checked = books_checked = 0
        for key, p in prices.items():
            problems = judge(p, truth, self.specs, self.fx)
            if p["venues_used"]:
                checked += 1
                books_checked += len(p["venues_used"])
            tag = f"{key[0]} epoch {key[1]} seq {key[2]}"
            wrong += [f"{tag}: {x}" for x in problems["wrong"]]
            unverified += [f"{tag}: {x}" for x in problems["unverified"]]
            rules += [f"{tag}: {x}" for x in problems["rule"]]

        # 4. Nothing lost.
        universe: dict[tuple[str, int], int] = {}
        for inst, epoch, seq in [*prices, *kafka_keys, *pg_keys]:
            universe[(inst, epoch)] = max(universe.get((inst, epoch), 0), seq)
        priced_at = {k: p["priced_ts_ns"] for k, p in prices.items()}
        epochs = sorted({e for _, e in universe})
        first_priced = {
            e: min((t for k, t in priced_at.items() if k[1] == e), default=0) for e in epochs
        }
        kills = [
            e["t"] for e in events if e.get("kind") == "engine_kill" and e.get("phase") == "start"
        ]
        killed = {
            e
            for e, nxt in itertools.pairwise(epochs)
            if any(first_priced[e] <= k <= first_priced[nxt] for k in kills)
        }
        broker_kills = [
            e["t"] for e in events if e.get("kind") == "broker_kill" and e.get("phase") == "start"
        ]
        broker_losses = [(k, consumed_before_kill.get(i, {})) for i, k in enumerate(broker_kills)]
        lost_kafka, ex_kafka = classify_missing(
            set(kafka_keys), universe, killed, priced_at, broker_losses
        )
        lost_pg, ex_pg = classify_missing(pg_keys, universe, killed, priced_at)
        order = kafka_order(kafka_rows)
        dups = self.duplicate_causes(dup_times, events)

        # 5. Recovery; and Prices never stop while the engine runs. Only these two, stretches
        # of time, can be excused by a host that stalled in them.
        stalls = HostStalls.read(Path(args.host_stalls) if args.host_stalls else None)
        recovery, overruns, never = self.recoveries(truth, events, prices)
        late, excused_slow = excuse(overruns, stalls)
        slow = never + [o.message for o in late]
        kill_times = [t for kind, t, _ in system_windows(events) if kind == "engine_kill"]
        silent, excused_silent = excuse(silences(prices, kill_times, self.specs), stalls)
        rules += [o.message for o in silent]

        faults: Counter[str] = Counter()
        for v in truth.values():
            faults.update(f["kind"] for f in v.faults)
        for e in events:
            if e.get("phase") == "start" and e.get("kind") in SYSTEM_FAULTS:
                faults[e["kind"]] += 1

        if wrong:
            failures.append(f"{len(wrong)} wrong venue book(s) or number(s) in Prices")
        if unverified:
            failures.append(
                f"{len(unverified)} Price(s) used a book the venue's rule had not verified"
            )
        if rules:
            failures.append(f"{len(rules)} rule violation(s)")
        if bad_payloads:
            failures.append(f"{bad_payloads} payload(s) the official decoder refused")
        if lost_kafka["unexplained"] or lost_pg["unexplained"]:
            failures.append(
                f"unexplained losses: kafka {lost_kafka['unexplained']},"
                f" postgres {lost_pg['unexplained']}"
            )
        if pg_dups:
            failures.append(f"{pg_dups} duplicate key(s) in price_history")
        if order:
            failures.append(f"{len(order)} Kafka record(s) out of order")
        if payload_mismatch or pg_mismatch:
            failures.append(
                f"sinks disagree with IPC: kafka {payload_mismatch}, postgres {pg_mismatch}"
            )
        if slow:
            failures.append(f"{len(slow)} recovery(ies) over their limit")
        if checked == 0:
            failures.append("no Price naming venues was checked")
        return {
            "prices": {
                "unique": len(prices),
                "ipc": len(ipc_payload),
                "kafka_unique": len(kafka_keys),
                "kafka_records": sum(kafka_keys.values()),
                "postgres": len(pg_keys),
                "checked_against_truth": checked,
                "venue_books_checked": books_checked,
                "epochs": len(epochs),
            },
            "faults": dict(sorted(faults.items())),
            "wrong_prices": len({x.split(":")[0] for x in wrong}),
            "unverified_prices": len({x.split(":")[0] for x in unverified}),
            "rule_violations": len(rules),
            "lost": {"kafka": dict(lost_kafka), "postgres": dict(lost_pg)},
            "duplicated": {"kafka": dups, "postgres": pg_dups},
            "out_of_order": {"kafka": len(order)},
            "recovery_s": recovery,
            "excused_host_stall": {
                "n": len(excused_silent) + len(excused_slow),
                "silences": len(excused_silent),
                "recoveries": len(excused_slow),
                "examples": (excused_silent + excused_slow)[:MAX_EXAMPLES],
            },
            "host_stalls": stalls.summary(),
            "examples": {
                "wrong": wrong[:MAX_EXAMPLES],
                "unverified": unverified[:MAX_EXAMPLES],
                "rules": rules[:MAX_EXAMPLES],
                "lost_kafka": ex_kafka,
                "lost_postgres": ex_pg,
                "out_of_order": order[:MAX_EXAMPLES],
                "slow_recovery": slow[:MAX_EXAMPLES],
            },
            "failures": failures,
            "passed": not failures,
        }

    def read_postgres(self, prices: dict[Key, dict[str, Any]]) -> tuple[set[Key], int, int]:
        """Keys in price_history, duplicate keys, and rows that disagree with the Price."""
        if not self.args.pg:
            return set(), 0, 0
        import psycopg

        keys: set[Key] = set()
        mismatch = 0
        with psycopg.connect(self.args.pg, autocommit=True) as conn:
            dups = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM price_history"
                " GROUP BY instrument, epoch, seq HAVING count(*) > 1) d"
            ).fetchone()[0]
            cur = conn.execute(
                "SELECT instrument, epoch, seq, priced_ts_ns, recv_ts_ns, exchange_ts_ns,"
                " fair_value, best_bid, best_bid_size, best_ask, best_ask_size, halted,"
                " venues, detail FROM price_history"
            )
            for row in cur:
                inst, epoch, seq = row[0], row[1], row[2]
                key = (inst, epoch, seq)
                keys.add(key)
                p = prices.get(key)
                if p is None:
                    prices[key] = pg_price(row)
                    continue
                if (
                    p["fair_value"] != row[6]
                    or p["best_bid"] != row[7]
                    or p["best_ask"] != row[9]
                    or p["halted"] != row[11]
                    or list(p["venues"]) != list(row[12])
                ):
                    mismatch += 1
        return keys, int(dups), mismatch

    def duplicate_causes(
        self, dups: list[tuple[Key, int]], events: list[dict[str, Any]]
    ) -> dict[str, int]:
        """Each Kafka duplicate by the fault that can resend to Kafka (the broker's, or the
        engine's restart replaying its spool) most recently begun before it arrived."""
        starts = sorted(
            (e["t"], e["kind"])
            for e in events
            if e.get("phase") == "start" and e.get("kind") in KAFKA_RESENDS
        )
        times = [t for t, _ in starts]
        out: Counter[str] = Counter()
        for _key, t in dups:
            i = bisect.bisect_right(times, t) - 1
            out[
                starts[i][1] if i >= 0 and t - times[i] < 60e9 else "no fault in the minute before"
            ] += 1
        return dict(out)

    def recoveries(
        self,
        truth: dict[str, VenueTruth],
        events: list[dict[str, Any]],
        prices: dict[Key, dict[str, Any]],
    ) -> tuple[dict[str, Any], list[Overrun], list[str]]:
        """Recovery times by fault kind, those over their limit, and those that never
        recovered."""
        tops = []
        for _t, _topic, payload in self.books.got:
            try:
                tops.append(self.top_decoder(payload))
            except Exception:
                continue
        lines = book_timelines(tops)
        epochs = sorted({k[1] for k in prices})
        down = engine_down_windows(events, lines, set(truth))
        times: dict[str, list[float]] = defaultdict(list)
        slow: list[Overrun] = []
        never: list[str] = []

        def timed(kind: str, label: str, since: int, secs: float | None, limit: float) -> None:
            """`secs` after `since` (ns) until recovered."""
            if secs is None:
                never.append(f"{label}: never LIVE, priced or delivering again")
                return
            times[kind].append(secs)
            if secs > limit:
                message = f"{label}: {secs:.2f} s (limit {limit} s)"
                slow.append(Overrun(message, since, since + int(secs * 1e9), limit))

        skipped: Counter[str] = Counter()
        for name, venue in truth.items():
            faults = sorted(venue.faults, key=lambda f: f["t"])
            active_until = 0  # the latest end of the venue's earlier faults
            for i, f in enumerate(faults):
                kind = f["kind"]
                start = f["t"]
                end = f.get("until") or start
                # A fault inside an earlier one (a gap during a stall) shows once that one
                # ends: it is timed from there.
                end, active_until = max(end, active_until), max(end, active_until)
                nxt = faults[i + 1]["t"] if i + 1 < len(faults) else None
                if any(a - 1e9 <= end and start <= b for a, b in down) or (
                    nxt is not None and nxt <= end + (VENUE_LIMIT_S + OVERLAP_S) * 1e9
                ):
                    skipped[kind] += 1  # the engine was down, or another fault followed at once
                    continue
                if kind == "drift":
                    secs = drift_recovery(name, venue, end, prices)
                    limit = VENUE_LIMIT_S
                elif kind in BOOK_FAULTS:
                    every = kind in ALL_BOOKS or (venue.rule == "connection" and kind == "gap")
                    insts = venue.instruments if every or not f.get("i") else [f["i"]]
                    got = [
                        book_recovery(lines.get((name, inst), []), start, end, VENUE_LIMIT_S)
                        for inst in insts
                    ]
                    secs = (
                        None
                        if any(g is None for g in got)
                        else max(g for g in got if g is not None)
                    )
                    limit = VENUE_LIMIT_S
                else:
                    continue
                timed(kind, f"{kind} on {name} at {start}", end, secs, limit)
        windows = system_windows(events)
        for kind, since, up in windows:
            if up is None:
                never.append(f"{kind} at {since}: never ended")
                continue
            timed_from = up
            service = kind.split("_")[0]
            # Another fault of the same service, or the engine killed, before the sink had
            # delivered again: that one's recovery is what is seen; this one is not timed.
            cut = [
                s
                for k, s, _ in windows
                if s > up and (k.split("_")[0] == service or k == "engine_kill")
            ]
            if kind == "engine_kill":
                # From the moment the new run started (its epoch is its start time): the
                # process start before it is the host's (imports on a loaded machine), timed
                # apart as `engine_startup`.
                run_start = min((e for e in epochs if e > since), default=up)
                times["engine_startup"].append(max(0.0, (run_start - up) / 1e9))
                got = [
                    first_live_after(line, max(run_start, up))
                    for (venue, _), line in lines.items()
                    if venue in truth
                ]
                secs = None if not got or any(g is None for g in got) else max(got)  # type: ignore[type-var]
                limit = ENGINE_LIMIT_S
                timed_from = max(run_start, up)
            elif kind.startswith("broker") and self.kafka is not None:
                secs = first_after([t for *_, t in self.kafka.records], up)
                limit = SINK_LIMIT_S
            elif kind.startswith("pg") and self.pg is not None:
                secs = pg_moves_after(self.pg.seen, since, up)
                limit = SINK_LIMIT_S
            else:
                continue
            if cut and (secs is None or up + secs * 1e9 > min(cut)):
                skipped[kind] += 1
                continue
            timed(kind, f"{kind} ending at {up}", timed_from, secs, limit)
        out: dict[str, Any] = {}
        for kind in sorted(set(times) | set(skipped)):
            vals = times.get(kind, [])
            out[kind] = {
                "n": len(vals),
                "p50": round(statistics.median(vals), 3) if vals else None,
                "max": round(max(vals), 3) if vals else None,
                "limit": None
                if kind == "engine_startup"
                else ENGINE_LIMIT_S
                if kind == "engine_kill"
                else SINK_LIMIT_S
                if kind in SYSTEM_FAULTS
                else VENUE_LIMIT_S,
                "not_timed": skipped.get(kind, 0),
            }
        return out, slow, never


SYSTEM_FAULTS = ("broker_pause", "broker_kill", "pg_stop", "pg_kill", "engine_kill")
KAFKA_RESENDS = ("broker_pause", "broker_kill", "engine_kill")


def silences(
    prices: dict[Key, dict[str, Any]], kills: list[int], specs: dict[str, Spec]
) -> list[Overrun]:
    """Stretches with no Price of an instrument while the engine ran (one with an engine
    SIGKILL in it is the restart)."""
    by_instrument: dict[str, list[int]] = defaultdict(list)
    for (inst, _, _), p in prices.items():
        by_instrument[inst].append(p["priced_ts_ns"])
    out = []
    for inst, times in sorted(by_instrument.items()):
        spec = specs.get(inst)
        if spec is None:
            continue
        limit_ns = int((spec.max_age_ms / 1000 + SILENCE_SLACK_S) * 1e9)
        times.sort()
        for a, b in itertools.pairwise(times):
            if b - a > limit_ns and not any(a <= k <= b for k in kills):
                message = f"{inst}: no Price for {(b - a) / 1e9:.2f} s after {a}"
                out.append(Overrun(message, a, b, limit_ns / 1e9))
    return out


def system_windows(events: list[dict[str, Any]]) -> list[tuple[str, int, int | None]]:
    """(kind, start ns, end ns or None) of each system fault, from its start and end events."""
    starts = {}
    ends = {}
    for e in events:
        if e.get("kind") in SYSTEM_FAULTS and "id" in e:
            (starts if e.get("phase") == "start" else ends)[e["id"]] = e
    return [
        (s["kind"], s["t"], ends[i]["t"] if i in ends else None) for i, s in sorted(starts.items())
    ]


def engine_down_windows(
    events: list[dict[str, Any]],
    lines: dict[tuple[str, str], list[tuple[int, bool]]],
    venues: set[str],
) -> list[tuple[int, int]]:
    """(kill, every book LIVE again) of each engine SIGKILL, in ns (restart + the engine's
    limit when that never happened): a venue fault then has no book to hit."""
    out = []
    for kind, start, end in system_windows(events):
        if kind != "engine_kill":
            continue
        up = end or start
        got = [first_live_after(line, up) for (v, _), line in lines.items() if v in venues]
        if got and all(g is not None for g in got):
            out.append((start, up + int(max(got) * 1e9)))  # type: ignore[type-var]
        else:
            out.append((start, up + int(ENGINE_LIMIT_S * 1e9)))
    return out


def first_live_after(line: list[tuple[int, bool]], t_ns: int) -> float | None:
    i = bisect.bisect_left([t for t, _ in line], t_ns)
    for t, live in line[i:]:
        if live:
            return (t - t_ns) / 1e9
    return None


def first_after(times: list[int], t_ns: int) -> float | None:
    later = [t for t in times if t >= t_ns]
    return (min(later) - t_ns) / 1e9 if later else None


def pg_moves_after(seen: list[tuple[int, int]], since_ns: int, up_ns: int) -> float | None:
    """Seconds after `up_ns` until price_latest holds a Price newer than any before `since`."""
    before = max((m for t, m in seen if t <= since_ns), default=0)
    for t, m in seen:
        if t >= up_ns and m > before:
            return (t - up_ns) / 1e9
    return None


def drift_recovery(
    venue: str, truth: VenueTruth, end_ns: int, prices: dict[Key, dict[str, Any]]
) -> float | None:
    """Seconds after a drift ended until a Price uses the venue again."""
    best = None
    for p in prices.values():
        if p["priced_ts_ns"] < end_ns:
            continue
        if any(u["venue"] == venue for u in p["venues_used"]):
            t = (p["priced_ts_ns"] - end_ns) / 1e9
            best = t if best is None else min(best, t)
    return best


def pg_price(row: tuple[Any, ...]) -> dict[str, Any]:
    """A Price rebuilt from a price_history row (columns and the `detail` jsonb)."""
    detail = dict(row[13] or {})
    price = {
        "instrument": row[0],
        "epoch": row[1],
        "seq": row[2],
        "priced_ts_ns": row[3],
        "recv_ts_ns": row[4],
        "exchange_ts_ns": row[5],
        "fair_value": row[6],
        "best_bid": row[7],
        "best_bid_size": row[8],
        "best_ask": row[9],
        "best_ask_size": row[10],
        "halted": row[11],
        "venues": list(row[12]),
    }
    for name, default in (("bids", []), ("asks", []), ("venues_used", []), ("venues_excluded", [])):
        price[name] = detail.get(name, default)
    price["halt_reason"] = detail.get("halt_reason", "")
    return price


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="collect until 'finish' on stdin, then judge")
    run.add_argument("--config", required=True)
    run.add_argument("--schemas", required=True)
    run.add_argument("--truth", required=True)
    run.add_argument("--events", required=True)
    run.add_argument("--ipc", required=True)
    run.add_argument("--ipc-books", required=True)
    run.add_argument("--kafka", default="")
    run.add_argument("--topic", default="mmengine.prices")
    run.add_argument("--pg", default="")
    run.add_argument("--host-stalls", default="", help="the host-stall witness's file")
    run.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    campaign = Campaign(args)
    campaign.start()
    print("checker: collecting", flush=True)
    for line in sys.stdin:  # "finish", or the end of stdin (the campaign is gone)
        if line.strip() == "finish":
            break
    result = campaign.finish()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(
        "checker: "
        + ("passed" if result["passed"] else "FAILED: " + "; ".join(result["failures"])),
        flush=True,
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
