"""Every registered protocol has all it needs: a venue module with its facts, a simulator
with a wire kit, capture detection, and a capture in tests/data. A protocol lacking any of
them fails here, by name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mmengine.capture import CaptureEvent
from mmengine.config import parse_config
from mmengine.dev.simulator import SIM_PROTOCOLS
from mmengine.dev.simulator.kit import WireKit
from mmengine.dev.simulator.server import SimProtocol
from mmengine.replay import detect_protocol
from mmengine.venues.base import VenueProtocol
from mmengine.venues.registry import PROTOCOLS, REGISTRY
from tests.conformance.conftest import captures, kit_of, registration


def test_the_registry_is_the_one_list_of_protocols() -> None:
    assert len({r.protocol for r in REGISTRY}) == len(REGISTRY)
    assert set(PROTOCOLS) == {r.protocol for r in REGISTRY}
    assert set(SIM_PROTOCOLS) >= set(PROTOCOLS)  # the simulators come from the registry


def test_the_venue_module_states_its_facts(protocol: str) -> None:
    venue = registration(protocol).venue
    assert issubclass(venue, VenueProtocol) and venue.protocol == protocol
    assert venue.default_url.startswith("wss://")
    assert venue.capture_exchange and venue.capture_addresses
    count, per_s = venue.subscribe_limit
    assert count >= 1 and per_s > 0
    assert venue.__module__.startswith("mmengine.venues.")


# A venue module holds its protocol only (issue 13): what every venue needs lives in the
# shared code (`venues.base`, `venues.transport`, `book.sync`), and this bound keeps it there.
MAX_VENUE_MODULE_LINES = 250
SHARED_MODULES = ("mmengine.venues.base",)


def test_its_venue_modules_hold_only_protocol(protocol: str) -> None:
    """The venue class's module and every venue module it builds on (Kraken's common piece,
    Bybit's shared categories) stay within MAX_VENUE_MODULE_LINES."""
    venue = registration(protocol).venue
    modules = {
        cls.__module__
        for cls in venue.__mro__
        if cls.__module__.startswith("mmengine.venues.") and cls.__module__ not in SHARED_MODULES
    }
    assert venue.__module__ in modules
    counts = {}
    for name in sorted(modules):
        path = Path(sys.modules[name].__file__ or "")
        counts[path.name] = len(path.read_text().splitlines())
    over = {name: n for name, n in counts.items() if n > MAX_VENUE_MODULE_LINES}
    assert not over, f"{protocol}: over {MAX_VENUE_MODULE_LINES} lines: {over}"


def test_it_has_a_simulator_with_a_wire_kit(protocol: str) -> None:
    sims = registration(protocol).simulator_classes()
    assert sims, f"{protocol}: no simulator registered"
    assert all(issubclass(s, SimProtocol) for s in sims)
    assert sims[0].venue == protocol  # the first speaks the protocol as the venue does
    kit = kit_of(protocol)
    assert isinstance(kit, WireKit) and kit.protocol == protocol
    assert len(kit.instruments) == 2


def test_a_capture_of_it_is_recognised(protocol: str) -> None:
    venue = registration(protocol).venue
    addr = venue.default_url
    events = [CaptureEvent("connect", "c", 0.0, "", addr)]
    assert detect_protocol({"exchange": venue.capture_exchange}, events) == protocol


def test_it_has_a_capture_in_tests_data(protocol: str) -> None:
    assert captures().get(protocol), f"{protocol}: no capture in tests/data"


def test_config_takes_it(protocol: str) -> None:
    kit = kit_of(protocol)
    doc = {
        "venues": [
            {
                "name": "v",
                "protocol": protocol,
                "instruments": list(kit.instruments),
                "depth": kit.depth,
            }
        ],
        "instruments": [
            {"name": i, "sources": [{"venue": "v"}], "min_venues": 1} for i in kit.instruments
        ],
    }
    assert parse_config(doc).venue_specs()[0].protocol == protocol


@pytest.mark.parametrize("protocol_name", ["no-such-venue"])
def test_an_unregistered_protocol_is_refused_by_config(protocol_name: str) -> None:
    from mmengine.errors import ConfigError

    doc = {
        "venues": [{"name": "v", "protocol": protocol_name, "instruments": ["BTC-USD"]}],
        "instruments": [{"name": "BTC-USD", "sources": [{"venue": "v"}]}],
    }
    with pytest.raises(ConfigError, match="unknown protocol"):
        parse_config(doc)
