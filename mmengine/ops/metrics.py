"""Prometheus metrics (served by prometheus-client's own HTTP thread).

Nothing on the per-message path touches a Prometheus object: a custom collector turns the
status snapshot (the threads' own plain counters) into metrics at scrape time, so the hot
path pays nothing for metrics. Counters never reset during a run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from mmengine.ops.status import Reporting, snapshot

BOOK_STATES = ("SYNCING", "LIVE", "STALE", "RESYNCING")


class EngineCollector(Collector):
    """Reads one snapshot per scrape and yields every metric family from it."""

    def __init__(self, engine: Reporting) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        snap = snapshot(self.engine)
        yield from venue_metrics(snap)
        yield from pricing_metrics(snap)
        yield from instrument_metrics(snap)
        yield from sink_metrics(snap)
        yield from engine_metrics(snap)
        yield from stage_metrics(snap)


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def venue_metrics(snap: dict[str, Any]) -> Iterator[Any]:
    frames = _counter("mmengine_venue_frames", "Frames received per venue.", ["venue"])
    reconnects = _counter("mmengine_venue_reconnects", "Reconnect attempts per venue.", ["venue"])
    delayed = _counter(
        "mmengine_venue_requests_delayed",
        "Subscribe requests held back by the venue's rate limit (sent later).",
        ["venue"],
    )
    skipped = _counter(
        "mmengine_venue_skipped_frames", "Frames skipped, by kind.", ["venue", "kind"]
    )
    resyncs = _counter("mmengine_venue_resyncs", "Book resyncs, by reason.", ["venue", "reason"])
    up = GaugeMetricFamily("mmengine_venue_connected", "1 while connected.", labels=["venue"])
    deferred = _counter(
        "mmengine_venue_deferred_tops",
        "BookTops a full pricing queue refused (the latest per book is sent later).",
        ["venue"],
    )
    superseded = _counter(
        "mmengine_venue_superseded_tops",
        "Deferred BookTops replaced by a newer one of their book (conflated at the source).",
        ["venue"],
    )
    waiting = GaugeMetricFamily(
        "mmengine_venue_waiting_tops",
        "BookTops waiting for room in a pricing queue right now.",
        labels=["venue"],
    )
    book = ["venue", "instrument"]
    msgs = _counter("mmengine_book_messages", "Book messages applied or checked.", book)
    gaps = _counter("mmengine_book_sequence_gaps", "Sequence gaps detected.", book)
    checks = _counter("mmengine_book_checksum_checks", "Checksums verified.", book)
    failed = _counter("mmengine_book_checksum_failures", "Checksum mismatches.", book)
    agree = _counter("mmengine_book_audit_agreements", "Top-of-book audit agreements.", book)
    disagree = _counter("mmengine_book_audit_disagreements", "Audit disagreements.", book)
    book_resyncs = _counter("mmengine_book_resyncs", "Resyncs of this book.", book)
    state = GaugeMetricFamily(
        "mmengine_book_state", "1 for the book's current state.", labels=[*book, "state"]
    )
    age = GaugeMetricFamily(
        "mmengine_book_last_message_age_seconds",
        "Time since the last applied message.",
        labels=book,
    )
    for v in snap["venues"]:
        name = v["name"]
        frames.add_metric([name], v["frames"])
        reconnects.add_metric([name], v["reconnects"])
        delayed.add_metric([name], v.get("requests_delayed", 0))
        up.add_metric([name], 1.0 if v["connected"] else 0.0)
        deferred.add_metric([name], v.get("deferred_tops", 0))
        superseded.add_metric([name], v.get("superseded_tops", 0))
        waiting.add_metric([name], v.get("waiting_tops", 0))
        for kind, n in v["skipped"].items():
            skipped.add_metric([name, kind], n)
        for reason, n in v["resyncs"].items():
            resyncs.add_metric([name, reason], n)
        for b in v["books"]:
            key = [name, b["instrument"]]
            msgs.add_metric(key, b["messages"])
            gaps.add_metric(key, b["gaps"])
            checks.add_metric(key, b["checksums_checked"])
            failed.add_metric(key, b["checksums_failed"])
            agree.add_metric(key, b["audit_agree"])
            disagree.add_metric(key, b["audit_disagree"])
            book_resyncs.add_metric(key, b["resyncs"])
            for s in BOOK_STATES:
                state.add_metric([*key, s], 1.0 if b["state"] == s else 0.0)
            if b["age_s"] is not None:
                age.add_metric(key, b["age_s"])
    yield from (
        frames,
        reconnects,
        delayed,
        skipped,
        resyncs,
        up,
        deferred,
        superseded,
        waiting,
        msgs,
        gaps,
        checks,
        failed,
        agree,
        disagree,
        book_resyncs,
        state,
        age,
    )


def pricing_metrics(snap: dict[str, Any]) -> Iterator[Any]:
    w = ["worker"]
    inputs = _counter("mmengine_pricing_inputs", "Book tops received.", w)
    prices = _counter("mmengine_pricing_prices", "Prices published (IPC and sinks).", w)
    halted = _counter("mmengine_pricing_halted_prices", "Prices that said do not quote.", w)
    dropped = _counter("mmengine_pricing_sink_dropped", "Prices a full sink queue refused.", w)
    timed = _counter("mmengine_pricing_timed_prices", "Prices published by the staleness timer.", w)
    bad = _counter("mmengine_pricing_bad_inputs", "Inproc messages that did not decode.", w)
    errors = _counter(
        "mmengine_pricing_errors", "Unexpected exceptions caught (logged; loop goes on).", w
    )
    depth = GaugeMetricFamily(
        "mmengine_pricing_queue_depth", "Book tops found by the last drain.", labels=w
    )
    conflation = GaugeMetricFamily(
        "mmengine_pricing_conflation_ratio", "Book tops in per price out, since start.", labels=w
    )
    latency = HistogramMetricFamily(
        "mmengine_pricing_latency_seconds", "Frame received -> price computed.", labels=w
    )
    bounds = snap["latency_bounds_us"]
    for s in snap["workers"]:
        k = [str(s["worker"])]
        inputs.add_metric(k, s["inputs"])
        prices.add_metric(k, s["prices"])
        halted.add_metric(k, s["halted"])
        dropped.add_metric(k, s["sink_dropped"])
        timed.add_metric(k, s["timed"])
        bad.add_metric(k, s["bad_inputs"])
        errors.add_metric(k, s["errors"])
        depth.add_metric(k, s["last_drain"])
        conflation.add_metric(k, s["inputs"] / s["prices"] if s["prices"] else 0.0)
        running = 0
        buckets = []
        for bound, n in zip([*bounds, float("inf")], s["latency_counts"], strict=True):
            running += n
            buckets.append((str(bound / 1e6) if bound != float("inf") else "+Inf", running))
        latency.add_metric(k, buckets, s["latency_sum_us"] / 1e6)
    yield from (inputs, prices, halted, dropped, timed, bad, errors, depth, conflation, latency)


def instrument_metrics(snap: dict[str, Any]) -> Iterator[Any]:
    """Each instrument's latest Price: what an alert on a halted instrument needs to name."""
    i = ["instrument"]
    halted = GaugeMetricFamily(
        "mmengine_instrument_halted", "1 while the latest Price says do not quote.", labels=i
    )
    crossed = GaugeMetricFamily(
        "mmengine_instrument_crossed",
        "1 while the venues' books cross each other (consolidated best bid >= best ask).",
        labels=i,
    )
    used = GaugeMetricFamily(
        "mmengine_instrument_venues_used", "Venue books the latest Price used.", labels=i
    )
    age = GaugeMetricFamily(
        "mmengine_instrument_price_age_seconds", "Time since the latest Price.", labels=i
    )
    for p in snap["instruments"]:
        key = [p["instrument"]]
        halted.add_metric(key, 1.0 if p["halted"] else 0.0)
        crossed.add_metric(key, 1.0 if p["crossed"] else 0.0)
        used.add_metric(key, float(len(p["venues_used"])))
        age.add_metric(key, p["age_s"])
    yield from (halted, crossed, used, age)


def sink_metrics(snap: dict[str, Any]) -> Iterator[Any]:
    families: dict[str, Any] = {}
    counters = {
        "produced",
        "acknowledged",
        "received",
        "written",
        "spooled",
        "dropped",
        "retried",
        "retries",
        "batches",
        "torn",
        "recovered",
        "failures",
        "quarantined",
        "undecodable",
        "decoded",
        "staged",
        "fsyncs",
    }
    for sink in snap["sinks"]:
        for key, value in sink.items():
            if key == "name" or not isinstance(value, int | float):
                continue
            if key in counters:
                fam = families.setdefault(
                    key, _counter(f"mmengine_sink_{key}", f"Sink {key}.", ["sink"])
                )
            elif key == "fsync_ns":  # time spent, cumulative
                fam = families.setdefault(
                    key,
                    _counter("mmengine_sink_fsync_seconds", "Time spent in fsync.", ["sink"]),
                )
                value = value / 1e9
            elif key.endswith("_ns"):
                fam = families.setdefault(
                    key,
                    GaugeMetricFamily(
                        f"mmengine_sink_{key[:-3]}_seconds", f"Sink {key[:-3]}.", labels=["sink"]
                    ),
                )
                value = value / 1e9
            else:
                fam = families.setdefault(
                    key, GaugeMetricFamily(f"mmengine_sink_{key}", f"Sink {key}.", labels=["sink"])
                )
            fam.add_metric([sink["name"]], value)
    yield from families.values()


def engine_metrics(snap: dict[str, Any]) -> Iterator[Any]:
    """Threads (supervision), IPC streams (drops at the HWM) and the control endpoint."""
    t = ["thread", "kind"]
    alive = GaugeMetricFamily("mmengine_thread_alive", "1 while the thread runs.", labels=t)
    deaths = _counter("mmengine_thread_deaths", "Unexpected thread deaths.", t)
    restarts = _counter("mmengine_thread_restarts", "Restarts after a death.", t)
    for th in snap["threads"]:
        key = [th["name"], th["kind"]]
        alive.add_metric(key, 1.0 if th["alive"] else 0.0)
        deaths.add_metric(key, th["deaths"])
        restarts.add_metric(key, th["restarts"])
    cpu = _counter(
        "mmengine_thread_cpu_seconds",
        "CPU time (user + system) each engine thread has used, by thread name.",
        ["thread"],
    )
    for name, seconds in sorted(snap.get("thread_cpu_s", {}).items()):
        cpu.add_metric([name], seconds)
    sent = _counter("mmengine_ipc_sent", "Messages sent to IPC subscribers.", ["stream"])
    dropped = _counter(
        "mmengine_ipc_dropped",
        "Messages not sent: a subscriber's queue was at its high-water mark.",
        ["stream"],
    )
    for stream in snap["ipc"]:
        sent.add_metric([stream["name"]], stream["sent"])
        dropped.add_metric([stream["name"]], stream["dropped"])
    control = _counter("mmengine_control_requests", "Control requests, by outcome.", ["outcome"])
    for outcome in ("accepted", "refused", "errors"):
        if outcome in snap["control"]:
            control.add_metric([outcome], snap["control"][outcome])
    yield from (alive, deaths, restarts, cpu, sent, dropped, control)


def stage_metrics(snap: dict[str, Any]) -> Iterator[Any]:
    """`mmengine_stage_latency_seconds{stage}`: one histogram per stage of the tick-to-quote
    path, over every pricing worker (and each sink's priced -> delivered); see
    mmengine.latency for what each stage spans."""
    fam = HistogramMetricFamily(
        "mmengine_stage_latency_seconds",
        "Tick-to-quote latency by stage: receive_to_apply, apply_to_dequeue, dequeue_to_price, "
        "price_to_encode, encode_to_publish, receive_to_publish (the whole engine path), "
        "price_to_kafka_ack, price_to_postgres_commit.",
        labels=["stage"],
    )
    bounds = [*snap.get("stage_bounds_us", ()), float("inf")]
    for name, stage in snap.get("stages", {}).items():
        running = 0
        buckets = []
        for bound, n in zip(bounds, stage["counts"], strict=True):
            running += n
            buckets.append((str(bound / 1e6) if bound != float("inf") else "+Inf", running))
        fam.add_metric([name], buckets, stage["sum_us"] / 1e6)
    yield fam


def serve_metrics(
    engine: Reporting, port: int, host: str = "127.0.0.1"
) -> tuple[Any, threading.Thread]:
    """Start the Prometheus HTTP endpoint; returns (server, its thread): call
    `server.shutdown()` and `server.server_close()` to stop it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    server, thread = start_http_server(port, addr=host, registry=registry)
    thread.name = "metrics"
    return server, thread
