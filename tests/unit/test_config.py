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
        "(e.g. BTC-USDT, BTC-USDT-PERP, BTC-USD-20261225)"
    ]


def test_unknown_protocol() -> None:
    doc = good()
    doc["venues"][0]["protocol"] = "binanse"
    [msg] = problems(doc)
    assert msg.startswith("venues[0].protocol: unknown protocol 'binanse'; known: binance")


def test_unknown_key_and_missing_key() -> None:
    doc = good()
    doc["venues"][0]["depht"] = 5
    del doc["instruments"][0]["sources"]
    assert problems(doc) == [
        "venues[0].depht: unknown key",
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
