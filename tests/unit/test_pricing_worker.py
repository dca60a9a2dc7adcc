"""A pricing worker on real inproc sockets: it survives what it did not expect, and it
publishes a stale halt on time with no new input (issue 16)."""

from __future__ import annotations

import itertools
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from mmengine.bus import IpcPublisher, encode_top, pricing_endpoint
from mmengine.codec import Codec
from mmengine.model import BookTop
from mmengine.pricing.model import InstrumentSpec, SourceSpec
from mmengine.pricing.worker import PricingWorker, control_endpoint
from tests.conftest import wait_for


def book_top(instrument: str, bid: float = 100.0, ask: float = 101.0, **kw: Any) -> BookTop:
    fields: dict[str, Any] = {
        "venue": "v",
        "instrument": instrument,
        "state": "LIVE",
        "venue_seq": 1,
        "cross_seq": -1,
        "exchange_ts_ns": 0,
        "recv_ts_ns": time.time_ns(),
        "bid_prices": [bid],
        "bid_sizes": [1.0],
        "ask_prices": [ask],
        "ask_sizes": [1.0],
    }
    fields.update(kw)
    return BookTop(**fields)


class Harness:
    """One worker with its inputs pushed and its prices read on real inproc sockets."""

    def __init__(self, specs: list[InstrumentSpec]) -> None:
        self.ctx = zmq.Context()
        self.publisher = IpcPublisher(self.ctx, "prices", "inproc://test.prices")
        self.publisher.bind()
        self.prices = self.ctx.socket(zmq.SUB)
        self.prices.setsockopt(zmq.SUBSCRIBE, b"")
        self.prices.connect(self.publisher.endpoint)
        # inproc: the subscription reaches the PUB when it next sends or polls; a probe
        # makes it take effect now, or the first Price could find no subscriber.
        while not self.prices.poll(10):
            self.publisher.publish(b"probe", b"")
        self.prices.recv_multipart()
        while self.prices.poll(10):
            self.prices.recv_multipart()
        self.worker = PricingWorker(0, self.ctx, specs, epoch=7, prices=self.publisher)
        self.worker.start()
        assert self.worker.ready.wait(5)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.connect(pricing_endpoint(0))
        self.control = self.ctx.socket(zmq.PUSH)
        self.control.connect(control_endpoint(0))
        self.codec = Codec("price.avsc")

    def next_price(self, timeout_s: float = 3.0) -> tuple[float, dict[str, Any]]:
        """(arrival monotonic time, decoded Price)."""
        assert self.prices.poll(int(timeout_s * 1000)), "no price"
        _topic, payload = self.prices.recv_multipart()
        return time.monotonic(), self.codec.decode(payload)

    def close(self) -> None:
        self.worker.stop()
        self.worker.join(5)
        for sock in (self.prices, self.push, self.control):
            sock.close(0)
        self.publisher.close()
        self.ctx.term()


@pytest.fixture
def harness() -> Iterator[Any]:
    made: list[Harness] = []

    def make(specs: list[InstrumentSpec]) -> Harness:
        h = Harness(specs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def spec(name: str, max_age_ms: float = 5000.0) -> InstrumentSpec:
    return InstrumentSpec(name, (SourceSpec("v", name),), max_age_ms=max_age_ms, min_venues=1)


def test_what_the_worker_did_not_expect_is_counted_and_it_goes_on(harness: Any) -> None:
    h = harness([spec("AAA-USD"), spec("BBB-USD")])
    h.push.send(encode_top(book_top("AAA-USD")))
    assert h.next_price()[1]["halted"] is False
    # Garbage on the inproc queue, a top the model cannot read (a string level), and a
    # position update that is not a pair: the old worker ended at the first one.
    h.push.send(b"not a pickled book top")
    h.push.send(encode_top(book_top("AAA-USD", bid_prices=["x"])))
    h.control.send(b"\x80\x05garbage")
    h.push.send(encode_top(book_top("BBB-USD")))
    got = {}
    deadline = time.monotonic() + 3
    while len(got) < 2 and time.monotonic() < deadline:
        _, price = h.next_price()
        got[price["instrument"]] = price
    # AAA is halted rather than left standing on its last live price; BBB prices normally.
    assert got["AAA-USD"]["halted"] and got["AAA-USD"]["halt_reason"] == "internal error"
    assert got["BBB-USD"]["halted"] is False
    assert h.worker.is_alive()
    stats = h.worker.stats
    # The control message comes on its own socket, maybe in a later drain than the prices.
    wait_for(lambda: stats.bad_inputs == 2, 3.0, "both garbage inputs counted")
    assert stats.errors >= 3
    # And it still prices AAA once its input is sane again.
    h.push.send(encode_top(book_top("AAA-USD", bid=100.5)))
    price = h.next_price()[1]
    assert price["instrument"] == "AAA-USD" and not price["halted"]
    assert price["seq"] == 3  # live, internal-error halt, live: no seq skipped


def test_stale_is_published_on_time_and_repeated_without_new_input(harness: Any) -> None:
    max_age_ms = 300
    h = harness([spec("AAA-USD", max_age_ms=max_age_ms)])
    sent = book_top("AAA-USD")
    sent_at = time.monotonic() - (time.time_ns() - sent.recv_ts_ns) / 1e9
    h.push.send(encode_top(sent))
    _, first = h.next_price()
    assert not first["halted"]
    # Nothing more arrives. Within max_age + 250 ms of the frame's receive time: stale.
    at, stale = h.next_price(timeout_s=2)
    assert stale["halted"] and stale["halt_reason"] == "stale"
    assert at - sent_at <= (max_age_ms + 250) / 1000, at - sent_at
    assert at - sent_at > max_age_ms / 1000
    assert stale["recv_ts_ns"] == sent.recv_ts_ns  # its age is visible to a consumer
    assert [x["reason"] for x in stale["venues_excluded"]] == ["stale"]
    # Repeated every max_age_ms while it lasts.
    times = [at]
    for _ in range(3):
        at, again = h.next_price(timeout_s=2)
        assert again["halt_reason"] == "stale"
        times.append(at)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.25 <= g <= 0.55 for g in gaps), gaps
    assert h.worker.stats.timed == 4
    # A fresh input ends it at once.
    h.push.send(encode_top(book_top("AAA-USD")))
    while True:
        _, price = h.next_price()
        if not price["halted"]:
            break


def test_the_stale_halt_keeps_repeating_once_the_venue_marks_its_silent_book_stale(
    harness: Any,
) -> None:
    """A silent venue's own thread marks the book STALE after `stale_after_s` (a top without
    levels). The input is still stale, not gone: the halt says "stale" and keeps repeating
    every max_age_ms. Before the fix the Price turned "no usable venue" and then nothing
    was published until the venue spoke again (the chaos campaign saw 3 s with no Price of
    either instrument while every venue was stalled)."""
    max_age_ms = 300
    h = harness([spec("AAA-USD", max_age_ms=max_age_ms)])
    h.push.send(encode_top(book_top("AAA-USD")))
    assert not h.next_price()[1]["halted"]
    _, stale = h.next_price(timeout_s=2)
    assert stale["halt_reason"] == "stale"
    went_stale = book_top("AAA-USD", state="STALE", bid_prices=[], bid_sizes=[])
    h.push.send(encode_top(went_stale._replace(ask_prices=[], ask_sizes=[])))
    times = []
    for _ in range(4):
        at, again = h.next_price(timeout_s=2)
        assert again["halted"] and again["halt_reason"] == "stale", again["halt_reason"]
        assert [x["reason"] for x in again["venues_excluded"]] == ["stale"]
        times.append(at)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g <= 0.55 for g in gaps[1:]), gaps


def thread_cpu_s(native_id: int) -> float:
    """User + system CPU seconds of one thread of this process (Linux /proc)."""
    stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_worker_blocks_between_deadlines_instead_of_spinning(harness: Any) -> None:
    """CPU time of the worker thread over one second while it waits for the next stale
    repeats: a spinning loop would burn most of that second."""
    h = harness([spec("AAA-USD", max_age_ms=400)])
    h.push.send(encode_top(book_top("AAA-USD")))
    h.next_price()
    assert h.worker.native_id is not None
    before = thread_cpu_s(h.worker.native_id)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        if h.prices.poll(100):
            h.prices.recv_multipart()
    assert thread_cpu_s(h.worker.native_id) - before < 0.1


def test_a_position_that_is_not_finite_is_refused(harness: Any) -> None:
    h = harness([spec("AAA-USD")])
    h.push.send(encode_top(book_top("AAA-USD")))
    h.next_price()
    h.control.send(pickle.dumps(("AAA-USD", float("nan"))))
    h.control.send(pickle.dumps(("AAA-USD", 2.0)))
    _, price = h.next_price()
    assert price["position"] == 2.0
    assert h.worker.stats.bad_inputs == 1 and h.worker.stats.positions == 1


def test_every_triggered_price_is_timed_at_each_stage(harness: Any) -> None:
    """Stage latencies come from the stamps each hop really took: the frame's receive time
    and the router's applied stamp travel with the BookTop; dequeue, priced, encoded and
    published are taken by the worker. The stages follow one another, so they add up to
    the whole path exactly."""
    from mmengine.latency import PRICING_STAGES, STAGE_BOUNDS_US
    from mmengine.ops.metrics import stage_metrics

    h = harness([spec("AAA-USD")])
    recv_ns = time.time_ns() - 3_000_000  # the frame arrived 3 ms ago ...
    applied_ns = recv_ns + 1_000_000  # ... and took 1 ms to apply
    h.push.send(encode_top(book_top("AAA-USD", recv_ts_ns=recv_ns), applied_ns=applied_ns))
    _, price = h.next_price()
    stages = h.worker.stats.stages
    deadline = time.monotonic() + 3  # recorded just after the IPC send returned
    while not stages.recent:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    [sample] = list(stages.recent)
    by_name = dict(zip(PRICING_STAGES, sample, strict=True))
    assert by_name["receive_to_apply"] == pytest.approx(1000.0)
    assert by_name["apply_to_dequeue"] >= 2000.0  # it was queued 2 ms before it was sent
    assert all(v >= 0 for v in sample)
    parts = sum(by_name[n] for n in PRICING_STAGES[:-1])
    assert by_name["receive_to_publish"] == pytest.approx(parts)
    # The pricing stage ends where the Price says it was priced.
    to_price = sum(by_name[n] for n in PRICING_STAGES[:3])
    assert to_price == pytest.approx((price["priced_ts_ns"] - recv_ns) / 1000, abs=0.01)
    report = stages.report()
    assert sum(report["receive_to_publish"]["counts"]) == 1
    # A stale re-price (no new input) and a position update are not timed as ticks.
    h.control.send(pickle.dumps(("AAA-USD", 1.0)))
    h.next_price()
    h.push.send(encode_top(book_top("AAA-USD")))
    h.next_price()
    deadline = time.monotonic() + 3
    while len(stages.recent) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    time.sleep(0.05)
    assert len(stages.recent) == 2  # the two BookTops, not the position's re-price
    # Prometheus: one histogram, a `stage` label per stage.
    snap = {
        "stages": {n: {"counts": r["counts"], "sum_us": r["sum_us"]} for n, r in report.items()},
        "stage_bounds_us": list(STAGE_BOUNDS_US),
    }
    [family] = list(stage_metrics(snap))
    assert family.name == "mmengine_stage_latency_seconds"
    labels = {s.labels["stage"] for s in family.samples}
    assert labels == set(PRICING_STAGES)
