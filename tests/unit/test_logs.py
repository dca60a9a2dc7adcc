"""Log lines: JSON fields, secrets masked, repeats rate-limited."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from mmengine.logs import JsonFormatter, LibraryFilter, RepeatLimiter, redact


def test_secrets_are_masked() -> None:
    assert redact("dsn postgresql://mm:s3cr3t@db:5432/p") == "dsn postgresql://mm:***@db:5432/p"
    assert redact("host=/tmp password=pw dbname=x") == "host=/tmp password=*** dbname=x"
    assert redact('{"api_key": "abc123"}') == '{"api_key": "***"}'
    assert redact("token: abc") == "token: ***"
    assert redact("BTC-USDT LIVE (seq 42)") == "BTC-USDT LIVE (seq 42)"


def test_json_line_carries_the_structured_fields() -> None:
    record = logging.LogRecord(
        "mmengine.venue", logging.INFO, __file__, 1, "%s %s LIVE", ("binance", "BTC-USDT"), None
    )
    record.venue = "binance"
    record.instrument = "BTC-USDT"
    record.event = "book_state"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "binance BTC-USDT LIVE"
    assert (doc["venue"], doc["instrument"], doc["event"]) == ("binance", "BTC-USDT", "book_state")
    assert doc["level"] == "INFO" and doc["logger"] == "mmengine.venue" and "thread" in doc


def test_repeat_limiter_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    limiter = RepeatLimiter(interval_s=0.2)
    assert limiter.allow("bad_json") == 0
    assert [limiter.allow("bad_json") for _ in range(5)] == [None] * 5
    assert limiter.allow("other") == 0  # kinds are independent
    import time

    time.sleep(0.25)
    assert limiter.allow("bad_json") == 5  # "... 5 more since last report"


def test_cli_json_logs_never_show_a_password(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import logging; from mmengine.logs import setup_logging; setup_logging('INFO', 'json');"
        "logging.getLogger('mmengine.sink').warning('connect to postgresql://u:hunter2@h/db',"
        " extra={'sink': 'postgres', 'event': 'reconnect'})"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    doc = json.loads(run.stderr.strip())
    assert "hunter2" not in run.stderr
    assert doc["sink"] == "postgres" and doc["message"] == "connect to postgresql://u:***@h/db"


def test_urls_keep_host_port_and_path_only_credentials_are_masked() -> None:
    line = (
        "binance connect to ws://127.0.0.1:9100/stream?streams=btcusdt@depth@100ms/"
        "ethusdt@depth@100ms failed"
    )
    assert redact(line) == line  # the `@` of stream names is not a credential
    assert redact("http://127.0.0.1:8080/api@v1?x=a:b@c") == "http://127.0.0.1:8080/api@v1?x=a:b@c"
    assert redact("ws://user:pw@host:1/x?a=b@c") == "ws://user:***@host:1/x?a=b@c"
    assert redact("postgresql://mm:p%40ss@db:5432/p") == "postgresql://mm:***@db:5432/p"
    assert (
        redact("dsn host=db password='s3 cr\\'et' user=mm") == "dsn host=db password='***' user=mm"
    )


def _log_lines(level: str) -> str:
    code = (
        "import logging; from mmengine.logs import setup_logging; "
        f"setup_logging({level!r});"
        "logging.getLogger('kafka.net.manager').info('kafka chatter');"
        "logging.getLogger('kafka.net.manager').warning('kafka warning');"
        "logging.getLogger('mmengine.cli').info('ours');"
        "logging.getLogger('mmengine.cli').debug('our detail')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return run.stderr


def test_other_libraries_info_lines_show_only_at_debug() -> None:
    info = _log_lines("info")
    assert "kafka warning" in info and "ours" in info
    assert "kafka chatter" not in info and "our detail" not in info
    debug = _log_lines("DEBUG")
    assert "kafka chatter" in debug and "our detail" in debug


def test_an_unknown_level_is_an_error() -> None:
    import pytest

    from mmengine.logs import setup_logging

    with pytest.raises(ValueError, match="unknown log level 'verbose'"):
        setup_logging("verbose")


def test_kafka_pythons_event_loop_timing_warning_shows_only_at_debug() -> None:
    """kafka-python warns 'Task ... ran for 0.222s (>0.100s threshold)' whenever its IO
    thread is descheduled on a busy machine; a kafka-tail user cannot act on it."""
    record = logging.LogRecord(
        "kafka.net.selector",
        logging.WARNING,
        __file__,
        1,
        "Task %s ran for %.3fs (>%.3fs threshold). It is blocking the event loop",
        ("t", 0.2, 0.1),
        None,
    )
    assert not LibraryFilter(logging.INFO).filter(record)
    assert LibraryFilter(logging.DEBUG).filter(record)
    other = logging.LogRecord("kafka.conn", logging.WARNING, __file__, 1, "broker down", (), None)
    assert LibraryFilter(logging.INFO).filter(other)
