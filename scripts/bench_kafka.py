"""Benchmark: Prices/s through the Kafka writer to a local tansu broker (acks=all), the
delivery lag (ack time - priced_ts_ns) p50/p99, where the CPU goes, and how much the
writer delays a pricing-like thread (main thread drives; writer, feeder, probe threads).

For each offered rate a fresh writer delivers to a fresh topic: a feeder thread PUSHes
sink messages exactly as a pricing worker does (pre-encoded Avro payload, fresh key per
Price) for `--seconds`, then waits until everything is acknowledged. `max` feeds as fast
as the inproc queue takes it. A probe thread meanwhile does what a pricing worker does
between bursts -- block in `recv` on an inproc socket -- and records how late it wakes: the
GIL time the writer and kafka-python take from pricing.

    .venv/bin/python scripts/bench_kafka.py [--rates 1000,5000,10000,20000,max]
        [--seconds 5] [--no-idempotence] [--linger-ms 5] [--batch-size 262144]
        [--client kafka-python|confluent]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

from mmengine.bus import sink_message
from mmengine.codec import Codec, price_record
from mmengine.config import KafkaOutput
from mmengine.dev.tansu import start_tansu
from mmengine.model import Price
from mmengine.pricing.worker import SINK_KEY
from mmengine.sinks.kafka import KafkaWriter

INSTRUMENTS = [f"C{i}-USDT" for i in range(20)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Probe(threading.Thread):
    """Blocks in recv on inproc like a pricing worker; measures wake-up delay."""

    def __init__(self, ctx: zmq.Context) -> None:
        super().__init__(name="probe", daemon=True)
        self.ctx = ctx
        self.delays_us: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        pull = self.ctx.socket(zmq.PULL)
        pull.bind("inproc://probe")
        push = self.ctx.socket(zmq.PUSH)
        push.connect("inproc://probe")
        sender = threading.Thread(target=self._send, args=(push,), daemon=True)
        sender.start()
        while not self.halt.is_set():
            if pull.poll(100):
                sent = int(pull.recv())
                self.delays_us.append((time.perf_counter_ns() - sent) / 1000)
        sender.join()
        pull.close()
        push.close()

    def _send(self, push: zmq.Socket) -> None:
        while not self.halt.is_set():
            time.sleep(0.002)
            push.send(str(time.perf_counter_ns()).encode())


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name (kafka-python's own threads grouped as kafka-python)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, "other")
        if name.startswith("kafka-io") or name.endswith("network-thread"):
            name = "kafka-python"
        elif name == "other":
            name = "other (librdkafka, zmq)"
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def run_rate(
    bootstrap: str, rate: float | None, seconds: float, args: argparse.Namespace, n: int
) -> dict[str, Any]:
    ctx = zmq.Context()
    cfg = KafkaOutput(
        bootstrap_servers=bootstrap,
        topic=f"bench.{n}",
        partitions=6,
        idempotence=not args.no_idempotence,
        linger_ms=args.linger_ms,
        batch_size=args.batch_size,
        client=args.client,
    )
    spool = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    writer = KafkaWriter(ctx, cfg, spool, 1 << 32)
    writer.lag_log = []
    writer.start()
    writer.ready.wait(5)
    while writer.stats.producer_builds == 0:
        time.sleep(0.01)
    codec = Codec("price.avsc")
    now = time.time_ns()
    payload = codec.encode(
        price_record(
            Price("BTC-USDT", 1, 1, 1.0, 1.0, 1.0, 1.0, 1.0, ["binance", "okx"], now, now, now)
        )
    )
    probe = Probe(ctx)
    probe.start()
    time.sleep(0.3)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 100_000)
    push.connect(writer.endpoint)
    # Warm-up: the producer's first records wait for its connection and metadata (about
    # 0.6 s with librdkafka); the run measures the sustained rate and lag after that.
    keys = [i.encode() for i in INSTRUMENTS]
    seq = 0
    for _ in range(200):
        seq += 1
        push.send(
            sink_message(keys[seq % len(keys)], SINK_KEY.pack(1, seq, time.time_ns()), payload)
        )
    while writer.stats.acknowledged < seq and writer.stats.failures == 0:
        time.sleep(0.01)
    warm = writer.stats.acknowledged
    writer.lag_log.clear()
    cpu0 = thread_cpu()
    proc_cpu0 = sum(psutil.Process().cpu_times()[:2])
    t0 = time.monotonic()
    sent = 0
    end = t0 + seconds
    while time.monotonic() < end:
        # Batches of 50 keep the feeder's own overhead low at high rates.
        for _ in range(50):
            seq += 1
            message = sink_message(
                keys[seq % len(keys)], SINK_KEY.pack(1, seq, time.time_ns()), payload
            )
            if rate is None:
                push.send(message)
            else:
                try:
                    push.send(message, zmq.NOBLOCK)
                except zmq.Again:
                    continue
            sent += 1
        if rate is not None:
            ahead = t0 + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    fed_s = time.monotonic() - t0
    while writer.stats.acknowledged < warm + sent and time.monotonic() - t0 < seconds + 120:
        time.sleep(0.01)
    done_s = time.monotonic() - t0
    proc_cpu = sum(psutil.Process().cpu_times()[:2]) - proc_cpu0
    cpu1 = thread_cpu()
    probe.halt.set()
    probe.join()
    push.close()
    writer.stop()
    writer.join(30)
    ctx.term()
    lags_ms = [v / 1e6 for v in writer.lag_log]
    cpu = {k: round((cpu1.get(k, 0) - cpu0.get(k, 0)) / done_s, 2) for k in cpu1}
    return {
        "offered_per_s": "max" if rate is None else rate,
        "sent": sent,
        "acked": writer.stats.acknowledged - warm,
        "fed_per_s": round(sent / fed_s),
        "delivered_per_s": round((writer.stats.acknowledged - warm) / done_s),
        "lag_p50_ms": round(pct(lags_ms, 0.5), 2),
        "lag_p99_ms": round(pct(lags_ms, 0.99), 2),
        "process_cores": round(proc_cpu / done_s, 2),
        "cores_by_thread": {k: v for k, v in cpu.items() if v >= 0.01},
        "probe_wake_p50_us": round(statistics.median(probe.delays_us), 1),
        "probe_wake_p99_us": round(pct(probe.delays_us, 0.99), 1),
        "spooled": writer.counters()["spooled"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1000,5000,10000,20000,max")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-idempotence", action="store_true")
    parser.add_argument("--linger-ms", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256 * 1024)
    parser.add_argument("--client", choices=["kafka-python", "confluent"], default="kafka-python")
    args = parser.parse_args()
    sys.setswitchinterval(0.0005)  # as the engine does (engine.switch_interval_us)
    port = free_port()
    broker = start_tansu(port)
    try:
        for n, r in enumerate(args.rates.split(",")):
            rate = None if r == "max" else float(r)
            print(json.dumps(run_rate(f"127.0.0.1:{port}", rate, args.seconds, args, n)))
    finally:
        broker.kill()
        broker.wait()


if __name__ == "__main__":
    main()
