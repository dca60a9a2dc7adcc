"""Config validation: every error names its key path and the offending value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmengine.config import load_config, parse_config
from mmengine.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def good() -> dict[str, Any]:
    return {
        "engine": {"pricing_workers": 2},
        "venues": [
            {"name": "binance", "protocol": "binance", "instruments": ["BTC-USDT", "ETH-USDT"]}
        ],
        "instruments": [
            {"name": "BTC-USDT", "sources": [{"venue": "binance"}]},
            {"name": "ETH-USDT", "sources": [{"venue": "binance", "instrument": "ETH-USDT"}]},
        ],
    }


def problems(doc: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return info.value.problems


def test_good_config_parses_with_defaults() -> None:
    cfg = parse_config(good())
    assert cfg.engine.pricing_workers == 2
    assert cfg.venue_specs()[0].instruments == ("BTC-USDT", "ETH-USDT")
    assert cfg.instrument_specs()[0].sources[0].instrument == "BTC-USDT"


def test_instrument_not_base_quote_names_the_path() -> None:
    doc = good()
    doc["venues"][0]["instruments"][1] = "BTCUSDT"
    assert problems(doc) == [
        "venues[0].instruments: 'BTCUSDT' is not BASE-QUOTE "
        "(e.g. BTC-USDT, BTC-USDT-PERP, BTC-USD-20261225)",
        # ... and, in the same pass, what that leaves unsubscribed
        "instruments[1].sources[0].instrument: 'ETH-USDT' is not subscribed on venue "
        "'binance' (it lists BTC-USDT, BTCUSDT)",
    ]


def test_unknown_protocol() -> None:
    doc = good()
    doc["venues"][0]["protocol"] = "binanse"
    [msg] = problems(doc)
    assert msg.startswith(
        "venues[0].protocol: unknown protocol 'binanse' (did you mean 'binance'?); known: binance"
    )


def test_unknown_key_and_missing_key() -> None:
    doc = good()
    doc["venues"][0]["depht"] = 5
    del doc["instruments"][0]["sources"]
    assert problems(doc) == [
        "venues[0].depht: unknown key (did you mean 'depth'?)",
        "instruments[0].sources: required key is missing",
    ]


def test_wrong_type_shows_the_value() -> None:
    doc = good()
    doc["engine"]["pricing_workers"] = "two"
    [msg] = problems(doc)
    assert msg.startswith("engine.pricing_workers: ") and "'two'" in msg


def test_out_of_range() -> None:
    doc = good()
    doc["engine"]["pricing_workers"] = 0
    [msg] = problems(doc)
    assert msg.startswith("engine.pricing_workers: Input should be greater than or equal to 1")


def test_source_must_be_a_configured_venue_with_that_instrument() -> None:
    doc = good()
    doc["instruments"][0]["sources"] = [{"venue": "kraken"}]
    doc["instruments"][1]["sources"] = [{"venue": "binance", "instrument": "SOL-USDT"}]
    assert problems(doc) == [
        "instruments[0].sources[0].venue: 'kraken' is not a configured venue",
        "instruments[1].sources[0].instrument: 'SOL-USDT' is not subscribed on venue "
        "'binance' (it lists BTC-USDT, ETH-USDT)",
    ]


def test_duplicates_are_refused() -> None:
    doc = good()
    doc["instruments"].append({"name": "BTC-USDT", "sources": [{"venue": "binance"}]})
    doc["venues"].append(dict(doc["venues"][0]))
    assert problems(doc) == [
        "venues[1].name: 'binance' is used by another venue",
        "instruments[2].name: 'BTC-USDT' is priced twice",
    ]


def test_yaml_tags_that_construct_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("venues: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not valid YAML" in info.value.problems[0]


def test_top_level_must_be_a_mapping() -> None:
    assert problems(["a"]) == ["(top level): expected a mapping, was list"]


@pytest.mark.parametrize("name", ["demo.yaml", "live.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    load_config(REPO / "config" / name)


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(good()))
    run = subprocess.run(
        [sys.executable, "-m", "mmengine.cli", "check-config", "--config", str(ok)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "price BTC-USDT <- binance:BTC-USDT" in run.stdout
    bad = good()
    bad["venues"][0]["instruments"] = ["BTCUSDT"]
    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text(yaml.safe_dump(bad))
    run = subprocess.run(
        [sys.executable, "-m", "mmengine.cli", "check-config", "--config", str(bad_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "venues[0].instruments: 'BTCUSDT' is not BASE-QUOTE" in run.stderr


def test_ca_file_must_be_a_readable_file(tmp_path: Path) -> None:
    doc = good()
    doc["venues"][0]["ca_file"] = str(tmp_path / "missing.pem")
    assert problems(doc) == [
        f"venues[0].ca_file: '{tmp_path / 'missing.pem'}' is not a readable file"
    ]
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    doc["venues"][0]["ca_file"] = str(pem)
    assert parse_config(doc).venue_specs()[0].ca_file == str(pem)


def check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "mmengine.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
    )


GOOD_YAML = """
venues:
  - {name: coinbase, protocol: coinbase-advanced, instruments: [BTC-USD]}
  - {name: binance, protocol: binance, instruments: [BTC-USDT]}
instruments:
  - name: BTC-USD
    sources: [{venue: coinbase}, {venue: binance, instrument: BTC-USDT}]
fx: [{pair: USDT-USD, fixed: 1.0}]
"""


def test_an_infinite_fixed_rate_is_refused_by_check_config(tmp_path: Path) -> None:
    """Reproduced: `fx: [{pair: USDT-USD, fixed: .inf}]` passed check-config (exit 0)."""
    assert check_config(tmp_path, GOOD_YAML).returncode == 0
    run = check_config(tmp_path, GOOD_YAML.replace("fixed: 1.0", "fixed: .inf"))
    assert run.returncode == 2, run.stdout
    assert "fx[0].fixed: Input should be a finite number (was inf)" in run.stderr


def yaml_doc(**where: Any) -> dict[str, Any]:
    doc = yaml.safe_load(GOOD_YAML)
    for path, value in where.items():
        node = doc
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[keys[-1]] = value
    return doc


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("instruments__0__max_age_ms", INF, "instruments[0].max_age_ms: Input should be a finite"),
        ("instruments__0__max_age_ms", 1e12, "instruments[0].max_age_ms: Input should be less"),
        ("fx__0__fixed", NAN, "fx[0].fixed: Input should be a finite number"),
        ("fx__0__fixed", 0.0, "fx[0].fixed: Input should be greater than or equal to 0.000000001"),
        ("fx__0__fixed", 1e15, "fx[0].fixed: Input should be less than or equal to 1000000000"),
        ("fx__0__max_age_ms", INF, "fx[0].max_age_ms: Input should be a finite number"),
        ("limits__stale_after_s", INF, "limits.stale_after_s: Input should be a finite number"),
        ("limits__stale_after_s", 1e7, "limits.stale_after_s: Input should be less than or"),
        ("limits__reconnect_max_s", NAN, "limits.reconnect_max_s: Input should be a finite"),
        ("instruments__0__quote__min_spread_bps", INF, "quote.min_spread_bps: Input should be a"),
        ("instruments__0__quote__level_step_bps", NAN, "quote.level_step_bps: Input should be a"),
        ("instruments__0__quote__size", INF, "instruments[0].quote.size: Input should be a finite"),
        ("instruments__0__quote__max_position", INF, "quote.max_position: Input should be a"),
        ("instruments__0__quote__skew_bps_at_max", 10_000.0, "quote.skew_bps_at_max: Input"),
        ("instruments__0__quote__vol_mult", NAN, "instruments[0].quote.vol_mult: Input should be"),
        ("instruments__0__volatility__half_life_s", INF, "volatility.half_life_s: Input should"),
        ("instruments__0__tick", INF, "instruments[0].tick: Input should be a finite number"),
        ("instruments__0__position", INF, "instruments[0].position: Input should be a finite"),
        ("instruments__0__sources__0__weight", INF, "sources[0].weight: Input should be a finite"),
        ("engine__epoch", 2**63, "engine.epoch: Input should be less than or equal to 92233720"),
    ],
)
def test_non_finite_and_out_of_range_numbers_name_their_key(
    path: str, value: Any, expected: str
) -> None:
    assert any(expected in p for p in problems(yaml_doc(**{path: value}))), problems(
        yaml_doc(**{path: value})
    )


def test_a_ladder_that_would_bid_at_or_below_zero_is_refused() -> None:
    doc = yaml_doc(instruments__0__quote={"levels": 50, "level_step_bps": 250})
    assert problems(doc) == [
        "instruments[0].quote: the deepest bid would sit min_spread_bps/2 + (levels-1) * "
        "level_step_bps = 12251 bps below fair value, at or below 0: keep it under 10000 "
        "(fewer levels or a smaller level_step_bps)"
    ]
    parse_config(yaml_doc(instruments__0__quote={"levels": 50, "level_step_bps": 200}))


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db dbname=prices user=mm password=hunter2",
        "host=db PASSWORD = 'a b' dbname=prices",
        "postgresql://mm:hunter2@db:5432/prices",
        "postgresql://db/prices?user=mm&password=hunter2",
    ],
)
def test_a_password_in_the_config_file_is_refused(dsn: str) -> None:
    [msg] = problems(yaml_doc(outputs={"postgres": {"dsn": dsn}}))
    assert msg.startswith("outputs.postgres.dsn: holds a password; keep it out of the config")
    assert "set PGPASSWORD in the environment" in msg
    assert "hunter2" not in msg


def test_a_dsn_without_a_password_is_fine() -> None:
    for dsn in ("host=db dbname=prices user=mm", "postgresql://postgres:@/postgres?host=/tmp"):
        parse_config(yaml_doc(outputs={"postgres": {"dsn": dsn}}))


def test_every_error_in_one_pass_with_did_you_mean() -> None:
    doc = yaml_doc()
    doc["venues"][0]["name"] = "kraken"
    doc["venues"][0]["protocol"] = "kraken-v2"
    doc["venues"][0]["depht"] = 10
    doc["instruments"][0]["sources"][0]["venue"] = "krakn"
    doc["instruments"][0]["quote"] = {"level_stp_bps": 1}
    doc["instruments"][0]["max_age_ms"] = "soon"
    doc["instrument"] = []
    assert problems(doc) == [
        "venues[0].depht: unknown key (did you mean 'depth'?)",
        "instruments[0].max_age_ms: Input should be a valid number, unable to parse string "
        "as a number (was 'soon')",
        "instruments[0].quote.level_stp_bps: unknown key (did you mean 'level_step_bps'?)",
        "instrument: unknown key (did you mean 'instruments'?)",
        "instruments[0].sources[0].venue: 'krakn' is not a configured venue "
        "(did you mean 'kraken'?)",
    ]


def test_settings_that_can_never_quote_are_warned_about(tmp_path: Path) -> None:
    text = GOOD_YAML.replace("fx:", "    min_venues: 3\n    position: 12\nfx:")
    run = check_config(tmp_path, text)
    assert run.returncode == 0, run.stderr
    assert (
        "warning: instruments[0].min_venues: 3, but BTC-USD has 2 source(s): it will never quote"
    ) in run.stderr
    assert "warning: instruments[0].position: 12 is beyond quote.max_position 1" in run.stderr
