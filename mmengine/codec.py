"""Avro single-object encoding of the engine's messages (called from any thread).

A payload is `C3 01`, the schema's 8-byte little-endian CRC-64-AVRO fingerprint of its
parsing canonical form, then the Avro binary body, so any reader can tell which schema
wrote it. fastavro encodes on the hot path; the tests decode with the official `avro`
package, which is the reference.
"""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from mmengine.model import BookTop, Price

SCHEMA_DIR = Path(__file__).parent / "schemas"
MAGIC = b"\xc3\x01"


class Codec:
    """Encoder/decoder for one schema file. Not thread-safe: one per thread."""

    def __init__(self, schema_file: str) -> None:
        self.path = SCHEMA_DIR / schema_file
        self.schema_json = json.loads(self.path.read_text())
        self.parsed = fastavro.parse_schema(self.schema_json)
        self.fingerprint = bytes.fromhex(
            fingerprint(to_parsing_canonical_form(self.parsed), "CRC-64-AVRO")
        )
        self.header = MAGIC + self.fingerprint
        self._buf = io.BytesIO()

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = self._buf
        buf.seek(0)
        buf.truncate()
        buf.write(self.header)
        fastavro.schemaless_writer(buf, self.parsed, record)
        return buf.getvalue()

    def decode(self, payload: bytes) -> dict[str, Any]:
        if payload[:2] != MAGIC:
            raise ValueError("not an Avro single-object payload (no C3 01 marker)")
        if payload[2:10] != self.fingerprint:
            raise ValueError(
                f"payload written with schema {payload[2:10].hex()}, "
                f"this reader knows {self.fingerprint.hex()} ({self.path.name})"
            )
        # A record schema decodes to a dict; fastavro's return type covers every schema
        # (no cast: this runs per payload).
        result: dict[str, Any] = fastavro.schemaless_reader(  # type: ignore[assignment]
            io.BytesIO(payload[10:]), self.parsed, None
        )
        return result


# --- the Price hot path -------------------------------------------------------------------
# fastavro needs a dict of dicts per Price (about 40 us with a 5-level ladder and 5 venues);
# writing the Avro binary directly is about 17 us and byte-identical (tests compare both on
# random Prices). The field order below must follow schemas/price.avsc: checked at import.

PRICE_FIELDS = [
    "instrument",
    "epoch",
    "seq",
    "fair_value",
    "best_bid",
    "best_bid_size",
    "best_ask",
    "best_ask_size",
    "venues",
    "exchange_ts_ns",
    "recv_ts_ns",
    "priced_ts_ns",
    "method",
    "volatility_bps",
    "half_spread_bps",
    "position",
    "skew_bps",
    "halted",
    "halt_reason",
    "cross_venue_crossed",
    "bids",
    "asks",
    "venues_used",
    "venues_excluded",
]
_D5 = struct.Struct("<5d").pack
_D4 = struct.Struct("<4d").pack
_D3 = struct.Struct("<3d").pack
_D2 = struct.Struct("<2d").pack


# Avro longs: zig-zag, then base-128 varint (7 bits a byte, low bits first, the high bit of a
# byte says another follows). A Price holds a dozen 9-byte timestamps; a byte-at-a-time loop
# cost about 1 us each, so whole 14-bit pairs of continuation bytes come from a table.
_ONE = [bytes((i,)) for i in range(0x80)]
_PAIR = [bytes(((i & 0x7F) | 0x80, (i >> 7) | 0x80)) for i in range(0x4000)]
_STRINGS_MAX = 4096  # a halt reason can carry numbers; past this, texts are not kept
# Each thread keeps the strings it encoded (venue and instrument names, reasons: a few dozen
# texts) in a dict of its own: threads share nothing mutable.
_thread = threading.local()


def _varlong(n: int) -> bytes:
    """Avro long: zig-zag, then base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return _ONE[n]
    parts = []
    while n >= 0x4000:  # more than 14 bits left: two bytes, both saying more follows
        parts.append(_PAIR[n & 0x3FFF])
        n >>= 14
    parts.append(_ONE[n] if n < 0x80 else bytes(((n & 0x7F) | 0x80, n >> 7)))
    return b"".join(parts)


def _strings() -> dict[str, bytes]:
    """This thread's encoded strings."""
    try:
        known: dict[str, bytes] = _thread.strings
    except AttributeError:
        known = _thread.strings = {}
    return known


def _string(text: str, known: dict[str, bytes]) -> bytes:
    """An Avro string, from `known` when it was encoded before (it is added if there is
    room)."""
    encoded = known.get(text)
    if encoded is not None:
        return encoded
    raw = text.encode()
    encoded = _varlong(len(raw)) + raw
    if len(known) < _STRINGS_MAX:
        known[text] = encoded
    return encoded


def encode_price(header: bytes, p: Price) -> bytes:
    """The single-object payload of a Price: `header` (C3 01 + fingerprint), then the body."""
    known = _strings()
    parts = [
        header,
        _string(p.instrument, known),
        _varlong(p.epoch),
        _varlong(p.seq),
        _D5(p.fair_value, p.best_bid, p.best_bid_size, p.best_ask, p.best_ask_size),
    ]
    if p.venues:
        parts.append(_varlong(len(p.venues)))
        parts.extend(_string(v, known) for v in p.venues)
    parts.append(b"\0")
    parts.append(_varlong(p.exchange_ts_ns))
    parts.append(_varlong(p.recv_ts_ns))
    parts.append(_varlong(p.priced_ts_ns))
    parts.append(_string(p.method, known))
    parts.append(_D4(p.volatility_bps, p.half_spread_bps, p.position, p.skew_bps))
    parts.append(b"\1" if p.halted else b"\0")
    parts.append(_string(p.halt_reason, known))
    parts.append(b"\1" if p.cross_venue_crossed else b"\0")
    for ladder in (p.bids, p.asks):
        if ladder:
            parts.append(_varlong(len(ladder)))
            parts.extend(_D2(price, size) for price, size in ladder)
        parts.append(b"\0")
    if p.venues_used:
        parts.append(_varlong(len(p.venues_used)))
        for u in p.venues_used:
            parts += (
                _string(u.venue, known),
                _string(u.instrument, known),
                _D3(u.mid, u.weight, u.fx_rate),
                _varlong(u.venue_seq),
                _varlong(u.recv_ts_ns),
            )
    parts.append(b"\0")
    if p.venues_excluded:
        parts.append(_varlong(len(p.venues_excluded)))
        for x in p.venues_excluded:
            parts += (
                _string(x.venue, known),
                _string(x.instrument, known),
                _string(x.reason, known),
            )
    parts.append(b"\0")
    return b"".join(parts)


def _check_price_schema() -> None:
    names = [f["name"] for f in json.loads((SCHEMA_DIR / "price.avsc").read_text())["fields"]]
    if names != PRICE_FIELDS:
        raise RuntimeError(
            "schemas/price.avsc changed: update mmengine.codec.encode_price and PRICE_FIELDS"
        )


_check_price_schema()


def price_record(price: Price) -> dict[str, Any]:
    """The Avro record of a Price (field for field; `asdict` would deep-copy)."""
    return {
        "instrument": price.instrument,
        "epoch": price.epoch,
        "seq": price.seq,
        "fair_value": price.fair_value,
        "best_bid": price.best_bid,
        "best_bid_size": price.best_bid_size,
        "best_ask": price.best_ask,
        "best_ask_size": price.best_ask_size,
        "venues": price.venues,
        "exchange_ts_ns": price.exchange_ts_ns,
        "recv_ts_ns": price.recv_ts_ns,
        "priced_ts_ns": price.priced_ts_ns,
        "method": price.method,
        "volatility_bps": price.volatility_bps,
        "half_spread_bps": price.half_spread_bps,
        "position": price.position,
        "skew_bps": price.skew_bps,
        "halted": price.halted,
        "halt_reason": price.halt_reason,
        "cross_venue_crossed": price.cross_venue_crossed,
        "bids": [{"price": p, "size": q} for p, q in price.bids],
        "asks": [{"price": p, "size": q} for p, q in price.asks],
        "venues_used": [
            {
                "venue": u.venue,
                "instrument": u.instrument,
                "mid": u.mid,
                "weight": u.weight,
                "fx_rate": u.fx_rate,
                "venue_seq": u.venue_seq,
                "recv_ts_ns": u.recv_ts_ns,
            }
            for u in price.venues_used
        ],
        "venues_excluded": [
            {"venue": x.venue, "instrument": x.instrument, "reason": x.reason}
            for x in price.venues_excluded
        ],
    }


# --- a Price's values, for a consumer in this process ----------------------------------
# A writer that needs the Price's fields (Postgres) would otherwise decode the Avro payload
# again (about 20-35 us). The pricing worker hands it the values as a tuple in schema field
# order instead (nested records as tuples in their own field order; pickled, about 3 us);
# `record_from_values` turns them back into exactly the dict an Avro decode gives. Keep
# `price_values` in step with `encode_price` when the schema changes: a test compares
# `record_from_values(price_values(p))` with the decoded payload for random Prices.


def price_values(p: Price) -> tuple[Any, ...]:
    """The Price's Avro values in schema field order (see above)."""
    return (
        p.instrument,
        p.epoch,
        p.seq,
        p.fair_value,
        p.best_bid,
        p.best_bid_size,
        p.best_ask,
        p.best_ask_size,
        p.venues,
        p.exchange_ts_ns,
        p.recv_ts_ns,
        p.priced_ts_ns,
        p.method,
        p.volatility_bps,
        p.half_spread_bps,
        p.position,
        p.skew_bps,
        p.halted,
        p.halt_reason,
        p.cross_venue_crossed,
        p.bids,
        p.asks,
        [
            (u.venue, u.instrument, u.mid, u.weight, u.fx_rate, u.venue_seq, u.recv_ts_ns)
            for u in p.venues_used
        ],
        [(x.venue, x.instrument, x.reason) for x in p.venues_excluded],
    )


def _field_shapes(schema: dict[str, Any]) -> list[tuple[str, tuple[str, ...] | None]]:
    """(field name, item field names when it is an array of records) of a record schema
    (fastavro's parsed form: a named type is defined at first use, referenced after)."""
    named: dict[str, tuple[str, ...]] = {}
    out: list[tuple[str, tuple[str, ...] | None]] = []
    for f in schema["fields"]:
        t = f["type"]
        items = t.get("items") if isinstance(t, dict) and t.get("type") == "array" else None
        if isinstance(items, dict) and items.get("type") == "record":
            names = tuple(g["name"] for g in items["fields"])
            named[items["name"]] = names
            out.append((f["name"], names))
        elif isinstance(items, str) and items in named:
            out.append((f["name"], named[items]))
        else:
            out.append((f["name"], None))
    return out


_PRICE_SHAPES = _field_shapes(
    # A record schema parses to a dict (fastavro's return type covers every schema).
    cast(dict[str, Any], fastavro.parse_schema(json.loads((SCHEMA_DIR / "price.avsc").read_text())))
)


def _records(names: tuple[str, ...]) -> Any:
    """A function turning a list of tuples into a list of dicts keyed by `names` (a dict
    display for the arities the schema has: several times faster than dict(zip()))."""
    if len(names) == 2:
        a, b = names
        return lambda items: [{a: x, b: y} for x, y in items]
    if len(names) == 3:
        a, b, c = names
        return lambda items: [{a: x, b: y, c: z} for x, y, z in items]
    if len(names) == 7:
        a, b, c, d, e, f, g = names
        return lambda items: [
            {a: t, b: u, c: v, d: w, e: x, f: y, g: z} for t, u, v, w, x, y, z in items
        ]
    return lambda items: [dict(zip(names, item, strict=True)) for item in items]


_PRICE_BUILDERS = [
    (name, None if items is None else _records(items)) for name, items in _PRICE_SHAPES
]


PRICE_INDEX = {name: i for i, (name, _) in enumerate(_PRICE_SHAPES)}  # field -> position


def values_reader(
    skip: frozenset[str] = frozenset(),
) -> Callable[[tuple[Any, ...]], dict[str, Any]]:
    """A function giving `record_from_values(values)` without the fields in `skip` (a
    consumer that takes those from the tuple itself, by `PRICE_INDEX`)."""
    picks = [(i, n, build) for i, (n, build) in enumerate(_PRICE_BUILDERS) if n not in skip]
    count = len(_PRICE_BUILDERS)

    def read(values: tuple[Any, ...]) -> dict[str, Any]:
        if len(values) != count:
            raise ValueError(f"{len(values)} values for {count} Price fields")
        return {n: values[i] if build is None else build(values[i]) for i, n, build in picks}

    return read


def record_from_values(values: tuple[Any, ...]) -> dict[str, Any]:
    """The Avro record dict of `price_values` output, equal to what decoding the Price's
    payload gives; ValueError (or TypeError) if the values do not fit the schema."""
    if len(values) != len(_PRICE_BUILDERS):
        raise ValueError(f"{len(values)} values for {len(_PRICE_BUILDERS)} Price fields")
    return {
        name: value if build is None else build(value)
        for (name, build), value in zip(_PRICE_BUILDERS, values, strict=True)
    }


def book_top_record(top: BookTop) -> dict[str, Any]:
    return top._asdict()
