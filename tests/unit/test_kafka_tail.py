"""kafka-tail's dedupe on (instrument, epoch, seq) and its gap report."""

from __future__ import annotations

from mmengine.cli.kafka_tail import SeqTracker


def test_duplicates_dropped_gaps_reported_late_records_kept() -> None:
    t = SeqTracker()
    gaps: list[str] = []
    stream = [
        ("BTC-USDT", 1, 5),  # first seen mid-stream: no gap
        ("BTC-USDT", 1, 6),
        ("BTC-USDT", 1, 6),  # a resend
        ("ETH-USDT", 1, 1),
        ("BTC-USDT", 1, 9),  # 7 and 8 missing
        ("BTC-USDT", 1, 7),  # arrives late
        ("BTC-USDT", 1, 7),  # and again
        ("BTC-USDT", 2, 1),  # a new engine run: its own sequence
        ("BTC-USDT", 1, 10),
    ]
    verdicts = [t.see(i, e, s, gaps.append) for i, e, s in stream]
    assert verdicts == [
        "new",
        "new",
        "duplicate",
        "new",
        "new",
        "late",
        "duplicate",
        "new",
        "new",
    ]
    assert gaps == ["gap in BTC-USDT epoch 1: seq 7..8 missing (2)"]
    assert (t.new, t.duplicates, t.late, t.gaps, t.missing) == (6, 2, 1, 1, 1)


def test_huge_gap_is_counted_without_unbounded_memory() -> None:
    t = SeqTracker()
    t.see("A-B", 1, 1)
    t.see("A-B", 1, 10_000_000)
    assert t.missing == 9_999_998
    assert len(t.streams[("A-B", 1)].missing) <= 100_000


def test_summary_is_a_sentence() -> None:
    t = SeqTracker()
    for seq in (1, 2, 2, 5):
        t.see("BTC-USD", 7, seq)
    assert t.summary() == "3 prices, 1 duplicates dropped, 1 gaps (2 seqs missing), 0 late"


def test_only_the_close_race_of_the_kafka_client_is_filtered() -> None:
    import logging
    import sys

    from mmengine.cli.kafka_tail import CloseRaceFilter

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            info = sys.exc_info()
        return logging.LogRecord(
            "kafka.net.selector",
            logging.ERROR,
            __file__,
            1,
            "Unhandled exception in task %s:",
            ("t",),
            info,
        )

    race = record(ValueError("Invalid file descriptor: -1"))
    other = record(ValueError("something else"))
    f = CloseRaceFilter()
    assert f.filter(race) and f.filter(other)  # while the consumer runs, nothing is hidden
    f.closing = True
    assert not f.filter(race) and f.filter(other)

    # The metadata request cancelled by close(): hidden only while closing, and only that.
    def cluster(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("kafka.cluster", logging.ERROR, __file__, 1, msg, args, None)

    cancelled = cluster("Metadata refresh: failed %s", "Cancelled")
    refused = cluster("Metadata refresh: failed %s", "NodeNotReadyError")
    f = CloseRaceFilter()
    assert f.filter(cancelled) and f.filter(refused)
    f.closing = True
    assert not f.filter(cancelled) and f.filter(refused)
