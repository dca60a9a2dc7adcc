"""Log lines: JSON fields, secrets masked, repeats rate-limited."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from mmengine.logs import JsonFormatter, RepeatLimiter, redact


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
